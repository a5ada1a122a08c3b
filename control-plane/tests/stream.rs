//! The agent stream: snapshot first, then deltas, ACK tracking, NACK
//! recovery, and the rule that nothing is sent before every source synced.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::time::Duration;

use common::{SOURCE, TestAgent, channel, eventually, sets, start};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use pb::controller_message::Kind;

#[tokio::test]
async fn snapshot_then_deltas_with_acks() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    let ch = channel(controller.grpc_addr).await;
    let mut agent = TestAgent::connect(ch, "i-a").await;

    // Nothing is published before the source's first sync: the agent waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), agent.from_controller.message())
            .await
            .is_err(),
        "an empty mesh must never be sent"
    );

    controller.observed.replace(
        SOURCE,
        sets(&[("/#/ecs/demo/world", &["127.0.1.1:8080", "127.0.1.2:49153"])]),
    );
    let Kind::Snapshot(snapshot) = agent.next().await else {
        panic!("the first message must be a snapshot");
    };
    assert_eq!(snapshot.version, 1);
    let state = MeshState::from_snapshot(&snapshot).unwrap();
    assert_eq!(state.dtabs["default"].to_string(), "/svc=>/#/ecs/demo");
    assert_eq!(state.endpoint_count(), 2);
    agent.ack(1).await;
    eventually(|| {
        controller
            .agents
            .list()
            .first()
            .is_some_and(|a| a.acked_version == 1)
    })
    .await;

    // A task stops: one endpoint removed, as a delta on top of version 1.
    controller
        .observed
        .replace(SOURCE, sets(&[("/#/ecs/demo/world", &["127.0.1.2:49153"])]));
    let Kind::Delta(delta) = agent.next().await else {
        panic!("expected a delta");
    };
    assert_eq!((delta.base_version, delta.version), (1, 2));
    assert_eq!(delta.endpoint_changes.len(), 1);
    assert_eq!(delta.endpoint_changes[0].removed.len(), 1);
    assert_eq!(delta.endpoint_changes[0].removed[0].ip, "127.0.1.1");
    let state = state.apply(&delta).unwrap();
    assert_eq!(state.endpoint_count(), 1);
    agent.ack(2).await;

    // An identical observation produces no push.
    controller
        .observed
        .replace(SOURCE, sets(&[("/#/ecs/demo/world", &["127.0.1.2:49153"])]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), agent.from_controller.message())
            .await
            .is_err()
    );
    eventually(|| controller.agents.list()[0].acked_version == 2).await;
    assert_eq!(controller.publisher.current().version, 2);
}

#[tokio::test]
async fn a_nack_gets_a_fresh_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    controller
        .observed
        .replace(SOURCE, sets(&[("/#/ecs/demo/a", &["127.0.1.1:1"])]));
    let mut agent = TestAgent::connect(channel(controller.grpc_addr).await, "i-b").await;
    assert!(matches!(agent.next().await, Kind::Snapshot(_)));
    agent.ack(1).await;
    controller
        .observed
        .replace(SOURCE, sets(&[("/#/ecs/demo/a", &["127.0.1.1:2"])]));
    assert!(matches!(agent.next().await, Kind::Delta(d) if d.version == 2));
    agent
        .send(pb::agent_message::Kind::Nack(pb::Nack {
            version: 2,
            error: "disk full".to_owned(),
        }))
        .await;
    let Kind::Snapshot(s) = agent.next().await else {
        panic!("a NACK must be answered with a snapshot");
    };
    assert_eq!(s.version, 2);
    eventually(|| {
        controller.agents.list()[0]
            .last_nack
            .as_deref()
            .is_some_and(|e| e.contains("disk full"))
    })
    .await;
}

/// Endpoint sets big enough (~100 KiB a delta) that an agent that does not
/// read fills the HTTP/2 flow-control window after a message or two.
fn big_sets(round: u16) -> ecsmesh_controller::sources::SourceSets {
    let addrs: Vec<String> = (0..2000u16)
        .map(|i| format!("127.0.{}.{}:{}", 1 + i / 250, 1 + i % 250, 10_000 + round))
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    sets(&[("/#/ecs/demo/big", &refs)])
}

#[tokio::test]
async fn a_slow_agent_gets_coalesced_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    controller.observed.replace(SOURCE, big_sets(0));
    // A receive window of 64 KiB (HTTP/2's default; hyper's is 2 MiB) so a
    // few unread messages fill it.
    let small_window =
        tonic::transport::Channel::from_shared(format!("http://{}", controller.grpc_addr))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
    let mut agent = TestAgent::connect(small_window, "i-c").await;
    let Kind::Snapshot(s) = agent.next().await else {
        panic!("expected a snapshot");
    };
    let mut state = MeshState::from_snapshot(&s).unwrap();
    // Ten versions while the agent does not read.
    for round in 1..=10u16 {
        controller.observed.replace(SOURCE, big_sets(round));
        let want = u64::from(round) + 1;
        eventually(|| controller.publisher.current().version == want).await;
    }
    let (mut messages, mut applied) = (0, 1);
    while applied < 11 {
        let Kind::Delta(d) = agent.next().await else {
            panic!("expected a delta");
        };
        assert_eq!(d.base_version, applied, "deltas must chain");
        messages += 1;
        state = state.apply(&d).unwrap();
        applied = d.version;
    }
    assert!(
        messages < 10,
        "{messages} messages for 10 versions: nothing was coalesced"
    );
    let current = controller.publisher.current();
    assert_eq!(state, *current.state);
}

#[tokio::test]
async fn a_stream_must_start_with_hello() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Ack(pb::Ack { version: 1 })),
    })
    .await
    .unwrap();
    let mut client = pb::mesh_client::MeshClient::new(channel(controller.grpc_addr).await);
    let err = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// 60 services × 100 tasks: a snapshot of several parts.
fn large_mesh(tasks: usize) -> ecsmesh_controller::sources::SourceSets {
    let names: Vec<String> = (0..60).map(|s| format!("/#/ecs/demo/svc{s}")).collect();
    let addrs: Vec<Vec<String>> = (0..60)
        .map(|s| (0..tasks).map(|t| format!("10.1.{s}.{t}:8080")).collect())
        .collect();
    let addr_refs: Vec<Vec<&str>> = addrs
        .iter()
        .map(|a| a.iter().map(String::as_str).collect())
        .collect();
    let entries: Vec<(&str, &[&str])> = names
        .iter()
        .zip(&addr_refs)
        .map(|(n, a)| (n.as_str(), a.as_slice()))
        .collect();
    sets(&entries)
}

#[tokio::test]
async fn a_large_snapshot_comes_in_parts_with_nothing_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    controller.observed.replace(SOURCE, large_mesh(100));
    let ch = channel(controller.grpc_addr).await;
    let mut agent = TestAgent::connect(ch, "i-a").await;

    let Kind::SnapshotPart(first) = agent.next().await else {
        panic!("a 6,000-endpoint snapshot must come in parts");
    };
    assert_eq!(first.index, 0);
    // A new version while the parts are under way: it must wait for them.
    controller.observed.replace(SOURCE, large_mesh(99));
    eventually(|| controller.publisher.current().version == 2).await;

    let mut assembler = ecsmesh_proto::SnapshotAssembler::default();
    let mut snapshot = assembler.push(first).unwrap();
    let mut count = 1;
    while snapshot.is_none() {
        let Kind::SnapshotPart(part) = agent.next().await else {
            panic!("something came between the parts of a snapshot");
        };
        assert_eq!(part.snapshot.as_ref().unwrap().version, 1);
        snapshot = assembler.push(part).unwrap();
        count += 1;
    }
    assert!(count > 3, "{count} parts");
    let state = MeshState::from_snapshot(&snapshot.unwrap()).unwrap();
    assert_eq!(state.endpoint_count(), 6_000);
    assert_eq!(state.dtabs["default"].to_string(), "/svc=>/#/ecs/demo");
    agent.ack(1).await;

    // Then the version published meanwhile, as a delta on top of the snapshot.
    let Kind::Delta(delta) = agent.next().await else {
        panic!("expected a delta");
    };
    assert_eq!((delta.base_version, delta.version), (1, 2));
    let state = state.apply(&delta).unwrap();
    assert_eq!(state.endpoint_count(), 5_940);
}
