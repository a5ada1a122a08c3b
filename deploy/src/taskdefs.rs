//! The task definitions (controller, agent, the demo's) and the instance
//! user data, rendered from `deploy/ecs` and `deploy/templates` with the
//! settings and what `up` made on the way (images, the controller's
//! address, the events queue). The [`Resource`] [`TaskDefinitions`]: wanted
//! the rendered definitions (`task_specs`, which the driver calls), observe
//! (`latest_revision`: each family's latest revision), plan
//! (`plan_task_definition`, pure: the rendered definition compared with
//! it), apply (a new revision only when it differs), destroy (every ACTIVE
//! revision of our families).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aws_sdk_ecs as ecs;

use crate::config::{
    ADMIN_TOKEN_DIR, ADMIN_TOKEN_PARAMETER, AGENT_TOKEN_DIR, AGENT_TOKEN_PARAMETER, AgentPlacement,
    DeployConfig, OWNER_TAG, TLS_ADMIN_IDENTITY, TLS_CONTROLLER_SERVER_NAME, TLS_DIR,
    TLS_PARAMETERS,
};
use crate::ecr::ImageRefs;
use crate::error::{DeployError, Result};
use crate::ops::{Deployer, ecs_tag, owned_ecs};
use crate::render;
use crate::resource::{Kind, Resource};
use crate::taskdef::TaskDefSpec;
use crate::{Action, Step};

/// A family's latest ACTIVE revision, as `up` compares it.
#[derive(Debug)]
pub(crate) struct Revision {
    arn: String,
    spec: TaskDefSpec,
}

/// What `up` does to one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TaskDefPlan {
    /// No revision yet: the first.
    Create,
    /// The latest differs from the rendered definition: a new revision.
    Update,
    /// The latest is the rendered definition (its ARN).
    Unchanged(String),
}

/// Compares the rendered definition with the family's latest revision (no
/// I/O). ECS revisions are immutable, so any difference is a new one.
pub(crate) fn plan_task_definition(want: &TaskDefSpec, have: Option<&Revision>) -> TaskDefPlan {
    match have {
        None => TaskDefPlan::Create,
        Some(r) if r.spec == *want => TaskDefPlan::Unchanged(r.arn.clone()),
        Some(_) => TaskDefPlan::Update,
    }
}

/// What the user data and task definitions are rendered with, beyond the
/// settings: what `up` made or found on the way.
#[derive(Debug)]
pub(crate) struct Rendering {
    pub(crate) images: ImageRefs,
    /// What agents dial (the load balancer's name when `up` made it).
    pub(crate) controller_address: String,
    /// The controller's task role (when `up` makes the roles).
    pub(crate) controller_task_role: Option<String>,
}

impl Rendering {
    /// From the settings alone (`--image-repo`, `--controller-address`).
    fn from_config(cfg: &DeployConfig) -> Self {
        Self {
            images: ImageRefs::from_repo(cfg),
            controller_address: cfg.agent_controller_address(),
            controller_task_role: None,
        }
    }
}

/// The task definitions of every role this run deploys.
pub(crate) struct TaskDefinitions;

impl Resource for TaskDefinitions {
    const KIND: Kind = Kind::TaskDefinitions;
    /// Each role's rendered definition ([`Deployer::task_specs`]).
    type Wanted = Vec<(&'static str, TaskDefSpec)>;
    /// Each family's latest revision, in the same order.
    type Observed = Vec<Option<Revision>>;
    type Plan = Vec<TaskDefPlan>;
    /// Each role's revision ARN (none in a dry run before it is registered).
    type Output = BTreeMap<&'static str, Option<String>>;

    async fn observe(d: &Deployer, want: &Self::Wanted) -> Result<Self::Observed> {
        let mut out = Vec::with_capacity(want.len());
        for (_, spec) in want {
            out.push(d.latest_revision(&spec.family).await?);
        }
        Ok(out)
    }

    fn plan(_: &DeployConfig, want: &Self::Wanted, have: &Self::Observed) -> Result<Self::Plan> {
        Ok(want
            .iter()
            .zip(have)
            .map(|((_, spec), have)| plan_task_definition(spec, have.as_ref()))
            .collect())
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        want: Self::Wanted,
        _: Self::Observed,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<Self::Output> {
        let mut td_arns = BTreeMap::new();
        for ((role, spec), plan) in want.into_iter().zip(plan) {
            let family = &spec.family;
            let arn = match plan {
                TaskDefPlan::Unchanged(arn) => {
                    d.push(steps, "task-definition", family, Action::Unchanged, &arn);
                    Some(arn)
                }
                plan => {
                    let action = if plan == TaskDefPlan::Update {
                        Action::Update
                    } else {
                        Action::Create
                    };
                    let arn = if dry_run {
                        None
                    } else {
                        Some(d.register(&spec).await?)
                    };
                    let detail = arn.clone().unwrap_or_default();
                    d.push(steps, "task-definition", family, action, detail);
                    arn
                }
            };
            td_arns.insert(role, arn);
        }
        Ok(td_arns)
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_task_definitions(dry_run, steps).await
    }
}

impl Deployer {
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
            (
                "CONTROLLER_TASK_ROLE_ARN",
                render.controller_task_role.clone().unwrap_or_default(),
            ),
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
    pub(crate) fn user_data_with(&self, render: &Rendering) -> Result<String> {
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

    /// The role's definition rendered from its template.
    fn task_spec(
        &self,
        role: &'static str,
        template: &'static str,
        events_queue_url: Option<&str>,
        render: &Rendering,
    ) -> Result<TaskDefSpec> {
        TaskDefSpec::parse(&self.render_task(template, events_queue_url, render)?).map_err(|e| {
            DeployError::Template {
                template: role,
                reason: e.to_string(),
            }
        })
    }

    /// Observe: the family's latest ACTIVE revision, if any.
    async fn latest_revision(&self, family: &str) -> Result<Option<Revision>> {
        if self.active_revisions(family).await?.is_empty() {
            return Ok(None);
        }
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(family)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeTaskDefinition", family, &e))?;
        Ok(out.task_definition().map(|td| Revision {
            arn: td.task_definition_arn().unwrap_or_default().to_owned(),
            spec: TaskDefSpec::from_sdk(td),
        }))
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
            .set_task_role_arn(spec.task_role_arn.clone())
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

    /// What [`TaskDefinitions`] wants: each role's definition, rendered
    /// with what `up` made on the way (`events_queue_url`: the controller's
    /// events queue, none when the controller polls ECS only).
    pub(crate) fn task_specs(
        &self,
        events_queue_url: Option<&str>,
        render: &Rendering,
    ) -> Result<Vec<(&'static str, TaskDefSpec)>> {
        self.task_templates()
            .into_iter()
            .map(|(role, template)| {
                let spec = self.task_spec(role, template, events_queue_url, render)?;
                Ok((role, spec))
            })
            .collect()
    }

    /// `down`'s task definitions: every ACTIVE revision of our families (the
    /// family names do not depend on the images), when tagged ours.
    async fn destroy_task_definitions(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let cfg = &self.cfg;
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
                self.push(steps, "task-definition", &family, Action::Absent, "");
            }
            for arn in arns {
                if !self.task_def_owned(&arn).await? {
                    self.push_kept(steps, "task-definition", &arn);
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
                self.push(steps, "task-definition", arn, Action::Delete, "");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str) -> TaskDefSpec {
        let json = format!(
            r#"{{"family": "ecsmesh-c-controller",
                "containerDefinitions": [{{ "name": "controller", "image": "{image}" }}]}}"#
        );
        TaskDefSpec::parse(&json).expect("a valid definition")
    }

    fn revision(image: &str) -> Revision {
        Revision {
            arn: "arn:aws:ecs:r:1:task-definition/ecsmesh-c-controller:3".to_owned(),
            spec: spec(image),
        }
    }

    #[test]
    fn plan_creates_the_first_revision() {
        assert_eq!(
            plan_task_definition(&spec("i:1"), None),
            TaskDefPlan::Create
        );
    }

    #[test]
    fn plan_keeps_a_latest_revision_equal_to_the_rendered_one() {
        let have = revision("i:1");
        assert_eq!(
            plan_task_definition(&spec("i:1"), Some(&have)),
            TaskDefPlan::Unchanged(have.arn.clone())
        );
    }

    #[test]
    fn plan_registers_a_new_revision_on_drift() {
        let have = revision("i:1");
        assert_eq!(
            plan_task_definition(&spec("i:2"), Some(&have)),
            TaskDefPlan::Update
        );
    }
}
