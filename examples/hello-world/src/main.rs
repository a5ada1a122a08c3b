//! `helloworld`: answers `<text> (<POD_IP>)`, optionally followed by its target's answer, then `!`.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use ecsmesh_hello_world::{Config, serve};

/// The demo's hello/world service (Linkerd's helloworld, in Rust).
#[derive(Debug, Parser)]
#[command(name = "helloworld", version)]
struct Args {
    /// Address to listen on (host:port).
    #[arg(long)]
    addr: SocketAddr,
    /// The text to answer with.
    #[arg(long)]
    text: String,
    /// A service to call (`http://<target>`) through `http_proxy`; its answer is appended.
    #[arg(long)]
    target: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let pod_ip = std::env::var("POD_IP")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| args.addr.ip().to_string());
    let proxy = ["http_proxy", "HTTP_PROXY"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|s| !s.is_empty()));
    let config = Config::new(args.text, pod_ip, args.target, proxy.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    tracing::info!(addr = %args.addr, target = ?config.target, proxy = ?config.proxy, "helloworld listening");
    serve(listener, config).await
}
