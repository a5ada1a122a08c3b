//! Who may follow the mesh stream, against the real `ecsmesh-controller`
//! binary watching ECS (moto): a caller without the agent token, with a
//! wrong one, claiming an instance the cluster does not have, or claiming a
//! real instance at another address is refused and counted; a genuine
//! agent, and one on an instance registered after the controller started,
//! follow the stream. Nothing refused shows up among the agents.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Running, channel, emulator_env, free_port};
use ecsmesh_proto::v1 as pb;
use ecsmesh_test_support::ecs::{Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;
use tonic::Code;

/// Opens a stream with `hello` and `authorization`; the controller's first
/// answer: a message, or the status that refused the stream.
async fn stream(
    port: u16,
    authorization: Option<&str>,
    instance_id: &str,
    host_ip: &str,
) -> Result<pb::ControllerMessage, tonic::Status> {
    let ch = channel(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            instance_id: instance_id.to_owned(),
            host_ip: host_ip.to_owned(),
            namespace: "default".to_owned(),
            agent_version: "test".to_owned(),
            ..Default::default()
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::iter([hello]));
    if let Some(a) = authorization {
        request
            .metadata_mut()
            .insert("authorization", a.parse().unwrap());
    }
    let mut client = pb::mesh_client::MeshClient::new(ch);
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut inbound = client.stream(request).await?.into_inner();
        inbound
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unknown("the stream ended without a message"))
    })
    .await
    .expect("an answer within 15 s")
}

async fn get(admin: u16, path: &str) -> String {
    let url = format!("http://127.0.0.1:{admin}{path}");
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "5", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_of_the_clusters_instances_follow_the_stream() {
    let moto = MotoServer::shared();
    let region = "eu-north-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let mut topology = Topology::create(&conf, "admit", 44, &["127.0.44.1"]).await;
    let node = topology.nodes[0].clone();

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("agent-token");
    std::fs::write(&token_file, "s3cret-agent-token\n").unwrap();
    let (grpc, admin) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let (grpc_addr, admin_addr) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{admin}"));
    let store = dir.path().join("store").display().to_string();
    let token_path = token_file.display().to_string();
    let _controller = Running::start(
        &[
            "--grpc-addr",
            &grpc_addr,
            "--admin-addr",
            &admin_addr,
            "--store-dir",
            &store,
            "--cluster",
            "admit",
            "--resync-interval",
            "30s",
            "--agent-token-file",
            &token_path,
        ],
        &emulator_env(&moto.endpoint(), region),
    );
    for _ in 0..200 {
        if get(admin, "/ready").await.contains("ready:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let good = Some("Bearer s3cret-agent-token");
    let refused = |r: Result<pb::ControllerMessage, tonic::Status>| r.unwrap_err();

    let no_token = refused(stream(grpc, None, &node.instance_id, &node.private_ip).await);
    assert_eq!(no_token.code(), Code::Unauthenticated, "{no_token:?}");
    assert!(no_token.message().contains("agent token"), "{no_token:?}");
    let wrong = refused(
        stream(
            grpc,
            Some("Bearer guess"),
            &node.instance_id,
            &node.private_ip,
        )
        .await,
    );
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");

    // The token is not enough: the Hello must name one of the cluster's
    // instances, at that instance's address.
    let made_up = refused(stream(grpc, good, "i-0123456789abcdef0", &node.private_ip).await);
    assert_eq!(made_up.code(), Code::PermissionDenied, "{made_up:?}");
    assert!(
        made_up.message().contains("i-0123456789abcdef0"),
        "{made_up:?}"
    );
    let elsewhere = refused(stream(grpc, good, &node.instance_id, "127.0.44.99").await);
    assert_eq!(elsewhere.code(), Code::PermissionDenied, "{elsewhere:?}");
    assert!(
        elsewhere.message().contains(&node.private_ip),
        "{elsewhere:?}"
    );
    let huge = refused(stream(grpc, good, &"i-".repeat(5000), &node.private_ip).await);
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");

    // The genuine agent gets the snapshot.
    let first = stream(grpc, good, &node.instance_id, &node.private_ip)
        .await
        .unwrap();
    assert!(
        matches!(first.kind, Some(pb::controller_message::Kind::Snapshot(_))),
        "{first:?}"
    );

    // An instance registered after the last resync (30 s away) is listed
    // on demand when its agent says Hello.
    let new = topology.add_node("127.0.44.2").await;
    let late = stream(grpc, good, &new.instance_id, &new.private_ip)
        .await
        .unwrap();
    assert!(
        matches!(late.kind, Some(pb::controller_message::Kind::Snapshot(_))),
        "{late:?}"
    );

    let metrics = get(admin, "/metrics").await;
    for reason in [
        "no_token",
        "bad_token",
        "unknown_instance",
        "host_ip",
        "invalid_hello",
    ] {
        let line =
            format!("ecsmesh_controller_agent_streams_refused_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}
