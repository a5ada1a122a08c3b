//! Open-loop, constant-rate HTTP/1.1 load: `--rate` requests a second for
//! `--duration`, spread over `--connections` keep-alive connections. Each
//! request's latency counts from when it was *scheduled*, so queueing
//! behind a slow request is measured (no coordinated omission). Requests
//! start on schedule to within microseconds (the last millisecond before
//! each is spent yielding, so the generator keeps its CPU busy). Prints one
//! JSON line: sent, ok, errors, late (not started within 1 s of schedule),
//! and p50/p90/p99/p99.9/max in microseconds.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

#[derive(Debug, Parser)]
struct Args {
    /// Where to connect.
    #[arg(long)]
    connect: std::net::SocketAddr,
    /// Path to request.
    #[arg(long, default_value = "/64")]
    path: String,
    /// Host header (the proxy routes by it).
    #[arg(long, default_value = "upstream")]
    host: String,
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 32)]
    connections: u32,
}

/// The `per_mille`‰ value (500 = median, 999 = p99.9), nearest rank.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) * per_mille + 500) / 1000;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let total = u64::from(args.rate) * args.duration;
    let interval = Duration::from_secs_f64(f64::from(args.connections) / f64::from(args.rate));
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (addr, path, host) = (args.connect, args.path.clone(), args.host.clone());
        let per_conn = total / u64::from(args.connections);
        // Connections are staggered so the schedule is even overall.
        let offset = interval.mul_f64(f64::from(c) / f64::from(args.connections));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(usize::try_from(per_conn).unwrap_or(0));
            let (mut errors, mut late) = (0u64, 0u64);
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            for i in 0..per_conn {
                let scheduled = start + offset + interval * u32::try_from(i).unwrap_or(u32::MAX);
                // tokio's timer has millisecond ticks and wakes up to a tick
                // late, which every latency (charged from the schedule) would
                // include: sleep to a tick before the slot, then yield until it.
                let early = scheduled
                    .checked_sub(Duration::from_millis(1))
                    .unwrap_or(scheduled);
                tokio::time::sleep_until(early.into()).await;
                while Instant::now() < scheduled {
                    tokio::task::yield_now().await;
                }
                if Instant::now().duration_since(scheduled) > Duration::from_secs(1) {
                    late += 1;
                }
                let req = http::Request::get(&path)
                    .header("host", &host)
                    .body(Empty::<Bytes>::new())?;
                match sender.send_request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        latencies.push(
                            u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX),
                        );
                    }
                    _ => errors += 1,
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors, late))
        }));
    }
    let (mut all, mut errors, mut late) = (Vec::new(), 0, 0);
    for t in tasks {
        match t.await? {
            Ok((l, e, lt)) => {
                all.extend(l);
                errors += e;
                late += lt;
            }
            Err(e) => {
                eprintln!("connection failed: {e}");
                errors += 1;
            }
        }
    }
    all.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "rate": args.rate, "sent": total, "ok": all.len(), "errors": errors, "late": late,
            "p50_us": percentile(&all, 500), "p90_us": percentile(&all, 900),
            "p99_us": percentile(&all, 990), "p999_us": percentile(&all, 999),
            "max_us": all.last().copied().unwrap_or(0),
        })
    );
    Ok(())
}
