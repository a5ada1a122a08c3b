//! The `helloworld` binary as the ECS task definition runs it: `http_proxy`
//! names `$HOST_IP`, which the app learns from the instance's IMDSv2 (here
//! the patched moto's per-instance IMDS, for an instance at 127.0.31.7).

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ecsmesh_hello_world::call_target;
use ecsmesh_test_support::ecs::{Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const HOST_IP: &str = "127.0.31.7";

/// A forward proxy on the host IP that answers every request itself and
/// records the request URI.
async fn proxy_on_host(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = TcpListener::bind((HOST_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    seen.lock().unwrap().push(req.uri().to_string());
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("World!")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn http_proxy_host_ip_comes_from_imds() {
    let moto = MotoServer::shared();
    let conf = sdk_config(&moto.endpoint(), "ca-central-1").await;
    let topology = Topology::create(&conf, "hello-world", 31, &[HOST_IP]).await;
    let imds = moto.imds_endpoint(&topology.nodes[0].instance_id);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let proxy = proxy_on_host(Arc::clone(&seen)).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let _app = Running(
        Command::new(env!("CARGO_BIN_EXE_helloworld"))
            .args(["--addr", &addr, "--text", "Hello", "--target", "world"])
            // Exactly what the hello task definition sets.
            .env("http_proxy", format!("$HOST_IP:{}", proxy.port()))
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)
            .env_remove("HTTP_PROXY")
            .env_remove("HOST_IP")
            .env_remove("POD_IP")
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env_remove("ECS_CONTAINER_METADATA_URI_V4")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match call_target(None, &addr, &HeaderMap::new()).await {
            Ok(body) => break body,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "helloworld never answered: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The host IP is also the address the answer shows.
    assert_eq!(answer, "Hello (127.0.31.7) World!!");
    assert_eq!(*seen.lock().unwrap(), ["http://world/"]);
}
