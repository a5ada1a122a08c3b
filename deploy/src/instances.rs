//! The instances: a launch template (IMDSv2 required, hop limit 2, the
//! rendered user data; a new default version when anything differs) or a
//! legacy launch configuration (immutable: named by a hash of its content,
//! replaced ones deleted), and the auto scaling group `ecsmesh-<cluster>`.
//! The [`Resource`] [`Instances`]: wanted (the AMI, the security group, the
//! subnets and the rendered user data, from earlier modules), observe
//! (`observe_launch_template` or `launch_configurations`, `describe_asg`),
//! plan (`plan_instances`, pure: `plan_launch_template`, the launch
//! configuration's content name, `plan_asg`: the group's size, subnets and
//! launch source compared), apply, destroy (which waits for the group's
//! instances to end).

use aws_sdk_autoscaling as asg;
use aws_sdk_ec2 as ec2;
use base64::Engine as _;
use ec2::types::{
    InstanceType, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType,
};

use crate::config::{DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::network::Network;
use crate::ops::{Deployer, POLL_INTERVAL, asg_tag, ec2_tag, ec2_tags};
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// How long `down` waits for the auto scaling group's instances to end.
const ASG_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(15);

/// How the group launches instances.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Launch {
    Template(String),
    Configuration(String),
}

/// What `up` does to the auto scaling group.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AsgPlan {
    Create,
    Unchanged,
    Update {
        /// What differs, for the report.
        diffs: Vec<String>,
        /// Whether the launch source is sent too (a template at `$Latest`
        /// already follows new versions, so only a changed one is).
        launch_changed: bool,
    },
}

/// Compares the group with what `up` wants (no I/O): its size, subnets and
/// launch source.
fn plan_asg(
    cfg: &DeployConfig,
    net: &Network,
    launch: &Launch,
    have: Option<&asg::types::AutoScalingGroup>,
) -> AsgPlan {
    let Some(g) = have else {
        return AsgPlan::Create;
    };
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
    if have_zones.join(",") != net.subnets.join(",") {
        diffs.push("subnets".to_owned());
    }
    let launch_same = match launch {
        Launch::Template(n) => {
            g.launch_template().and_then(|t| t.launch_template_name()) == Some(n.as_str())
        }
        Launch::Configuration(n) => g.launch_configuration_name() == Some(n.as_str()),
    };
    if !launch_same {
        diffs.push("launch template/configuration".to_owned());
    }
    if diffs.is_empty() {
        AsgPlan::Unchanged
    } else {
        AsgPlan::Update {
            diffs,
            launch_changed: !launch_same,
        }
    }
}

/// The launch template as observed: its id, latest version and that
/// version's data (`None`: AWS gave none).
#[derive(Debug)]
struct ObservedTemplate {
    id: String,
    latest: i64,
    data: Option<ec2::types::ResponseLaunchTemplateData>,
}

/// What `up` does to the launch template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LaunchTemplatePlan {
    Create,
    Unchanged,
    /// A complete new default version, for what differs.
    NewVersion(Vec<&'static str>),
}

/// Compares the template's latest version with what `up` wants (no I/O).
fn plan_launch_template(
    cfg: &DeployConfig,
    ami: &str,
    sg: Option<&str>,
    user_data_b64: &str,
    have: Option<&ObservedTemplate>,
) -> LaunchTemplatePlan {
    let Some(t) = have else {
        return LaunchTemplatePlan::Create;
    };
    let diffs = t.data.as_ref().map_or_else(
        || vec!["no data"],
        |d| launch_template_diffs(cfg, d, ami, sg, user_data_b64),
    );
    if diffs.is_empty() {
        LaunchTemplatePlan::Unchanged
    } else {
        LaunchTemplatePlan::NewVersion(diffs)
    }
}

fn launch_template_diffs(
    cfg: &DeployConfig,
    have: &ec2::types::ResponseLaunchTemplateData,
    ami: &str,
    sg: Option<&str>,
    user_data_b64: &str,
) -> Vec<&'static str> {
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

/// What the driver gives [`Instances`].
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub(crate) ami: String,
    /// The security group's id (none in a dry run before it exists).
    pub(crate) group_id: Option<String>,
    pub(crate) net: Network,
    /// The instance user data, rendered (not yet base64-encoded).
    pub(crate) user_data: String,
}

impl Wanted {
    fn user_data_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.user_data)
    }
}

/// The launch source as observed.
#[derive(Debug)]
enum ObservedLaunch {
    /// Boxed: its data (the user data) is large to move around.
    Template(Option<Box<ObservedTemplate>>),
    /// Our launch configurations' names (legacy).
    Configurations(Vec<String>),
}

/// The instances' launch source and group as they are.
#[derive(Debug)]
pub(crate) struct ObservedInstances {
    launch: ObservedLaunch,
    asg: Option<asg::types::AutoScalingGroup>,
}

/// What `up` does to the launch source.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LaunchPlan {
    Template(LaunchTemplatePlan),
    /// The configuration named for its content; created unless it exists.
    Configuration {
        name: String,
        create: bool,
    },
}

/// What `up` does to the instances: the launch source, the group, and the
/// launch configurations the new one replaces (deleted after the group
/// moved to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InstancesPlan {
    launch: LaunchPlan,
    asg: AsgPlan,
    replaced: Vec<String>,
}

/// The launch source `up` wants: the template `ecsmesh-<cluster>`, or the
/// configuration named for its content.
fn wanted_launch(cfg: &DeployConfig, want: &Wanted) -> Launch {
    if cfg.launch_configuration {
        let name = launch_configuration_name(
            cfg,
            &want.ami,
            want.group_id.as_deref(),
            &want.user_data_b64(),
        );
        Launch::Configuration(name)
    } else {
        Launch::Template(cfg.base_name())
    }
}

/// Compares the launch source and the group with what `up` wants (no I/O).
fn plan_instances(cfg: &DeployConfig, want: &Wanted, have: &ObservedInstances) -> InstancesPlan {
    let launch = wanted_launch(cfg, want);
    let (launch_plan, replaced) = match (&launch, &have.launch) {
        (Launch::Configuration(name), ObservedLaunch::Configurations(names)) => (
            LaunchPlan::Configuration {
                name: name.clone(),
                create: !names.contains(name),
            },
            names.iter().filter(|n| *n != name).cloned().collect(),
        ),
        (Launch::Configuration(name), ObservedLaunch::Template(_)) => (
            LaunchPlan::Configuration {
                name: name.clone(),
                create: true,
            },
            Vec::new(),
        ),
        (Launch::Template(_), observed) => {
            let template = match observed {
                ObservedLaunch::Template(t) => t.as_deref(),
                ObservedLaunch::Configurations(_) => None,
            };
            let plan = plan_launch_template(
                cfg,
                &want.ami,
                want.group_id.as_deref(),
                &want.user_data_b64(),
                template,
            );
            (LaunchPlan::Template(plan), Vec::new())
        }
    };
    InstancesPlan {
        launch: launch_plan,
        asg: plan_asg(cfg, &want.net, &launch, have.asg.as_ref()),
        replaced,
    }
}

/// A legacy launch configuration's name: launch configurations are
/// immutable, so the name carries a hash of the content.
fn launch_configuration_name(
    cfg: &DeployConfig,
    ami: &str,
    sg: Option<&str>,
    user_data_b64: &str,
) -> String {
    let key = format!(
        "{ami}|{}|{user_data_b64}|{:?}|{:?}|{:?}",
        cfg.instance_type,
        cfg.key_pair,
        sg,
        cfg.effective_instance_profile()
    );
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{:016x}", cfg.base_name(), h)
}

/// The launch template (or configuration) and the auto scaling group.
pub(crate) struct Instances;

impl Resource for Instances {
    const KIND: Kind = Kind::Instances;
    type Wanted = Wanted;
    type Observed = ObservedInstances;
    type Plan = InstancesPlan;
    type Output = ();

    async fn observe(d: &Deployer, _: &Wanted) -> Result<ObservedInstances> {
        let launch = if d.cfg.launch_configuration {
            ObservedLaunch::Configurations(d.launch_configurations().await?)
        } else {
            ObservedLaunch::Template(d.observe_launch_template().await?.map(Box::new))
        };
        Ok(ObservedInstances {
            launch,
            asg: d.describe_asg().await?,
        })
    }

    fn plan(cfg: &DeployConfig, want: &Wanted, have: &ObservedInstances) -> Result<InstancesPlan> {
        Ok(plan_instances(cfg, want, have))
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        want: Wanted,
        have: ObservedInstances,
        plan: InstancesPlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let launch = match plan.launch {
            LaunchPlan::Template(p) => {
                let template = match have.launch {
                    ObservedLaunch::Template(t) => t.map(|t| (t.id, t.latest)),
                    ObservedLaunch::Configurations(_) => None,
                };
                d.apply_launch_template(dry_run, &want, template, p, steps)
                    .await?
            }
            LaunchPlan::Configuration { name, create } => {
                d.apply_launch_configuration(dry_run, &want, name, create, steps)
                    .await?
            }
        };
        d.apply_asg(dry_run, &want.net, &launch, have.asg, plan.asg, steps)
            .await?;
        // After the group moved to the new configuration.
        for name in plan.replaced {
            if !dry_run {
                d.delete_launch_configuration(&name).await?;
            }
            let action = Action::Delete;
            d.push(steps, "launch-configuration", name, action, "replaced");
        }
        Ok(())
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_instances(dry_run, steps).await
    }
}

impl Deployer {
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
    /// Observe: the template, its latest version's data.
    async fn observe_launch_template(&self) -> Result<Option<ObservedTemplate>> {
        let Some(lt) = self.find_launch_template().await? else {
            return Ok(None);
        };
        let base = self.cfg.base_name();
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
        let data = versions
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
            .cloned();
        Ok(Some(ObservedTemplate { id, latest, data }))
    }

    /// Carries out the launch template's plan; `have`: its id and latest
    /// version, when it exists.
    async fn apply_launch_template(
        &self,
        dry_run: bool,
        want: &Wanted,
        have: Option<(String, i64)>,
        plan: LaunchTemplatePlan,
        steps: &mut Vec<Step>,
    ) -> Result<Launch> {
        let base = self.cfg.base_name();
        let user_data_b64 = want.user_data_b64();
        let data = self.launch_template_data(&want.ami, want.group_id.as_deref(), &user_data_b64);
        match (plan, have) {
            // (A plan for no template is always Create.)
            (LaunchTemplatePlan::Create, _) | (_, None) => {
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
            (LaunchTemplatePlan::Unchanged, Some((id, latest))) => {
                let detail = format!("{id} version {latest}");
                self.push(steps, "launch-template", &base, Action::Unchanged, detail);
            }
            (LaunchTemplatePlan::NewVersion(diffs), Some((id, _))) => {
                if !dry_run {
                    // A complete new version (no SourceVersion merging), made the default.
                    let out = self
                        .ec2
                        .create_launch_template_version()
                        .launch_template_id(&id)
                        .launch_template_data(data)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("CreateLaunchTemplateVersion", &base, &e))?;
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
        Ok(Launch::Template(base))
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

    /// Creates the launch configuration `name` unless it exists.
    async fn apply_launch_configuration(
        &self,
        dry_run: bool,
        want: &Wanted,
        name: String,
        create: bool,
        steps: &mut Vec<Step>,
    ) -> Result<Launch> {
        let cfg = &self.cfg;
        let (ami, sg) = (want.ami.as_str(), want.group_id.as_deref());
        let user_data_b64 = want.user_data_b64();
        if create {
            if !dry_run {
                self.asg
                    .create_launch_configuration()
                    .launch_configuration_name(&name)
                    .image_id(ami)
                    .instance_type(&cfg.instance_type)
                    .user_data(&user_data_b64)
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
        } else {
            self.push(steps, "launch-configuration", &name, Action::Unchanged, "");
        }
        Ok(Launch::Configuration(name))
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

    /// Carries out the group's plan.
    #[allow(clippy::too_many_lines)]
    async fn apply_asg(
        &self,
        dry_run: bool,
        net: &Network,
        launch: &Launch,
        have: Option<asg::types::AutoScalingGroup>,
        plan: AsgPlan,
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
        let (diffs, launch_same) = match plan {
            AsgPlan::Create => {
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
                return Ok(());
            }
            AsgPlan::Unchanged => {
                let n = have.map_or(0, |g| g.instances().len());
                let detail = format!("{n} instances");
                self.push(
                    steps,
                    "auto-scaling-group",
                    &base,
                    Action::Unchanged,
                    detail,
                );
                return Ok(());
            }
            AsgPlan::Update {
                diffs,
                launch_changed,
            } => (diffs, !launch_changed),
        };
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
        Ok(())
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

    /// `down`'s auto scaling group (waiting for its instances to end), the
    /// launch template and every launch configuration of ours.
    async fn destroy_instances(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let cfg = &self.cfg;
        let base = cfg.base_name();
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
                self.push(steps, "auto-scaling-group", &base, Action::Delete, "");
            }
            Some(_) => self.push_kept(steps, "auto-scaling-group", &base),
            None => self.push(steps, "auto-scaling-group", &base, Action::Absent, ""),
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
                self.push(steps, "launch-template", &base, Action::Delete, "");
            }
            Some(_) => self.push_kept(steps, "launch-template", &base),
            None => self.push(steps, "launch-template", &base, Action::Absent, ""),
        }
        for name in self.launch_configurations().await? {
            if !dry_run {
                self.delete_launch_configuration(&name).await?;
            }
            self.push(steps, "launch-configuration", name, Action::Delete, "");
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
            subnets: vec!["subnet-a".to_owned(), "subnet-b".to_owned()],
        }
    }

    /// The group `up` creates for `cfg`.
    fn group(cfg: &DeployConfig) -> asg::types::AutoScalingGroup {
        asg::types::AutoScalingGroup::builder()
            .min_size(cfg.min_size)
            .max_size(cfg.max_size)
            .desired_capacity(cfg.desired_capacity)
            // Another order and spaces: AWS's own spelling of the list.
            .vpc_zone_identifier("subnet-b, subnet-a")
            .launch_template(
                asg::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(cfg.base_name())
                    .version("$Latest")
                    .build(),
            )
            .build()
    }

    #[test]
    fn plan_creates_an_absent_group() {
        let cfg = DeployConfig::new("c", "r");
        let launch = Launch::Template(cfg.base_name());
        assert_eq!(plan_asg(&cfg, &net(), &launch, None), AsgPlan::Create);
    }

    #[test]
    fn plan_leaves_a_group_as_up_made_it() {
        let cfg = DeployConfig::new("c", "r");
        let launch = Launch::Template(cfg.base_name());
        assert_eq!(
            plan_asg(&cfg, &net(), &launch, Some(&group(&cfg))),
            AsgPlan::Unchanged
        );
    }

    #[test]
    fn plan_updates_a_resized_group_without_resending_its_template() {
        let mut cfg = DeployConfig::new("c", "r");
        let g = group(&cfg);
        cfg.max_size = 4;
        let launch = Launch::Template(cfg.base_name());
        assert_eq!(
            plan_asg(&cfg, &net(), &launch, Some(&g)),
            AsgPlan::Update {
                diffs: vec!["size Some(2)/Some(2)/Some(2) -> 2/2/4".to_owned()],
                launch_changed: false,
            }
        );
    }

    #[test]
    fn plan_sends_a_changed_launch_source() {
        let cfg = DeployConfig::new("c", "r");
        let launch = Launch::Configuration("ecsmesh-c-0123".to_owned());
        assert_eq!(
            plan_asg(&cfg, &net(), &launch, Some(&group(&cfg))),
            AsgPlan::Update {
                diffs: vec!["launch template/configuration".to_owned()],
                launch_changed: true,
            }
        );
    }
}

#[cfg(test)]
mod launch_template_tests {
    use super::*;
    use ec2::types::{
        LaunchTemplateIamInstanceProfileSpecification, LaunchTemplateInstanceMetadataOptions,
        ResponseLaunchTemplateData,
    };

    const AMI: &str = "ami-1";
    const USER_DATA: &str = "IyEvYmluL2Jhc2g=";

    /// The latest version as `up` writes it for `cfg`.
    fn observed(cfg: &DeployConfig) -> ObservedTemplate {
        let data = ResponseLaunchTemplateData::builder()
            .image_id(AMI)
            .instance_type(InstanceType::from(cfg.instance_type.as_str()))
            .user_data(USER_DATA)
            .security_group_ids("sg-1")
            .set_iam_instance_profile(cfg.effective_instance_profile().map(|p| {
                LaunchTemplateIamInstanceProfileSpecification::builder()
                    .name(p)
                    .build()
            }))
            .metadata_options(
                LaunchTemplateInstanceMetadataOptions::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(2)
                    .build(),
            )
            .build();
        ObservedTemplate {
            id: "lt-1".to_owned(),
            latest: 1,
            data: Some(data),
        }
    }

    #[test]
    fn plan_creates_an_absent_template() {
        let cfg = DeployConfig::new("c", "r");
        let plan = plan_launch_template(&cfg, AMI, Some("sg-1"), USER_DATA, None);
        assert_eq!(plan, LaunchTemplatePlan::Create);
    }

    #[test]
    fn plan_leaves_a_template_as_up_wrote_it() {
        let cfg = DeployConfig::new("c", "r");
        let have = observed(&cfg);
        let plan = plan_launch_template(&cfg, AMI, Some("sg-1"), USER_DATA, Some(&have));
        assert_eq!(plan, LaunchTemplatePlan::Unchanged);
    }

    #[test]
    fn plan_makes_a_new_version_for_what_drifted() {
        let cfg = DeployConfig::new("c", "r");
        let have = observed(&cfg);
        let plan = plan_launch_template(&cfg, "ami-2", Some("sg-1"), "ZWNobw==", Some(&have));
        assert_eq!(
            plan,
            LaunchTemplatePlan::NewVersion(vec!["image", "user data"])
        );
        let no_data = ObservedTemplate { data: None, ..have };
        let plan = plan_launch_template(&cfg, AMI, Some("sg-1"), USER_DATA, Some(&no_data));
        assert_eq!(plan, LaunchTemplatePlan::NewVersion(vec!["no data"]));
    }

    fn wanted() -> Wanted {
        Wanted {
            ami: AMI.to_owned(),
            group_id: Some("sg-1".to_owned()),
            net: Network {
                vpc_id: "vpc-1".to_owned(),
                vpc_cidr: "10.0.0.0/16".to_owned(),
                subnets: vec!["subnet-a".to_owned()],
            },
            user_data: "#!/bin/bash".to_owned(),
        }
    }

    #[test]
    fn plan_instances_creates_the_template_and_the_group() {
        let cfg = DeployConfig::new("c", "r");
        let have = ObservedInstances {
            launch: ObservedLaunch::Template(None),
            asg: None,
        };
        assert_eq!(
            plan_instances(&cfg, &wanted(), &have),
            InstancesPlan {
                launch: LaunchPlan::Template(LaunchTemplatePlan::Create),
                asg: AsgPlan::Create,
                replaced: Vec::new(),
            }
        );
    }

    #[test]
    fn plan_instances_replaces_a_launch_configuration_whose_content_changed() {
        let mut cfg = DeployConfig::new("c", "r");
        cfg.launch_configuration = true;
        let want = wanted();
        let Launch::Configuration(name) = wanted_launch(&cfg, &want) else {
            panic!("a configuration");
        };
        assert!(name.starts_with("ecsmesh-c-") && name.len() == "ecsmesh-c-".len() + 16);
        // Named for its content: other user data, another name.
        let mut other = wanted();
        other.user_data.push_str("\necho");
        assert_ne!(
            wanted_launch(&cfg, &other),
            Launch::Configuration(name.clone())
        );
        let old = "ecsmesh-c-0123456789abcdef".to_owned();
        let have = ObservedInstances {
            launch: ObservedLaunch::Configurations(vec![old.clone(), name.clone()]),
            asg: None,
        };
        let plan = plan_instances(&cfg, &want, &have);
        assert_eq!(
            plan.launch,
            LaunchPlan::Configuration {
                name: name.clone(),
                create: false
            }
        );
        assert_eq!(plan.replaced, [old]);
        let have = ObservedInstances {
            launch: ObservedLaunch::Configurations(Vec::new()),
            asg: None,
        };
        assert_eq!(
            plan_instances(&cfg, &want, &have).launch,
            LaunchPlan::Configuration { name, create: true }
        );
    }
}
