//! The driver: one [`Deployer`] holds the settings and the AWS clients, and
//! `up`, `status` and `down` call each resource kind's module in dependency
//! order (`down` in reverse). Each module keeps one kind in one place and
//! has the same small shape (see the crate's doc): observe what exists,
//! `plan_*` (compare it with what is wanted, without I/O), `up_*` (apply:
//! create or put right; with `dry_run` only report the plan, from the same
//! code), `down_*` (destroy only what carries the owner tag). The modules: `network` (VPC, AMI, security group), `iam`
//! (instance role and profile), `secrets` (SSM parameters), `cluster`,
//! `events` (queue, rule), `table` (DynamoDB), `ecr` (repositories, image
//! pushes), `lb` (the controller's load balancer), `taskdefs` (task
//! definitions, user data), `instances` (launch template, auto scaling
//! group), `services`.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_autoscaling as asg;
use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;
use ec2::types::{Filter, ResourceType, TagSpecification};

use crate::config::{AgentPlacement, DeployConfig, OWNER_TAG};
use crate::error::Result;
use crate::services::{AGENT_SERVICE, CONTROLLER_SERVICE, DEMO_SERVICES};
use crate::taskdefs::Rendering;
use crate::{Action, Report, Step};

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

    /// Creates or updates everything; with `dry_run`, only reports.
    pub async fn up(&self, dry_run: bool) -> Result<Report> {
        let mut steps = Vec::new();
        let cfg = &self.cfg;

        // 1. Network (read only).
        let net = self.network().await?;
        self.push(
            &mut steps,
            "network",
            &net.vpc_id,
            Action::Unchanged,
            format!("{} subnets {}", net.vpc_cidr, net.subnets.join(",")),
        );
        let ami = self.ami().await?;

        // 1b. The mesh's secrets, before anything that boots and reads them.
        self.up_secrets(dry_run, &mut steps).await?;

        // 1c. The instances' role and profile (unless the user names one),
        // before the launch template that names it.
        let controller_task_role = self.up_iam(dry_run, &mut steps).await?;

        // 2. Security group and ingress.
        let group_id = self.up_security_group(dry_run, &net, &mut steps).await?;

        // 3. Cluster.
        self.up_cluster(dry_run, &mut steps).await?;

        // 3b. ECS events (queue, rule), before the controller's task
        // definition, which carries the queue's URL.
        let events_queue_url = self.up_events(dry_run, &mut steps).await?;

        // 3c. The dtab store's table, before the controller that uses it.
        self.up_table(dry_run, &mut steps).await?;

        // 3d. The images (ECR repositories, pushes), before everything that
        // names them.
        let images = self.up_images(dry_run, &mut steps).await?;

        // 3e. The controller's load balancer (when `up` makes it), before
        // the user data and task definitions that carry its address.
        let reach = self
            .up_lb(dry_run, &net.vpc_id, &net.subnets, &mut steps)
            .await?;
        let render = Rendering {
            images,
            controller_address: match reach.address {
                Some(a) => a,
                // A dry run before the balancer exists: the plan says so.
                None if cfg.managed_load_balancer() => "(the new load balancer)".to_owned(),
                None => cfg.agent_controller_address(),
            },
            controller_task_role: controller_task_role.or_else(|| {
                // A dry run before the role exists: the plan says so.
                cfg.managed_instance_profile()
                    .then(|| "(the new controller role)".to_owned())
            }),
        };
        let target_group = reach
            .target_group
            .or_else(|| cfg.controller_target_group.clone());

        // 4. Task definitions.
        let td_arns = self
            .up_task_definitions(dry_run, events_queue_url.as_deref(), &render, &mut steps)
            .await?;

        // 5. Launch template or configuration, 6. auto scaling group.
        self.up_instances(
            dry_run,
            &ami,
            group_id.as_deref(),
            &net,
            &render,
            &mut steps,
        )
        .await?;

        // 7. Services.
        self.up_services(dry_run, &td_arns, target_group.as_deref(), &mut steps)
            .await?;

        Ok(Report {
            operation: "up",
            cluster: cfg.cluster.clone(),
            dry_run,
            steps,
        })
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

    /// Removes every resource tagged `ecsmesh:owner=<cluster>`, in reverse order.
    pub async fn down(&self, dry_run: bool) -> Result<Report> {
        let mut steps = Vec::new();
        let cfg = &self.cfg;
        // Whether the cluster is ours, read before its services go.
        let cluster_owned = match self.cluster_active().await? {
            Some(tags) => tags.get(OWNER_TAG).map(String::as_str) == Some(cfg.owner()),
            None => false,
        };

        // Services (all the roles, whatever this run's flags).
        self.down_services(dry_run, &mut steps).await?;

        // The controller's load balancer: no service registers in it.
        self.down_lb(dry_run, &mut steps).await?;

        // Auto scaling group, launch template, launch configurations.
        self.down_instances(dry_run, &mut steps).await?;

        // Task definitions.
        self.down_task_definitions(dry_run, &mut steps).await?;

        // The images: no task definition names them any more.
        self.down_images(dry_run, &mut steps).await?;

        // The dtab store's table: no controller uses it any more.
        self.down_table(dry_run, &mut steps).await?;

        // ECS events: nothing sends to the queue or reads it any more.
        self.down_events(dry_run, &mut steps).await?;

        // Cluster.
        self.down_cluster(dry_run, cluster_owned, &mut steps)
            .await?;

        // Security group(s).
        self.down_security_group(dry_run, &mut steps).await?;

        // The instances' role: no instance uses it any more.
        self.down_iam(dry_run, &mut steps).await?;

        // The secrets last: nothing that reads them is left.
        self.down_secrets(dry_run, &mut steps).await?;

        Ok(Report {
            operation: "down",
            cluster: cfg.cluster.clone(),
            dry_run,
            steps,
        })
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
