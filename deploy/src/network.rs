//! The network `up` places instances in (read only: the given subnets, or
//! the default VPC's), the ECS-optimized AMI, and the security group
//! `ecsmesh-<cluster>` with its ingress rules: the mesh ports between its
//! members, the controller's ports from the VPC when a load balancer is in
//! front of it, SSH with a key pair. Two [`Resource`]s: [`Vpc`] (read only:
//! observe finds the network and the AMI, apply reports them, destroy has
//! nothing to remove) and [`SecurityGroup`] (observe `find_security_group`,
//! plan `plan_security_group`, pure: the rules it lacks; destroy retried
//! while terminated instances' interfaces still hold the group).

use std::fmt::Write as _;

use aws_sdk_ec2 as ec2;
use ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};

use crate::config::{DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::{CONTROLLER_GRPC_PORT, Deployer, POLL_INTERVAL, ec2_tags, filter};
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// How long `down` retries a security group still held by instances' interfaces.
const SG_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(3);

/// The controller's gRPC and admin (health check) ports.
pub const CONTROLLER_PORTS: [i32; 2] = [CONTROLLER_GRPC_PORT, 9991];

/// Mesh ports opened between members of the security group.
pub const MESH_PORTS: [i32; 5] = [4140, 4141, 9990, 4321, 9991];

/// The network `up` places instances in.
#[derive(Clone, Debug)]
pub(crate) struct Network {
    pub(crate) vpc_id: String,
    pub(crate) vpc_cidr: String,
    pub(crate) subnets: Vec<String>,
}

/// Where an ingress rule admits traffic from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Members of the group itself.
    Group,
    /// An address range, with the rule's description.
    Cidr(String, &'static str),
}

/// One tcp ingress rule `up` wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ingress {
    pub(crate) port: i32,
    pub(crate) source: Source,
}

impl Ingress {
    /// The report's name for the rule.
    fn describe(&self) -> String {
        match &self.source {
            Source::Group => format!("tcp/{} from the group", self.port),
            Source::Cidr(cidr, "ecsmesh controller load balancer") => {
                format!("tcp/{} from {cidr} (load balancer)", self.port)
            }
            Source::Cidr(cidr, _) => format!("tcp/{} from {cidr}", self.port),
        }
    }

    /// The rule as EC2 takes it, for the group `group_id`.
    fn permission(&self, group_id: &str) -> IpPermission {
        let p = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(self.port)
            .to_port(self.port);
        match &self.source {
            Source::Group => {
                p.user_id_group_pairs(UserIdGroupPair::builder().group_id(group_id).build())
            }
            Source::Cidr(cidr, description) => p.ip_ranges(
                IpRange::builder()
                    .cidr_ip(cidr)
                    .description(*description)
                    .build(),
            ),
        }
        .build()
    }

    /// Whether `sg` (whose id is `group_id`) has this rule.
    fn is_in(&self, sg: &ec2::types::SecurityGroup, group_id: &str) -> bool {
        sg.ip_permissions().iter().any(|p| {
            p.ip_protocol() == Some("tcp")
                && p.from_port() == Some(self.port)
                && p.to_port() == Some(self.port)
                && match &self.source {
                    Source::Group => p
                        .user_id_group_pairs()
                        .iter()
                        .any(|u| u.group_id() == Some(group_id)),
                    Source::Cidr(cidr, _) => p
                        .ip_ranges()
                        .iter()
                        .any(|r| r.cidr_ip() == Some(cidr.as_str())),
                }
        })
    }
}

/// The ingress rules `up` wants on the group.
pub(crate) fn wanted_ingress(cfg: &DeployConfig, net: &Network) -> Vec<Ingress> {
    let mut out: Vec<Ingress> = MESH_PORTS
        .iter()
        .map(|&port| Ingress {
            port,
            source: Source::Group,
        })
        .collect();
    // Through a load balancer (client IP preservation off) the controller
    // sees the balancer's own VPC addresses, for traffic and health checks.
    if cfg.uses_load_balancer() {
        out.extend(CONTROLLER_PORTS.iter().map(|&port| Ingress {
            port,
            source: Source::Cidr(net.vpc_cidr.clone(), "ecsmesh controller load balancer"),
        }));
    }
    if cfg.key_pair.is_some() {
        let cidr = cfg.ssh_cidr.clone().unwrap_or_else(|| net.vpc_cidr.clone());
        out.push(Ingress {
            port: 22,
            source: Source::Cidr(cidr, "ecsmesh SSH"),
        });
    }
    out
}

/// What `up` does to the security group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SecurityGroupPlan {
    /// Whether the group itself is created.
    pub(crate) create: bool,
    /// The rules it lacks (all of them for a new group).
    pub(crate) add: Vec<Ingress>,
}

/// Compares the group with what `up` makes (no I/O): the rules it lacks.
pub(crate) fn plan_security_group(
    cfg: &DeployConfig,
    net: &Network,
    have: Option<&ec2::types::SecurityGroup>,
) -> SecurityGroupPlan {
    let wanted = wanted_ingress(cfg, net);
    match have {
        None => SecurityGroupPlan {
            create: true,
            add: wanted,
        },
        Some(sg) => {
            let id = sg.group_id().unwrap_or_default();
            SecurityGroupPlan {
                create: false,
                add: wanted.into_iter().filter(|r| !r.is_in(sg, id)).collect(),
            }
        }
    }
}

/// The network and the AMI: a data source (Terraform's word), made by
/// nobody, read by `up` for what comes after.
pub(crate) struct Vpc;

/// What [`Vpc`] found.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub(crate) net: Network,
    pub(crate) ami: String,
}

impl Resource for Vpc {
    const KIND: Kind = Kind::Network;
    type Wanted = ();
    type Observed = Found;
    /// Nothing to do: it is only read.
    type Plan = ();
    type Output = Found;

    async fn observe(d: &Deployer, (): &()) -> Result<Found> {
        Ok(Found {
            net: d.network().await?,
            ami: d.ami().await?,
        })
    }

    fn plan(_: &DeployConfig, (): &(), _: &Found) -> Result<()> {
        Ok(())
    }

    async fn apply(
        d: &Deployer,
        _: bool,
        (): (),
        have: Found,
        (): (),
        steps: &mut Vec<Step>,
    ) -> Result<Found> {
        let net = &have.net;
        let detail = format!("{} subnets {}", net.vpc_cidr, net.subnets.join(","));
        d.push(steps, "network", &net.vpc_id, Action::Unchanged, detail);
        Ok(have)
    }

    /// Not ours: nothing to remove.
    async fn destroy(_: &Deployer, _: bool, _: &mut Vec<Step>) -> Result<()> {
        Ok(())
    }
}

/// The security group `ecsmesh-<cluster>` and its ingress rules; wanted:
/// the network it is in.
pub(crate) struct SecurityGroup;

impl Resource for SecurityGroup {
    const KIND: Kind = Kind::SecurityGroup;
    type Wanted = Network;
    type Observed = Option<ec2::types::SecurityGroup>;
    type Plan = SecurityGroupPlan;
    /// The group's id (none in a dry run before it exists).
    type Output = Option<String>;

    async fn observe(d: &Deployer, net: &Network) -> Result<Self::Observed> {
        d.find_security_group(&net.vpc_id).await
    }

    fn plan(cfg: &DeployConfig, net: &Network, have: &Self::Observed) -> Result<SecurityGroupPlan> {
        Ok(plan_security_group(cfg, net, have.as_ref()))
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        net: Network,
        have: Self::Observed,
        plan: SecurityGroupPlan,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        d.apply_security_group(dry_run, &net, have, plan, steps)
            .await
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_security_group(dry_run, steps).await
    }
}

impl Deployer {
    async fn network(&self) -> Result<Network> {
        let subnet_ids = if self.cfg.subnets.is_empty() {
            let vpcs = self
                .ec2
                .describe_vpcs()
                .filters(filter("is-default", "true"))
                .send()
                .await
                .map_err(|e| DeployError::aws("DescribeVpcs", "default VPC", &e))?;
            let vpc = vpcs
                .vpcs()
                .first()
                .and_then(|v| v.vpc_id())
                .ok_or_else(|| {
                    DeployError::State("no default VPC in this region: pass --subnet".to_owned())
                })?;
            let subnets = self
                .ec2
                .describe_subnets()
                .filters(filter("vpc-id", vpc))
                .send()
                .await
                .map_err(|e| DeployError::aws("DescribeSubnets", vpc, &e))?;
            subnets
                .subnets()
                .iter()
                .filter_map(|s| s.subnet_id().map(str::to_owned))
                .collect()
        } else {
            self.cfg.subnets.clone()
        };
        let out = self
            .ec2
            .describe_subnets()
            .set_subnet_ids(Some(subnet_ids.clone()))
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeSubnets", subnet_ids.join(","), &e))?;
        let mut vpcs: Vec<&str> = out.subnets().iter().filter_map(|s| s.vpc_id()).collect();
        vpcs.sort_unstable();
        vpcs.dedup();
        let [vpc_id] = vpcs.as_slice() else {
            return Err(DeployError::State(format!(
                "the subnets must be in exactly one VPC, found {vpcs:?}"
            )));
        };
        let vpc = self
            .ec2
            .describe_vpcs()
            .vpc_ids(*vpc_id)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeVpcs", *vpc_id, &e))?;
        let vpc_cidr = vpc
            .vpcs()
            .first()
            .and_then(|v| v.cidr_block())
            .unwrap_or_default()
            .to_owned();
        let mut subnets = subnet_ids;
        subnets.sort();
        Ok(Network {
            vpc_id: (*vpc_id).to_owned(),
            vpc_cidr,
            subnets,
        })
    }

    async fn ami(&self) -> Result<String> {
        if let Some(ami) = &self.cfg.ami {
            return Ok(ami.clone());
        }
        let out = self
            .ec2
            .describe_images()
            .owners("amazon")
            .filters(filter("name", "al2023-ami-ecs-hvm-*"))
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeImages", "al2023-ami-ecs-hvm-*", &e))?;
        let mut images: Vec<_> = out
            .images()
            .iter()
            .filter(|i| {
                i.architecture().map(ec2::types::ArchitectureValues::as_str) != Some("arm64")
            })
            .collect();
        images.sort_by_key(|i| i.creation_date().unwrap_or_default().to_owned());
        images
            .last()
            .and_then(|i| i.image_id())
            .map(str::to_owned)
            .ok_or_else(|| {
                DeployError::State(
                    "no ECS-optimized Amazon Linux 2023 AMI found: pass --ami".to_owned(),
                )
            })
    }

    async fn find_security_group(&self, vpc_id: &str) -> Result<Option<ec2::types::SecurityGroup>> {
        let base = self.cfg.base_name();
        let out = self
            .ec2
            .describe_security_groups()
            .filters(filter("group-name", &base))
            .filters(filter("vpc-id", vpc_id))
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeSecurityGroups", &base, &e))?;
        Ok(out.security_groups().first().cloned())
    }

    fn ingress_summary(&self) -> String {
        let mut s = format!("tcp {MESH_PORTS:?} from the group");
        if self.cfg.uses_load_balancer() {
            let _ = write!(s, "; tcp {CONTROLLER_PORTS:?} from the VPC (load balancer)");
        }
        if self.cfg.key_pair.is_some() {
            s.push_str("; tcp 22 for SSH");
        }
        s
    }

    /// Deletes the security group, retrying while network interfaces of
    /// just-terminated instances still hold it (`DependencyViolation`).
    async fn delete_security_group(&self, id: &str) -> Result<()> {
        let resource = format!("{} ({id})", self.cfg.base_name());
        let deadline = tokio::time::Instant::now() + SG_DELETE_TIMEOUT;
        loop {
            match self.ec2.delete_security_group().group_id(id).send().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let err = DeployError::aws("DeleteSecurityGroup", &resource, &e);
                    if err.aws_code() != Some("DependencyViolation")
                        || tokio::time::Instant::now() >= deadline
                    {
                        return Err(err);
                    }
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Carries out the security group's plan; the group's id (none in a
    /// dry run before it exists).
    async fn apply_security_group(
        &self,
        dry_run: bool,
        net: &Network,
        have: Option<ec2::types::SecurityGroup>,
        plan: SecurityGroupPlan,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        let cfg = &self.cfg;
        let base = cfg.base_name();
        let group_id = if plan.create {
            let id = if dry_run {
                None
            } else {
                let out = self
                    .ec2
                    .create_security_group()
                    .group_name(&base)
                    .description(format!("ecsmesh cluster {}", cfg.cluster))
                    .vpc_id(&net.vpc_id)
                    .tag_specifications(ec2_tags(ResourceType::SecurityGroup, cfg, &base))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("CreateSecurityGroup", &base, &e))?;
                out.group_id().map(str::to_owned)
            };
            let detail = id.clone().unwrap_or_default();
            self.push(steps, "security-group", &base, Action::Create, detail);
            id
        } else {
            let id = have.as_ref().and_then(|g| g.group_id()).map(str::to_owned);
            let detail = id.clone().unwrap_or_default();
            self.push(steps, "security-group", &base, Action::Unchanged, detail);
            id
        };
        for rule in &plan.add {
            let desc = rule.describe();
            if !dry_run && let Some(gid) = &group_id {
                self.ec2
                    .authorize_security_group_ingress()
                    .group_id(gid)
                    .ip_permissions(rule.permission(gid))
                    .send()
                    .await
                    .map_err(|e| {
                        DeployError::aws(
                            "AuthorizeSecurityGroupIngress",
                            format!("{base} {desc}"),
                            &e,
                        )
                    })?;
            }
            self.push(steps, "ingress-rule", desc, Action::Create, &base);
        }
        if plan.add.is_empty() {
            self.push(
                steps,
                "ingress-rules",
                &base,
                Action::Unchanged,
                self.ingress_summary(),
            );
        }

        Ok(group_id)
    }

    /// `down`'s security group(s): named ours and tagged ours, in any VPC.
    async fn destroy_security_group(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let cfg = &self.cfg;
        let base = cfg.base_name();
        let groups = self
            .ec2
            .describe_security_groups()
            .filters(filter("group-name", &base))
            .filters(filter(&format!("tag:{OWNER_TAG}"), cfg.owner()))
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeSecurityGroups", &base, &e))?;
        if groups.security_groups().is_empty() {
            self.push(steps, "security-group", &base, Action::Absent, "");
        }
        for g in groups.security_groups() {
            let id = g.group_id().unwrap_or_default();
            if !dry_run {
                self.delete_security_group(id).await?;
            }
            self.push(steps, "security-group", &base, Action::Delete, id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network {
            vpc_id: "vpc-1".to_owned(),
            vpc_cidr: "10.0.0.0/16".to_owned(),
            subnets: vec!["subnet-1".to_owned()],
        }
    }

    /// A group `sg-1` with exactly `rules`.
    fn group_with(rules: &[Ingress]) -> ec2::types::SecurityGroup {
        ec2::types::SecurityGroup::builder()
            .group_id("sg-1")
            .set_ip_permissions(Some(rules.iter().map(|r| r.permission("sg-1")).collect()))
            .build()
    }

    #[test]
    fn plan_creates_an_absent_group_with_every_rule() {
        let cfg = DeployConfig::new("c", "r");
        let plan = plan_security_group(&cfg, &net(), None);
        assert!(plan.create);
        assert_eq!(plan.add, wanted_ingress(&cfg, &net()));
        // The managed load balancer (the default) needs the controller's ports.
        assert_eq!(plan.add.len(), MESH_PORTS.len() + CONTROLLER_PORTS.len());
    }

    #[test]
    fn plan_leaves_a_group_that_has_every_rule() {
        let cfg = DeployConfig::new("c", "r");
        let sg = group_with(&wanted_ingress(&cfg, &net()));
        let plan = plan_security_group(&cfg, &net(), Some(&sg));
        assert!(!plan.create);
        assert!(plan.add.is_empty(), "{plan:?}");
    }

    #[test]
    fn plan_adds_the_rules_a_group_lacks() {
        let mut cfg = DeployConfig::new("c", "r");
        let sg = group_with(&wanted_ingress(&cfg, &net()));
        // Drift: a key pair now, so SSH from the given range.
        cfg.key_pair = Some("k".to_owned());
        cfg.ssh_cidr = Some("192.0.2.0/24".to_owned());
        let plan = plan_security_group(&cfg, &net(), Some(&sg));
        assert!(!plan.create);
        assert_eq!(
            plan.add,
            [Ingress {
                port: 22,
                source: Source::Cidr("192.0.2.0/24".to_owned(), "ecsmesh SSH"),
            }]
        );
        assert_eq!(plan.add[0].describe(), "tcp/22 from 192.0.2.0/24");
    }
}
