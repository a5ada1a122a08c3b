//! `ecsmeshctl deploy`: from an AWS account to a running ecsmesh, and back.
//!
//! [`Deployer::up`] creates or updates, in order: the mesh's secrets, the
//! instances' IAM role and profile (unless `--instance-profile`), the
//! security group and its ingress rules, the ECS cluster, the ECS events
//! queues and rule (unless `--no-events`), the dtab store's DynamoDB table,
//! the ECR repositories and image pushes (with images), the controller's
//! load balancer (when agents need one), the task definitions (a new revision only
//! when the rendered definition differs from the latest), the launch
//! template (base64 user data, IMDSv2 required, hop limit 2) or a legacy
//! launch configuration, the auto scaling group, and the ECS services
//! (controller; agent DAEMON when chosen; hello/world/world-v2 with the
//! demo). Everything is looked up before it is created (emulators accept
//! duplicate creates), so a second `up` changes nothing. Every resource
//! carries the tag `ecsmesh:owner=<cluster>`; [`Deployer::down`] removes
//! only tagged resources, in reverse order (it waits for the group's
//! instances to end and deregisters leftover container instances, so the
//! cluster and the security group can go). With `dry_run` no mutating API
//! is called and the report is the plan.
//!
//! Agents reach the controller through the internal Network Load Balancer
//! `up` makes in front of its replicas (module `lb`, by default: two
//! replicas on distinct instances, see
//! [`DeployConfig::managed_load_balancer`]), or at the user's
//! [`DeployConfig::controller_address`] (with their own balancer's
//! [`DeployConfig::controller_target_group`]), or on their own instance
//! (one instance, one replica).
//! [`Deployer::controller_endpoints`] finds the controller's running tasks,
//! for `status` to ask each for its health and its agents.
//!
//! Secure by default: unless [`DeployConfig::insecure`], `up` creates (when
//! missing) the mesh's secrets as SecureString parameters under
//! `/ecsmesh/<cluster>`, tagged as its own: the TLS material, generated as
//! `ecsmeshctl certs init` makes it (unless the user brings their own with
//! [`DeployConfig::tls_ssm_prefix`]), and an admin and an agent token. The
//! operator's half (the CA and its key, the admin certificate and token, an
//! ecsmeshctl settings file naming where the controller is reached, the
//! load balancer `up` made when it made one: [`Report::controller_address`])
//! goes to [`DeployConfig::secrets_dir`]. The
//! user data copies the parameters to files at boot and every 15 minutes
//! after (a systemd timer): [`TLS_PARAMETERS`] into [`TLS_DIR`], the tokens
//! into [`AGENT_TOKEN_DIR`] and [`ADMIN_TOKEN_DIR`]; the agent and the
//! controller mount what each needs read-only (the admin token: the
//! controller only) and agents dial the controller over `https://`. `down`
//! deletes the parameters tagged as its own.
//!
//! ECS events as the controller's fast path: unless
//! [`DeployConfig::ecs_events`] is off (`--no-events`), `up` creates an SQS
//! queue with a dead-letter queue, an EventBridge rule sending the
//! cluster's task and container instance changes to it, and a queue policy
//! that admits only that rule; the controller's task definition gets the
//! queue's URL (`ECSMESH_ECS_EVENTS_QUEUE_URL`). `down` deletes them when
//! tagged as its own.
//!
//! The dtab store (module `table`): with [`StoreKind::Dynamodb`] (the
//! default) `up` creates the DynamoDB table the controller and its
//! replicas share ([`DeployConfig::dynamodb_table`]). The mesh's own images
//! ([`ecr`], with [`DeployConfig::images`]): ECR repositories, the images
//! pushed with ECR's token, the task definitions pinned to their digests.
//!
//! The structure: one module per resource kind, each implementing the one
//! interface of module `resource`, a trait with four verbs (the shape of a
//! Terraform provider's resource, or a `kube-runtime` reconciler):
//!
//! - `observe(deployer, &wanted)`: reads what exists, read-only API calls
//!   only;
//! - `plan(config, &wanted, &observed)`: what to do (create, unchanged, or
//!   update with what differs), a pure function, unit-tested in its module
//!   (`plan_*`: `plan_security_group`, `plan_secrets`, `plan_role`,
//!   `plan_cluster`, `plan_events`, `plan_table`, `plan_images`,
//!   `plan_balancer`, `plan_operator`, `plan_task_definition`,
//!   `plan_instances`, `plan_service`); an error when something exists that
//!   `up` must not use (another owner's balancer or role of that name);
//! - `apply(deployer, dry_run, wanted, observed, plan, &mut steps)`:
//!   carries the plan out and reports each step; with `dry_run` it calls no
//!   mutating API and reports the same steps, so `--dry-run` shows the plan
//!   from the same code;
//! - `destroy(deployer, dry_run, &mut steps)`: removes only what carries the
//!   owner tag, whatever this run's flags.
//!
//! Each module has a typed `Wanted` input and `Output`: what a module needs
//! from earlier ones (the security group's id and the rendered user data
//! for the launch template, the controller role's ARN, the events queue's
//! URL, the images and the balancer's address for the task definitions,
//! the balancer's address for ecsmeshctl's settings file, the task
//! definitions' ARNs and the target group for the services) is built by
//! the driver ([`Deployer::up`]) from their outputs, in one place. The
//! order is one list, `resource::ORDER`: network (VPC, AMI: read only),
//! secrets, iam, security group, cluster, events, table, images, load
//! balancer, operator (the local directory and settings file), task
//! definitions, instances, services. `up` and `status` reconcile the
//! modules in that order (a check fails `up` if the code strays from it),
//! `down` destroys them in reverse; a test checks that every module comes
//! after what it needs.

mod cluster;
pub mod config;
pub mod ecr;
pub mod error;
mod events;
mod iam;
mod instances;
mod lb;
mod network;
mod operator;
mod ops;
pub mod render;
mod resource;
mod secrets;
mod services;
mod table;
pub mod taskdef;
mod taskdefs;

pub use config::{
    ADMIN_TOKEN_DIR, ADMIN_TOKEN_PARAMETER, AGENT_TOKEN_DIR, AGENT_TOKEN_PARAMETER, AgentPlacement,
    CTL_SETTINGS_FILE, DEFAULT_CONTROLLER_ADDRESS, DeployConfig, EVENTS_MAX_RECEIVE_COUNT,
    IMAGE_NAMES, ImagesConfig, OWNER_TAG, StoreKind, TLS_ADMIN_IDENTITY,
    TLS_CONTROLLER_SERVER_NAME, TLS_DIR, TLS_PARAMETERS,
};
pub use error::{DeployError, Result};
pub use events::EVENT_DETAIL_TYPES;
pub use ops::{CONTROLLER_GRPC_PORT, Deployer};

use serde::Serialize;

/// What happens (or would happen) to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Delete,
    /// Not there (`down`, `status`).
    Absent,
}

impl Action {
    pub fn is_change(self) -> bool {
        matches!(self, Self::Create | Self::Update | Self::Delete)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: a report's columns give it a width.
        f.pad(match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Unchanged => "unchanged",
            Self::Delete => "delete",
            Self::Absent => "absent",
        })
    }
}

/// One resource's line in a report.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// e.g. `security-group`, `task-definition`, `service`.
    pub kind: &'static str,
    pub name: String,
    pub action: Action,
    /// What differs, or the resource's id.
    pub detail: String,
}

/// A report's line: action, kind, name and detail in columns.
impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<9} {:<20} {}", self.action, self.kind, self.name)?;
        if self.detail.is_empty() {
            Ok(())
        } else {
            write!(f, " {}", self.detail)
        }
    }
}

/// The outcome of `up`, `status` or `down`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub operation: &'static str,
    pub cluster: String,
    pub dry_run: bool,
    /// `up` and `status`: where agents and ecsmeshctl reach the controller's
    /// gRPC API (port [`CONTROLLER_GRPC_PORT`]): the load balancer `up`
    /// made in front of its replicas (`None` in a plan before it exists),
    /// else the configured address. The settings file `up` writes names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_address: Option<String>,
    pub steps: Vec<Step>,
}

impl Report {
    /// Whether anything was (or, dry, would be) changed.
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| s.action.is_change())
    }
}
