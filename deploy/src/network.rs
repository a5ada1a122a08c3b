//! The network `up` places instances in (read only: the given subnets, or
//! the default VPC's), the ECS-optimized AMI, and the security group
//! `ecsmesh-<cluster>` with its ingress rules: the mesh ports between its
//! members, the controller's ports from the VPC when a load balancer is in
//! front of it, SSH with a key pair. Observe (`network`,
//! `find_security_group`), plan (`missing_ingress`: the rules it lacks),
//! apply (`up_security_group`), destroy (`down_security_group`, retried
//! while terminated instances' interfaces still hold the group).

use std::fmt::Write as _;

use aws_sdk_ec2 as ec2;
use ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};

use crate::config::OWNER_TAG;
use crate::error::{DeployError, Result};
use crate::ops::{CONTROLLER_GRPC_PORT, Deployer, POLL_INTERVAL, ec2_tags, filter};
use crate::{Action, Step};

/// How long `down` retries a security group still held by instances' interfaces.
const SG_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(3);

/// The controller's gRPC and admin (health check) ports.
pub const CONTROLLER_PORTS: [i32; 2] = [CONTROLLER_GRPC_PORT, 9991];

/// Mesh ports opened between members of the security group.
pub const MESH_PORTS: [i32; 5] = [4140, 4141, 9990, 4321, 9991];

/// The network `up` places instances in.
#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) vpc_id: String,
    pub(crate) vpc_cidr: String,
    pub(crate) subnets: Vec<String>,
}

impl Deployer {
    pub(crate) async fn network(&self) -> Result<Network> {
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

    pub(crate) async fn ami(&self) -> Result<String> {
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

    /// The rules the group lacks, each as (description, builder from group id).
    #[allow(clippy::type_complexity)]
    fn missing_ingress(
        &self,
        sg: Option<&ec2::types::SecurityGroup>,
        net: &Network,
    ) -> Vec<(String, Box<dyn Fn(&str) -> IpPermission>)> {
        let has = |port: i32, pred: &dyn Fn(&IpPermission) -> bool| {
            sg.is_some_and(|g| {
                g.ip_permissions().iter().any(|p| {
                    p.ip_protocol() == Some("tcp")
                        && p.from_port() == Some(port)
                        && p.to_port() == Some(port)
                        && pred(p)
                })
            })
        };
        let self_id = sg.and_then(|g| g.group_id()).unwrap_or_default().to_owned();
        let mut out: Vec<(String, Box<dyn Fn(&str) -> IpPermission>)> = Vec::new();
        for port in MESH_PORTS {
            let me = self_id.clone();
            if !has(port, &move |p: &IpPermission| {
                p.user_id_group_pairs()
                    .iter()
                    .any(|u| u.group_id() == Some(me.as_str()))
            }) {
                out.push((
                    format!("tcp/{port} from the group"),
                    Box::new(move |gid: &str| {
                        IpPermission::builder()
                            .ip_protocol("tcp")
                            .from_port(port)
                            .to_port(port)
                            .user_id_group_pairs(UserIdGroupPair::builder().group_id(gid).build())
                            .build()
                    }),
                ));
            }
        }
        // Through a load balancer (client IP preservation off) the controller
        // sees the balancer's own VPC addresses, for traffic and health checks.
        if self.cfg.uses_load_balancer() {
            for port in CONTROLLER_PORTS {
                let cidr = net.vpc_cidr.clone();
                let c = cidr.clone();
                if !has(port, &move |p: &IpPermission| {
                    p.ip_ranges()
                        .iter()
                        .any(|r| r.cidr_ip() == Some(c.as_str()))
                }) {
                    out.push((
                        format!("tcp/{port} from {cidr} (load balancer)"),
                        Box::new(move |_: &str| {
                            IpPermission::builder()
                                .ip_protocol("tcp")
                                .from_port(port)
                                .to_port(port)
                                .ip_ranges(
                                    IpRange::builder()
                                        .cidr_ip(&cidr)
                                        .description("ecsmesh controller load balancer")
                                        .build(),
                                )
                                .build()
                        }),
                    ));
                }
            }
        }
        if self.cfg.key_pair.is_some() {
            let cidr = self
                .cfg
                .ssh_cidr
                .clone()
                .unwrap_or_else(|| net.vpc_cidr.clone());
            let c = cidr.clone();
            if !has(22, &move |p: &IpPermission| {
                p.ip_ranges()
                    .iter()
                    .any(|r| r.cidr_ip() == Some(c.as_str()))
            }) {
                out.push((
                    format!("tcp/22 from {cidr}"),
                    Box::new(move |_: &str| {
                        IpPermission::builder()
                            .ip_protocol("tcp")
                            .from_port(22)
                            .to_port(22)
                            .ip_ranges(
                                IpRange::builder()
                                    .cidr_ip(&cidr)
                                    .description("ecsmesh SSH")
                                    .build(),
                            )
                            .build()
                    }),
                ));
            }
        }
        out
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

    /// `up`'s security group and its ingress rules; the group's id (none in
    /// a dry run before it exists).
    #[allow(clippy::single_match_else)]
    pub(crate) async fn up_security_group(
        &self,
        dry_run: bool,
        net: &Network,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        let cfg = &self.cfg;
        let base = cfg.base_name();
        let sg = self.find_security_group(&net.vpc_id).await?;
        let sg_id = match sg {
            Some(g) => {
                self.push(
                    steps,
                    "security-group",
                    &base,
                    Action::Unchanged,
                    g.group_id().unwrap_or_default(),
                );
                Some(g)
            }
            None => {
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
                self.push(
                    steps,
                    "security-group",
                    &base,
                    Action::Create,
                    id.clone().unwrap_or_default(),
                );
                match id {
                    Some(id) => self.find_security_group(&net.vpc_id).await?.or_else(|| {
                        Some(ec2::types::SecurityGroup::builder().group_id(id).build())
                    }),
                    None => None,
                }
            }
        };
        let group_id = sg_id.as_ref().and_then(|g| g.group_id()).map(str::to_owned);
        let missing = self.missing_ingress(sg_id.as_ref(), net);
        for (desc, perm) in &missing {
            if !dry_run && let Some(gid) = &group_id {
                let perm = perm(gid);
                self.ec2
                    .authorize_security_group_ingress()
                    .group_id(gid)
                    .ip_permissions(perm)
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
        if missing.is_empty() {
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
    pub(crate) async fn down_security_group(
        &self,
        dry_run: bool,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
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
