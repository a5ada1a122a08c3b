//! `ecsmeshctl deploy up|status|down`: the arguments and the dispatch to
//! `ecsmesh-deploy`; `status` also asks the controller (the same ListAgents
//! query as `ecsmeshctl status`) for its health and its agents' convergence.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use ecsmesh_deploy::{
    Action, AgentPlacement, DeployConfig, Deployer, ImagesConfig, Report, StoreKind,
};
use ecsmesh_proto::v1 as pb;
use serde_json::{Value, json};

use crate::output::emit;
use crate::remote::{self, ControllerArgs};

/// How long `status` waits for one controller (an instance's private IP
/// from outside its VPC may never answer).
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Create or update everything (idempotent: a second run changes nothing).
    Up(Box<DeployArgs>),
    /// Each resource: whether it exists and matches; the services' tasks; the
    /// controller's health and its agents' convergence.
    Status(Box<StatusArgs>),
    /// Remove what `up` created (tagged ecsmesh:owner=<cluster>), in reverse order.
    Down(Box<DeployArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Store {
    File,
    Dynamodb,
    Consul,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Agent {
    /// `docker run` from the instance user data, at boot.
    UserData,
    /// An ECS DAEMON service.
    Daemon,
}

// Command-line switches, each independent of the others: no state machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The ECS cluster; it names every resource.
    #[arg(long)]
    cluster: String,
    /// AWS region (default: the standard AWS chain).
    #[arg(long)]
    region: Option<String>,
    /// EC2 key pair for the instances; also opens SSH (from --ssh-cidr).
    #[arg(long)]
    key_pair: Option<String>,
    /// Where SSH is allowed from (default: the VPC's CIDR).
    #[arg(long)]
    ssh_cidr: Option<String>,
    #[arg(long, default_value = "t3.small")]
    instance_type: String,
    /// Instances (the auto scaling group); at least --controller-replicas,
    /// which run on distinct instances.
    #[arg(long, default_value_t = 2)]
    min: i32,
    #[arg(long, default_value_t = 2)]
    max: i32,
    #[arg(long, default_value_t = 2)]
    desired: i32,
    /// Instance profile (name or ARN) for the instances [default: up creates
    /// the role and profile ecsmesh-<cluster>-instance with the ECS agent's
    /// and the controller's policies, and down removes them].
    #[arg(long)]
    instance_profile: Option<String>,
    /// ECS-optimized AMI (default: the newest al2023-ami-ecs-hvm-*).
    #[arg(long)]
    ami: Option<String>,
    /// Subnet for the instances (repeat; default: the default VPC's subnets).
    #[arg(long = "subnet")]
    subnets: Vec<String>,
    /// Image repository holding ecsmesh-controller, ecsmesh-agent, ecsmesh-hello-world.
    #[arg(long, default_value = "ghcr.io/ecsmesh")]
    image_repo: String,
    #[arg(long, default_value = "latest")]
    image_tag: String,
    /// Where the agent runs.
    #[arg(long, value_enum, default_value = "user-data")]
    agent: Agent,
    /// The controller's gRPC address as agents reach it. With the default
    /// (loopback) and more than one instance or replica, up creates an
    /// internal Network Load Balancer ecsmesh-<cluster> in front of the
    /// replicas and agents dial it; with one instance and one replica they
    /// dial their own instance. Or give your own name (e.g. your balancer's,
    /// with --controller-target-group).
    #[arg(long, default_value = ecsmesh_deploy::DEFAULT_CONTROLLER_ADDRESS)]
    controller_address: String,
    /// ARN of a target group (instance targets, TCP 4321) the controller's ECS
    /// service registers its tasks in; its load balancer is then the stable
    /// --controller-address. See deploy/README.md.
    #[arg(long, value_name = "ARN")]
    controller_target_group: Option<String>,
    /// Controller replicas, each on its own instance; more than one needs a
    /// shared store (dynamodb or consul). They share the dtab overrides and
    /// elect a leader through the store.
    #[arg(long, default_value_t = 2)]
    controller_replicas: i32,
    /// The controller's dtab store: dynamodb (a table ecsmesh-<cluster>-dtabs
    /// that up creates: durable, shared by replicas), consul (with
    /// --consul-address) or file (on the controller's instance: lost when the
    /// task moves) [default: consul with --consul-address, else dynamodb].
    #[arg(long, value_enum)]
    store: Option<Store>,
    /// Consul agent for the controller's Consul store.
    #[arg(long)]
    consul_address: Option<String>,
    /// Also deploy the hello/world/world-v2 demo services.
    #[arg(long)]
    with_demo: bool,
    /// Use a legacy launch configuration instead of a launch template. AWS
    /// closed launch configurations to accounts created after 2024-10-01.
    #[arg(long)]
    launch_configuration: bool,
    /// Your own TLS certificates: an SSM Parameter Store path (e.g.
    /// /team/<cluster>/tls) holding the SecureString parameters ca.pem,
    /// agent.pem, agent-key.pem, controller.pem and controller-key.pem, which
    /// each instance copies to /etc/ecsmesh/tls at boot and every 15 minutes
    /// [default: up generates them under /ecsmesh/<cluster>/tls]. See
    /// deploy/README.md.
    #[arg(long, value_name = "PATH")]
    tls_ssm_prefix: Option<String>,
    /// No managed secrets: no generated certificates and no tokens; without
    /// --tls-ssm-prefix, dtab writes and the agent stream are open to anyone
    /// who reaches the controller's port.
    #[arg(long)]
    insecure: bool,
    /// Where up writes the operator's material when it generates the
    /// secrets: the mesh CA and its key, admin.pem, admin-key.pem,
    /// admin-token and an ecsmeshctl settings file (ecsmeshctl.yaml), all
    /// 0600 [default: $XDG_CONFIG_HOME/ecsmesh/<cluster>, else
    /// ~/.config/ecsmesh/<cluster>].
    #[arg(long, value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// Do not set up ECS events for the controller (the SQS queue
    /// ecsmesh-<cluster>-events, its dead-letter queue and the EventBridge rule
    /// ecsmesh-<cluster>-ecs-events), e.g. where EventBridge or SQS is not
    /// allowed: the controller then only re-reads ECS every 10 s.
    #[arg(long)]
    no_events: bool,
    /// Build the agent, controller and helloworld images (scripts/images.sh,
    /// run from the ecsmesh source tree: static binaries, umoci, no Docker),
    /// push them to ECR repositories ecsmesh-<cluster>/<image> (created, with
    /// scan on push and immutable tags) with ECR's token, and point the task
    /// definitions and the user data at their digests. Needs skopeo and umoci
    /// (make deps).
    #[arg(long)]
    build_images: bool,
    /// Where the images are (already built by `make images`: push them
    /// without building), or where --build-images builds them [default:
    /// $CARGO_TARGET_DIR/images, else ~/.cache/ecsmesh/target/images].
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Push the images here instead of the account's ECR registry, still
    /// with ECR's token (http(s)://host[:port]): for a mirror in front of
    /// ECR, or for tests (ECR emulators serve the API, not the registry). The
    /// task definitions name the ECR repositories either way.
    #[arg(long, value_name = "URL", env = "ECSMESH_REGISTRY_ENDPOINT")]
    registry_endpoint: Option<String>,
    /// Print the plan (create/update/unchanged per resource); call no mutating API.
    #[arg(long)]
    dry_run: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
    /// Endpoint override for every AWS service (emulators).
    #[arg(long, env = "ECSMESH_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    deploy: DeployArgs,
    /// The controller to ask for its health and its agents' convergence
    /// [default: every running controller task, at its instance's private IP,
    /// which answers only from inside the VPC].
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    /// With TLS: the mesh CA bundle the controller's certificate is verified
    /// against [default: ca.pem in the secrets directory, when there].
    #[arg(long = "tls-ca", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// With TLS: the name the controller's certificate carries [default
    /// with --tls-ssm-prefix: ecsmesh-controller, as the agents expect].
    #[arg(long = "tls-server-name")]
    tls_server_name: Option<String>,
}

/// Runs one deploy command (boxed: the SDK futures are large).
pub async fn run(cmd: &DeployCommand) -> anyhow::Result<()> {
    Box::pin(run_inner(cmd)).await
}

async fn run_inner(cmd: &DeployCommand) -> anyhow::Result<()> {
    let args = match cmd {
        DeployCommand::Up(args) | DeployCommand::Down(args) => args,
        DeployCommand::Status(status) => &status.deploy,
    };
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &args.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(url) = &args.aws_endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let region = sdk
        .region()
        .map(ToString::to_string)
        .context("no AWS region: pass --region or set AWS_REGION")?;
    let cfg = deploy_config(args, region)?;
    // Checked before a build of several minutes.
    cfg.validate()?;
    if let (DeployCommand::Up(_), Some(images)) = (cmd, &cfg.images)
        && images.build
        && !args.dry_run
    {
        let root = source_root()?;
        let dir = images.dir.clone();
        tokio::task::spawn_blocking(move || ecsmesh_deploy::ecr::build_images(&root, &dir))
            .await??;
    }

    let mut deployer = Deployer::new(&sdk, cfg)?;
    let text = matches!(args.output, Output::Text);
    if text && std::io::stderr().is_terminal() {
        deployer = deployer.with_progress(|s| eprintln!("  {s}"));
    }
    let (report, controller) = match cmd {
        DeployCommand::Up(_) => (Box::pin(deployer.up(args.dry_run)).await?, None),
        DeployCommand::Status(status) => {
            let (report, instances) = Box::pin(deployer.status_with_instances()).await?;
            let view = Box::pin(ask_controllers(&deployer, status, &instances)).await?;
            (report, Some(view))
        }
        DeployCommand::Down(_) => (Box::pin(deployer.down(args.dry_run)).await?, None),
    };
    if text {
        let mut out = report_text(&report);
        if let Some(address) = &report.controller_address {
            // Where ecsmeshctl's settings file (and the agents) reach it.
            out.push_str("\ncontroller: ");
            out.push_str(address);
        }
        if let Some(view) = &controller {
            out.push('\n');
            out.push_str(&view.text());
        }
        emit(&out)
    } else {
        let mut value = serde_json::to_value(&report)?;
        if let (Some(view), Some(obj)) = (&controller, value.as_object_mut()) {
            obj.extend(view.json());
        }
        emit(&serde_json::to_string_pretty(&value)?)
    }
}

/// One controller asked for its agents.
#[derive(Debug)]
struct Asked {
    address: String,
    answer: Result<pb::ListAgentsResponse, String>,
}

/// The controller's part of `status`.
#[derive(Debug)]
struct ControllerView {
    asked: Vec<Asked>,
    /// The cluster's registered instances that no reachable controller
    /// reports an agent for (`None`: no controller answered, so unknown).
    without_agent: Option<Vec<String>>,
    /// The addresses came from ECS (private IPs), not from --controller.
    found_in_ecs: bool,
}

/// Asks `address`, or else every running controller task; an unreachable
/// controller is an answer (reported), not a failure of `status`.
/// `instances`: the cluster's registered instances (ARN -> EC2 id), as
/// `status` read them.
async fn ask_controllers(
    deployer: &Deployer,
    status: &StatusArgs,
    instances: &BTreeMap<String, String>,
) -> anyhow::Result<ControllerView> {
    let address = status.controller.as_deref();
    // The controller's name, not the address's host (a private IP).
    let server_name = status.tls_server_name.clone().or_else(|| {
        deployer
            .config()
            .tls()
            .then(|| ecsmesh_deploy::TLS_CONTROLLER_SERVER_NAME.to_owned())
    });
    let addresses = match address {
        Some(a) => vec![a.to_owned()],
        None => deployer.controller_endpoints().await?,
    };
    // The CA `up` saved for the operator, unless another is given.
    let tls_ca = status.tls_ca.clone().or_else(|| {
        let cfg = deployer.config();
        let ca = cfg.secrets_dir.as_ref()?.join("ca.pem");
        (cfg.tls() && ca.is_file()).then_some(ca)
    });
    let mut asked = Vec::new();
    for address in addresses {
        let args = ControllerArgs {
            controller: Some(address.clone()),
            tls_ca: tls_ca.clone(),
            tls_server_name: server_name.clone(),
            ..ControllerArgs::default()
        };
        let answer =
            match tokio::time::timeout(CONTROLLER_TIMEOUT, remote::list_agents(&args)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err(format!(
                    "no answer within {} s",
                    CONTROLLER_TIMEOUT.as_secs()
                )),
            };
        asked.push(Asked { address, answer });
    }
    let mut without_agent = None;
    if asked.iter().any(|a| a.answer.is_ok()) {
        let with_agent: BTreeSet<&str> = asked
            .iter()
            .filter_map(|a| a.answer.as_ref().ok())
            .flat_map(|r| r.agents.iter().map(|a| a.instance_id.as_str()))
            .collect();
        without_agent = Some(
            instances
                .values()
                .filter(|iid| !with_agent.contains(iid.as_str()))
                .cloned()
                .collect(),
        );
    }
    Ok(ControllerView {
        asked,
        without_agent,
        found_in_ecs: address.is_none(),
    })
}

/// The operator's secrets directory when none is given:
/// `$XDG_CONFIG_HOME/ecsmesh/<cluster>`, else `~/.config/ecsmesh/<cluster>`
/// (beside ecsmeshctl's own settings file).
fn default_secrets_dir(env: &crate::config::Env, cluster: &str) -> Option<PathBuf> {
    crate::config::default_path(env).and_then(|p| p.parent().map(|dir| dir.join(cluster)))
}

/// The library's settings from the command line's.
fn deploy_config(args: &DeployArgs, region: String) -> anyhow::Result<DeployConfig> {
    let mut cfg = DeployConfig::new(&args.cluster, region);
    cfg.subnets.clone_from(&args.subnets);
    cfg.key_pair.clone_from(&args.key_pair);
    cfg.ssh_cidr.clone_from(&args.ssh_cidr);
    cfg.instance_type.clone_from(&args.instance_type);
    (cfg.min_size, cfg.max_size, cfg.desired_capacity) = (args.min, args.max, args.desired);
    cfg.instance_profile.clone_from(&args.instance_profile);
    cfg.ami.clone_from(&args.ami);
    cfg.image_repo.clone_from(&args.image_repo);
    cfg.image_tag.clone_from(&args.image_tag);
    cfg.agent = match args.agent {
        Agent::UserData => AgentPlacement::UserData,
        Agent::Daemon => AgentPlacement::Daemon,
    };
    cfg.controller_address.clone_from(&args.controller_address);
    cfg.controller_target_group
        .clone_from(&args.controller_target_group);
    cfg.controller_replicas = args.controller_replicas;
    cfg.consul_address.clone_from(&args.consul_address);
    cfg.store = match (args.store, &args.consul_address) {
        (Some(Store::File), _) => StoreKind::File,
        (Some(Store::Consul), _) | (None, Some(_)) => StoreKind::Consul,
        (Some(Store::Dynamodb), _) | (None, None) => StoreKind::Dynamodb,
    };
    cfg.with_demo = args.with_demo;
    cfg.launch_configuration = args.launch_configuration;
    cfg.tls_ssm_prefix.clone_from(&args.tls_ssm_prefix);
    cfg.insecure = args.insecure;
    cfg.ecs_events = !args.no_events;
    cfg.secrets_dir = args.secrets_dir.clone().or_else(|| {
        let env = |k: &str| std::env::var(k).ok();
        default_secrets_dir(&env, &args.cluster)
    });
    if args.build_images || args.images_dir.is_some() {
        cfg.images = Some(ImagesConfig {
            dir: args
                .images_dir
                .clone()
                .unwrap_or_else(ecsmesh_deploy::ecr::default_images_dir),
            registry_endpoint: args.registry_endpoint.clone(),
            build: args.build_images,
        });
    } else if args.registry_endpoint.is_some() {
        anyhow::bail!("--registry-endpoint needs --build-images or --images-dir");
    }
    Ok(cfg)
}

/// The ecsmesh source tree `--build-images` builds from: the current
/// directory or the nearest parent with `scripts/images.sh`.
fn source_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("the current directory")?;
    cwd.ancestors()
        .find(|d| d.join("scripts/images.sh").is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "--build-images builds from the ecsmesh source tree, and neither {} nor a parent \
                 has scripts/images.sh: run it from a clone, or pass --images-dir with images \
                 built there by `make images`",
                cwd.display()
            )
        })
}

/// Ready once the first mesh state is published, as the controller's `/ready` says.
fn health(r: &pb::ListAgentsResponse) -> &'static str {
    if r.version > 0 {
        "ready"
    } else {
        "serving, not ready (waiting for the first sync of every source)"
    }
}

impl ControllerView {
    fn text(&self) -> String {
        let mut out = String::new();
        if self.asked.is_empty() {
            out.push_str("controller: no running task to ask (pass --controller URL)");
        }
        for (i, a) in self.asked.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            match &a.answer {
                Ok(r) => {
                    let _ = write!(
                        out,
                        "controller {}: {}\n{}",
                        a.address,
                        health(r),
                        remote::agents_text(r)
                    );
                }
                Err(e) => {
                    let _ = write!(out, "controller {}: unreachable: {e}", a.address);
                }
            }
        }
        if self.found_in_ecs && self.asked.iter().any(|a| a.answer.is_err()) {
            out.push_str(
                "\n(a controller task's private address answers only from inside its VPC; \
                 elsewhere pass --controller URL)",
            );
        }
        match &self.without_agent {
            Some(ids) if ids.is_empty() => {
                out.push_str("\nevery registered instance has a connected agent");
            }
            Some(ids) => {
                let _ = write!(
                    out,
                    "\ninstances without a connected agent: {}",
                    ids.join(", ")
                );
            }
            None => {}
        }
        out
    }

    fn json(&self) -> serde_json::Map<String, Value> {
        let controllers: Vec<Value> = self
            .asked
            .iter()
            .map(|a| match &a.answer {
                Ok(r) => {
                    let mut v = remote::agents_json(r);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("address".to_owned(), json!(a.address));
                        obj.insert("reachable".to_owned(), json!(true));
                        obj.insert("ready".to_owned(), json!(r.version > 0));
                    }
                    v
                }
                Err(e) => json!({ "address": a.address, "reachable": false, "error": e }),
            })
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("controllers".to_owned(), json!(controllers));
        out.insert(
            "instances_without_agent".to_owned(),
            json!(self.without_agent),
        );
        out
    }
}

fn report_text(r: &Report) -> String {
    let mut out = String::new();
    for s in &r.steps {
        let _ = writeln!(out, "{s}");
    }
    if r.operation == "status" {
        let off = r
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::Update | Action::Absent))
            .count();
        if off == 0 {
            let _ = write!(
                out,
                "status: every resource of cluster {} exists and matches",
                r.cluster
            );
        } else {
            let _ = write!(
                out,
                "status: {off} resource(s) of cluster {} absent or different (`up` makes them match)",
                r.cluster
            );
        }
        return out;
    }
    let what = if r.dry_run { "plan" } else { r.operation };
    if r.changed() {
        let n = r.steps.iter().filter(|s| s.action.is_change()).count();
        let _ = write!(out, "{what}: {n} change(s) for cluster {}", r.cluster);
    } else {
        let _ = write!(out, "{what}: nothing to change for cluster {}", r.cluster);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    #[test]
    fn the_secrets_directory_follows_xdg() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            let map: HashMap<&str, &str> = vars.iter().copied().collect();
            move |k: &str| map.get(k).map(|v| (*v).to_owned())
        };
        let dir = default_secrets_dir(&env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]), "prod");
        assert_eq!(dir.unwrap(), Path::new("/x/ecsmesh/prod"));
        let dir = default_secrets_dir(&env(&[("HOME", "/h")]), "prod");
        assert_eq!(dir.unwrap(), Path::new("/h/.config/ecsmesh/prod"));
        assert!(default_secrets_dir(&env(&[]), "prod").is_none());
    }
}
