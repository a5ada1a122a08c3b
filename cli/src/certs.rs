//! `ecsmeshctl certs init`: a mesh CA and certificates for the
//! controller, the agents and an operator, for the demo, tests and a first
//! deployment. (For production, see the README's TLS section: any CA
//! works, these are only PEM files.)

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use ecsmesh_tls::generate::{MeshCertsSpec, write_mesh_certs};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a mesh CA (or reuse the one in --out) and issue certificates:
    /// ca.pem, controller.pem, agent-N.pem, admin.pem, each with a -key.pem.
    /// Run again to re-issue them all under the same CA (a rotation).
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the files.
    #[arg(long)]
    pub out: PathBuf,
    /// How many agent certificates (agent-1 … agent-N).
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// A name the controller's certificate carries (repeat): what agents
    /// and ecsmeshctl verify [default: ecsmesh-controller, localhost, 127.0.0.1].
    #[arg(long = "controller-name")]
    pub controller_names: Vec<String>,
    /// A name the agents' certificates carry (repeat): the first is what
    /// outgoing agents verify (--l2l-server-name); add '*.svc.mesh' for a
    /// '{service}.svc.mesh' template [default: ecsmesh-agent].
    #[arg(long = "agent-name")]
    pub agent_names: Vec<String>,
    /// The operator certificate's name (allow it with the controller's
    /// --admin-identity).
    #[arg(long, default_value = "ecsmesh-admin")]
    pub admin_name: String,
    /// Validity of the issued certificates, in days.
    #[arg(long, default_value_t = 90)]
    pub days: i64,
}

pub fn run(cmd: &CertsCommand) -> Result<String> {
    match cmd {
        CertsCommand::Init(args) => {
            let defaults = MeshCertsSpec::default();
            let spec = MeshCertsSpec {
                agents: args.agents,
                controller_names: if args.controller_names.is_empty() {
                    defaults.controller_names
                } else {
                    args.controller_names.clone()
                },
                agent_names: if args.agent_names.is_empty() {
                    defaults.agent_names
                } else {
                    args.agent_names.clone()
                },
                admin_name: args.admin_name.clone(),
                days: args.days,
                ..defaults
            };
            let written = write_mesh_certs(&args.out, &spec)
                .with_context(|| format!("writing certificates to {}", args.out.display()))?;
            Ok(written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}
