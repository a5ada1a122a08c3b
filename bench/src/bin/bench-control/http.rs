//! A minimal HTTP/1.1 client for loopback calls (the emulator's API and log,
//! the controller's `/metrics`): one connection per request.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// Sends one request and returns the status and the whole body. Refuses any
/// address outside 127.0.0.0/8.
pub async fn request(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let uri: http::Uri = url.parse().with_context(|| format!("URL {url}"))?;
    let host = uri.host().context("URL without a host")?;
    let ip: std::net::IpAddr = host
        .parse()
        .with_context(|| format!("{host}: only IP addresses"))?;
    if !ip.is_loopback() {
        bail!("{url}: the benchmark only talks to loopback addresses");
    }
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .with_context(|| format!("connecting to {ip}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{host}:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body)))?)
        .await
        .with_context(|| url.to_owned())?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// GET, failing on a non-2xx status.
pub async fn get(url: &str) -> anyhow::Result<Bytes> {
    let (status, body) = request(http::Method::GET, url, &[], Vec::new()).await?;
    if !status.is_success() {
        bail!("GET {url}: {status}");
    }
    Ok(body)
}
