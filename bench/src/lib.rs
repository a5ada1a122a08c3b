//! Benchmark tools for ecsmesh (see `bench/README.md`):
//! - `bench-upstream`: an HTTP/1.1 server answering `/64` and `/4096` with
//!   bodies of that size, on one thread — the same upstream for every
//!   system under test (with `--count`, it also counts what it served:
//!   the cross-zone rows);
//! - `bench-load`: an open-loop, constant-rate load generator that measures
//!   latency from each request's scheduled start (so a stall is charged to
//!   every request it delays, unlike a closed loop);
//! - `bench-snapshot`: writes the agent snapshot the proxy benchmark routes
//!   with (a 20-entry dtab, 50 services; with `--zone-endpoint`, the
//!   cross-zone rows' two services and their policy);
//! - `bench-push`: a stand-in controller serving `Mesh.Stream`: that same
//!   snapshot, then a delta every `--interval-ms` (the `agent-deltas` row);
//! - `bench-control`: the control-plane benchmark.
//!
//! The library holds what two of them share: [`BenchMesh`], the proxy
//! benchmark's mesh, which `bench-snapshot` writes to disk and `bench-push`
//! streams.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::{Endpoint, EndpointSet, MeshState};

/// The proxy benchmark's mesh: a 20-entry namespace dtab and 50 services,
/// `/#/ecs/bench/svc0` … `svc49`, whose endpoint is the benchmark upstream
/// (on the host given).
///
/// With `--zone-endpoint ADDR=ZONE` (repeated), two more services for the
/// cross-zone rows: `zones` and `zones-off`, both with those endpoints (each
/// carrying its availability zone), and a service policy on
/// `/svc/zones-off` that turns zone-aware balancing off.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchMesh {
    /// The upstream every service's endpoint points at.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// The host the upstream runs on (for linker-to-linker).
    #[arg(long)]
    pub upstream_host: IpAddr,
    /// An endpoint of the `zones` and `zones-off` services and its
    /// availability zone, `ADDR=ZONE`.
    #[arg(long, value_parser = zone_endpoint)]
    pub zone_endpoint: Vec<(SocketAddr, String)>,
}

fn zone_endpoint(s: &str) -> anyhow::Result<(SocketAddr, String)> {
    let (addr, zone) = s.split_once('=').context("ADDR=ZONE")?;
    Ok((addr.parse()?, zone.to_owned()))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): what every
/// bench binary that logs starts with.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The policy of `/svc/zones-off`.
const ZONES_OFF_POLICY: &str = "{\"zone_aware\":false}";

/// The snapshot's version and epoch: what an agent restored from
/// `bench-snapshot`'s file holds, and where `bench-push` starts counting.
pub const SNAPSHOT_VERSION: u64 = 1;
pub const SNAPSHOT_EPOCH: &str = "bench";

impl BenchMesh {
    /// The snapshot (version [`SNAPSHOT_VERSION`], epoch
    /// [`SNAPSHOT_EPOCH`]), checked as the agent will read it.
    pub fn snapshot(&self) -> anyhow::Result<pb::Snapshot> {
        let mut dtab = String::from("/srv=>/#/ecs/bench;/host=>/srv;/svc=>/host;");
        for i in 0..17 {
            write!(dtab, "/svc/legacy{i}=>/srv/svc{i};")?;
        }
        let mut mesh = MeshState {
            dtabs: [("default".to_owned(), Arc::new(Dtab::read(&dtab)?))].into(),
            ..MeshState::default()
        };
        for s in 0..50 {
            let set: EndpointSet = [
                Endpoint::new(self.upstream).with_meta("host_ip", self.upstream_host.to_string())
            ]
            .into_iter()
            .collect();
            mesh.sets
                .insert(Path::read(&format!("/#/ecs/bench/svc{s}"))?, Arc::new(set));
        }
        if !self.zone_endpoint.is_empty() {
            let set: Arc<EndpointSet> = Arc::new(
                self.zone_endpoint
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
        let mut snapshot = mesh.to_snapshot(SNAPSHOT_VERSION, SNAPSHOT_EPOCH);
        if !self.zone_endpoint.is_empty() {
            snapshot.policies.push(pb::ServicePolicy {
                prefix: "/svc/zones-off".to_owned(),
                policy: ZONES_OFF_POLICY.to_owned(),
                version: 1,
            });
        }
        // What the agent will do with it, checked here.
        MeshState::from_snapshot(&snapshot)?;
        Ok(snapshot)
    }
}
