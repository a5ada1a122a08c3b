//! `helloworld`: answers `<text> (<POD_IP>)`, optionally followed by its target's answer, then `!`.
//!
//! On ECS (bridge mode, dynamic host port) it listens on `0.0.0.0:7777` and
//! calls its target through the host's agent: `http_proxy=$HOST_IP:4140`.
//! `$HOST_IP` is filled in here (ECS passes the value verbatim): from the
//! `HOST_IP` variable if set, else the instance's private IP as the agent
//! learns its own (IMDSv2 `local-ipv4`, which a bridge-mode container reaches
//! with the launch template's hop limit 2). Unless `POD_IP` is set, the host
//! IP (when known) is the address shown: a bridge-mode container's own is
//! meaningless outside the instance.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use ecsmesh_agent_identity::{IdentityConfig, Source, discover};
use ecsmesh_hello_world::{Config, HOST_IP_VAR, fill_host_ip, mentions_host_ip, serve};

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
    let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    let proxy = ["http_proxy", "HTTP_PROXY"].iter().find_map(|k| var(k));
    let pod_ip = var("POD_IP");
    let proxy_needs_host = proxy.as_deref().is_some_and(mentions_host_ip);
    let host_ip = match var(HOST_IP_VAR) {
        Some(ip) => Some(ip),
        None if proxy_needs_host => Some(
            host_ip()
                .await
                .context("http_proxy names $HOST_IP, and the host IP is unknown")?,
        ),
        // Only for display: without it the answer shows the listen address.
        None if pod_ip.is_none() && args.addr.ip().is_unspecified() => host_ip()
            .await
            .inspect_err(|e| tracing::warn!(error = format!("{e:#}"), "host IP unknown"))
            .ok(),
        None => None,
    };
    let pod_ip = pod_ip
        .or_else(|| host_ip.clone())
        .unwrap_or_else(|| args.addr.ip().to_string());
    let proxy = match (proxy, &host_ip) {
        (Some(p), Some(ip)) => Some(fill_host_ip(&p, ip)),
        (p, _) => p,
    };
    let config = Config::new(args.text, pod_ip, args.target, proxy.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    tracing::info!(addr = %args.addr, target = ?config.target, proxy = ?config.proxy, "helloworld listening");
    serve(listener, config).await
}

/// The instance's private IP, found the way the agent finds its own
/// (IMDSv2 first; `AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides the endpoint).
async fn host_ip() -> anyhow::Result<String> {
    let identity = discover(&IdentityConfig::from_env()).await?;
    if identity.source == Source::Interface {
        // In bridge mode that is the container's own address, not the host's.
        tracing::warn!(
            host_ip = %identity.host_ip,
            "host IP from a network interface: IMDSv2 did not answer (hop limit below 2?)"
        );
    } else {
        tracing::info!(host_ip = %identity.host_ip, source = %identity.source, "host IP");
    }
    Ok(identity.host_ip.to_string())
}
