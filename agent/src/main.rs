//! `ecsmesh-agent`: see the crate docs and the README's configuration
//! reference.

use clap::Parser as _;
use ecsmesh_agent::Agent;
use ecsmesh_agent::config::{Args, Config};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::load(&Args::parse())?;
    let (workers, source) = config.workers();
    tracing::info!(workers, source, "worker threads");
    // One worker: tokio's current-thread scheduler, which wakes tasks
    // without the multi-thread one's cross-thread machinery.
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    runtime
        .thread_name("ecsmesh-worker")
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let agent = Agent::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = async { let _ = tokio::signal::ctrl_c().await; } => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    agent.shutdown().await;
    Ok(())
}
