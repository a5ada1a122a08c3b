//! The agent's and the controller's `/metrics` after real traffic, checked
//! by Prometheus' own linter (`promtool check metrics`).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{SOURCE, Upstream, agent, controller, converged, curl, free_port, get_via, sets};
use ecsmesh_agent::config::Mode;

/// Runs `promtool check metrics` on `text`; returns (success, output).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `make deps` installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut report = String::from_utf8_lossy(&out.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), report)
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (body, err) = curl(
        "127.0.0.1:1".parse().unwrap(),
        &["--noproxy", "*", &format!("http://{addr}/metrics")],
    )
    .await;
    assert!(!body.is_empty(), "{err}");
    body
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let world = Upstream::start("127.0.17.11", "world").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[("/#/ecs/demo/world", &[(world.addr, "127.0.17.11")])]),
    );
    let a = agent(
        "127.0.17.1",
        grpc,
        free_port("127.0.17.1"),
        Mode::Direct,
        &dir.path().join("a"),
    )
    .await;
    converged(&a, 1).await;
    for _ in 0..20 {
        get_via(a.outgoing_addr, "world", "/", &[]).await;
    }
    get_via(a.outgoing_addr, "nowhere", "/", &[]).await;

    let agent_metrics = scrape(a.admin_addr).await;
    assert!(agent_metrics.contains("ecsmesh_agent_requests_total{direction=\"outgoing\",service=\"/svc/world\",status_class=\"2xx\"} 20"), "{agent_metrics}");
    assert!(
        agent_metrics.contains("ecsmesh_agent_snapshot_version 1"),
        "{agent_metrics}"
    );
    let (ok, report) = promtool(&agent_metrics);
    assert!(ok, "promtool on the agent's metrics:\n{report}");
    assert!(report.trim().is_empty(), "promtool lint:\n{report}");

    let controller_metrics = scrape(ctl.admin_addr).await;
    assert!(
        controller_metrics.contains("ecsmesh_controller_agents_connected 1"),
        "{controller_metrics}"
    );
    let (ok, report) = promtool(&controller_metrics);
    assert!(ok, "promtool on the controller's metrics:\n{report}");
    assert!(report.trim().is_empty(), "promtool lint:\n{report}");
}
