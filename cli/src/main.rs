//! `ecsmeshctl`: the ecsmesh command line.

mod certs;
mod config;
mod deploy;
mod dtab;
mod output;
mod policy;
mod remote;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ecsmeshctl",
    version,
    about = "Operate an ecsmesh service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dtabs: the offline playground (parse, path, tree, lookup, delegate
    /// --dtab) and the controller's dtab API.
    #[command(subcommand)]
    Dtab(dtab::DtabCommand),
    /// Service policies (timeouts, retries, classifiers, balancing) on the
    /// controller, and `check` to validate one offline.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The agents connected to the controller and whether they converged.
    Status(remote::StatusCommand),
    /// Certificates for TLS on every hop: `certs init` makes a mesh CA and
    /// certificates for the controller, agents and an operator.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Deploy ecsmesh to AWS (ECS on EC2): up, status, down.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecsmeshctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: &Command) -> anyhow::Result<()> {
    if let Command::Dtab(cmd) = command
        && let Some(answer) = dtab::run_offline(cmd)?
    {
        return output::emit(&answer);
    }
    if let Command::Policy(cmd) = command
        && let Some(answer) = policy::run_offline(cmd)?
    {
        return output::emit(&answer);
    }
    // Only the controller commands need a runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            Command::Dtab(cmd) => remote::run_dtab(cmd).await,
            Command::Policy(cmd) => policy::run(cmd).await,
            Command::Status(cmd) => remote::status(cmd).await,
            Command::Deploy(cmd) => deploy::run(cmd).await,
            Command::Certs(cmd) => output::emit(&certs::run(cmd)?),
        }
    })
}
