//! Writes the snapshot the proxy benchmark's agents route with
//! ([`ecsmesh_bench::BenchMesh`]: a 20-entry namespace dtab and 50
//! services, `/#/ecs/bench/svc0` … `svc49`, whose endpoints are the
//! benchmark upstream; with `--zone-endpoint`, the cross-zone rows' two
//! services and their policy). `bench-push` streams the same snapshot.

use clap::Parser;
use ecsmesh_bench::BenchMesh;
use prost::Message as _;

/// Writes the proxy benchmark's agent snapshot.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    mesh: BenchMesh,
    /// Where to write (the agent's `state_dir`/snapshot.pb).
    #[arg(long)]
    out: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let snapshot = args.mesh.snapshot()?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, snapshot.encode_to_vec())?;
    Ok(())
}
