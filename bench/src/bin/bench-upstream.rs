//! An HTTP/1.1 upstream answering `/<n>` with an `n`-byte body (64 or 4096),
//! on one thread, or on `--threads` (so that it keeps up with a proxy given
//! several cores: `BENCH_CORES`). With `--count` it counts the requests it
//! answered and their body bytes, and reports them at `/_bench/stats` (not
//! counted): the zone rows of `bench/proxy.sh` read them for the endpoints'
//! share of the traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Count requests and body bytes; `GET /_bench/stats` returns them.
    #[arg(long)]
    count: bool,
}

/// Requests answered and the body bytes sent (`--count`).
#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    body_bytes: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let small = Bytes::from(vec![b'x'; 64]);
    let large = Bytes::from(vec![b'x'; 4096]);
    let counts = args.count.then(|| Arc::new(Counts::default()));
    let runtime = if args.threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (small, large, counts) = (small.clone(), large.clone(), counts.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = match (req.uri().path(), &counts) {
                        ("/_bench/stats", Some(c)) => Bytes::from(format!(
                            "{{\"requests\":{},\"body_bytes\":{}}}",
                            c.requests.load(Ordering::Relaxed),
                            c.body_bytes.load(Ordering::Relaxed)
                        )),
                        (path, _) => {
                            let body = if path == "/4096" {
                                large.clone()
                            } else {
                                small.clone()
                            };
                            if let Some(c) = &counts {
                                c.requests.fetch_add(1, Ordering::Relaxed);
                                c.body_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            }
                            body
                        }
                    };
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
