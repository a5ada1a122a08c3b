//! The agent's and the controller's `/metrics` after real traffic, checked
//! by Prometheus' own linter (`promtool check metrics`).

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use std::time::Duration;

use common::{SOURCE, Upstream, agent_with, controller, converged, curl, free_port, get_via, sets};
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
    let a = agent_with(
        "127.0.17.1",
        grpc,
        free_port("127.0.17.1"),
        Mode::Direct,
        &dir.path().join("a"),
        |c| c.summary_interval = Duration::from_millis(200),
    )
    .await;
    converged(&a, 1).await;
    for _ in 0..20 {
        get_via(a.outgoing_addr, "world", "/", &[]).await;
    }
    get_via(a.outgoing_addr, "nowhere", "/", &[]).await;

    let agent_metrics = scrape(a.admin_addr).await;
    // Every family the monitoring issue lists, with the values this traffic implies.
    for expected in [
        "ecsmesh_agent_requests_total{direction=\"outgoing\",service=\"/svc/world\",status_class=\"2xx\"} 20",
        "ecsmesh_agent_request_duration_seconds_count{direction=\"outgoing\",service=\"/svc/world\"} 20",
        "ecsmesh_agent_request_duration_seconds_bucket{le=\"0.000025\",direction=\"outgoing\",service=\"/svc/world\"}",
        "ecsmesh_agent_request_duration_seconds_bucket{le=\"+Inf\",direction=\"outgoing\",service=\"/svc/world\"} 20",
        "ecsmesh_agent_client_requests_total{client=\"/#/ecs/demo/world\",status_class=\"2xx\"} 20",
        "ecsmesh_agent_client_request_duration_seconds_count{client=\"/#/ecs/demo/world\"} 20",
        "ecsmesh_agent_client_endpoints{client=\"/#/ecs/demo/world\",state=\"total\"} 1",
        "ecsmesh_agent_client_endpoints{client=\"/#/ecs/demo/world\",state=\"available\"} 1",
        "ecsmesh_agent_requests_total{direction=\"outgoing\",service=\"/svc/nowhere\",status_class=\"5xx\"} 1",
        "ecsmesh_agent_failures_total{service=\"/svc/nowhere\",class=\"no_hosts\"} 1",
        "ecsmesh_agent_connections_total{listener=\"outgoing\"}",
        "ecsmesh_agent_open_connections{listener=\"incoming\"} 0",
        "ecsmesh_agent_received_bytes_total{listener=\"outgoing\"}",
        "ecsmesh_agent_sent_bytes_total{listener=\"outgoing\"}",
        "ecsmesh_agent_control_connected 1",
        "ecsmesh_agent_snapshot_version 1",
        "ecsmesh_agent_last_update_age_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_uptime_seconds",
    ] {
        assert!(
            agent_metrics.contains(expected),
            "{expected} missing:\n{agent_metrics}"
        );
    }
    // 21 requests on their own connections: the bytes they moved are counted.
    let bytes = |name: &str| -> u64 {
        let line = agent_metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(bytes("ecsmesh_agent_received_bytes_total{listener=\"outgoing\"}") > 21 * 30);
    assert!(bytes("ecsmesh_agent_sent_bytes_total{listener=\"outgoing\"}") > 21 * 30);
    let (ok, report) = promtool(&agent_metrics);
    assert!(ok, "promtool on the agent's metrics:\n{report}");
    assert!(report.trim().is_empty(), "promtool lint:\n{report}");

    // The same traffic reaches the controller's dashboard through the
    // agent's summaries: the service, its success rate, the agent.
    let overview = async {
        loop {
            let (body, _) = curl(
                "127.0.0.1:1".parse().unwrap(),
                &[
                    "--noproxy",
                    "*",
                    &format!("http://{}/api/overview", ctl.admin_addr),
                ],
            )
            .await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let world = v["services"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "/svc/world").cloned());
            if let Some(world) = world
                && world["requests_per_second"].as_f64() > Some(0.0)
            {
                return (v, world);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (v, world) = tokio::time::timeout(Duration::from_secs(10), overview)
        .await
        .expect("the dashboard shows /svc/world within 10 s");
    assert_eq!(world["success_rate"], 1.0, "{v}");
    assert!(world["p50_ms"].as_f64().unwrap() > 0.0, "{v}");
    let nowhere = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "/svc/nowhere")
        .unwrap();
    assert_eq!(nowhere["success_rate"], 0.0, "{v}");
    assert_eq!(v["summary"]["agents"], 1, "{v}");
    assert_eq!(v["summary"]["converged_agents"], 1, "{v}");
    assert_eq!(v["agents"][0]["instance_id"], "i-127.0.17.1", "{v}");
    assert_eq!(v["agents"][0]["converged"], true, "{v}");
    // 20 of 21 requests succeeded.
    let rate = v["summary"]["success_rate"].as_f64().unwrap();
    assert!((rate - 20.0 / 21.0).abs() < 1e-9, "{v}");

    let controller_metrics = scrape(ctl.admin_addr).await;
    assert!(
        controller_metrics.contains("ecsmesh_controller_agents_connected 1"),
        "{controller_metrics}"
    );
    assert!(
        controller_metrics.contains("process_resident_memory_bytes"),
        "{controller_metrics}"
    );
    let (ok, report) = promtool(&controller_metrics);
    assert!(ok, "promtool on the controller's metrics:\n{report}");
    assert!(report.trim().is_empty(), "promtool lint:\n{report}");
}
