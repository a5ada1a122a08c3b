//! Writes the snapshot the proxy benchmark's agents route with: a 20-entry
//! namespace dtab and 50 services, `/#/ecs/bench/svc0` … `svc49`, whose
//! endpoints are the benchmark upstream (on the host given).

use std::fmt::Write as _;
use std::sync::Arc;

use clap::Parser;
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_state::{Endpoint, EndpointSet, MeshState};
use prost::Message as _;

#[derive(Debug, Parser)]
struct Args {
    /// The upstream every service's endpoint points at.
    #[arg(long)]
    upstream: std::net::SocketAddr,
    /// The host the upstream runs on (for linker-to-linker).
    #[arg(long)]
    upstream_host: std::net::IpAddr,
    /// Where to write (the agent's `state_dir`/snapshot.pb).
    #[arg(long)]
    out: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut dtab = String::from("/srv=>/#/ecs/bench;/host=>/srv;/svc=>/host;");
    for i in 0..17 {
        write!(dtab, "/svc/legacy{i}=>/srv/svc{i};")?;
    }
    let mut mesh = MeshState {
        dtabs: [("default".to_owned(), Arc::new(Dtab::read(&dtab)?))].into(),
        ..MeshState::default()
    };
    for s in 0..50 {
        let set: EndpointSet =
            [Endpoint::new(args.upstream).with_meta("host_ip", args.upstream_host.to_string())]
                .into_iter()
                .collect();
        mesh.sets
            .insert(Path::read(&format!("/#/ecs/bench/svc{s}"))?, Arc::new(set));
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, mesh.to_snapshot(1, "bench").encode_to_vec())?;
    Ok(())
}
