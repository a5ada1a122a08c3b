//! 500 agent streams on one controller: a dtab update reaches every one of
//! them, and every one ACKs it. Prints the propagation percentiles (the
//! test asserts delivery; the figures are for the record, not a benchmark).

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::time::{Duration, Instant};

use common::{SOURCE, TestAgent, channel, eventually, sets, start};
use ecsmesh_proto::v1 as pb;
use pb::controller_message::Kind;

const AGENTS: usize = 500;
/// Agents share connections as they would share nothing in production; 50
/// streams a connection keeps under HTTP/2's default stream limits.
const CONNECTIONS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtab_update_reaches_500_agents() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    controller
        .observed
        .replace(SOURCE, sets(&[("/#/ecs/demo/world", &["127.0.1.1:8080"])]));

    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(channel(controller.grpc_addr).await);
    }
    let mut agents = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let mut agent =
            TestAgent::connect(channels[i % CONNECTIONS].clone(), &format!("i-{i:04}")).await;
        let Kind::Snapshot(s) = agent.next().await else {
            panic!("expected a snapshot")
        };
        agent.ack(s.version).await;
        agents.push(agent);
    }
    eventually(|| controller.agents.len() == AGENTS).await;

    // Each agent waits for the delta in its own task and reports when.
    let (tx, mut rx) = tokio::sync::mpsc::channel(AGENTS);
    for mut agent in agents {
        let tx = tx.clone();
        tokio::spawn(async move {
            let msg = agent.next().await;
            let at = Instant::now();
            if let Kind::Delta(d) = &msg {
                agent.ack(d.version).await;
            }
            tx.send((at, msg)).await.unwrap();
            // Keep the stream open until the test ends.
            std::future::pending::<()>().await;
        });
    }
    drop(tx);

    let mut api = pb::dtab_admin_client::DtabAdminClient::new(channel(controller.grpc_addr).await);
    let started = Instant::now();
    api.create_dtab(pb::CreateDtabRequest {
        namespace: "default".into(),
        dtab: "/svc/world=>/svc/world-v2".into(),
    })
    .await
    .unwrap();

    let mut latencies = Vec::with_capacity(AGENTS);
    for _ in 0..AGENTS {
        let (at, msg) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("every agent gets the update within 30 s")
            .unwrap();
        let Kind::Delta(d) = msg else {
            panic!("expected a delta")
        };
        assert_eq!(
            d.dtabs[0].dtab,
            "/svc=>/#/ecs/demo;/svc/world=>/svc/world-v2"
        );
        latencies.push(at.duration_since(started));
    }
    let version = controller.publisher.current().version;
    eventually(|| {
        controller
            .agents
            .list()
            .iter()
            .all(|a| a.acked_version == version)
    })
    .await;

    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "dtab update to {AGENTS} agents: p50 {:?}, p99 {:?}, max {:?}",
        pct(50),
        pct(99),
        latencies[latencies.len() - 1]
    );
}
