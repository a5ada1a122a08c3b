//! Writes the snapshot the proxy benchmark's agents route with: a 20-entry
//! namespace dtab and 50 services, `/#/ecs/bench/svc0` … `svc49`, whose
//! endpoints are the benchmark upstream (on the host given).
//!
//! With `--zone-endpoint ADDR=ZONE` (repeated), two more services for the
//! cross-zone rows: `zones` and `zones-off`, both with those endpoints (each
//! carrying its availability zone), and a service policy on
//! `/svc/zones-off` that turns zone-aware balancing off.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::{Endpoint, EndpointSet, MeshState};
use prost::Message as _;

#[derive(Debug, Parser)]
struct Args {
    /// The upstream every service's endpoint points at.
    #[arg(long)]
    upstream: SocketAddr,
    /// The host the upstream runs on (for linker-to-linker).
    #[arg(long)]
    upstream_host: std::net::IpAddr,
    /// An endpoint of the `zones` and `zones-off` services and its
    /// availability zone, `ADDR=ZONE`.
    #[arg(long, value_parser = zone_endpoint)]
    zone_endpoint: Vec<(SocketAddr, String)>,
    /// Where to write (the agent's `state_dir`/snapshot.pb).
    #[arg(long)]
    out: std::path::PathBuf,
}

fn zone_endpoint(s: &str) -> anyhow::Result<(SocketAddr, String)> {
    let (addr, zone) = s.split_once('=').context("ADDR=ZONE")?;
    Ok((addr.parse()?, zone.to_owned()))
}

/// The policy of `/svc/zones-off`.
const ZONES_OFF_POLICY: &str = "{\"zone_aware\":false}";

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
    if !args.zone_endpoint.is_empty() {
        let set: Arc<EndpointSet> = Arc::new(
            args.zone_endpoint
                .iter()
                .map(|(addr, zone)| {
                    Endpoint::new(*addr)
                        .with_meta("host_ip", addr.ip().to_string())
                        .with_meta(ecsmesh_state::meta::AVAILABILITY_ZONE, zone.clone())
                })
                .collect(),
        );
        for name in ["zones", "zones-off"] {
            mesh.sets.insert(
                Path::read(&format!("/#/ecs/bench/{name}"))?,
                Arc::clone(&set),
            );
        }
    }
    let mut snapshot = mesh.to_snapshot(1, "bench");
    if !args.zone_endpoint.is_empty() {
        snapshot.policies.push(pb::ServicePolicy {
            prefix: "/svc/zones-off".to_owned(),
            policy: ZONES_OFF_POLICY.to_owned(),
            version: 1,
        });
        // What the agent will do with it, checked here.
        MeshState::from_snapshot(&snapshot)?;
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, snapshot.encode_to_vec())?;
    Ok(())
}
