//! `ecsmesh-agent`: see the crate docs and the README's configuration
//! reference.

use clap::Parser as _;
use ecsmesh_agent::Agent;
use ecsmesh_agent::config::{Args, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::load(&Args::parse())?;
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
