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
    let controller = Controller::start(config, &[]).await?;
    tokio::select! {
        r = controller.wait() => r,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}
