//! Zone-aware balancing through real agents (issue #18): endpoints carry
//! their availability zone; an agent keeps its requests in its own zone
//! while that zone's endpoints serve, moves them to the other zone at once
//! when they fail (no failed GET), and keeps uneven zones balanced.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{SOURCE, Upstream, controller, converged, free_port, get_via, raw};
use ecsmesh_agent::Agent;
use ecsmesh_agent::config::Mode;
use ecsmesh_dtab::Path;
use ecsmesh_state::{Endpoint, EndpointSet};

/// One set, `/#/ecs/demo/world`, of `(address, zone)` endpoints.
fn zoned(endpoints: &[(SocketAddr, &str)]) -> BTreeMap<Path, Arc<EndpointSet>> {
    let set: EndpointSet = endpoints
        .iter()
        .map(|(addr, zone)| {
            Endpoint::new(*addr)
                .with_meta("host_ip", addr.ip().to_string())
                .with_meta(ecsmesh_state::meta::AVAILABILITY_ZONE, *zone)
        })
        .collect();
    [(Path::read("/#/ecs/demo/world").unwrap(), Arc::new(set))].into()
}

async fn agent_in(zone: &str, host_ip: &str, grpc: u16, dir: &std::path::Path) -> Agent {
    let zone = zone.to_owned();
    common::agent_with(
        host_ip,
        grpc,
        free_port(host_ip),
        Mode::Direct,
        &dir.join(host_ip),
        move |c| c.availability_zone = Some(zone),
    )
    .await
}

async fn metric(agent: &Agent, series: &str) -> f64 {
    let text = raw(
        agent.admin_addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stay_in_the_zone_and_leave_it_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let a1 = Upstream::start("127.0.64.1", "a1").await;
    let a2 = Upstream::start("127.0.64.2", "a2").await;
    let b1 = Upstream::start("127.0.64.3", "b1").await;
    let b2 = Upstream::start("127.0.64.4", "b2").await;
    ctl.observed.replace(
        SOURCE,
        zoned(&[
            (a1.addr, "zone-a"),
            (a2.addr, "zone-a"),
            (b1.addr, "zone-b"),
            (b2.addr, "zone-b"),
        ]),
    );
    let agent = agent_in("zone-a", "127.0.65.1", grpc, dir.path()).await;
    converged(&agent, 1).await;

    for _ in 0..400 {
        let (status, _, _) = get_via(agent.outgoing_addr, "world", "/", &[]).await;
        assert_eq!(status, 200);
    }
    let (near, far) = (a1.hits() + a2.hits(), b1.hits() + b2.hits());
    assert!(
        near * 100 >= (near + far) * 95,
        "{near} in the zone, {far} outside"
    );
    assert!(
        metric(
            &agent,
            "ecsmesh_agent_zone_requests_total{src_zone=\"zone-a\",dst_zone=\"zone-a\"}"
        )
        .await
            >= 400.0
    );

    // Zone a's endpoints die: no GET fails, and within a second first
    // attempts go to zone b (no retries needed any more).
    a1.kill();
    a2.kill();
    let killed = Instant::now();
    let mut failed = 0;
    while killed.elapsed() < Duration::from_secs(1) {
        let (status, _, _) = get_via(agent.outgoing_addr, "world", "/", &[]).await;
        if status != 200 {
            failed += 1;
        }
    }
    let retries_before = metric(&agent, "ecsmesh_agent_retries_total").await;
    // The dead zone's first attempts were retried: the series is the right one.
    assert!(
        retries_before > 0.0,
        "no retries counted while the zone died"
    );
    let far_before = b1.hits() + b2.hits();
    for _ in 0..200 {
        let (status, _, _) = get_via(agent.outgoing_addr, "world", "/", &[]).await;
        if status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "requests failed when the zone went down");
    assert_eq!(b1.hits() + b2.hits() - far_before, 200);
    let retried = metric(&agent, "ecsmesh_agent_retries_total").await - retries_before;
    assert!(
        retried <= 2.0,
        "{retried} retries a second after the zone failed: traffic did not move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_zones_do_not_overload_the_lone_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let lone = Upstream::start("127.0.66.1", "lone").await;
    let mut others = Vec::new();
    for i in 0..9 {
        others.push(Upstream::start(&format!("127.0.66.{}", 10 + i), "b").await);
    }
    let mut endpoints = vec![(lone.addr, "zone-a")];
    endpoints.extend(others.iter().map(|u| (u.addr, "zone-b")));
    ctl.observed.replace(SOURCE, zoned(&endpoints));
    // Agents spread evenly over the two zones.
    let in_a = agent_in("zone-a", "127.0.67.1", grpc, dir.path()).await;
    let in_b = agent_in("zone-b", "127.0.67.2", grpc, dir.path()).await;
    converged(&in_a, 1).await;
    converged(&in_b, 1).await;
    let per_agent = 500;
    for _ in 0..per_agent {
        for agent in [&in_a, &in_b] {
            let (status, _, _) = get_via(agent.outgoing_addr, "world", "/", &[]).await;
            assert_eq!(status, 200);
        }
    }
    let total = 2 * per_agent;
    let share = f64::from(u32::try_from(lone.hits()).unwrap()) / f64::from(total);
    let fair = 0.1;
    eprintln!(
        "the lone endpoint took {:.1} % (fair share 10 %)",
        share * 100.0
    );
    assert!(share <= 2.0 * fair, "the lone endpoint took {share:.3}");
    // And zone a's agent still keeps a part of its traffic in its zone.
    assert!(lone.hits() > 0);
}
