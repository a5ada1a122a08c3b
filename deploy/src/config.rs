//! What `up` deploys: the settings, validated once so that every value is
//! safe inside the JSON and shell templates.

use std::path::PathBuf;

use crate::error::{DeployError, Result};

/// Where the per-host agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentPlacement {
    /// `docker run` from the instance user data, at boot, before any task.
    UserData,
    /// An ECS service with the DAEMON strategy (one task per instance).
    Daemon,
}

/// Where the controller keeps dtab overrides (its `ECSMESH_STORE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A file on the controller's instance: one replica, and the overrides
    /// are lost when ECS moves the task.
    File,
    /// The DynamoDB table `up` creates ([`DeployConfig::dynamodb_table`]):
    /// durable, shared by every replica, which elect a leader through it.
    Dynamodb,
    /// A Consul KV store ([`DeployConfig::consul_address`]).
    Consul,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dynamodb => "dynamodb",
            Self::Consul => "consul",
        }
    }
}

/// The settings of one deployment. `cluster` names everything.
// Independent switches (as on the command line): no state machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug)]
pub struct DeployConfig {
    pub cluster: String,
    /// Subnets for the instances; empty = the default VPC's subnets.
    pub subnets: Vec<String>,
    pub key_pair: Option<String>,
    /// Where SSH is allowed from when a key pair is given; default the VPC's CIDR.
    pub ssh_cidr: Option<String>,
    pub instance_type: String,
    pub min_size: i32,
    pub max_size: i32,
    pub desired_capacity: i32,
    pub instance_profile: Option<String>,
    /// An ECS-optimized AMI; default the newest `al2023-ami-ecs-hvm-*` the account sees.
    pub ami: Option<String>,
    pub image_repo: String,
    pub image_tag: String,
    pub agent: AgentPlacement,
    /// The controller's gRPC address as agents reach it. The default
    /// `http://127.0.0.1:4321` is right only while one instance runs both
    /// the controller (host network mode) and every agent; with more
    /// instances or replicas it must be an address every instance reaches
    /// wherever the controller's tasks run (see
    /// [`controller_target_group`](Self::controller_target_group)).
    pub controller_address: String,
    /// An Elastic Load Balancing target group (instance targets, TCP 4321)
    /// the controller's ECS service registers its tasks in, so that the load
    /// balancer in front of it is a stable controller address however the
    /// tasks move. Created by the user (deploy/README.md), never by `up`.
    pub controller_target_group: Option<String>,
    pub controller_replicas: i32,
    /// The controller's dtab store; 2+ replicas need a shared one
    /// (DynamoDB, the default, or Consul).
    pub store: StoreKind,
    /// The Consul agent, for [`StoreKind::Consul`].
    pub consul_address: Option<String>,
    pub with_demo: bool,
    pub launch_configuration: bool,
    /// TLS on every hop from the user's own certificates: the SSM
    /// Parameter Store path (e.g. `/ecsmesh/<cluster>/tls`) holding the
    /// SecureString parameters [`TLS_PARAMETERS`], which each instance
    /// copies into [`TLS_DIR`]. Unset (and not [`insecure`](Self::insecure)):
    /// `up` generates them under [`managed_prefix`](Self::managed_prefix).
    pub tls_ssm_prefix: Option<String>,
    /// No managed secrets: no generated TLS material, no tokens, and
    /// (without `tls_ssm_prefix`) a controller whose dtab writes and agent
    /// stream are open, as before secure defaults.
    pub insecure: bool,
    /// Where `up` writes the operator's material when it generates the
    /// secrets (the CA and its key, the admin certificate and token, an
    /// ecsmeshctl settings file). Needed only when something is generated.
    pub secrets_dir: Option<PathBuf>,
    /// ECS events as the controller's fast path: an SQS queue (with a
    /// dead-letter queue) fed by an EventBridge rule for the cluster's task
    /// and container instance changes, its URL given to the controller
    /// (`ECSMESH_ECS_EVENTS_QUEUE_URL`). Off (`--no-events`, for accounts
    /// where EventBridge or SQS is not allowed): nothing is created and the
    /// controller re-reads ECS every resync interval, as before.
    pub ecs_events: bool,
    /// The region the controller reads (the tool's own region).
    pub region: String,
    /// The mesh's own images, pushed to ECR by `up` (`--build-images`,
    /// `--images-dir`); unset: the task definitions name
    /// [`image_repo`](Self::image_repo)`/ecsmesh-*:`[`image_tag`](Self::image_tag).
    pub images: Option<ImagesConfig>,
}

/// Where `up` takes the images it pushes to ECR from, and where it pushes.
#[derive(Clone, Debug)]
pub struct ImagesConfig {
    /// What `scripts/images.sh` wrote (`images.txt` and the OCI layout `oci/`).
    pub dir: PathBuf,
    /// Push here instead of the account's ECR registry (`http(s)://host[:port]`),
    /// still with ECR's token: a mirror that fronts ECR, or a test registry
    /// (ECR emulators serve the API but not the registry protocol). The task
    /// definitions name the ECR repositories either way.
    pub registry_endpoint: Option<String>,
    /// `--build-images`: `dir` is (re)built before `up`, so a dry run
    /// before the first build plans the pushes without digests.
    pub build: bool,
}

impl DeployConfig {
    /// Defaults for one cluster.
    pub fn new(cluster: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            subnets: Vec::new(),
            key_pair: None,
            ssh_cidr: None,
            instance_type: "t3.small".to_owned(),
            // Two: the controller's two replicas run on distinct instances.
            min_size: 2,
            max_size: 2,
            desired_capacity: 2,
            instance_profile: None,
            ami: None,
            image_repo: "ghcr.io/ecsmesh".to_owned(),
            image_tag: "latest".to_owned(),
            agent: AgentPlacement::UserData,
            controller_address: DEFAULT_CONTROLLER_ADDRESS.to_owned(),
            controller_target_group: None,
            controller_replicas: 2,
            store: StoreKind::Dynamodb,
            consul_address: None,
            with_demo: false,
            launch_configuration: false,
            tls_ssm_prefix: None,
            insecure: false,
            secrets_dir: None,
            ecs_events: true,
            region: region.into(),
            images: None,
        }
    }

    /// Checks every value; templates then substitute them verbatim.
    pub fn validate(&self) -> Result<()> {
        let name_ok = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        let uri_ok = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c))
        };
        check(
            "cluster",
            &self.cluster,
            !self.cluster.is_empty() && self.cluster.len() <= 100 && name_ok(&self.cluster),
            "1-100 letters, digits, - or _",
        )?;
        check(
            "image-repo",
            &self.image_repo,
            !self.image_repo.is_empty() && uri_ok(&self.image_repo),
            "an image repository URI",
        )?;
        check(
            "image-tag",
            &self.image_tag,
            !self.image_tag.is_empty() && uri_ok(&self.image_tag),
            "an image tag",
        )?;
        check(
            "controller-address",
            &self.controller_address,
            // Brackets: an IPv6 literal.
            self.controller_address
                .chars()
                .all(|c| c == '[' || c == ']' || uri_ok(&c.to_string()))
                && self.controller_address.starts_with("http"),
            "an http(s) URL",
        )?;
        check(
            "region",
            &self.region,
            !self.region.is_empty() && name_ok(&self.region),
            "a region name",
        )?;
        check(
            "instance-type",
            &self.instance_type,
            !self.instance_type.is_empty() && uri_ok(&self.instance_type),
            "an instance type",
        )?;
        if let Some(tg) = &self.controller_target_group {
            check(
                "controller-target-group",
                tg,
                uri_ok(tg) && tg.starts_with("arn:") && tg.contains(":targetgroup/"),
                "a target group ARN (arn:aws:elasticloadbalancing:…:targetgroup/…)",
            )?;
        }
        if let Some(c) = &self.consul_address {
            check(
                "consul-address",
                c,
                uri_ok(c) && c.starts_with("http"),
                "an http(s) URL",
            )?;
        }
        if let Some(p) = &self.tls_ssm_prefix {
            check_tls_prefix(p)?;
        }
        self.check_events_names()?;
        self.check_images()?;
        // The longer of the two roles' names.
        if self.managed_instance_profile() && self.controller_role_name().len() > IAM_NAME_MAX {
            return Err(DeployError::Config {
                name: "cluster",
                reason: format!(
                    "{:?} is too long for the controller's IAM role {} ({IAM_NAME_MAX} \
                     characters at most): use a shorter name or pass --instance-profile",
                    self.cluster,
                    self.controller_role_name()
                ),
            });
        }
        if !(0 <= self.min_size
            && self.min_size <= self.desired_capacity
            && self.desired_capacity <= self.max_size)
        {
            return Err(DeployError::Config {
                name: "min/desired/max",
                reason: format!(
                    "need 0 <= min <= desired <= max, got {}/{}/{}",
                    self.min_size, self.desired_capacity, self.max_size
                ),
            });
        }
        if self.controller_replicas < 1 {
            return Err(DeployError::Config {
                name: "controller-replicas",
                reason: "at least 1".to_owned(),
            });
        }
        self.check_store()?;
        self.check_controller_reach()
    }

    /// Replicas share the overrides: a file on one instance cannot; Consul
    /// needs its address.
    fn check_store(&self) -> Result<()> {
        if self.controller_replicas > 1 && self.store == StoreKind::File {
            return Err(DeployError::Config {
                name: "controller-replicas",
                reason: "more than one controller needs a shared store (--store dynamodb, the \
                         default, or --store consul with --consul-address)"
                    .to_owned(),
            });
        }
        if self.store == StoreKind::Consul && self.consul_address.is_none() {
            return Err(DeployError::Config {
                name: "store",
                reason: "the Consul store needs --consul-address".to_owned(),
            });
        }
        Ok(())
    }

    /// With ECS events, the names made from the cluster's must fit AWS's
    /// limits (the rule's is the longest that carries it).
    fn check_events_names(&self) -> Result<()> {
        if self.ecs_events && self.events_rule_name().len() > EVENTS_RULE_NAME_MAX {
            return Err(DeployError::Config {
                name: "cluster",
                reason: format!(
                    "{:?} is too long for the ECS events' EventBridge rule ({} characters at \
                     most, so the cluster's name at most {}): use a shorter name or --no-events",
                    self.cluster,
                    EVENTS_RULE_NAME_MAX,
                    EVENTS_RULE_NAME_MAX - (self.events_rule_name().len() - self.cluster.len())
                ),
            });
        }
        Ok(())
    }

    /// With images to push: repository names ECR accepts, a registry
    /// override that parses.
    fn check_images(&self) -> Result<()> {
        let Some(images) = &self.images else {
            return Ok(());
        };
        for image in IMAGE_NAMES {
            let name = self.ecr_repository(image);
            check(
                "cluster",
                &name,
                ecr_name_ok(&name),
                "usable in an ECR repository name (lowercase letters and digits, single separators -, _ or .)",
            )?;
        }
        if let Some(url) = &images.registry_endpoint {
            check(
                "registry-endpoint",
                url,
                crate::ecr::parse_endpoint(url).is_some(),
                "http(s)://host[:port]",
            )?;
        }
        Ok(())
    }

    /// A loopback address is the controller only for agents on its own
    /// instance: refuse a deployment where some agent would sit elsewhere.
    /// With a load balancer `up` makes, its name must fit; replicas on
    /// distinct instances need as many instances.
    fn check_controller_reach(&self) -> Result<()> {
        if self.controller_is_local()
            && !self.managed_load_balancer()
            && (self.max_size > 1 || self.controller_replicas > 1)
        {
            return Err(DeployError::Config {
                name: "controller-address",
                reason: format!(
                    "{} reaches the controller only from its own instance, but up to {} \
                     instances and {} controller replicas are asked for with the target group \
                     {}: pass the address of its load balancer (see deploy/README.md)",
                    self.controller_address,
                    self.max_size,
                    self.controller_replicas,
                    self.controller_target_group.as_deref().unwrap_or_default()
                ),
            });
        }
        if self.controller_replicas > 1 && self.max_size < self.controller_replicas {
            return Err(DeployError::Config {
                name: "controller-replicas",
                reason: format!(
                    "{} replicas run on distinct instances, but at most {} instances are asked \
                     for: raise --max (and --desired) or lower --controller-replicas",
                    self.controller_replicas, self.max_size
                ),
            });
        }
        Ok(())
    }

    /// Whether `up` makes the controller's internal Network Load Balancer:
    /// agents on several instances need an address every replica is behind,
    /// and the user gave none (the loopback default, no target group).
    pub fn managed_load_balancer(&self) -> bool {
        self.controller_is_local()
            && self.controller_target_group.is_none()
            && (self.max_size > 1 || self.controller_replicas > 1)
    }

    /// Whether the controller's service sits behind a load balancer (ours
    /// or the user's target group): its ports open to the VPC.
    pub fn uses_load_balancer(&self) -> bool {
        self.controller_target_group.is_some() || self.managed_load_balancer()
    }

    /// The load balancer's and the target group's name:
    /// `ecsmesh-<cluster>` with `_` as `-` (ELB's alphabet), or when that is
    /// longer than ELB allows (or ends in `-`), its first characters and a
    /// hash of the cluster's name, so that every cluster gets its own.
    pub fn lb_name(&self) -> String {
        let name = self.base_name().replace('_', "-");
        if name.len() <= LB_NAME_MAX && !name.ends_with('-') {
            return name;
        }
        // FNV-1a, 24 bits: 6 hex digits after a hyphen.
        let mut h: u32 = 0x811c_9dc5;
        for b in self.cluster.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let keep = LB_NAME_MAX - 7;
        let head: String = name.chars().take(keep).collect();
        format!("{}-{:06x}", head.trim_end_matches('-'), h & 0x00ff_ffff)
    }

    /// Whether agents reach the controller over loopback (same instance only).
    pub fn controller_is_local(&self) -> bool {
        let rest = self
            .controller_address
            .split_once("://")
            .map_or(self.controller_address.as_str(), |(_, rest)| rest);
        let host = if let Some(v6) = rest.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            rest.split([':', '/']).next().unwrap_or_default()
        };
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether every hop uses TLS (certificates from SSM): the user's, or
    /// the ones `up` manages.
    pub fn tls(&self) -> bool {
        self.tls_prefix().is_some()
    }

    /// The SSM path of the TLS parameters: the user's `tls_ssm_prefix`,
    /// else (secrets managed) `<managed prefix>/tls`.
    pub fn tls_prefix(&self) -> Option<String> {
        self.tls_ssm_prefix.clone().or_else(|| {
            self.managed_tls()
                .then(|| format!("{}/tls", self.managed_prefix()))
        })
    }

    /// Whether `up` generates and owns the TLS parameters.
    pub fn managed_tls(&self) -> bool {
        !self.insecure && self.tls_ssm_prefix.is_none()
    }

    /// Whether `up` generates and owns the admin and agent tokens.
    pub fn managed_tokens(&self) -> bool {
        !self.insecure
    }

    /// The SSM path under which `up` keeps the secrets it owns,
    /// `/ecsmesh/<cluster>` (the cluster name is valid in an SSM path).
    pub fn managed_prefix(&self) -> String {
        format!("/ecsmesh/{}", self.cluster)
    }

    /// The controller address agents dial: with TLS, an `http://` address
    /// is dialed as `https://` (the agent picks TLS from the scheme).
    pub fn agent_controller_address(&self) -> String {
        match self.controller_address.strip_prefix("http://") {
            Some(rest) if self.tls() => format!("https://{rest}"),
            _ => self.controller_address.clone(),
        }
    }

    /// Controller replicas that may be down during a rolling update. Each
    /// replica holds host port 4321, so a new task can only start where an
    /// old one stopped: ECS's default (keep 100 %, start extra) would wait
    /// forever on a full cluster.
    pub fn controller_minimum_healthy_percent(&self) -> i32 {
        (self.controller_replicas - 1) * 100 / self.controller_replicas.max(1)
    }

    /// The tag every owned resource carries: `ecsmesh:owner` = cluster.
    pub fn owner(&self) -> &str {
        &self.cluster
    }

    /// The base name of EC2 / Auto Scaling resources.
    pub fn base_name(&self) -> String {
        format!("ecsmesh-{}", self.cluster)
    }

    /// The SQS queue EventBridge delivers the cluster's ECS events to.
    pub fn events_queue_name(&self) -> String {
        format!("{}-events", self.base_name())
    }

    /// The events queue's dead-letter queue (messages the controller
    /// failed to apply [`EVENTS_MAX_RECEIVE_COUNT`] times).
    pub fn events_dlq_name(&self) -> String {
        format!("{}-events-dlq", self.base_name())
    }

    /// The EventBridge rule (default bus) that sends the cluster's ECS
    /// events to the queue.
    pub fn events_rule_name(&self) -> String {
        format!("{}-ecs-events", self.base_name())
    }

    pub fn agent_image(&self) -> String {
        format!("{}/ecsmesh-agent:{}", self.image_repo, self.image_tag)
    }

    /// Whether `up` creates the instances' role and profile (the user named none).
    pub fn managed_instance_profile(&self) -> bool {
        self.instance_profile.is_none()
    }

    /// The role and instance profile `up` creates: `ecsmesh-<cluster>-instance`.
    pub fn instance_role_name(&self) -> String {
        format!("{}-instance", self.base_name())
    }

    /// The controller's task role `up` creates with the instances' role:
    /// `ecsmesh-<cluster>-controller`.
    pub fn controller_role_name(&self) -> String {
        format!("{}-controller", self.base_name())
    }

    /// The profile the instances get: the user's, else the managed one.
    pub fn effective_instance_profile(&self) -> Option<String> {
        Some(
            self.instance_profile
                .clone()
                .unwrap_or_else(|| self.instance_role_name()),
        )
    }

    /// Whether `up` makes (and the controller uses) the DynamoDB table.
    pub fn dynamodb_store(&self) -> bool {
        self.store == StoreKind::Dynamodb
    }

    /// The dtab store's DynamoDB table: `ecsmesh-<cluster>-dtabs` (within
    /// DynamoDB's alphabet and 255 characters for every valid cluster).
    pub fn dynamodb_table(&self) -> String {
        format!("{}-dtabs", self.base_name())
    }

    /// The ECR repository `up` pushes `image` ([`IMAGE_NAMES`]) to:
    /// `ecsmesh-<cluster>/<image>`, the cluster lowercased (ECR's names are).
    pub fn ecr_repository(&self, image: &str) -> String {
        format!("{}/{image}", self.base_name().to_ascii_lowercase())
    }
}

/// ECR's repository name grammar: lowercase alphanumeric runs joined by
/// one `.`, `_` or `-`, in `/`-separated parts; 2-256 characters.
fn ecr_name_ok(name: &str) -> bool {
    (2..=256).contains(&name.len())
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.split(['.', '_', '-']).all(|run| {
                    !run.is_empty()
                        && run
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
        })
}

/// An SSM parameter path: SSM's name alphabet (also safe inside the
/// templates' single quotes), not a reserved `aws` / `ssm` prefix.
fn check_tls_prefix(p: &str) -> Result<()> {
    let first = p
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    check(
        "tls-ssm-prefix",
        p,
        p.starts_with('/')
            && !p.ends_with('/')
            && !p.contains("//")
            && p.len() <= 900
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            && !first.starts_with("aws")
            && !first.starts_with("ssm"),
        "an SSM parameter path such as /ecsmesh/<cluster>/tls",
    )
}

fn check(name: &'static str, value: &str, ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(DeployError::Config {
            name,
            reason: format!("{value:?} is not {what}"),
        })
    }
}

/// Where agents find the controller when nothing else is said: the same
/// instance (the controller runs in host network mode).
pub const DEFAULT_CONTROLLER_ADDRESS: &str = "http://127.0.0.1:4321";

/// Where each instance keeps the mesh certificates (with TLS), mounted
/// read-only into the agent and the controller.
pub const TLS_DIR: &str = "/etc/ecsmesh/tls";

/// Where each instance keeps the agent token ([`AGENT_TOKEN_PARAMETER`]),
/// mounted read-only into the agent and the controller.
pub const AGENT_TOKEN_DIR: &str = "/etc/ecsmesh/tokens/agent";

/// Where each instance keeps the admin token ([`ADMIN_TOKEN_PARAMETER`]),
/// mounted read-only into the controller only.
pub const ADMIN_TOKEN_DIR: &str = "/etc/ecsmesh/tokens/admin";

/// The token that lets a client write dtabs (the controller's
/// `admin_token_file`): a SecureString under the managed prefix, and a file
/// of the same name in [`ADMIN_TOKEN_DIR`] and the operator's directory.
pub const ADMIN_TOKEN_PARAMETER: &str = "admin-token";

/// The token agents present on the mesh stream (the controller's
/// `agent_token_file`, the agent's `controller_token_file`): a
/// SecureString under the managed prefix, a file in [`AGENT_TOKEN_DIR`].
pub const AGENT_TOKEN_PARAMETER: &str = "agent-token";

/// The ecsmeshctl settings file `up` writes into the operator's directory.
pub const CTL_SETTINGS_FILE: &str = "ecsmeshctl.yaml";

/// The SecureString parameters under `--tls-ssm-prefix`, each copied to
/// the file of the same name in [`TLS_DIR`]. Every instance gets the
/// controller's pair too: ECS may place the controller on any of them.
pub const TLS_PARAMETERS: [&str; 5] = [
    "ca.pem",
    "agent.pem",
    "agent-key.pem",
    "controller.pem",
    "controller-key.pem",
];

/// The name agents expect on the controller's certificate (`certs init`
/// gives it), whatever address they dial, e.g. a load balancer's.
pub const TLS_CONTROLLER_SERVER_NAME: &str = "ecsmesh-controller";

/// The client certificate identity allowed to write dtabs (the operator
/// certificate of `certs init`); without it TLS writes would be open.
pub const TLS_ADMIN_IDENTITY: &str = "ecsmesh-admin";

/// Elastic Load Balancing's limit on a balancer's or target group's name.
const LB_NAME_MAX: usize = 32;

/// IAM's limit on a role's name.
const IAM_NAME_MAX: usize = 64;

/// EventBridge's limit on a rule's name (SQS allows 80 for a queue's, so
/// the rule's is the binding one).
const EVENTS_RULE_NAME_MAX: usize = 64;

/// Receives of one events message before SQS moves it to the dead-letter
/// queue: a few visibility timeouts for a transient failure to clear.
pub const EVENTS_MAX_RECEIVE_COUNT: u32 = 5;

/// The images `scripts/images.sh` builds, as it names them.
pub const IMAGE_NAMES: [&str; 3] = ["agent", "controller", "helloworld"];

/// The tag key on everything ecsmesh owns.
pub const OWNER_TAG: &str = "ecsmesh:owner";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_local() {
        let mut cfg = DeployConfig::new("c", "r");
        for (addr, local) in [
            ("http://127.0.0.1:4321", true),
            ("http://127.9.9.9:4321", true),
            ("https://LOCALHOST:4321", true),
            ("http://[::1]:4321", true),
            ("http://10.0.0.5:4321", false),
            ("http://[fd00::5]:4321", false),
            (
                "http://internal-ecsmesh-123.eu-west-1.elb.amazonaws.com:4321",
                false,
            ),
        ] {
            cfg.controller_address = addr.to_owned();
            assert_eq!(cfg.controller_is_local(), local, "{addr}");
        }
    }

    #[test]
    fn tls_prefix_is_checked_and_makes_the_controller_https() {
        let mut cfg = DeployConfig::new("c", "r");
        cfg.insecure = true;
        assert!(!cfg.tls());
        assert_eq!(cfg.agent_controller_address(), "http://127.0.0.1:4321");
        for good in ["/ecsmesh/c/tls", "/a", "/my.team/ecsmesh_c/tls-1"] {
            cfg.tls_ssm_prefix = Some(good.to_owned());
            assert!(cfg.validate().is_ok(), "{good}");
        }
        assert_eq!(cfg.agent_controller_address(), "https://127.0.0.1:4321");
        cfg.controller_address = "https://ctl.internal:4321".to_owned();
        assert_eq!(cfg.agent_controller_address(), "https://ctl.internal:4321");
        for bad in [
            "",
            "ecsmesh/tls",
            "/ecsmesh/tls/",
            "/a//b",
            "/a b",
            "/a'b",
            "/aws/x",
            "/SSM/x",
        ] {
            cfg.tls_ssm_prefix = Some(bad.to_owned());
            assert!(cfg.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secrets_are_managed_unless_insecure() {
        let mut cfg = DeployConfig::new("c-1", "r");
        // The default: TLS and tokens, both under the managed prefix.
        assert!(cfg.tls() && cfg.managed_tls() && cfg.managed_tokens());
        assert_eq!(cfg.tls_prefix().as_deref(), Some("/ecsmesh/c-1/tls"));
        assert!(check_tls_prefix(&cfg.tls_prefix().unwrap()).is_ok());
        assert_eq!(cfg.agent_controller_address(), "https://127.0.0.1:4321");
        // The user's own TLS: still tokens.
        cfg.tls_ssm_prefix = Some("/mine/tls".to_owned());
        assert!(cfg.tls() && !cfg.managed_tls() && cfg.managed_tokens());
        assert_eq!(cfg.tls_prefix().as_deref(), Some("/mine/tls"));
        // --insecure with the user's TLS: TLS only; without: nothing.
        cfg.insecure = true;
        assert!(cfg.tls() && !cfg.managed_tokens());
        cfg.tls_ssm_prefix = None;
        assert!(!cfg.tls() && !cfg.managed_tls() && cfg.tls_prefix().is_none());
    }

    #[test]
    fn event_names_fit_aws_limits_or_the_cluster_is_refused() {
        let mut cfg = DeployConfig::new("c-1", "r");
        assert_eq!(cfg.events_queue_name(), "ecsmesh-c-1-events");
        assert_eq!(cfg.events_dlq_name(), "ecsmesh-c-1-events-dlq");
        assert_eq!(cfg.events_rule_name(), "ecsmesh-c-1-ecs-events");
        cfg.cluster = "x".repeat(45);
        assert!(cfg.validate().is_ok());
        assert!(cfg.events_dlq_name().len() <= 80);
        cfg.cluster = "x".repeat(46);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("at most 45") && err.contains("--no-events"),
            "{err}"
        );
        cfg.ecs_events = false;
        // The controller's IAM role: 64 characters at most.
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("--instance-profile"), "{err}");
        cfg.instance_profile = Some("team-instances".to_owned());
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn ecr_names_follow_the_cluster_or_it_is_refused() {
        let mut cfg = DeployConfig::new("Prod_1", "r");
        cfg.images = Some(ImagesConfig {
            dir: PathBuf::from("/x"),
            registry_endpoint: Some("http://127.0.0.1:5000".to_owned()),
            build: false,
        });
        assert_eq!(cfg.ecr_repository("agent"), "ecsmesh-prod_1/agent");
        assert!(cfg.validate().is_ok());
        for bad in ["a--b", "a_", "x-_y"] {
            cfg.cluster = bad.to_owned();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("ECR"), "{bad}: {err}");
        }
        cfg.cluster = "ok".to_owned();
        cfg.images.as_mut().unwrap().registry_endpoint = Some("ftp://x".to_owned());
        assert!(cfg.validate().is_err());
        // Without images the names do not matter.
        cfg.images = None;
        cfg.cluster = "a--b".to_owned();
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn load_balancer_names_fit_elb_and_stay_apart() {
        let mut cfg = DeployConfig::new("prod_eu", "r");
        assert!(cfg.managed_load_balancer());
        assert_eq!(cfg.lb_name(), "ecsmesh-prod-eu");
        cfg.cluster = "x".repeat(40);
        let long = cfg.lb_name();
        assert_eq!(long.len(), 32, "{long}");
        assert!(
            long.starts_with("ecsmesh-xxxx") && !long.contains("--"),
            "{long}"
        );
        cfg.cluster.push('y');
        assert_ne!(cfg.lb_name(), long, "two long names, two balancers");
        cfg.cluster = "ends_".to_owned();
        assert!(!cfg.lb_name().ends_with('-'), "{}", cfg.lb_name());
        // One instance and one replica: agents dial their own instance.
        cfg.controller_replicas = 1;
        (cfg.min_size, cfg.desired_capacity, cfg.max_size) = (1, 1, 1);
        assert!(!cfg.managed_load_balancer() && !cfg.uses_load_balancer());
    }

    #[test]
    fn replicas_need_a_shared_store() {
        let mut cfg = DeployConfig::new("c", "r");
        cfg.controller_address = "http://ctl.internal:4321".to_owned();
        cfg.controller_replicas = 2;
        assert_eq!(cfg.store, StoreKind::Dynamodb);
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.dynamodb_table(), "ecsmesh-c-dtabs");
        cfg.store = StoreKind::File;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("shared store"), "{err}");
        cfg.store = StoreKind::Consul;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("--consul-address")
        );
        cfg.consul_address = Some("http://consul:8500".to_owned());
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn rolling_updates_stop_before_they_start() {
        let mut cfg = DeployConfig::new("c", "r");
        for (replicas, percent) in [(1, 0), (2, 50), (3, 66), (4, 75)] {
            cfg.controller_replicas = replicas;
            assert_eq!(cfg.controller_minimum_healthy_percent(), percent);
        }
    }
}
