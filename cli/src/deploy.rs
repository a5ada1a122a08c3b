//! `ecsmeshctl deploy up|status|down`: the arguments and the dispatch to
//! `ecsmesh-deploy`.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use ecsmesh_deploy::{AgentPlacement, DeployConfig, Deployer, Report};

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Create or update everything (idempotent: a second run changes nothing).
    Up(DeployArgs),
    /// Each resource: whether it exists and matches; the services' tasks.
    Status(DeployArgs),
    /// Remove what `up` created (tagged ecsmesh:owner=<cluster>), in reverse order.
    Down(DeployArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Agent {
    /// `docker run` from the instance user data, at boot.
    UserData,
    /// An ECS DAEMON service.
    Daemon,
}

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
    #[arg(long, default_value_t = 1)]
    min: i32,
    #[arg(long, default_value_t = 1)]
    max: i32,
    #[arg(long, default_value_t = 1)]
    desired: i32,
    /// Instance profile (name or ARN) for the instances.
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
    /// The controller's gRPC address as agents reach it. The default suits
    /// one instance (host network); several instances need a stable address.
    #[arg(long, default_value = "http://127.0.0.1:4321")]
    controller_address: String,
    /// Controller replicas; more than one needs --consul-address.
    #[arg(long, default_value_t = 1)]
    controller_replicas: i32,
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
    /// Print the plan (create/update/unchanged per resource); call no mutating API.
    #[arg(long)]
    dry_run: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
    /// Endpoint override for every AWS service (emulators).
    #[arg(long, env = "ECSMESH_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
}

/// Runs one deploy command (boxed: the SDK futures are large).
pub async fn run(cmd: &DeployCommand) -> anyhow::Result<()> {
    Box::pin(run_inner(cmd)).await
}

async fn run_inner(cmd: &DeployCommand) -> anyhow::Result<()> {
    let (DeployCommand::Up(args) | DeployCommand::Status(args) | DeployCommand::Down(args)) = cmd;
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
    cfg.controller_replicas = args.controller_replicas;
    cfg.consul_address.clone_from(&args.consul_address);
    cfg.with_demo = args.with_demo;
    cfg.launch_configuration = args.launch_configuration;

    let mut deployer = Deployer::new(&sdk, cfg)?;
    let text = matches!(args.output, Output::Text);
    if text && std::io::stderr().is_terminal() {
        deployer =
            deployer.with_progress(|s| eprintln!("  {:<9} {:<20} {}", s.action, s.kind, s.name));
    }
    let report = match cmd {
        DeployCommand::Up(_) => Box::pin(deployer.up(args.dry_run)).await?,
        DeployCommand::Status(_) => Box::pin(deployer.status()).await?,
        DeployCommand::Down(_) => Box::pin(deployer.down(args.dry_run)).await?,
    };
    if text {
        print_text(&report);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn print_text(r: &Report) {
    for s in &r.steps {
        println!(
            "{:<9} {:<20} {} {}",
            s.action.to_string(),
            s.kind,
            s.name,
            s.detail
        );
    }
    let what = if r.dry_run { "plan" } else { r.operation };
    if r.changed() {
        let n = r.steps.iter().filter(|s| s.action.is_change()).count();
        println!("{what}: {n} change(s) for cluster {}", r.cluster);
    } else {
        println!("{what}: nothing to change for cluster {}", r.cluster);
    }
}
