//! A loopback HTTP proxy in front of the emulator that can be told to
//! answer every request as ECS does when it throttles (HTTP 400,
//! `ThrottlingException`), to test that callers keep their state and back off.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    throttling: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies 127.0.0.1:<ephemeral> to 127.0.0.1:`upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let throttling = Arc::new(AtomicBool::new(false));
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let flag = Arc::clone(&throttling);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (client, flag) = (client.clone(), Arc::clone(&flag));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (client, flag) = (client.clone(), Arc::clone(&flag));
                        async move {
                            Ok::<_, Infallible>(forward(&client, &flag, upstream_port, req).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            throttling,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While on, every request is answered with a throttling error.
    pub fn throttle(&self, on: bool) {
        self.throttling.store(on, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>,
    throttling: &AtomicBool,
    upstream_port: u16,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if throttling.load(Ordering::SeqCst) {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", "ThrottlingException")
            .body(full(
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            ))
            .unwrap_or_default();
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = format!("http://127.0.0.1:{upstream_port}{path}");
    *req.uri_mut() = uri.parse().expect("upstream uri");
    match client.request(req).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(full(&format!("proxy: {e}")))
            .unwrap_or_default(),
    }
}

fn full(s: &str) -> Body {
    Full::new(Bytes::from(s.to_owned()))
        .map_err(|never| match never {})
        .boxed()
}
