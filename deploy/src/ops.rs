//! The AWS side: look up, compare, create/update/delete.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aws_config::SdkConfig;
use aws_sdk_autoscaling as asg;
use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;
use base64::Engine as _;
use ec2::types::{
    Filter, InstanceType, IpPermission, IpRange, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType,
    TagSpecification, UserIdGroupPair,
};

use crate::config::{
    ADMIN_TOKEN_DIR, ADMIN_TOKEN_PARAMETER, AGENT_TOKEN_DIR, AGENT_TOKEN_PARAMETER, AgentPlacement,
    DeployConfig, OWNER_TAG, TLS_ADMIN_IDENTITY, TLS_CONTROLLER_SERVER_NAME, TLS_DIR,
    TLS_PARAMETERS,
};
use crate::ecr::ImageRefs;
use crate::error::{DeployError, Result};
use crate::render;
use crate::taskdef::TaskDefSpec;
use crate::{Action, Report, Step};

/// Mesh ports opened between members of the security group.
pub const MESH_PORTS: [i32; 5] = [4140, 4141, 9990, 4321, 9991];
/// The controller's gRPC and admin (health check) ports.
pub const CONTROLLER_PORTS: [i32; 2] = [CONTROLLER_GRPC_PORT, 9991];
/// Where agents (and `ecsmeshctl`) reach the controller's gRPC API.
pub const CONTROLLER_GRPC_PORT: i32 = 4321;
/// The controller's container in its task definition.
const CONTROLLER_CONTAINER: &str = "controller";
/// The services `up` manages, by role.
pub const CONTROLLER_SERVICE: &str = "ecsmesh-controller";
pub const AGENT_SERVICE: &str = "ecsmesh-agent";
pub const DEMO_SERVICES: [&str; 3] = ["hello", "world", "world-v2"];

/// How long `down` waits for the auto scaling group's instances to end.
const ASG_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(15);
/// How long `down` retries a security group still held by instances' interfaces.
const SG_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(3);
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

type Progress = Box<dyn Fn(&Step) + Send + Sync>;

/// Runs `up`, `status` and `down` for one [`DeployConfig`].
pub struct Deployer {
    pub(crate) cfg: DeployConfig,
    ec2: ec2::Client,
    ecs: ecs::Client,
    asg: asg::Client,
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

/// The network `up` places instances in.
#[derive(Debug)]
struct Network {
    vpc_id: String,
    vpc_cidr: String,
    subnets: Vec<String>,
}

/// A rendered task definition and the family's latest revision, if any.
#[derive(Debug)]
struct TaskDefState {
    spec: TaskDefSpec,
    latest_arn: Option<String>,
    same: bool,
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
    #[allow(clippy::too_many_lines, clippy::single_match_else)]
    pub async fn up(&self, dry_run: bool) -> Result<Report> {
        let mut steps = Vec::new();
        let cfg = &self.cfg;
        let base = cfg.base_name();

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
        self.up_iam(dry_run, &mut steps).await?;

        // 2. Security group and ingress.
        let sg = self.find_security_group(&net.vpc_id).await?;
        let sg_id = match sg {
            Some(g) => {
                self.push(
                    &mut steps,
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
                    &mut steps,
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
        let missing = self.missing_ingress(sg_id.as_ref(), &net);
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
            self.push(&mut steps, "ingress-rule", desc, Action::Create, &base);
        }
        if missing.is_empty() {
            self.push(
                &mut steps,
                "ingress-rules",
                &base,
                Action::Unchanged,
                self.ingress_summary(),
            );
        }

        // 3. Cluster.
        let cluster_ok = self.cluster_active().await?.is_some();
        if cluster_ok {
            self.push(
                &mut steps,
                "cluster",
                &cfg.cluster,
                Action::Unchanged,
                "ACTIVE",
            );
        } else {
            if !dry_run {
                self.ecs
                    .create_cluster()
                    .cluster_name(&cfg.cluster)
                    .tags(ecs_tag(OWNER_TAG, &cfg.cluster))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("CreateCluster", &cfg.cluster, &e))?;
            }
            self.push(&mut steps, "cluster", &cfg.cluster, Action::Create, "");
        }

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
        };
        let target_group = reach
            .target_group
            .or_else(|| cfg.controller_target_group.clone());

        // 4. Task definitions.
        let mut td_arns = BTreeMap::new();
        for (role, template) in self.task_templates() {
            let state = self
                .task_def_state(role, template, events_queue_url.as_deref(), &render)
                .await?;
            let family = state.spec.family.clone();
            let arn = if state.same {
                let arn = state.latest_arn.clone().unwrap_or_default();
                self.push(
                    &mut steps,
                    "task-definition",
                    &family,
                    Action::Unchanged,
                    &arn,
                );
                Some(arn)
            } else {
                let action = if state.latest_arn.is_some() {
                    Action::Update
                } else {
                    Action::Create
                };
                let arn = if dry_run {
                    None
                } else {
                    Some(self.register(&state.spec).await?)
                };
                self.push(
                    &mut steps,
                    "task-definition",
                    &family,
                    action,
                    arn.clone().unwrap_or_default(),
                );
                arn
            };
            td_arns.insert(role, arn);
        }

        // 5. Launch template or configuration.
        let user_data = self.user_data_with(&render)?;
        let user_data_b64 = base64::engine::general_purpose::STANDARD.encode(&user_data);
        let launch = if cfg.launch_configuration {
            self.up_launch_configuration(
                dry_run,
                &ami,
                group_id.as_deref(),
                &user_data_b64,
                &mut steps,
            )
            .await?
        } else {
            self.up_launch_template(
                dry_run,
                &ami,
                group_id.as_deref(),
                &user_data_b64,
                &mut steps,
            )
            .await?
        };

        // 6. Auto scaling group.
        self.up_asg(dry_run, &net, &launch, &mut steps).await?;
        if cfg.launch_configuration && !dry_run {
            self.delete_old_launch_configurations(&launch, &mut steps)
                .await?;
        }

        // 7. Services.
        let mut services: Vec<(&str, &str, Option<i32>)> = vec![(
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
        for (name, role, desired) in services {
            let arn = td_arns.get(role).cloned().flatten();
            let tg = target_group.as_deref();
            self.up_service(dry_run, name, arn.as_deref(), desired, tg, &mut steps)
                .await?;
        }

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
    #[allow(clippy::too_many_lines)]
    pub async fn down(&self, dry_run: bool) -> Result<Report> {
        let mut steps = Vec::new();
        let cfg = &self.cfg;
        let base = cfg.base_name();

        // Services (all the roles, whatever this run's flags).
        let cluster_owned = match self.cluster_active().await? {
            Some(tags) => tags.get(OWNER_TAG).map(String::as_str) == Some(cfg.owner()),
            None => false,
        };
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
                    self.push(&mut steps, "service", name, Action::Delete, "");
                }
                Some(_) => self.push_kept(&mut steps, "service", name),
                None => self.push(&mut steps, "service", name, Action::Absent, ""),
            }
        }

        // The controller's load balancer: no service registers in it.
        self.down_lb(dry_run, &mut steps).await?;

        // Auto scaling group.
        match self.describe_asg().await? {
            Some(g)
                if g.tags()
                    .iter()
                    .any(|t| t.key() == Some(OWNER_TAG) && t.value() == Some(cfg.owner())) =>
            {
                if !dry_run {
                    self.asg
                        .delete_auto_scaling_group()
                        .auto_scaling_group_name(&base)
                        .force_delete(true)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeleteAutoScalingGroup", &base, &e))?;
                    // The instances still use the security group until they
                    // are terminated, which the group's deletion waits for.
                    self.progress_only(
                        "auto-scaling-group",
                        &base,
                        Action::Delete,
                        "waiting for its instances to terminate",
                    );
                    self.wait_asg_deleted().await?;
                }
                self.push(&mut steps, "auto-scaling-group", &base, Action::Delete, "");
            }
            Some(_) => self.push_kept(&mut steps, "auto-scaling-group", &base),
            None => self.push(&mut steps, "auto-scaling-group", &base, Action::Absent, ""),
        }

        // Launch template, launch configurations.
        match self.find_launch_template().await? {
            Some(lt)
                if lt
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(OWNER_TAG) && t.value() == Some(cfg.owner())) =>
            {
                if !dry_run {
                    self.ec2
                        .delete_launch_template()
                        .set_launch_template_id(lt.launch_template_id().map(str::to_owned))
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeleteLaunchTemplate", &base, &e))?;
                }
                self.push(&mut steps, "launch-template", &base, Action::Delete, "");
            }
            Some(_) => self.push_kept(&mut steps, "launch-template", &base),
            None => self.push(&mut steps, "launch-template", &base, Action::Absent, ""),
        }
        for name in self.launch_configurations().await? {
            if !dry_run {
                self.delete_launch_configuration(&name).await?;
            }
            self.push(&mut steps, "launch-configuration", name, Action::Delete, "");
        }

        // Task definitions: every ACTIVE revision of our families (the
        // family names do not depend on the images).
        let repo_images = Rendering::from_config(cfg);
        for (_, template) in Self::all_task_templates() {
            let family = TaskDefSpec::parse(&self.render_task(template, None, &repo_images)?)
                .map_err(|e| DeployError::Template {
                    template: "task definition",
                    reason: e.to_string(),
                })?
                .family;
            let arns = self.active_revisions(&family).await?;
            if arns.is_empty() {
                self.push(&mut steps, "task-definition", &family, Action::Absent, "");
            }
            for arn in arns {
                if !self.task_def_owned(&arn).await? {
                    self.push_kept(&mut steps, "task-definition", &arn);
                    continue;
                }
                if !dry_run {
                    self.ecs
                        .deregister_task_definition()
                        .task_definition(&arn)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeregisterTaskDefinition", &arn, &e))?;
                }
                self.push(&mut steps, "task-definition", arn, Action::Delete, "");
            }
        }

        // The images: no task definition names them any more.
        self.down_images(dry_run, &mut steps).await?;

        // The dtab store's table: no controller uses it any more.
        self.down_table(dry_run, &mut steps).await?;

        // ECS events: nothing sends to the queue or reads it any more.
        self.down_events(dry_run, &mut steps).await?;

        // Cluster: ECS refuses to delete one with registered instances, and
        // terminated instances leave theirs behind for a while.
        if cluster_owned {
            // Known ACTIVE (`cluster_owned`): no need to ask again.
            for (arn, iid) in self.registered_instances().await? {
                if !dry_run {
                    self.ecs
                        .deregister_container_instance()
                        .cluster(&cfg.cluster)
                        .container_instance(&arn)
                        .force(true)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeregisterContainerInstance", &arn, &e))?;
                }
                self.push(&mut steps, "container-instance", iid, Action::Delete, arn);
            }
            if !dry_run {
                self.ecs
                    .delete_cluster()
                    .cluster(&cfg.cluster)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("DeleteCluster", &cfg.cluster, &e))?;
            }
            self.push(&mut steps, "cluster", &cfg.cluster, Action::Delete, "");
        } else {
            let state = if self.cluster_active().await?.is_some() {
                NOT_OWNED_KEPT
            } else {
                ""
            };
            let action = if state.is_empty() {
                Action::Absent
            } else {
                Action::Unchanged
            };
            self.push(&mut steps, "cluster", &cfg.cluster, action, state);
        }

        // Security group(s) named ours and tagged ours, in any VPC.
        let groups = self
            .ec2
            .describe_security_groups()
            .filters(filter("group-name", &base))
            .filters(filter(&format!("tag:{OWNER_TAG}"), cfg.owner()))
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeSecurityGroups", &base, &e))?;
        if groups.security_groups().is_empty() {
            self.push(&mut steps, "security-group", &base, Action::Absent, "");
        }
        for g in groups.security_groups() {
            let id = g.group_id().unwrap_or_default();
            if !dry_run {
                self.delete_security_group(id).await?;
            }
            self.push(&mut steps, "security-group", &base, Action::Delete, id);
        }

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

    /// Waits until a deleted auto scaling group is gone (its instances
    /// terminated); AWS takes minutes, an emulator no time.
    async fn wait_asg_deleted(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ASG_DELETE_TIMEOUT;
        while let Some(g) = self.describe_asg().await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(DeployError::State(format!(
                    "auto scaling group {} still deleting after {} s ({} instances left): \
                     run down again later",
                    self.cfg.base_name(),
                    ASG_DELETE_TIMEOUT.as_secs(),
                    g.instances().len()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(())
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

    // ---- network, AMI ---------------------------------------------------

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

    // ---- security group -------------------------------------------------

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

    // ---- cluster, task definitions, services -----------------------------

    /// The cluster's tags when it is ACTIVE.
    async fn cluster_active(&self) -> Result<Option<BTreeMap<String, String>>> {
        let out = self
            .ecs
            .describe_clusters()
            .clusters(&self.cfg.cluster)
            .include(ecs::types::ClusterField::Tags)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeClusters", &self.cfg.cluster, &e))?;
        Ok(out
            .clusters()
            .iter()
            .find(|c| c.status() == Some("ACTIVE"))
            .map(|c| {
                c.tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                    .collect()
            }))
    }

    fn task_templates(&self) -> Vec<(&'static str, &'static str)> {
        let mut v = vec![("controller", render::CONTROLLER), ("agent", render::AGENT)];
        if self.cfg.with_demo {
            v.extend([
                ("hello", render::HELLO),
                ("world", render::WORLD),
                ("world-v2", render::WORLD_V2),
            ]);
        }
        v
    }

    fn all_task_templates() -> Vec<(&'static str, &'static str)> {
        vec![
            ("controller", render::CONTROLLER),
            ("agent", render::AGENT),
            ("hello", render::HELLO),
            ("world", render::WORLD),
            ("world-v2", render::WORLD_V2),
        ]
    }

    fn vars(&self, render: &Rendering) -> BTreeMap<&'static str, String> {
        let images = &render.images;
        let cfg = &self.cfg;
        let tls = |on: String| if cfg.tls() { on } else { String::new() };
        let tokens = |on: String| {
            if cfg.managed_tokens() {
                on
            } else {
                String::new()
            }
        };
        // Neither TLS (admin identities, agent certificates) nor tokens:
        // the controller listens on 0.0.0.0 for other instances' agents
        // with nothing authenticating writes or the mesh stream, and
        // refuses to start unless told explicitly (`--insecure` only).
        let open = if cfg.tls() || cfg.managed_tokens() {
            ""
        } else {
            "true"
        };
        BTreeMap::from([
            ("CLUSTER", cfg.cluster.clone()),
            ("REGION", cfg.region.clone()),
            ("IMAGE_REPO", cfg.image_repo.clone()),
            ("IMAGE_TAG", cfg.image_tag.clone()),
            ("CONTROLLER_ADDRESS", render.controller_address.clone()),
            ("CONTROLLER_STORE", cfg.store.as_str().to_owned()),
            (
                "DYNAMODB_TABLE",
                if cfg.dynamodb_store() {
                    cfg.dynamodb_table()
                } else {
                    String::new()
                },
            ),
            (
                "CONSUL_ADDRESS",
                cfg.consul_address.clone().unwrap_or_default(),
            ),
            ("AGENT_IMAGE", images.get("agent")),
            ("CONTROLLER_IMAGE", images.get("controller")),
            ("HELLO_IMAGE", images.get("helloworld")),
            (
                "START_AGENT",
                (cfg.agent == AgentPlacement::UserData).to_string(),
            ),
            // TLS: values when on; empty (entries and volume dropped) when off.
            ("TLS_DIR", tls(TLS_DIR.to_owned())),
            ("TLS_CA", tls(format!("{TLS_DIR}/ca.pem"))),
            ("TLS_AGENT_CERT", tls(format!("{TLS_DIR}/agent.pem"))),
            ("TLS_AGENT_KEY", tls(format!("{TLS_DIR}/agent-key.pem"))),
            (
                "TLS_CONTROLLER_CERT",
                tls(format!("{TLS_DIR}/controller.pem")),
            ),
            (
                "TLS_CONTROLLER_KEY",
                tls(format!("{TLS_DIR}/controller-key.pem")),
            ),
            (
                "TLS_CONTROLLER_SERVER_NAME",
                tls(TLS_CONTROLLER_SERVER_NAME.to_owned()),
            ),
            ("TLS_ADMIN_IDENTITIES", tls(TLS_ADMIN_IDENTITY.to_owned())),
            // Tokens: likewise, values only when managed.
            ("ADMIN_TOKEN_DIR", tokens(ADMIN_TOKEN_DIR.to_owned())),
            ("AGENT_TOKEN_DIR", tokens(AGENT_TOKEN_DIR.to_owned())),
            (
                "ADMIN_TOKEN_FILE",
                tokens(format!("{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_PARAMETER}")),
            ),
            (
                "AGENT_TOKEN_FILE",
                tokens(format!("{AGENT_TOKEN_DIR}/{AGENT_TOKEN_PARAMETER}")),
            ),
            ("ALLOW_UNAUTHENTICATED_WRITES", open.to_owned()),
            ("ALLOW_UNAUTHENTICATED_AGENTS", open.to_owned()),
        ])
    }

    /// A task definition; `events_queue_url`: the controller's events
    /// queue (none: the controller polls ECS only, the entry is dropped).
    fn render_task(
        &self,
        template: &'static str,
        events_queue_url: Option<&str>,
        render: &Rendering,
    ) -> Result<String> {
        let mut vars = self.vars(render);
        vars.insert(
            "ECS_EVENTS_QUEUE_URL",
            events_queue_url.unwrap_or_default().to_owned(),
        );
        render::render("task definition", template, &vars)
    }

    /// The instance user data, rendered (not yet base64-encoded), for the
    /// `--image-repo` agent image.
    pub fn user_data(&self) -> Result<String> {
        self.user_data_with(&Rendering::from_config(&self.cfg))
    }

    /// The user data for the agent image and controller address in `render`.
    fn user_data_with(&self, render: &Rendering) -> Result<String> {
        let cfg = &self.cfg;
        let mut vars = self.vars(render);
        // Values validated (SSM names, fixed paths): safe in single quotes.
        let (mut dirs, mut calls) = (Vec::new(), Vec::new());
        if let Some(prefix) = cfg.tls_prefix() {
            dirs.push(TLS_DIR);
            for name in TLS_PARAMETERS {
                // Keys for their owner only; the rest group-readable.
                let mode = if name.ends_with("-key.pem") {
                    "0600"
                } else {
                    "0640"
                };
                calls.push(format!("fetch '{prefix}/{name}' '{TLS_DIR}/{name}' {mode}"));
            }
        }
        if cfg.managed_tokens() {
            let prefix = cfg.managed_prefix();
            for (dir, name) in [
                (AGENT_TOKEN_DIR, AGENT_TOKEN_PARAMETER),
                (ADMIN_TOKEN_DIR, ADMIN_TOKEN_PARAMETER),
            ] {
                dirs.push(dir);
                calls.push(format!("fetch '{prefix}/{name}' '{dir}/{name}' 0600"));
            }
        }
        let (mut fetch, mut agent_args) = (String::new(), String::new());
        if !calls.is_empty() {
            let mut mkdirs: Vec<String> = dirs
                .iter()
                .map(|d| format!("install -d -m 0750 -o 65532 -g 65532 '{d}'"))
                .collect();
            // The token directories' parent, root's own.
            if cfg.managed_tokens() {
                mkdirs.insert(0, "install -d -m 0755 /etc/ecsmesh/tokens".to_owned());
            }
            vars.insert("SECRETS_DIRS", mkdirs.join("\n"));
            vars.insert("SECRETS_FETCH_CALLS", calls.join("\n"));
            fetch = render::render("user-data-secrets.sh", render::USER_DATA_SECRETS, &vars)?;
        }
        // Each a continued line of the agent's `docker run`.
        if cfg.tls() {
            agent_args = format!("    -v {TLS_DIR}:{TLS_DIR}:ro \\\n");
            for (env, var) in [
                ("ECSMESH_TLS_CA", "TLS_CA"),
                ("ECSMESH_TLS_CERT", "TLS_AGENT_CERT"),
                ("ECSMESH_TLS_KEY", "TLS_AGENT_KEY"),
                (
                    "ECSMESH_CONTROLLER_SERVER_NAME",
                    "TLS_CONTROLLER_SERVER_NAME",
                ),
            ] {
                let value = vars.get(var).map_or("", String::as_str);
                let _ = writeln!(agent_args, "    -e {env}='{value}' \\");
            }
        }
        if cfg.managed_tokens() {
            // The agent token only: the admin token stays off the agent.
            let _ = writeln!(
                agent_args,
                "    -v {AGENT_TOKEN_DIR}:{AGENT_TOKEN_DIR}:ro \\"
            );
            let file = vars.get("AGENT_TOKEN_FILE").map_or("", String::as_str);
            let _ = writeln!(
                agent_args,
                "    -e ECSMESH_CONTROLLER_TOKEN_FILE='{file}' \\"
            );
        }
        vars.insert("SECRETS_FETCH", fetch);
        vars.insert("AGENT_SECRET_ARGS", agent_args);
        render::render("user-data.sh", render::USER_DATA, &vars)
    }

    async fn task_def_state(
        &self,
        role: &'static str,
        template: &'static str,
        events_queue_url: Option<&str>,
        render: &Rendering,
    ) -> Result<TaskDefState> {
        let spec = TaskDefSpec::parse(&self.render_task(template, events_queue_url, render)?)
            .map_err(|e| DeployError::Template {
                template: role,
                reason: e.to_string(),
            })?;
        if self.active_revisions(&spec.family).await?.is_empty() {
            return Ok(TaskDefState {
                spec,
                latest_arn: None,
                same: false,
            });
        }
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(&spec.family)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeTaskDefinition", &spec.family, &e))?;
        let Some(td) = out.task_definition() else {
            return Ok(TaskDefState {
                spec,
                latest_arn: None,
                same: false,
            });
        };
        let same = TaskDefSpec::from_sdk(td) == spec;
        Ok(TaskDefState {
            latest_arn: td.task_definition_arn().map(str::to_owned),
            spec,
            same,
        })
    }

    /// ACTIVE revisions of exactly this family.
    async fn active_revisions(&self, family: &str) -> Result<Vec<String>> {
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_task_definitions()
            .family_prefix(family)
            .status(ecs::types::TaskDefinitionStatus::Active)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| DeployError::aws("ListTaskDefinitions", family, &e))?;
            arns.extend(
                page.task_definition_arns()
                    .iter()
                    .filter(|a| {
                        a.rsplit_once(':').is_some_and(|(head, _)| {
                            head.ends_with(&format!("task-definition/{family}"))
                        })
                    })
                    .cloned(),
            );
        }
        Ok(arns)
    }

    async fn task_def_owned(&self, arn: &str) -> Result<bool> {
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .include(ecs::types::TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeTaskDefinition", arn, &e))?;
        Ok(owned_ecs(out.tags(), &self.cfg))
    }

    async fn register(&self, spec: &TaskDefSpec) -> Result<String> {
        let out = self
            .ecs
            .register_task_definition()
            .family(&spec.family)
            .set_network_mode(spec.network_mode_sdk())
            .set_requires_compatibilities(Some(spec.compatibilities_sdk()))
            .set_container_definitions(Some(spec.containers_sdk()))
            .set_volumes(Some(spec.volumes_sdk()))
            .tags(ecs_tag(OWNER_TAG, &self.cfg.cluster))
            .send()
            .await
            .map_err(|e| DeployError::aws("RegisterTaskDefinition", &spec.family, &e))?;
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| {
                DeployError::State(format!(
                    "RegisterTaskDefinition {}: no ARN in the answer",
                    spec.family
                ))
            })
    }

    async fn service(&self, name: &str) -> Result<Option<ecs::types::Service>> {
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

    /// The EC2 instances registered in the cluster (ACTIVE or DRAINING), by
    /// container instance ARN; none when the cluster is not active.
    pub async fn cluster_instances(&self) -> Result<BTreeMap<String, String>> {
        if self.cluster_active().await?.is_none() {
            return Ok(BTreeMap::new());
        }
        self.registered_instances().await
    }

    /// [`Self::cluster_instances`] of a cluster known to be active.
    async fn registered_instances(&self) -> Result<BTreeMap<String, String>> {
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_container_instances()
            .cluster(&self.cfg.cluster)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| DeployError::aws("ListContainerInstances", &self.cfg.cluster, &e))?;
            arns.extend(page.container_instance_arns().iter().cloned());
        }
        self.ec2_instance_ids(arns).await
    }

    /// Container instance ARN -> EC2 instance id.
    async fn ec2_instance_ids(
        &self,
        mut container_instances: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        container_instances.sort();
        container_instances.dedup();
        let mut ids = BTreeMap::new();
        for batch in container_instances.chunks(100) {
            let out = self
                .ecs
                .describe_container_instances()
                .cluster(&self.cfg.cluster)
                .set_container_instances(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    DeployError::aws("DescribeContainerInstances", &self.cfg.cluster, &e)
                })?;
            for ci in out.container_instances() {
                if let (Some(arn), Some(iid)) = (ci.container_instance_arn(), ci.ec2_instance_id())
                {
                    ids.insert(arn.to_owned(), iid.to_owned());
                }
            }
        }
        Ok(ids)
    }

    /// EC2 instance id -> private IP.
    async fn private_ips(&self, mut instance_ids: Vec<String>) -> Result<BTreeMap<String, String>> {
        instance_ids.sort();
        instance_ids.dedup();
        let mut ips = BTreeMap::new();
        if instance_ids.is_empty() {
            return Ok(ips);
        }
        let resource = instance_ids.join(",");
        let mut pages = self
            .ec2
            .describe_instances()
            .set_instance_ids(Some(instance_ids))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| DeployError::aws("DescribeInstances", &resource, &e))?;
            for i in page
                .reservations()
                .iter()
                .flat_map(ec2::types::Reservation::instances)
            {
                if let (Some(id), Some(ip)) = (i.instance_id(), i.private_ip_address()) {
                    ips.insert(id.to_owned(), ip.to_owned());
                }
            }
        }
        Ok(ips)
    }

    /// The load balancer registration a service should have (the
    /// controller's, when a target group is configured).
    fn service_load_balancers(
        name: &str,
        target_group: Option<&str>,
    ) -> Vec<ecs::types::LoadBalancer> {
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
    /// host's port 4321, and one instance lost must not take two). Set when
    /// the service is created or updated; not compared (emulators do not
    /// report it back).
    fn service_placement(&self, name: &str) -> Option<Vec<ecs::types::PlacementConstraint>> {
        (name == CONTROLLER_SERVICE && self.cfg.controller_replicas > 1).then(|| {
            vec![
                ecs::types::PlacementConstraint::builder()
                    .r#type(ecs::types::PlacementConstraintType::DistinctInstance)
                    .build(),
            ]
        })
    }

    /// The rolling-update bounds of a service whose tasks hold a fixed host
    /// port (the controller); `None` leaves ECS's defaults.
    fn service_deployment(&self, name: &str) -> Option<ecs::types::DeploymentConfiguration> {
        (name == CONTROLLER_SERVICE).then(|| {
            ecs::types::DeploymentConfiguration::builder()
                .minimum_healthy_percent(self.cfg.controller_minimum_healthy_percent())
                .maximum_percent(100)
                .build()
        })
    }

    #[allow(clippy::single_match_else, clippy::too_many_lines)]
    async fn up_service(
        &self,
        dry_run: bool,
        name: &str,
        td_arn: Option<&str>,
        desired: Option<i32>,
        target_group: Option<&str>,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let cluster = &self.cfg.cluster;
        let load_balancers = Self::service_load_balancers(name, target_group);
        let placement = self.service_placement(name);
        let deployment = self.service_deployment(name);
        match self.service(name).await? {
            Some(svc) => {
                let mut diffs = Vec::new();
                if td_arn.is_none() || svc.task_definition() != td_arn {
                    diffs.push(format!(
                        "task definition {} -> new revision",
                        svc.task_definition().unwrap_or("?")
                    ));
                }
                if let Some(d) = desired
                    && svc.desired_count() != d
                {
                    diffs.push(format!("desired {} -> {d}", svc.desired_count()));
                }
                let lb_key = |lbs: &[ecs::types::LoadBalancer]| {
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
                };
                let lb_changed = lb_key(svc.load_balancers()) != lb_key(&load_balancers);
                if lb_changed {
                    diffs.push("load balancer".to_owned());
                }
                // Compared only when ECS reports it (it always does; emulators may not).
                let deployment_changed = match (svc.deployment_configuration(), &deployment) {
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
                    self.push(
                        steps,
                        "service",
                        name,
                        Action::Unchanged,
                        svc.task_definition().unwrap_or_default(),
                    );
                    return Ok(());
                }
                if !dry_run {
                    let mut req = self
                        .ecs
                        .update_service()
                        .cluster(cluster)
                        .service(name)
                        .set_task_definition(td_arn.map(str::to_owned))
                        .set_desired_count(desired)
                        .set_deployment_configuration(deployment.clone())
                        .set_placement_constraints(placement.clone());
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
            None => {
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
                        .set_placement_constraints(placement.clone())
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

    // ---- launch template / configuration, ASG -----------------------------

    async fn find_launch_template(&self) -> Result<Option<ec2::types::LaunchTemplate>> {
        let base = self.cfg.base_name();
        match self
            .ec2
            .describe_launch_templates()
            .launch_template_names(&base)
            .send()
            .await
        {
            Ok(out) => Ok(out.launch_templates().first().cloned()),
            Err(e) => {
                let err = DeployError::aws("DescribeLaunchTemplates", &base, &e);
                if err.aws_code().is_some_and(|c| c.contains("NotFound")) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    fn launch_template_data(
        &self,
        ami: &str,
        sg: Option<&str>,
        user_data_b64: &str,
    ) -> RequestLaunchTemplateData {
        let cfg = &self.cfg;
        let profile = cfg.effective_instance_profile().map(|p| {
            let b = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
            if p.starts_with("arn:") {
                b.arn(p)
            } else {
                b.name(p)
            }
            .build()
        });
        RequestLaunchTemplateData::builder()
            .image_id(ami)
            .instance_type(InstanceType::from(cfg.instance_type.as_str()))
            .user_data(user_data_b64)
            .set_key_name(cfg.key_pair.clone())
            .set_security_group_ids(sg.map(|s| vec![s.to_owned()]))
            .set_iam_instance_profile(profile)
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(2)
                    .build(),
            )
            .tag_specifications(
                LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(ec2_tag(OWNER_TAG, &cfg.cluster))
                    .tags(ec2_tag("Name", &cfg.base_name()))
                    .build(),
            )
            .build()
    }

    /// What differs between the latest version and the wanted data.
    fn launch_template_diffs(
        &self,
        have: &ec2::types::ResponseLaunchTemplateData,
        ami: &str,
        sg: Option<&str>,
        user_data_b64: &str,
    ) -> Vec<&'static str> {
        let cfg = &self.cfg;
        let mut d = Vec::new();
        if have.image_id() != Some(ami) {
            d.push("image");
        }
        if have.instance_type().map(InstanceType::as_str) != Some(cfg.instance_type.as_str()) {
            d.push("instance type");
        }
        if have.user_data() != Some(user_data_b64) {
            d.push("user data");
        }
        if have.key_name() != cfg.key_pair.as_deref() {
            d.push("key pair");
        }
        if have.security_group_ids().first().map(String::as_str) != sg {
            d.push("security group");
        }
        let profile = have
            .iam_instance_profile()
            .and_then(|p| p.name().or(p.arn()));
        if profile != cfg.effective_instance_profile().as_deref() {
            d.push("instance profile");
        }
        let md = have.metadata_options();
        if md.and_then(|m| m.http_tokens())
            != Some(&ec2::types::LaunchTemplateHttpTokensState::Required)
            || md.and_then(
                ec2::types::LaunchTemplateInstanceMetadataOptions::http_put_response_hop_limit,
            ) != Some(2)
        {
            d.push("metadata options");
        }
        d
    }

    async fn up_launch_template(
        &self,
        dry_run: bool,
        ami: &str,
        sg: Option<&str>,
        user_data_b64: &str,
        steps: &mut Vec<Step>,
    ) -> Result<Launch> {
        let base = self.cfg.base_name();
        let data = self.launch_template_data(ami, sg, user_data_b64);
        match self.find_launch_template().await? {
            None => {
                if !dry_run {
                    self.ec2
                        .create_launch_template()
                        .launch_template_name(&base)
                        .launch_template_data(data)
                        .tag_specifications(ec2_tags(
                            ResourceType::LaunchTemplate,
                            &self.cfg,
                            &base,
                        ))
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("CreateLaunchTemplate", &base, &e))?;
                }
                self.push(
                    steps,
                    "launch-template",
                    &base,
                    Action::Create,
                    "IMDSv2 required, hop limit 2",
                );
            }
            Some(lt) => {
                let id = lt.launch_template_id().unwrap_or_default().to_owned();
                let latest = lt.latest_version_number().unwrap_or(1);
                let versions = self
                    .ec2
                    .describe_launch_template_versions()
                    .launch_template_id(&id)
                    .versions(latest.to_string())
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("DescribeLaunchTemplateVersions", &base, &e))?;
                let diffs = versions
                    .launch_template_versions()
                    .first()
                    .and_then(|v| v.launch_template_data())
                    .map_or_else(
                        || vec!["no data"],
                        |have| self.launch_template_diffs(have, ami, sg, user_data_b64),
                    );
                if diffs.is_empty() {
                    self.push(
                        steps,
                        "launch-template",
                        &base,
                        Action::Unchanged,
                        format!("{id} version {latest}"),
                    );
                } else {
                    if !dry_run {
                        // A complete new version (no SourceVersion merging), made the default.
                        let out = self
                            .ec2
                            .create_launch_template_version()
                            .launch_template_id(&id)
                            .launch_template_data(data)
                            .send()
                            .await
                            .map_err(|e| {
                                DeployError::aws("CreateLaunchTemplateVersion", &base, &e)
                            })?;
                        if let Some(v) = out
                            .launch_template_version()
                            .and_then(ec2::types::LaunchTemplateVersion::version_number)
                        {
                            self.ec2
                                .modify_launch_template()
                                .launch_template_id(&id)
                                .default_version(v.to_string())
                                .send()
                                .await
                                .map_err(|e| DeployError::aws("ModifyLaunchTemplate", &base, &e))?;
                        }
                    }
                    self.push(
                        steps,
                        "launch-template",
                        &base,
                        Action::Update,
                        format!("new version: {}", diffs.join(", ")),
                    );
                }
            }
        }
        Ok(Launch::Template(base))
    }

    fn launch_configuration_name(
        &self,
        ami: &str,
        sg: Option<&str>,
        user_data_b64: &str,
    ) -> String {
        let cfg = &self.cfg;
        let key = format!(
            "{ami}|{}|{user_data_b64}|{:?}|{:?}|{:?}",
            cfg.instance_type,
            cfg.key_pair,
            sg,
            cfg.effective_instance_profile()
        );
        // FNV-1a: launch configurations are immutable, so the name carries the content.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{}-{:016x}", cfg.base_name(), h)
    }

    async fn launch_configurations(&self) -> Result<Vec<String>> {
        let prefix = format!("{}-", self.cfg.base_name());
        let mut names = Vec::new();
        let mut pages = self
            .asg
            .describe_launch_configurations()
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| DeployError::aws("DescribeLaunchConfigurations", &prefix, &e))?;
            for lc in page.launch_configurations() {
                // Ours: the prefix plus exactly the 16-hex content hash.
                if let Some(name) = lc.launch_configuration_name()
                    && let Some(hash) = name.strip_prefix(&prefix)
                    && hash.len() == 16
                    && hash.chars().all(|c| c.is_ascii_hexdigit())
                {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    async fn delete_launch_configuration(&self, name: &str) -> Result<()> {
        self.asg
            .delete_launch_configuration()
            .launch_configuration_name(name)
            .send()
            .await
            .map_err(|e| DeployError::aws("DeleteLaunchConfiguration", name, &e))?;
        Ok(())
    }

    async fn up_launch_configuration(
        &self,
        dry_run: bool,
        ami: &str,
        sg: Option<&str>,
        user_data_b64: &str,
        steps: &mut Vec<Step>,
    ) -> Result<Launch> {
        let cfg = &self.cfg;
        let name = self.launch_configuration_name(ami, sg, user_data_b64);
        if self.launch_configurations().await?.contains(&name) {
            self.push(steps, "launch-configuration", &name, Action::Unchanged, "");
        } else {
            if !dry_run {
                self.asg
                    .create_launch_configuration()
                    .launch_configuration_name(&name)
                    .image_id(ami)
                    .instance_type(&cfg.instance_type)
                    .user_data(user_data_b64)
                    .set_key_name(cfg.key_pair.clone())
                    .set_security_groups(sg.map(|s| vec![s.to_owned()]))
                    .set_iam_instance_profile(cfg.effective_instance_profile())
                    .metadata_options(
                        asg::types::InstanceMetadataOptions::builder()
                            .http_endpoint(asg::types::InstanceMetadataEndpointState::Enabled)
                            .http_tokens(asg::types::InstanceMetadataHttpTokensState::Required)
                            .http_put_response_hop_limit(2)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("CreateLaunchConfiguration", &name, &e))?;
            }
            self.push(
                steps,
                "launch-configuration",
                &name,
                Action::Create,
                "legacy; IMDSv2 required, hop limit 2",
            );
        }
        Ok(Launch::Configuration(name))
    }

    async fn delete_old_launch_configurations(
        &self,
        current: &Launch,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let Launch::Configuration(keep) = current else {
            return Ok(());
        };
        for name in self.launch_configurations().await? {
            if &name != keep {
                self.delete_launch_configuration(&name).await?;
                self.push(
                    steps,
                    "launch-configuration",
                    name,
                    Action::Delete,
                    "replaced",
                );
            }
        }
        Ok(())
    }

    async fn describe_asg(&self) -> Result<Option<asg::types::AutoScalingGroup>> {
        let base = self.cfg.base_name();
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&base)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeAutoScalingGroups", &base, &e))?;
        Ok(out.auto_scaling_groups().first().cloned())
    }

    #[allow(clippy::too_many_lines)]
    async fn up_asg(
        &self,
        dry_run: bool,
        net: &Network,
        launch: &Launch,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let base = cfg.base_name();
        let zones = net.subnets.join(",");
        let lt_spec = |name: &str| {
            asg::types::LaunchTemplateSpecification::builder()
                .launch_template_name(name)
                .version("$Latest")
                .build()
        };
        match self.describe_asg().await? {
            None => {
                if !dry_run {
                    let mut req = self
                        .asg
                        .create_auto_scaling_group()
                        .auto_scaling_group_name(&base)
                        .min_size(cfg.min_size)
                        .max_size(cfg.max_size)
                        .desired_capacity(cfg.desired_capacity)
                        .vpc_zone_identifier(&zones)
                        .tags(asg_tag(&base, OWNER_TAG, &cfg.cluster))
                        .tags(asg_tag(&base, "Name", &base));
                    req = match launch {
                        Launch::Template(n) => req.launch_template(lt_spec(n)),
                        Launch::Configuration(n) => req.launch_configuration_name(n),
                    };
                    req.send()
                        .await
                        .map_err(|e| DeployError::aws("CreateAutoScalingGroup", &base, &e))?;
                }
                self.push(
                    steps,
                    "auto-scaling-group",
                    &base,
                    Action::Create,
                    format!(
                        "min {} desired {} max {}",
                        cfg.min_size, cfg.desired_capacity, cfg.max_size
                    ),
                );
            }
            Some(g) => {
                let mut diffs = Vec::new();
                if (g.min_size(), g.max_size(), g.desired_capacity())
                    != (
                        Some(cfg.min_size),
                        Some(cfg.max_size),
                        Some(cfg.desired_capacity),
                    )
                {
                    diffs.push(format!(
                        "size {:?}/{:?}/{:?} -> {}/{}/{}",
                        g.min_size(),
                        g.desired_capacity(),
                        g.max_size(),
                        cfg.min_size,
                        cfg.desired_capacity,
                        cfg.max_size
                    ));
                }
                let mut have_zones: Vec<&str> = g
                    .vpc_zone_identifier()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                have_zones.sort_unstable();
                if have_zones.join(",") != zones {
                    diffs.push("subnets".to_owned());
                }
                let launch_same = match launch {
                    Launch::Template(n) => {
                        g.launch_template().and_then(|t| t.launch_template_name())
                            == Some(n.as_str())
                    }
                    Launch::Configuration(n) => g.launch_configuration_name() == Some(n.as_str()),
                };
                if !launch_same {
                    diffs.push("launch template/configuration".to_owned());
                }
                if diffs.is_empty() {
                    self.push(
                        steps,
                        "auto-scaling-group",
                        &base,
                        Action::Unchanged,
                        format!("{} instances", g.instances().len()),
                    );
                    return Ok(());
                }
                if !dry_run {
                    let mut req = self
                        .asg
                        .update_auto_scaling_group()
                        .auto_scaling_group_name(&base)
                        .min_size(cfg.min_size)
                        .max_size(cfg.max_size)
                        .desired_capacity(cfg.desired_capacity)
                        .vpc_zone_identifier(&zones);
                    // Only a changed launch source is sent (a template at
                    // `$Latest` already follows new versions).
                    if !launch_same {
                        req = match launch {
                            Launch::Template(n) => req.launch_template(lt_spec(n)),
                            Launch::Configuration(n) => req.launch_configuration_name(n),
                        };
                    }
                    req.send()
                        .await
                        .map_err(|e| DeployError::aws("UpdateAutoScalingGroup", &base, &e))?;
                }
                self.push(
                    steps,
                    "auto-scaling-group",
                    &base,
                    Action::Update,
                    diffs.join("; "),
                );
            }
        }
        Ok(())
    }
}

/// What the user data and task definitions are rendered with, beyond the
/// settings: what `up` made or found on the way.
#[derive(Debug)]
pub(crate) struct Rendering {
    images: ImageRefs,
    /// What agents dial (the load balancer's name when `up` made it).
    controller_address: String,
}

impl Rendering {
    /// From the settings alone (`--image-repo`, `--controller-address`).
    fn from_config(cfg: &DeployConfig) -> Self {
        Self {
            images: ImageRefs::from_repo(cfg),
            controller_address: cfg.agent_controller_address(),
        }
    }
}

/// The detail of a step for a resource `down` leaves because it is not ours.
const NOT_OWNED_KEPT: &str = "not owned by ecsmesh: kept";

/// How the group launches instances.
#[derive(Debug)]
enum Launch {
    Template(String),
    Configuration(String),
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn ec2_tag(key: &str, value: &str) -> ec2::types::Tag {
    ec2::types::Tag::builder().key(key).value(value).build()
}

fn ec2_tags(kind: ResourceType, cfg: &DeployConfig, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(ec2_tag(OWNER_TAG, &cfg.cluster))
        .tags(ec2_tag("Name", name))
        .build()
}

fn ecs_tag(key: &str, value: &str) -> ecs::types::Tag {
    ecs::types::Tag::builder().key(key).value(value).build()
}

fn asg_tag(group: &str, key: &str, value: &str) -> asg::types::Tag {
    asg::types::Tag::builder()
        .resource_id(group)
        .resource_type("auto-scaling-group")
        .key(key)
        .value(value)
        .propagate_at_launch(true)
        .build()
}

fn owned_ecs(tags: &[ecs::types::Tag], cfg: &DeployConfig) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(OWNER_TAG) && t.value() == Some(cfg.owner()))
}
