//! The controller's internal Network Load Balancer, which `up` creates when
//! agents need an address that reaches every controller replica and the
//! user gave none ([`DeployConfig::managed_load_balancer`]: several
//! replicas or instances, the default loopback address, no target group):
//! a load balancer and a target group named [`DeployConfig::lb_name`], and a
//! TCP listener on the controller's gRPC port. The controller's ECS service
//! registers its tasks (instance targets, host network mode) in the target
//! group, and agents dial `http(s)://<the balancer's DNS name>:4321` (with
//! TLS they check the certificate for `ecsmesh-controller`, whatever the
//! name). Client IP preservation is off (an agent on a controller's own
//! instance could not connect through the balancer otherwise) and cross-zone
//! load balancing on (the replicas run in fewer zones than the agents).
//!
//! A [`Resource`] like every module: observe (`observe_balancer`), plan
//! (`plan_balancer`, pure), apply, destroy (only what is ours). Its output
//! is where agents and ecsmeshctl reach the controller
//! ([`ControllerReach`]).

use aws_sdk_elasticloadbalancingv2 as elb;
use elb::types::{
    Action as LbAction, ActionTypeEnum, LoadBalancerAttribute, LoadBalancerSchemeEnum,
    LoadBalancerTypeEnum, ProtocolEnum, Tag, TargetGroupAttribute, TargetTypeEnum,
};

use crate::config::{DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::{CONTROLLER_GRPC_PORT, Deployer};
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

const LB: &str = "load-balancer";
const TG: &str = "target-group";
const LISTENER: &str = "lb-listener";

/// The controller's admin port, where the target group checks `/ready`.
const HEALTH_PORT: &str = "9991";
const TG_ATTRIBUTE: (&str, &str) = ("preserve_client_ip.enabled", "false");
const LB_ATTRIBUTE: (&str, &str) = ("load_balancing.cross_zone.enabled", "true");

/// How long `down` retries deleting a target group its balancer still holds.
const TG_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(2);
const POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// The balancer, target group and listener as they are.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObservedBalancer {
    /// ARN, DNS name, tagged ours.
    lb: Option<(String, String, bool)>,
    lb_attribute_ok: bool,
    /// ARN, tagged ours.
    tg: Option<(String, bool)>,
    tg_attribute_ok: bool,
    /// A listener on the gRPC port forwarding to the target group.
    listener: bool,
}

/// What `up` does, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    CreateTargetGroup,
    SetTargetGroupAttribute,
    CreateLoadBalancer,
    SetLoadBalancerAttribute,
    CreateListener,
}

/// From what is there (no I/O); a balancer or target group of that name
/// that is not ours is an error (agents would be sent to it).
pub(crate) fn plan_balancer(name: &str, have: &ObservedBalancer) -> Result<Vec<Change>> {
    if have.lb.as_ref().is_some_and(|l| !l.2) || have.tg.as_ref().is_some_and(|t| !t.1) {
        return Err(DeployError::State(format!(
            "load balancer or target group {name} exists without the tag {OWNER_TAG}: pass \
             --controller-address (and --controller-target-group) to use yours"
        )));
    }
    let mut out = Vec::new();
    if have.tg.is_none() {
        out.extend([Change::CreateTargetGroup, Change::SetTargetGroupAttribute]);
    } else if !have.tg_attribute_ok {
        out.push(Change::SetTargetGroupAttribute);
    }
    if have.lb.is_none() {
        out.extend([Change::CreateLoadBalancer, Change::SetLoadBalancerAttribute]);
    } else if !have.lb_attribute_ok {
        out.push(Change::SetLoadBalancerAttribute);
    }
    if !have.listener {
        out.push(Change::CreateListener);
    }
    Ok(out)
}

/// What the rest of `up` needs: the agents' address and the target group
/// the controller's service registers in (unknown in a dry run before
/// they exist).
#[derive(Clone, Debug, Default)]
pub(crate) struct ControllerReach {
    pub(crate) address: Option<String>,
    pub(crate) target_group: Option<String>,
}

/// Where the balancer goes.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub(crate) vpc_id: String,
    pub(crate) subnets: Vec<String>,
}

/// The controller's balancer, target group and listener (only when
/// [`DeployConfig::managed_load_balancer`]).
pub(crate) struct LoadBalancer;

impl Resource for LoadBalancer {
    const KIND: Kind = Kind::LoadBalancer;
    type Wanted = Wanted;
    /// `None`: not made by `up` (not looked up).
    type Observed = Option<ObservedBalancer>;
    type Plan = Option<Vec<Change>>;
    type Output = ControllerReach;

    async fn observe(d: &Deployer, _: &Wanted) -> Result<Self::Observed> {
        if !d.cfg.managed_load_balancer() {
            return Ok(None);
        }
        d.observe_balancer().await.map(Some)
    }

    fn plan(cfg: &DeployConfig, _: &Wanted, have: &Self::Observed) -> Result<Self::Plan> {
        have.as_ref()
            .map(|h| plan_balancer(&cfg.lb_name(), h))
            .transpose()
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        want: Wanted,
        have: Self::Observed,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<ControllerReach> {
        match (have, plan) {
            (Some(have), Some(changes)) => {
                d.apply_balancer(dry_run, &want, have, &changes, steps)
                    .await
            }
            _ => Ok(ControllerReach::default()),
        }
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_lb(dry_run, steps).await
    }
}

fn tag(owner: &str) -> Tag {
    Tag::builder().key(OWNER_TAG).value(owner).build()
}

fn not_found<E: elb::error::ProvideErrorMetadata>(e: &E) -> bool {
    e.code()
        .is_some_and(|c| c == "LoadBalancerNotFound" || c == "TargetGroupNotFound")
}

impl Deployer {
    async fn owned_elb(&self, arn: &str) -> Result<bool> {
        let out = self
            .elb
            .describe_tags()
            .resource_arns(arn)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeTags", arn, &e))?;
        Ok(out
            .tag_descriptions()
            .iter()
            .flat_map(elb::types::TagDescription::tags)
            .any(|t| t.key() == Some(OWNER_TAG) && t.value() == Some(self.cfg.owner())))
    }

    async fn observe_balancer(&self) -> Result<ObservedBalancer> {
        let name = self.cfg.lb_name();
        let mut have = ObservedBalancer::default();
        match self.elb.describe_load_balancers().names(&name).send().await {
            Ok(out) => {
                if let Some(lb) = out.load_balancers().first() {
                    let arn = lb.load_balancer_arn().unwrap_or_default().to_owned();
                    let dns = lb.dns_name().unwrap_or_default().to_owned();
                    let owned = self.owned_elb(&arn).await?;
                    let attrs = self
                        .elb
                        .describe_load_balancer_attributes()
                        .load_balancer_arn(&arn)
                        .send()
                        .await
                        .map_err(|e| {
                            DeployError::aws("DescribeLoadBalancerAttributes", &name, &e)
                        })?;
                    have.lb_attribute_ok = attrs.attributes().iter().any(|a| {
                        a.key() == Some(LB_ATTRIBUTE.0) && a.value() == Some(LB_ATTRIBUTE.1)
                    });
                    let listeners = self
                        .elb
                        .describe_listeners()
                        .load_balancer_arn(&arn)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DescribeListeners", &name, &e))?;
                    have.listener = listeners
                        .listeners()
                        .iter()
                        .any(|l| l.port() == Some(CONTROLLER_GRPC_PORT));
                    have.lb = Some((arn, dns, owned));
                }
            }
            Err(e) if e.as_service_error().is_some_and(not_found) => {}
            Err(e) => return Err(DeployError::aws("DescribeLoadBalancers", &name, &e)),
        }
        match self.elb.describe_target_groups().names(&name).send().await {
            Ok(out) => {
                if let Some(tg) = out.target_groups().first() {
                    let arn = tg.target_group_arn().unwrap_or_default().to_owned();
                    let owned = self.owned_elb(&arn).await?;
                    let attrs = self
                        .elb
                        .describe_target_group_attributes()
                        .target_group_arn(&arn)
                        .send()
                        .await
                        .map_err(|e| {
                            DeployError::aws("DescribeTargetGroupAttributes", &name, &e)
                        })?;
                    have.tg_attribute_ok = attrs.attributes().iter().any(|a| {
                        a.key() == Some(TG_ATTRIBUTE.0) && a.value() == Some(TG_ATTRIBUTE.1)
                    });
                    have.tg = Some((arn, owned));
                }
            }
            Err(e) if e.as_service_error().is_some_and(not_found) => {}
            Err(e) => return Err(DeployError::aws("DescribeTargetGroups", &name, &e)),
        }
        Ok(have)
    }

    /// `up`'s balancer: the target group, the balancer in the wanted
    /// subnets, the listener.
    async fn apply_balancer(
        &self,
        dry_run: bool,
        want: &Wanted,
        have: ObservedBalancer,
        changes: &[Change],
        steps: &mut Vec<Step>,
    ) -> Result<ControllerReach> {
        let name = self.cfg.lb_name();
        let mut tg_arn = have.tg.map(|t| t.0);
        let (mut lb_arn, mut dns) = have.lb.map(|l| (l.0, l.1)).unzip();
        if !changes.contains(&Change::CreateTargetGroup) {
            let arn = tg_arn.clone().unwrap_or_default();
            self.push(steps, TG, &name, Action::Unchanged, arn);
        }
        if !changes.contains(&Change::CreateLoadBalancer) {
            let detail = dns.clone().unwrap_or_default();
            self.push(steps, LB, &name, Action::Unchanged, detail);
        }
        for change in changes {
            let (kind, action, detail) = match change {
                Change::CreateTargetGroup => (
                    TG,
                    Action::Create,
                    format!(
                        "TCP {CONTROLLER_GRPC_PORT}, instances, health HTTP :{HEALTH_PORT}/ready"
                    ),
                ),
                Change::SetTargetGroupAttribute => (
                    TG,
                    Action::Update,
                    format!("{}={}", TG_ATTRIBUTE.0, TG_ATTRIBUTE.1),
                ),
                Change::CreateLoadBalancer => (LB, Action::Create, "network, internal".to_owned()),
                Change::SetLoadBalancerAttribute => (
                    LB,
                    Action::Update,
                    format!("{}={}", LB_ATTRIBUTE.0, LB_ATTRIBUTE.1),
                ),
                Change::CreateListener => (
                    LISTENER,
                    Action::Create,
                    format!("TCP {CONTROLLER_GRPC_PORT} -> {name}"),
                ),
            };
            if !dry_run {
                match change {
                    Change::CreateTargetGroup => {
                        tg_arn = Some(self.create_target_group(&name, &want.vpc_id).await?);
                    }
                    Change::CreateLoadBalancer => {
                        let (arn, d) = self.create_load_balancer(&name, &want.subnets).await?;
                        (lb_arn, dns) = (Some(arn), Some(d));
                    }
                    _ => {
                        let arns = (lb_arn.as_deref(), tg_arn.as_deref());
                        self.apply_lb(&name, change, arns).await?;
                    }
                }
            }
            // A new resource's settings are part of making it: one line.
            let folded = matches!(change, Change::SetTargetGroupAttribute)
                && changes.contains(&Change::CreateTargetGroup)
                || matches!(change, Change::SetLoadBalancerAttribute)
                    && changes.contains(&Change::CreateLoadBalancer);
            if !folded {
                self.push(steps, kind, &name, action, detail);
            }
        }
        let scheme = if self.cfg.tls() { "https" } else { "http" };
        Ok(ControllerReach {
            address: dns.map(|d| format!("{scheme}://{d}:{CONTROLLER_GRPC_PORT}")),
            target_group: tg_arn,
        })
    }

    async fn create_target_group(&self, name: &str, vpc_id: &str) -> Result<String> {
        let out = self
            .elb
            .create_target_group()
            .name(name)
            .protocol(ProtocolEnum::Tcp)
            .port(CONTROLLER_GRPC_PORT)
            .vpc_id(vpc_id)
            .target_type(TargetTypeEnum::Instance)
            .health_check_protocol(ProtocolEnum::Http)
            .health_check_port(HEALTH_PORT)
            .health_check_path("/ready")
            .tags(tag(self.cfg.owner()))
            .send()
            .await
            .map_err(|e| DeployError::aws("CreateTargetGroup", name, &e))?;
        out.target_groups()
            .first()
            .and_then(|t| t.target_group_arn())
            .map(str::to_owned)
            .ok_or_else(|| DeployError::State(format!("CreateTargetGroup {name}: no ARN")))
    }

    async fn create_load_balancer(
        &self,
        name: &str,
        subnets: &[String],
    ) -> Result<(String, String)> {
        let out = self
            .elb
            .create_load_balancer()
            .name(name)
            .r#type(LoadBalancerTypeEnum::Network)
            .scheme(LoadBalancerSchemeEnum::Internal)
            .set_subnets(Some(subnets.to_vec()))
            .tags(tag(self.cfg.owner()))
            .send()
            .await
            .map_err(|e| DeployError::aws("CreateLoadBalancer", name, &e))?;
        let lb = out
            .load_balancers()
            .first()
            .ok_or_else(|| DeployError::State(format!("CreateLoadBalancer {name}: no answer")))?;
        Ok((
            lb.load_balancer_arn().unwrap_or_default().to_owned(),
            lb.dns_name().unwrap_or_default().to_owned(),
        ))
    }

    async fn apply_lb(
        &self,
        name: &str,
        change: &Change,
        (lb_arn, tg_arn): (Option<&str>, Option<&str>),
    ) -> Result<()> {
        let missing = || DeployError::State(format!("load balancer {name}: not created"));
        match change {
            Change::SetTargetGroupAttribute => {
                self.elb
                    .modify_target_group_attributes()
                    .target_group_arn(tg_arn.ok_or_else(missing)?)
                    .attributes(
                        TargetGroupAttribute::builder()
                            .key(TG_ATTRIBUTE.0)
                            .value(TG_ATTRIBUTE.1)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("ModifyTargetGroupAttributes", name, &e))?;
            }
            Change::SetLoadBalancerAttribute => {
                self.elb
                    .modify_load_balancer_attributes()
                    .load_balancer_arn(lb_arn.ok_or_else(missing)?)
                    .attributes(
                        LoadBalancerAttribute::builder()
                            .key(LB_ATTRIBUTE.0)
                            .value(LB_ATTRIBUTE.1)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("ModifyLoadBalancerAttributes", name, &e))?;
            }
            Change::CreateListener => {
                self.elb
                    .create_listener()
                    .load_balancer_arn(lb_arn.ok_or_else(missing)?)
                    .protocol(ProtocolEnum::Tcp)
                    .port(CONTROLLER_GRPC_PORT)
                    .default_actions(
                        LbAction::builder()
                            .r#type(ActionTypeEnum::Forward)
                            .target_group_arn(tg_arn.ok_or_else(missing)?)
                            .build(),
                    )
                    .tags(tag(self.cfg.owner()))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("CreateListener", name, &e))?;
            }
            Change::CreateTargetGroup | Change::CreateLoadBalancer => {}
        }
        Ok(())
    }

    /// `down`'s balancer (its listeners go with it), then the target group
    /// (retried while the balancer's deletion still holds it); only ours.
    async fn destroy_lb(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let name = self.cfg.lb_name();
        let have = self.observe_balancer().await?;
        match &have.lb {
            Some((arn, _, true)) => {
                if !dry_run {
                    self.elb
                        .delete_load_balancer()
                        .load_balancer_arn(arn)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeleteLoadBalancer", &name, &e))?;
                }
                self.push(steps, LB, &name, Action::Delete, "with its listener");
            }
            Some(_) => self.push_kept(steps, LB, &name),
            None => self.push(steps, LB, &name, Action::Absent, ""),
        }
        match &have.tg {
            Some((arn, true)) => {
                if !dry_run {
                    self.delete_target_group(&name, arn).await?;
                }
                self.push(steps, TG, &name, Action::Delete, "");
            }
            Some(_) => self.push_kept(steps, TG, &name),
            None => self.push(steps, TG, &name, Action::Absent, ""),
        }
        Ok(())
    }

    async fn delete_target_group(&self, name: &str, arn: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + TG_DELETE_TIMEOUT;
        loop {
            match self
                .elb
                .delete_target_group()
                .target_group_arn(arn)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let err = DeployError::aws("DeleteTargetGroup", name, &e);
                    if err.aws_code() != Some("ResourceInUse")
                        || tokio::time::Instant::now() >= deadline
                    {
                        return Err(err);
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> ObservedBalancer {
        ObservedBalancer {
            lb: Some(("arn:lb".to_owned(), "x.elb".to_owned(), true)),
            lb_attribute_ok: true,
            tg: Some(("arn:tg".to_owned(), true)),
            tg_attribute_ok: true,
            listener: true,
        }
    }

    #[test]
    fn the_balancer_is_planned_from_what_exists() {
        assert_eq!(
            plan_balancer("n", &ObservedBalancer::default()).unwrap(),
            [
                Change::CreateTargetGroup,
                Change::SetTargetGroupAttribute,
                Change::CreateLoadBalancer,
                Change::SetLoadBalancerAttribute,
                Change::CreateListener,
            ]
        );
        assert!(plan_balancer("n", &ours()).unwrap().is_empty());
        let mut drift = ours();
        drift.tg_attribute_ok = false;
        drift.listener = false;
        assert_eq!(
            plan_balancer("n", &drift).unwrap(),
            [Change::SetTargetGroupAttribute, Change::CreateListener]
        );
        let mut foreign = ours();
        foreign.tg = Some(("arn:tg".to_owned(), false));
        assert!(
            plan_balancer("n", &foreign)
                .unwrap_err()
                .to_string()
                .contains("--controller-address")
        );
    }
}
