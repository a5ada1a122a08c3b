//! `ecsmesh-controller`: see the crate docs and the README's configuration
//! reference.

use clap::Parser as _;
use ecsmesh_controller::Controller;
use ecsmesh_controller::config::{Args, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = Config::load(&args)?;
    let mut controller = Controller::start(config, &[]).await?;
    // ECS stops a task with SIGTERM: a leader hands its lease over first.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let done = tokio::select! {
        r = controller.wait_running() => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = terminate.recv() => None,
    };
    if let Some(r) = done {
        return r;
    }
    tracing::info!("shutting down");
    controller.stop().await;
    Ok(())
}
