//! The real `ecsmesh-controller` binary under test: started on loopback
//! ports against the emulator, measured from `/proc` and its `/metrics`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::emulator::{REGION, pinned, scratch};
use crate::http;

/// A running controller; killed on drop.
#[derive(Debug)]
pub struct Controller {
    child: Child,
    pub grpc: String,
    pub admin: String,
    _store: tempfile::TempDir,
}

/// A free port on 127.0.0.1 (closed again at once: fine on loopback).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Controller {
    /// Starts the binary, pinned to `cpus` with taskset when given; `extra`
    /// are further flags (the resync interval, events, the store).
    pub fn start(
        binary: &Path,
        cpus: Option<&str>,
        emulator: &str,
        cluster: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let store = scratch("controller")?;
        let (grpc, admin) = (free_port()?, free_port()?);
        let mut cmd = pinned(binary, cpus);
        // Loopback only: the defaults bind 0.0.0.0.
        cmd.args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--cluster", cluster])
            .args(extra)
            // More simulated agents than instances: most claim made-up
            // instance ids, which the default ECS admission would refuse.
            .args(["--agent-admission", "credentials"])
            // The emulator has no account-wide limits to share: the bench
            // measures the controller's own work, not the call budget.
            .args(["--ecs-api-rate", "10000"])
            .arg("--store-dir")
            .arg(store.path())
            .env_remove("AWS_PROFILE")
            .env("ECSMESH_AWS_ENDPOINT_URL", emulator)
            .env("ECSMESH_AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            grpc: format!("http://127.0.0.1:{grpc}"),
            admin: format!("http://127.0.0.1:{admin}"),
            _store: store,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `/ready` (the first resync published a state).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the controller exited: {status}");
            }
            if http::get(&format!("{}/ready", self.admin)).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the controller was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This replica's part in the leader election (`GET /leader`): its role
    /// ("leader", "follower", "candidate") and the leader's id, if known.
    pub async fn role(&self) -> anyhow::Result<(String, Option<String>)> {
        let body = http::get(&format!("{}/leader", self.admin)).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).context("/leader")?;
        let role = v["role"].as_str().context("/leader without a role")?;
        Ok((
            role.to_owned(),
            v["leader"]["id"].as_str().map(str::to_owned),
        ))
    }

    /// Whether `/ready` answers 200 (a state was published).
    pub async fn ready(&self) -> bool {
        http::get(&format!("{}/ready", self.admin)).await.is_ok()
    }

    /// Every sample of `/metrics`, by name with its labels as printed.
    pub async fn metrics(&self) -> anyhow::Result<Samples> {
        let body = http::get(&format!("{}/metrics", self.admin)).await?;
        Ok(Samples::parse(&String::from_utf8_lossy(&body)))
    }

    /// Resident and peak resident memory (KiB) and CPU ticks (user + system).
    pub fn usage(&self) -> anyhow::Result<Usage> {
        proc_usage(self.pid())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_seconds: f64,
}

pub fn proc_usage(pid: u32) -> anyhow::Result<Usage> {
    use ecsmesh_metrics::process::{stat_cpu_seconds, status_kib};
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(Usage {
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
        cpu_seconds: stat_cpu_seconds(&stat),
    })
}

/// A Prometheus text exposition, parsed just enough: `name{labels}` → value.
#[derive(Debug, Clone, Default)]
pub struct Samples(BTreeMap<String, f64>);

impl Samples {
    pub fn parse(text: &str) -> Self {
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((key, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.trim().parse::<f64>()
            {
                out.insert(key.trim().to_owned(), v);
            }
        }
        Self(out)
    }

    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// `ecsmesh_controller_api_calls_total` by "api:operation".
    pub fn api_calls(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (key, v) in &self.0 {
            let Some(labels) = key
                .strip_prefix("ecsmesh_controller_api_calls_total{")
                .and_then(|r| r.strip_suffix('}'))
            else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    kv.trim()
                        .strip_prefix(name)
                        .and_then(|v| v.strip_prefix("=\""))
                        .and_then(|v| v.strip_suffix('"'))
                })
            };
            if let (Some(api), Some(op)) = (label("api"), label("operation")) {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                out.insert(format!("{api}:{op}"), *v as u64);
            }
        }
        out
    }

    /// The mean of a histogram's observations since `before` (seconds), if any.
    pub fn mean_since(&self, before: &Self, histogram: &str) -> Option<f64> {
        let sum = self.get(&format!("{histogram}_sum")) - before.get(&format!("{histogram}_sum"));
        let count =
            self.get(&format!("{histogram}_count")) - before.get(&format!("{histogram}_count"));
        (count > 0.0).then(|| sum / count)
    }
}

/// `after - before`, per key.
pub fn diff(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_calls_are_read_from_the_exposition() {
        let text = "# TYPE ecsmesh_controller_api_calls counter\n\
            ecsmesh_controller_api_calls_total{api=\"ecs\",operation=\"ListTasks\"} 100\n\
            ecsmesh_controller_api_calls_total{api=\"ec2\",operation=\"DescribeInstances\"} 5.0\n\
            ecsmesh_controller_api_errors_total{api=\"ecs\",operation=\"ListTasks\"} 1\n\
            ecsmesh_controller_push_latency_seconds_sum 0.5\n\
            ecsmesh_controller_push_latency_seconds_count 5\n";
        let m = Samples::parse(text).api_calls();
        assert_eq!(m.get("ecs:ListTasks"), Some(&100));
        assert_eq!(m.get("ec2:DescribeInstances"), Some(&5));
        assert_eq!(m.len(), 2);
        let s = Samples::parse(text);
        let mean = s.mean_since(
            &Samples::default(),
            "ecsmesh_controller_push_latency_seconds",
        );
        assert!(mean.is_some_and(|m| (m - 0.1).abs() < 1e-9), "{mean:?}");
    }
}
