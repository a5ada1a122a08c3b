//! The ECS services: the controller (REPLICA, its rolling-update bounds,
//! spread on distinct instances, registered in the load balancer's target
//! group), the agent (DAEMON, with `--agent daemon`) and the demo's. The
//! [`Resource`] [`Services`]: wanted (`wanted_services`: each service from
//! the settings, the task definitions' ARNs and the target group), observe
//! (`service`), plan (`plan_service`, pure: task definition, desired
//! count, load balancer and deployment bounds compared), apply, destroy
//! (every role's, when ours). Also where the controller's running tasks
//! serve (`controller_endpoints`, for `status`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aws_sdk_ecs as ecs;

use crate::config::{AgentPlacement, DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::{CONTROLLER_GRPC_PORT, Deployer, ecs_tag, owned_ecs};
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// The services `up` manages, by role.
pub const CONTROLLER_SERVICE: &str = "ecsmesh-controller";
pub const AGENT_SERVICE: &str = "ecsmesh-agent";
pub const DEMO_SERVICES: [&str; 3] = ["hello", "world", "world-v2"];

/// The controller's container in its task definition.
const CONTROLLER_CONTAINER: &str = "controller";

/// What `up` wants of one service.
#[derive(Clone, Debug)]
pub(crate) struct WantedService {
    name: &'static str,
    /// `None`: a dry run before the revision exists.
    td_arn: Option<String>,
    /// `None`: a DAEMON service.
    desired: Option<i32>,
    load_balancers: Vec<ecs::types::LoadBalancer>,
    deployment: Option<ecs::types::DeploymentConfiguration>,
    /// Set when the service is created or updated; not compared (emulators
    /// do not report it back).
    placement: Option<Vec<ecs::types::PlacementConstraint>>,
}

/// What the driver gives [`Services`]: what the services name.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    /// Each role's task definition ARN (none in a dry run before it exists).
    pub(crate) td_arns: BTreeMap<&'static str, Option<String>>,
    /// Where the controller's tasks register (the balancer's, or the user's).
    pub(crate) target_group: Option<String>,
}

/// The services `up` manages, in order: the controller, the agent with
/// `--agent daemon`, the demo's with `--with-demo` (no I/O).
pub(crate) fn wanted_services(cfg: &DeployConfig, want: &Wanted) -> Vec<WantedService> {
    let mut services: Vec<(&'static str, &str, Option<i32>)> = vec![(
        CONTROLLER_SERVICE,
        "controller",
        Some(cfg.controller_replicas),
    )];
    if cfg.agent == AgentPlacement::Daemon {
        services.push((AGENT_SERVICE, "agent", None));
    }
    if cfg.with_demo {
        for s in DEMO_SERVICES {
            services.push((s, s, Some(1)));
        }
    }
    services
        .into_iter()
        .map(|(name, role, desired)| WantedService {
            name,
            td_arn: want.td_arns.get(role).cloned().flatten(),
            desired,
            load_balancers: service_load_balancers(name, want.target_group.as_deref()),
            deployment: service_deployment(cfg, name),
            placement: service_placement(cfg, name),
        })
        .collect()
}

/// The load balancer registration a service should have (the
/// controller's, when a target group is configured).
fn service_load_balancers(name: &str, target_group: Option<&str>) -> Vec<ecs::types::LoadBalancer> {
    match target_group {
        Some(tg) if name == CONTROLLER_SERVICE => vec![
            ecs::types::LoadBalancer::builder()
                .target_group_arn(tg)
                .container_name(CONTROLLER_CONTAINER)
                .container_port(CONTROLLER_GRPC_PORT)
                .build(),
        ],
        _ => Vec::new(),
    }
}

/// The controller's replicas each on its own instance (each holds the
/// host's port 4321, and one instance lost must not take two).
fn service_placement(
    cfg: &DeployConfig,
    name: &str,
) -> Option<Vec<ecs::types::PlacementConstraint>> {
    (name == CONTROLLER_SERVICE && cfg.controller_replicas > 1).then(|| {
        vec![
            ecs::types::PlacementConstraint::builder()
                .r#type(ecs::types::PlacementConstraintType::DistinctInstance)
                .build(),
        ]
    })
}

/// The rolling-update bounds of a service whose tasks hold a fixed host
/// port (the controller); `None` leaves ECS's defaults.
fn service_deployment(
    cfg: &DeployConfig,
    name: &str,
) -> Option<ecs::types::DeploymentConfiguration> {
    (name == CONTROLLER_SERVICE).then(|| {
        ecs::types::DeploymentConfiguration::builder()
            .minimum_healthy_percent(cfg.controller_minimum_healthy_percent())
            .maximum_percent(100)
            .build()
    })
}

/// The ECS services.
pub(crate) struct Services;

impl Resource for Services {
    const KIND: Kind = Kind::Services;
    type Wanted = Wanted;
    /// Each of [`wanted_services`], as it is (ACTIVE).
    type Observed = Vec<Option<ecs::types::Service>>;
    type Plan = Vec<ServicePlan>;
    type Output = ();

    async fn observe(d: &Deployer, want: &Wanted) -> Result<Self::Observed> {
        let mut out = Vec::new();
        for s in wanted_services(&d.cfg, want) {
            out.push(d.service(s.name).await?);
        }
        Ok(out)
    }

    fn plan(cfg: &DeployConfig, want: &Wanted, have: &Self::Observed) -> Result<Self::Plan> {
        Ok(wanted_services(cfg, want)
            .iter()
            .zip(have)
            .map(|(w, h)| plan_service(w, h.as_ref()))
            .collect())
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        want: Wanted,
        have: Self::Observed,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let services = wanted_services(&d.cfg, &want);
        for ((w, h), p) in services.into_iter().zip(have).zip(plan) {
            d.apply_service(dry_run, w, h.as_ref(), p, steps).await?;
        }
        Ok(())
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_services(dry_run, steps).await
    }
}

/// What `up` does to one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServicePlan {
    Create,
    Unchanged,
    Update {
        /// What differs, for the report.
        diffs: Vec<String>,
        /// Whether the registrations are sent (an empty list removes one).
        lb_changed: bool,
    },
}

/// A service's registrations, in an order-free form to compare.
fn lb_key(lbs: &[ecs::types::LoadBalancer]) -> Vec<(String, String, Option<i32>)> {
    let mut v: Vec<_> = lbs
        .iter()
        .map(|l| {
            (
                l.target_group_arn().unwrap_or_default().to_owned(),
                l.container_name().unwrap_or_default().to_owned(),
                l.container_port(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Compares the service with what `up` wants (no I/O). Placement is not
/// compared: emulators do not report it back.
pub(crate) fn plan_service(
    want: &WantedService,
    have: Option<&ecs::types::Service>,
) -> ServicePlan {
    let Some(svc) = have else {
        return ServicePlan::Create;
    };
    let mut diffs = Vec::new();
    if want.td_arn.is_none() || svc.task_definition() != want.td_arn.as_deref() {
        diffs.push(format!(
            "task definition {} -> new revision",
            svc.task_definition().unwrap_or("?")
        ));
    }
    if let Some(d) = want.desired
        && svc.desired_count() != d
    {
        diffs.push(format!("desired {} -> {d}", svc.desired_count()));
    }
    let lb_changed = lb_key(svc.load_balancers()) != lb_key(&want.load_balancers);
    if lb_changed {
        diffs.push("load balancer".to_owned());
    }
    // Compared only when ECS reports it (it always does; emulators may not).
    let deployment_changed = match (svc.deployment_configuration(), &want.deployment) {
        (Some(have), Some(want)) => {
            have.minimum_healthy_percent() != want.minimum_healthy_percent()
                || have.maximum_percent() != want.maximum_percent()
        }
        _ => false,
    };
    if deployment_changed {
        diffs.push("deployment bounds".to_owned());
    }
    if diffs.is_empty() {
        ServicePlan::Unchanged
    } else {
        ServicePlan::Update { diffs, lb_changed }
    }
}

impl Deployer {
    pub(crate) async fn service(&self, name: &str) -> Result<Option<ecs::types::Service>> {
        if self.cluster_active().await?.is_none() {
            return Ok(None);
        }
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cfg.cluster)
            .services(name)
            .include(ecs::types::ServiceField::Tags)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeServices", name, &e))?;
        Ok(out
            .services()
            .iter()
            .find(|s| s.status() == Some("ACTIVE"))
            .cloned())
    }

    /// Where the controller's running tasks serve gRPC, as
    /// `http(s)://<instance private IP>:<host port>`: what `status` asks for
    /// health and convergence when no address is given. Private addresses:
    /// reachable from inside the VPC (a bastion, a VPN, an instance).
    pub async fn controller_endpoints(&self) -> Result<Vec<String>> {
        if self.cluster_active().await?.is_none() {
            return Ok(Vec::new());
        }
        let cluster = &self.cfg.cluster;
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_tasks()
            .cluster(cluster)
            .service_name(CONTROLLER_SERVICE)
            .desired_status(ecs::types::DesiredStatus::Running)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| DeployError::aws("ListTasks", CONTROLLER_SERVICE, &e))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        // (container instance, host port) of each running task.
        let mut placed = Vec::new();
        for batch in arns.chunks(100) {
            let out = self
                .ecs
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| DeployError::aws("DescribeTasks", CONTROLLER_SERVICE, &e))?;
            for task in out.tasks() {
                if task.last_status() != Some("RUNNING") {
                    continue;
                }
                let Some(ci) = task.container_instance_arn() else {
                    continue;
                };
                // Host mode binds the container port itself; read it anyway.
                let port = task
                    .containers()
                    .iter()
                    .flat_map(ecs::types::Container::network_bindings)
                    .find(|b| b.container_port() == Some(CONTROLLER_GRPC_PORT))
                    .and_then(ecs::types::NetworkBinding::host_port)
                    .unwrap_or(CONTROLLER_GRPC_PORT);
                placed.push((ci.to_owned(), port));
            }
        }
        let instance_ids = self
            .ec2_instance_ids(placed.iter().map(|(ci, _)| ci.clone()).collect())
            .await?;
        let ips = self
            .private_ips(instance_ids.values().cloned().collect())
            .await?;
        let scheme = if self.cfg.tls() { "https" } else { "http" };
        let mut urls: Vec<String> = placed
            .iter()
            .filter_map(|(ci, port)| {
                let ip = ips.get(instance_ids.get(ci)?)?;
                Some(format!("{scheme}://{ip}:{port}"))
            })
            .collect();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }

    /// Carries out one service's plan.
    async fn apply_service(
        &self,
        dry_run: bool,
        want: WantedService,
        have: Option<&ecs::types::Service>,
        plan: ServicePlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let cluster = &self.cfg.cluster;
        let WantedService {
            name,
            td_arn,
            desired,
            load_balancers,
            deployment,
            placement,
        } = want;
        match plan {
            ServicePlan::Unchanged => {
                let td = have.and_then(ecs::types::Service::task_definition);
                let detail = td.unwrap_or_default();
                self.push(steps, "service", name, Action::Unchanged, detail);
            }
            ServicePlan::Update { diffs, lb_changed } => {
                if !dry_run {
                    let mut req = self
                        .ecs
                        .update_service()
                        .cluster(cluster)
                        .service(name)
                        .set_task_definition(td_arn)
                        .set_desired_count(desired)
                        .set_deployment_configuration(deployment)
                        .set_placement_constraints(placement);
                    // An empty list removes a registration that is no longer wanted.
                    if lb_changed {
                        req = req.set_load_balancers(Some(load_balancers));
                    }
                    req.send()
                        .await
                        .map_err(|e| DeployError::aws("UpdateService", name, &e))?;
                }
                self.push(steps, "service", name, Action::Update, diffs.join("; "));
            }
            ServicePlan::Create => {
                if !dry_run {
                    let td = td_arn.ok_or_else(|| {
                        DeployError::State(format!("service {name}: no task definition"))
                    })?;
                    let mut req = self
                        .ecs
                        .create_service()
                        .cluster(cluster)
                        .service_name(name)
                        .task_definition(td)
                        .launch_type(ecs::types::LaunchType::Ec2)
                        .set_deployment_configuration(deployment)
                        .set_placement_constraints(placement)
                        .tags(ecs_tag(OWNER_TAG, cluster));
                    if !load_balancers.is_empty() {
                        req = req.set_load_balancers(Some(load_balancers.clone()));
                    }
                    req = match desired {
                        Some(d) => req
                            .desired_count(d)
                            .scheduling_strategy(ecs::types::SchedulingStrategy::Replica),
                        None => req.scheduling_strategy(ecs::types::SchedulingStrategy::Daemon),
                    };
                    req.send()
                        .await
                        .map_err(|e| DeployError::aws("CreateService", name, &e))?;
                }
                let mut detail =
                    desired.map_or_else(|| "DAEMON".to_owned(), |d| format!("REPLICA desired {d}"));
                if let Some(tg) = load_balancers
                    .first()
                    .and_then(ecs::types::LoadBalancer::target_group_arn)
                {
                    let _ = write!(detail, "; registers in {tg}");
                }
                self.push(steps, "service", name, Action::Create, detail);
            }
        }
        Ok(())
    }

    /// `down`'s services (every role, whatever this run's flags), each only
    /// when tagged ours.
    async fn destroy_services(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let cfg = &self.cfg;
        let mut all: Vec<&str> = vec![CONTROLLER_SERVICE, AGENT_SERVICE];
        all.extend(DEMO_SERVICES);
        for name in all {
            match self.service(name).await? {
                Some(svc) if owned_ecs(svc.tags(), cfg) => {
                    if !dry_run {
                        self.ecs
                            .delete_service()
                            .cluster(&cfg.cluster)
                            .service(name)
                            .force(true)
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("DeleteService", name, &e))?;
                    }
                    self.push(steps, "service", name, Action::Delete, "");
                }
                Some(_) => self.push_kept(steps, "service", name),
                None => self.push(steps, "service", name, Action::Absent, ""),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "arn:aws:ecs:r:1:task-definition/ecsmesh-c-controller:3";

    fn want(td_arn: Option<&str>) -> WantedService {
        WantedService {
            name: CONTROLLER_SERVICE,
            td_arn: td_arn.map(str::to_owned),
            desired: Some(2),
            load_balancers: Vec::new(),
            deployment: None,
            placement: None,
        }
    }

    fn service(td: &str, desired: i32) -> ecs::types::Service {
        ecs::types::Service::builder()
            .task_definition(td)
            .desired_count(desired)
            .build()
    }

    #[test]
    fn plan_creates_an_absent_service() {
        assert_eq!(plan_service(&want(Some(TD)), None), ServicePlan::Create);
    }

    #[test]
    fn plan_leaves_a_service_that_matches() {
        let have = service(TD, 2);
        assert_eq!(
            plan_service(&want(Some(TD)), Some(&have)),
            ServicePlan::Unchanged
        );
    }

    #[test]
    fn plan_updates_a_drifted_service() {
        let have = service(TD, 1);
        let w = WantedService {
            load_balancers: service_load_balancers(CONTROLLER_SERVICE, Some("tg")),
            ..want(Some(TD))
        };
        assert_eq!(
            plan_service(&w, Some(&have)),
            ServicePlan::Update {
                diffs: vec!["desired 1 -> 2".to_owned(), "load balancer".to_owned()],
                lb_changed: true,
            }
        );
    }

    #[test]
    fn plan_updates_a_service_whose_revision_is_still_to_register() {
        // A dry run before the new revision exists: the service will move to it.
        let have = service(TD, 2);
        assert!(matches!(
            plan_service(&want(None), Some(&have)),
            ServicePlan::Update {
                lb_changed: false,
                ..
            }
        ));
    }

    #[test]
    fn the_wanted_services_follow_the_settings() {
        let mut cfg = DeployConfig::new("c", "r");
        let want = Wanted {
            td_arns: BTreeMap::from([("controller", Some(TD.to_owned())), ("agent", None)]),
            target_group: Some("tg".to_owned()),
        };
        let services = wanted_services(&cfg, &want);
        let [controller] = services.as_slice() else {
            panic!("{services:?}");
        };
        assert_eq!(controller.name, CONTROLLER_SERVICE);
        assert_eq!(controller.td_arn.as_deref(), Some(TD));
        assert_eq!(controller.desired, Some(cfg.controller_replicas));
        assert_eq!(controller.load_balancers[0].target_group_arn(), Some("tg"));
        // Two replicas (the default): on distinct instances.
        assert!(controller.placement.is_some());
        cfg.agent = AgentPlacement::Daemon;
        cfg.with_demo = true;
        let names: Vec<(&str, Option<i32>)> = wanted_services(&cfg, &want)
            .iter()
            .map(|s| (s.name, s.desired))
            .collect();
        assert_eq!(
            names,
            [
                (CONTROLLER_SERVICE, Some(2)),
                (AGENT_SERVICE, None),
                ("hello", Some(1)),
                ("world", Some(1)),
                ("world-v2", Some(1)),
            ]
        );
        // Only the controller registers in the balancer.
        assert!(
            wanted_services(&cfg, &want)[1..]
                .iter()
                .all(|s| s.load_balancers.is_empty() && s.deployment.is_none())
        );
    }
}
