//! The demo's `helloworld` service, modelled on Linkerd's.
//!
//! `GET` anything: `<text> (<pod_ip>)`; with a target, ` ` and the target's answer
//! (fetched as `GET http://<target>/` through the HTTP proxy, carrying the inbound
//! `l5d-ctx-*` headers), then `!`. A failing target answers 503 with the error.
//! `POST /setLatency` (milliseconds) delays every answer; `POST /setFailureRate`
//! (0.0–1.0) makes that fraction of answers 500.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// How long one call to the target may take, connection included.
const TARGET_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest target answer read.
const MAX_BODY: usize = 64 * 1024;

/// What one helloworld process answers and calls.
#[derive(Debug)]
pub struct Config {
    /// The text it answers with.
    pub text: String,
    /// Shown after the text, in parentheses.
    pub pod_ip: String,
    /// `host[:port]` called as `http://<target>/`.
    pub target: Option<String>,
    /// The forward proxy (`host:port`) the target is called through; `None` calls it directly.
    pub proxy: Option<String>,
    latency_ms: AtomicU64,
    failure_rate: AtomicU64,
}

impl Config {
    /// `proxy` may be `host:port` or `http://host:port[/]`, as `http_proxy` is usually written.
    pub fn new(
        text: String,
        pod_ip: String,
        target: Option<String>,
        proxy: Option<&str>,
    ) -> anyhow::Result<Self> {
        let proxy = proxy.map(parse_proxy).transpose()?;
        Ok(Self {
            text,
            pod_ip,
            target,
            proxy,
            latency_ms: AtomicU64::new(0),
            failure_rate: AtomicU64::new(0f64.to_bits()),
        })
    }

    /// The added latency of every answer.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    /// The fraction of answers that fail with 500.
    pub fn failure_rate(&self) -> f64 {
        f64::from_bits(self.failure_rate.load(Ordering::Relaxed))
    }
}

/// The variable a proxy setting may use for the host's private IP, as in
/// `http_proxy=$HOST_IP:4140`. ECS passes environment values verbatim and the
/// image has no shell, so the app fills it in itself.
pub const HOST_IP_VAR: &str = "HOST_IP";

/// Whether `value` uses `$HOST_IP` or `${HOST_IP}`.
pub fn mentions_host_ip(value: &str) -> bool {
    fill_host_ip(value, "") != value
}

/// Replaces `${HOST_IP}` and `$HOST_IP` (not `$HOST_IPV6`) with `ip`.
pub fn fill_host_ip(value: &str, ip: &str) -> String {
    let braced = format!("${{{HOST_IP_VAR}}}");
    let bare = format!("${HOST_IP_VAR}");
    let value = value.replace(&braced, ip);
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    while let Some(at) = rest.find(&bare) {
        let after = &rest[at + bare.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&bare);
        } else {
            out.push_str(ip);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn parse_proxy(raw: &str) -> anyhow::Result<String> {
    let s = raw.trim();
    let s = s.strip_prefix("http://").unwrap_or(s);
    let s = s.trim_end_matches('/');
    if s.is_empty() || s.contains('/') || s.contains("://") {
        bail!("http_proxy must be host:port or http://host:port, got {raw:?}");
    }
    Ok(s.to_owned())
}

/// Serves `config` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let config = Arc::clone(&config);
                async move { Ok::<_, Infallible>(handle(&config, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(config: &Config, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::POST {
        let path = req.uri().path().to_owned();
        let body = match read_body(req.into_body()).await {
            Ok(body) => body,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e:#}\n")),
        };
        return match path.as_str() {
            "/setLatency" => match body.trim().parse::<u64>() {
                Ok(ms) => {
                    config.latency_ms.store(ms, Ordering::Relaxed);
                    text(StatusCode::OK, format!("latency set to {ms}ms\n"))
                }
                Err(_) => text(
                    StatusCode::BAD_REQUEST,
                    "setLatency: the body must be a number of milliseconds\n",
                ),
            },
            "/setFailureRate" => match body.trim().parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => {
                    config.failure_rate.store(rate.to_bits(), Ordering::Relaxed);
                    text(StatusCode::OK, format!("failure rate set to {rate}\n"))
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "setFailureRate: the body must be a number from 0.0 to 1.0\n",
                ),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
    }

    let latency = config.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let rate = config.failure_rate();
    if rate > 0.0 && fastrand::f64() < rate {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} ({}): failure injected\n", config.text, config.pod_ip),
        );
    }

    let mut answer = format!("{} ({})", config.text, config.pod_ip);
    if let Some(target) = &config.target {
        let ctx = l5d_ctx_headers(req.headers());
        match call_target(config.proxy.as_deref(), target, &ctx).await {
            Ok(body) => {
                answer.push(' ');
                answer.push_str(body.trim_end_matches(['\r', '\n']));
            }
            Err(e) => {
                tracing::warn!(%target, error = format!("{e:#}"), "target call failed");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{answer}: calling {target}: {e:#}\n"),
                );
            }
        }
    }
    answer.push('!');
    text(StatusCode::OK, answer)
}

/// The inbound `l5d-ctx-*` headers, the only ones passed on to the target.
pub fn l5d_ctx_headers(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("l5d-ctx-"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

async fn read_body(body: Incoming) -> anyhow::Result<String> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
        .to_bytes();
    String::from_utf8(bytes.to_vec()).context("the body is not UTF-8")
}

/// `GET http://<target>/`, through `proxy` (absolute URI to the proxy) or directly.
/// A non-2xx answer is an error carrying its status and body.
pub async fn call_target(
    proxy: Option<&str>,
    target: &str,
    headers: &HeaderMap,
) -> anyhow::Result<String> {
    tokio::time::timeout(TARGET_TIMEOUT, call_target_inner(proxy, target, headers))
        .await
        .with_context(|| format!("no answer within {TARGET_TIMEOUT:?}"))?
}

async fn call_target_inner(
    proxy: Option<&str>,
    target: &str,
    headers: &HeaderMap,
) -> anyhow::Result<String> {
    let connect_to = proxy.map_or_else(
        || {
            if target.contains(':') {
                target.to_owned()
            } else {
                format!("{target}:80")
            }
        },
        str::to_owned,
    );
    let stream = TcpStream::connect(&connect_to)
        .await
        .with_context(|| format!("connecting to {connect_to}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let conn = tokio::spawn(conn);

    let uri = if proxy.is_some() {
        format!("http://{target}/")
    } else {
        "/".to_owned()
    };
    let mut req = Request::get(uri)
        .header(header::HOST, target)
        .body(Full::new(Bytes::new()))
        .context("building the request")?;
    req.headers_mut().extend(headers.clone());
    let resp = sender
        .send_request(req)
        .await
        .context("sending the request")?;
    let status = resp.status();
    let body = read_body(resp.into_body()).await?;
    drop(sender);
    conn.abort();
    if !status.is_success() {
        bail!("{status}: {}", body.trim_end());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_forms() {
        assert_eq!(parse_proxy("127.0.1.1:4140").unwrap(), "127.0.1.1:4140");
        assert_eq!(
            parse_proxy("http://127.0.1.1:4140/").unwrap(),
            "127.0.1.1:4140"
        );
        assert!(parse_proxy("https://x:1").is_err());
        assert!(parse_proxy("").is_err());
    }

    #[test]
    fn host_ip_is_filled_in() {
        assert_eq!(fill_host_ip("$HOST_IP:4140", "10.0.1.7"), "10.0.1.7:4140");
        assert_eq!(
            fill_host_ip("http://${HOST_IP}:4140/", "10.0.1.7"),
            "http://10.0.1.7:4140/"
        );
        assert_eq!(fill_host_ip("$HOST_IPV6:1", "x"), "$HOST_IPV6:1");
        assert_eq!(fill_host_ip("$HOST_IP", "x"), "x");
        assert!(mentions_host_ip("$HOST_IP:4140"));
        assert!(!mentions_host_ip("127.0.1.1:4140"));
        assert!(!mentions_host_ip("$HOST_IPS:4140"));
    }

    #[test]
    fn only_ctx_headers_pass() {
        let mut h = HeaderMap::new();
        h.insert("l5d-ctx-dtab", HeaderValue::from_static("/svc/a=>/svc/b"));
        h.insert("l5d-ctx-deadline", HeaderValue::from_static("1 2"));
        h.insert("l5d-dtab", HeaderValue::from_static("/x=>/y"));
        h.insert("host", HeaderValue::from_static("hello"));
        let out = l5d_ctx_headers(&h);
        assert_eq!(out.len(), 2);
        assert!(out.contains_key("l5d-ctx-dtab") && out.contains_key("l5d-ctx-deadline"));
    }
}
