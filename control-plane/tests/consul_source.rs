//! The Consul source against the Consul double: catalog → endpoint sets
//! `/#/consul/<dc>/<service>`, health filtering, addresses, and what it
//! does when Consul misbehaves.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ecsmesh_consul_double::{ConsulDouble, DoubleOptions};
use ecsmesh_controller::metrics::Metrics;
use ecsmesh_controller::sources::consul::{self, ConsulSettings};
use ecsmesh_controller::sources::{Observed, ObservedState};
use ecsmesh_dtab::Path;
use serde_json::json;
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(10);

fn settings(consul: &ConsulDouble, datacenters: &[&str]) -> ConsulSettings {
    ConsulSettings {
        address: consul.address(),
        datacenters: datacenters.iter().map(|d| (*d).to_owned()).collect(),
        wait: Duration::from_secs(1),
        min_interval: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..ConsulSettings::default()
    }
}

/// Starts the source; the task ends with the test's runtime.
fn start(settings: ConsulSettings) -> (Arc<Observed>, Arc<Metrics>) {
    let expected = settings.datacenters.iter().map(|d| consul::source_id(d));
    let observed = Arc::new(Observed::new(expected));
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(consul::run(
        settings,
        Arc::clone(&observed),
        Arc::clone(&metrics),
    ));
    (observed, metrics)
}

fn register(
    consul: &ConsulDouble,
    dc: &str,
    node: &str,
    node_addr: &str,
    (id, name, addr, port): (&str, &str, &str, u16),
    status: &str,
) {
    consul
        .catalog_register(&json!({
            "Datacenter": dc, "Node": node, "Address": node_addr,
            "Service": {"ID": id, "Service": name, "Address": addr, "Port": port},
            "Check": {"CheckID": id, "ServiceID": id, "Status": status},
        }))
        .unwrap();
}

/// Instance `i` of `web` in dc1: `web-<i>` on node `n<i>` (`10.0.0.<i>`),
/// at the node's address.
fn register_web(consul: &ConsulDouble, i: u8, port: u16, status: &str) {
    register(
        consul,
        "dc1",
        &format!("n{i}"),
        &format!("10.0.0.{i}"),
        (&format!("web-{i}"), "web", "", port),
        status,
    );
}

/// The addresses of `name` in the state, sorted; `None` if no such set.
fn addrs(state: &ObservedState, name: &str) -> Option<Vec<String>> {
    let name = Path::read(name).unwrap();
    let set = state.merged().get(&name).cloned()?;
    let mut addrs: Vec<String> = set.iter().map(|e| e.addr.to_string()).collect();
    addrs.sort();
    Some(addrs)
}

async fn until(
    rx: &mut watch::Receiver<ObservedState>,
    what: &str,
    done: impl Fn(&ObservedState) -> bool,
) -> ObservedState {
    let reached = match tokio::time::timeout(PATIENCE, rx.wait_for(|s| done(s))).await {
        Ok(Ok(state)) => Some(state.clone()),
        _ => None,
    };
    reached.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; state: {:?}",
            rx.borrow().merged()
        )
    })
}

#[tokio::test]
async fn services_become_consul_sets_filtered_by_health() {
    let consul = ConsulDouble::start_with(DoubleOptions {
        datacenters: vec!["dc1".into(), "dc2".into()],
        ..DoubleOptions::default()
    })
    .await
    .unwrap();
    register_web(&consul, 1, 31001, "passing");
    register(
        &consul,
        "dc1",
        "n2",
        "10.0.0.2",
        ("web-2", "web", "172.17.0.2", 8080),
        "passing",
    );
    register_web(&consul, 3, 31003, "warning");
    register_web(&consul, 4, 31004, "critical");
    register(
        &consul,
        "dc1",
        "n1",
        "10.0.0.1",
        ("db-1", "db", "", 5432),
        "passing",
    );
    register(
        &consul,
        "dc2",
        "far",
        "10.9.0.1",
        ("web-9", "web", "", 80),
        "passing",
    );

    let (observed, metrics) = start(settings(&consul, &["dc1", "dc2"]));
    let mut rx = observed.subscribe();
    let state = until(&mut rx, "both datacenters", ObservedState::ready).await;
    assert_eq!(
        addrs(&state, "/#/consul/dc1/web").unwrap(),
        ["10.0.0.1:31001", "172.17.0.2:8080"],
        "node address when the service has none; warning and critical left out"
    );
    assert_eq!(
        addrs(&state, "/#/consul/dc1/db").unwrap(),
        ["10.0.0.1:5432"]
    );
    assert_eq!(addrs(&state, "/#/consul/dc2/web").unwrap(), ["10.9.0.1:80"]);
    let names: BTreeSet<String> = state.merged().keys().map(ToString::to_string).collect();
    assert_eq!(
        names,
        ["/#/consul/dc1/db", "/#/consul/dc1/web", "/#/consul/dc2/web"]
            .map(str::to_owned)
            .into()
    );
    let web = state.merged()[&Path::read("/#/consul/dc1/web").unwrap()].clone();
    let e = web.get(&"172.17.0.2:8080".parse().unwrap()).unwrap();
    assert_eq!(e.meta["node"], "n2");
    assert_eq!(e.meta["service_id"], "web-2");
    assert_eq!(e.meta["dc"], "dc1");

    // Health changes move instances in and out.
    consul
        .set_check_status("dc1", "n3", "web-3", "passing")
        .unwrap();
    consul
        .set_check_status("dc1", "n1", "web-1", "critical")
        .unwrap();
    until(&mut rx, "web-3 in, web-1 out", |s| {
        addrs(s, "/#/consul/dc1/web").unwrap() == ["10.0.0.3:31003", "172.17.0.2:8080"]
    })
    .await;
    // A node check counts for every service on the node.
    consul
        .catalog_register(&json!({
            "Node": "n2", "Address": "10.0.0.2",
            "Check": {"CheckID": "serfHealth", "Status": "critical"},
        }))
        .unwrap();
    until(&mut rx, "n2's services out", |s| {
        addrs(s, "/#/consul/dc1/web").unwrap() == ["10.0.0.3:31003"]
    })
    .await;
    // A service that leaves the catalog leaves the view; a new one joins.
    consul
        .catalog_deregister("dc1", "n1", Some("db-1"))
        .unwrap();
    register(
        &consul,
        "dc1",
        "n5",
        "10.0.0.5",
        ("cache-1", "cache", "", 6379),
        "passing",
    );
    until(&mut rx, "db gone, cache there", |s| {
        addrs(s, "/#/consul/dc1/db").is_none()
            && addrs(s, "/#/consul/dc1/cache").is_some_and(|a| a == ["10.0.0.5:6379"])
    })
    .await;
    // A service with no routable instance is an empty set, not a missing one.
    consul
        .set_check_status("dc1", "n5", "cache-1", "critical")
        .unwrap();
    until(&mut rx, "cache empty", |s| {
        addrs(s, "/#/consul/dc1/cache").is_some_and(|a| a.is_empty())
    })
    .await;

    let text = metrics.encode();
    assert!(
        text.contains(r#"api_calls_total{api="consul",operation="health_service"}"#),
        "{text}"
    );
    assert!(text.contains(r#"operation="catalog_services""#));
}

#[tokio::test]
async fn include_warning_routes_warning_but_never_critical() {
    let consul = ConsulDouble::start().await.unwrap();
    register_web(&consul, 1, 1, "passing");
    register_web(&consul, 2, 2, "warning");
    register_web(&consul, 3, 3, "critical");
    let (observed, _) = start(ConsulSettings {
        include_warning: true,
        ..settings(&consul, &["dc1"])
    });
    let mut rx = observed.subscribe();
    let state = until(&mut rx, "dc1", ObservedState::ready).await;
    assert_eq!(
        addrs(&state, "/#/consul/dc1/web").unwrap(),
        ["10.0.0.1:1", "10.0.0.2:2"]
    );
    // Without `?passing`: the source filters itself.
    assert!(
        consul
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/health/service/web")
            .all(|r| r.param("passing").is_none())
    );
}

#[tokio::test]
async fn consul_errors_keep_the_last_view_until_it_recovers() {
    let consul = ConsulDouble::start().await.unwrap();
    register_web(&consul, 1, 1, "passing");
    let (observed, metrics) = start(settings(&consul, &["dc1"]));
    let mut rx = observed.subscribe();
    let before = until(&mut rx, "dc1", ObservedState::ready).await;

    // 500s: nothing changes in the view, errors are counted.
    consul.fail_all(true);
    register_web(&consul, 2, 2, "passing");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.borrow().merged(), before.merged());
    assert!(
        metrics
            .encode()
            .contains(r#"api_errors_total{api="consul",operation="health_service"}"#)
    );
    consul.fail_all(false);
    until(&mut rx, "web-2 after recovery", |s| {
        addrs(s, "/#/consul/dc1/web").unwrap() == ["10.0.0.1:1", "10.0.0.2:2"]
    })
    .await;

    // Consul gone altogether, then back.
    consul.stop().await;
    consul
        .set_check_status("dc1", "n1", "web-1", "critical")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        addrs(&rx.borrow(), "/#/consul/dc1/web").unwrap(),
        ["10.0.0.1:1", "10.0.0.2:2"]
    );
    consul.restart().await.unwrap();
    until(&mut rx, "web-1 out after restart", |s| {
        addrs(s, "/#/consul/dc1/web").unwrap() == ["10.0.0.2:2"]
    })
    .await;

    // A snapshot restore: the index goes back, the source resyncs.
    consul.reset_index("dc1", 1).unwrap();
    register_web(&consul, 3, 3, "passing");
    until(&mut rx, "web-3 after an index reset", |s| {
        addrs(s, "/#/consul/dc1/web").unwrap() == ["10.0.0.2:2", "10.0.0.3:3"]
    })
    .await;
}

#[tokio::test]
async fn spurious_wake_ups_change_nothing() {
    let consul = ConsulDouble::start().await.unwrap();
    register_web(&consul, 1, 1, "passing");
    let (observed, _) = start(settings(&consul, &["dc1"]));
    let mut rx = observed.subscribe();
    until(&mut rx, "dc1", ObservedState::ready).await;
    rx.borrow_and_update();
    let calls = consul.requests().len();
    for _ in 0..5 {
        consul.spurious_write("dc1").unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // A change that is not the source's business (a check's output).
    consul
        .catalog_register(&json!({
            "Node": "n1", "Address": "10.0.0.1",
            "Check": {"CheckID": "web-1", "ServiceID": "web-1", "Status": "passing", "Output": "HTTP 200"},
        }))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(consul.requests().len() > calls + 5, "the watches woke up");
    assert!(!rx.has_changed().unwrap(), "but reported nothing");
}

#[tokio::test]
async fn an_unknown_datacenter_never_reports() {
    let consul = ConsulDouble::start().await.unwrap();
    let (observed, metrics) = start(settings(&consul, &["dc1", "nowhere"]));
    let mut rx = observed.subscribe();
    until(&mut rx, "dc1", |s| s.by_source.contains_key("consul:dc1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rx.borrow().ready(), "consul:nowhere never reports");
    assert!(
        metrics
            .encode()
            .contains(r#"api_errors_total{api="consul",operation="catalog_services"}"#)
    );
}
