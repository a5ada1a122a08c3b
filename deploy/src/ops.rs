//! The driver: one [`Deployer`] holds the settings and the AWS clients;
//! `up` (and `status`, a dry `up`) takes every resource module through its
//! [`Resource`] interface in [`ORDER`] (`reconcile`: observe, plan, apply),
//! building each one's wanted input from the outputs of those before it;
//! `down` calls each one's destroy in [`ORDER`] backwards. The modules:
//! `network` (VPC and AMI, security group), `secrets` (SSM parameters),
//! `iam` (roles, instance profile), `cluster`, `events` (queues, rule),
//! `table` (DynamoDB), `ecr` (repositories, image pushes), `lb` (the
//! controller's load balancer), `operator` (the operator's directory,
//! ecsmeshctl's settings file), `taskdefs` (task definitions; the user data
//! is rendered here too), `instances` (launch template, auto scaling group),
//! `services`.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_autoscaling as asg;
use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;
use ec2::types::{Filter, ResourceType, TagSpecification};

use crate::config::{AgentPlacement, DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::resource::{Kind, ORDER, Resource, down_order};
use crate::services::{AGENT_SERVICE, CONTROLLER_SERVICE, DEMO_SERVICES};
use crate::taskdefs::Rendering;
use crate::{
    Action, Report, Step, cluster, ecr, events, iam, instances, lb, network, operator, secrets,
    services, table, taskdefs,
};

/// Where agents (and `ecsmeshctl`) reach the controller's gRPC API.
pub const CONTROLLER_GRPC_PORT: i32 = 4321;

/// How often `down` looks again at what AWS deletes slowly.
pub(crate) const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

type Progress = Box<dyn Fn(&Step) + Send + Sync>;

/// Runs `up`, `status` and `down` for one [`DeployConfig`].
pub struct Deployer {
    pub(crate) cfg: DeployConfig,
    pub(crate) ec2: ec2::Client,
    pub(crate) ecs: ecs::Client,
    pub(crate) asg: asg::Client,
    pub(crate) ssm: aws_sdk_ssm::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) events: aws_sdk_eventbridge::Client,
    pub(crate) ecr: aws_sdk_ecr::Client,
    pub(crate) ddb: aws_sdk_dynamodb::Client,
    pub(crate) iam: aws_sdk_iam::Client,
    pub(crate) elb: aws_sdk_elasticloadbalancingv2::Client,
    progress: Option<Progress>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Deployer {
    /// Validates the settings and builds the clients from one SDK config.
    pub fn new(sdk: &SdkConfig, cfg: DeployConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            ec2: ec2::Client::new(sdk),
            ecs: ecs::Client::new(sdk),
            asg: asg::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
            ecr: aws_sdk_ecr::Client::new(sdk),
            ddb: aws_sdk_dynamodb::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            progress: None,
        })
    }

    /// Calls `f` with each step as soon as it is decided (or done).
    #[must_use]
    pub fn with_progress(mut self, f: impl Fn(&Step) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    pub fn config(&self) -> &DeployConfig {
        &self.cfg
    }

    /// A progress line for a long step that is not itself a report line.
    pub(crate) fn progress_only(
        &self,
        kind: &'static str,
        name: &str,
        action: Action,
        detail: &str,
    ) {
        if let Some(p) = &self.progress {
            p(&Step {
                kind,
                name: name.to_owned(),
                action,
                detail: detail.to_owned(),
            });
        }
    }

    pub(crate) fn push(
        &self,
        steps: &mut Vec<Step>,
        kind: &'static str,
        name: impl Into<String>,
        action: Action,
        detail: impl Into<String>,
    ) {
        let step = Step {
            kind,
            name: name.into(),
            action,
            detail: detail.into(),
        };
        if let Some(p) = &self.progress {
            p(&step);
        }
        steps.push(step);
    }

    /// A resource that exists but lacks our owner tag: `down` leaves it.
    pub(crate) fn push_kept(
        &self,
        steps: &mut Vec<Step>,
        kind: &'static str,
        name: impl Into<String>,
    ) {
        self.push(steps, kind, name, Action::Unchanged, NOT_OWNED_KEPT);
    }

    /// The plan: what `up` would do, calling only read APIs.
    pub async fn plan(&self) -> Result<Report> {
        self.up(true).await
    }

    /// Creates or updates everything, each resource in `resource::ORDER`; with
    /// `dry_run`, only reports. What each needs from the ones before it
    /// is built here, from their outputs: this is the one place the data
    /// flows between resources.
    pub async fn up(&self, dry_run: bool) -> Result<Report> {
        let cfg = &self.cfg;
        let mut run = Walk::new(dry_run);
        let found = self.reconcile::<network::Vpc>(&mut run, ()).await?;
        // Before anything that boots and reads them.
        let written = self.reconcile::<secrets::Secrets>(&mut run, ()).await?;
        // Before the launch template that names the profile.
        let controller_role = self.reconcile::<iam::Roles>(&mut run, ()).await?;
        let group_id = self
            .reconcile::<network::SecurityGroup>(&mut run, found.net.clone())
            .await?;
        self.reconcile::<cluster::Cluster>(&mut run, ()).await?;
        let events_queue_url = self.reconcile::<events::EcsEvents>(&mut run, ()).await?;
        self.reconcile::<table::DtabTable>(&mut run, ()).await?;
        let images = self.reconcile::<ecr::Images>(&mut run, ()).await?;
        let lb_want = lb::Wanted {
            vpc_id: found.net.vpc_id.clone(),
            subnets: found.net.subnets.clone(),
        };
        let reach = self
            .reconcile::<lb::LoadBalancer>(&mut run, lb_want)
            .await?;
        // Where agents and ecsmeshctl reach the controller: the balancer
        // `up` made (unknown in a dry run before it exists), or the
        // configured address.
        let controller_address = match reach.address {
            Some(a) => Some(a),
            None if cfg.managed_load_balancer() => None,
            None => Some(cfg.agent_controller_address()),
        };
        let render = Rendering {
            images,
            controller_address: controller_address
                .clone()
                .unwrap_or_else(|| "(the new load balancer)".to_owned()),
            controller_task_role: controller_role.or_else(|| {
                // A dry run before the role exists: the plan says so.
                cfg.managed_instance_profile()
                    .then(|| "(the new controller role)".to_owned())
            }),
        };
        let operator = operator::Wanted {
            written,
            controller: render.controller_address.clone(),
        };
        self.reconcile::<operator::Operator>(&mut run, operator)
            .await?;
        let specs = self.task_specs(events_queue_url.as_deref(), &render)?;
        let td_arns = self
            .reconcile::<taskdefs::TaskDefinitions>(&mut run, specs)
            .await?;
        let instances = instances::Wanted {
            ami: found.ami,
            group_id,
            net: found.net,
            user_data: self.user_data_with(&render)?,
        };
        self.reconcile::<instances::Instances>(&mut run, instances)
            .await?;
        let services = services::Wanted {
            td_arns,
            target_group: reach
                .target_group
                .or_else(|| cfg.controller_target_group.clone()),
        };
        self.reconcile::<services::Services>(&mut run, services)
            .await?;
        run.finish()?;
        Ok(Report {
            operation: "up",
            cluster: cfg.cluster.clone(),
            dry_run,
            controller_address,
            steps: run.steps,
        })
    }

    /// One resource, the same way for every kind: observe, plan (pure),
    /// apply (or, dry, report the plan).
    async fn reconcile<R: Resource>(&self, run: &mut Walk, want: R::Wanted) -> Result<R::Output> {
        run.enter(R::KIND)?;
        // Boxed: some modules' futures are large (the SDK's), and `up`
        // holds one at a time.
        let have = Box::pin(R::observe(self, &want)).await?;
        let plan = R::plan(&self.cfg, &want, &have)?;
        Box::pin(R::apply(
            self,
            run.dry_run,
            want,
            have,
            plan,
            &mut run.steps,
        ))
        .await
    }

    /// Whether each resource exists and matches, and the services' tasks.
    pub async fn status(&self) -> Result<Report> {
        Ok(self.status_with_instances().await?.0)
    }

    /// [`Deployer::status`], and the cluster's registered instances it read
    /// (container instance ARN -> EC2 instance id), for callers that need
    /// them too (`deploy status` compares them with the agents).
    pub async fn status_with_instances(&self) -> Result<(Report, BTreeMap<String, String>)> {
        let mut report = self.up(true).await?;
        report.operation = "status";
        report.dry_run = false;
        for s in &mut report.steps {
            if s.action == Action::Create {
                s.action = Action::Absent;
            }
        }
        let mut names = vec![CONTROLLER_SERVICE.to_owned()];
        if self.cfg.agent == AgentPlacement::Daemon {
            names.push(AGENT_SERVICE.to_owned());
        }
        if self.cfg.with_demo {
            names.extend(DEMO_SERVICES.iter().map(|s| (*s).to_owned()));
        }
        let instances = self.cluster_instances().await?;
        let ids: Vec<&str> = instances.values().map(String::as_str).collect();
        let (action, detail) = if ids.is_empty() {
            (Action::Absent, "none registered".to_owned())
        } else {
            (
                Action::Unchanged,
                format!("{} registered: {}", ids.len(), ids.join(",")),
            )
        };
        self.push(
            &mut report.steps,
            "container-instances",
            &self.cfg.cluster,
            action,
            detail,
        );
        for name in names {
            if let Some(svc) = self.service(&name).await? {
                let detail = format!(
                    "running {}/{} pending {}",
                    svc.running_count(),
                    svc.desired_count(),
                    svc.pending_count()
                );
                let action = Action::Unchanged;
                self.push(&mut report.steps, "service-tasks", name, action, detail);
            }
        }
        Ok((report, instances))
    }

    /// Removes every resource tagged `ecsmesh:owner=<cluster>`, in
    /// `resource::ORDER` backwards: what uses a resource goes before it.
    pub async fn down(&self, dry_run: bool) -> Result<Report> {
        let mut steps = Vec::new();
        for kind in down_order() {
            self.destroy(kind, dry_run, &mut steps).await?;
        }
        Ok(Report {
            operation: "down",
            cluster: self.cfg.cluster.clone(),
            dry_run,
            controller_address: None,
            steps,
        })
    }

    /// One kind's [`Resource::destroy`].
    async fn destroy(&self, kind: Kind, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        match kind {
            Kind::Network => network::Vpc::destroy(self, dry_run, steps).await,
            Kind::Secrets => secrets::Secrets::destroy(self, dry_run, steps).await,
            Kind::Iam => iam::Roles::destroy(self, dry_run, steps).await,
            Kind::SecurityGroup => network::SecurityGroup::destroy(self, dry_run, steps).await,
            Kind::Cluster => cluster::Cluster::destroy(self, dry_run, steps).await,
            Kind::Events => events::EcsEvents::destroy(self, dry_run, steps).await,
            Kind::Table => table::DtabTable::destroy(self, dry_run, steps).await,
            Kind::Images => ecr::Images::destroy(self, dry_run, steps).await,
            Kind::LoadBalancer => lb::LoadBalancer::destroy(self, dry_run, steps).await,
            Kind::Operator => operator::Operator::destroy(self, dry_run, steps).await,
            Kind::TaskDefinitions => taskdefs::TaskDefinitions::destroy(self, dry_run, steps).await,
            Kind::Instances => instances::Instances::destroy(self, dry_run, steps).await,
            Kind::Services => services::Services::destroy(self, dry_run, steps).await,
        }
    }
}

/// One walk of `up` (or `status`) through [`ORDER`]: the report so far,
/// and where it is.
#[derive(Debug)]
struct Walk {
    dry_run: bool,
    steps: Vec<Step>,
    /// The index in [`ORDER`] of the next resource.
    next: usize,
}

impl Walk {
    fn new(dry_run: bool) -> Self {
        Self {
            dry_run,
            steps: Vec::new(),
            next: 0,
        }
    }

    /// `up` reaches `kind`: it must be the next of [`ORDER`] (the list
    /// `down` walks backwards), so the two cannot drift apart.
    fn enter(&mut self, kind: Kind) -> Result<()> {
        let expected = ORDER.get(self.next).copied();
        if expected != Some(kind) {
            return Err(DeployError::State(format!(
                "internal: up reached {} where the order has {}",
                kind.name(),
                expected.map_or("the end", Kind::name)
            )));
        }
        self.next += 1;
        Ok(())
    }

    /// Every resource of [`ORDER`] was reached.
    fn finish(&self) -> Result<()> {
        match ORDER.get(self.next) {
            None => Ok(()),
            Some(kind) => Err(DeployError::State(format!(
                "internal: up ended before {}",
                kind.name()
            ))),
        }
    }
}

/// The detail of a step for a resource `down` leaves because it is not ours.
pub(crate) const NOT_OWNED_KEPT: &str = "not owned by ecsmesh: kept";

pub(crate) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub(crate) fn ec2_tag(key: &str, value: &str) -> ec2::types::Tag {
    ec2::types::Tag::builder().key(key).value(value).build()
}

pub(crate) fn ec2_tags(kind: ResourceType, cfg: &DeployConfig, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(ec2_tag(OWNER_TAG, &cfg.cluster))
        .tags(ec2_tag("Name", name))
        .build()
}

pub(crate) fn ecs_tag(key: &str, value: &str) -> ecs::types::Tag {
    ecs::types::Tag::builder().key(key).value(value).build()
}

pub(crate) fn asg_tag(group: &str, key: &str, value: &str) -> asg::types::Tag {
    asg::types::Tag::builder()
        .resource_id(group)
        .resource_type("auto-scaling-group")
        .key(key)
        .value(value)
        .propagate_at_launch(true)
        .build()
}

pub(crate) fn owned_ecs(tags: &[ecs::types::Tag], cfg: &DeployConfig) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(OWNER_TAG) && t.value() == Some(cfg.owner()))
}
