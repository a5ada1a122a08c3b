//! The real `ecsmesh-controller` binary, configured as a user configures it:
//! watching ECS (the patched moto, through the AWS SDK's standard credential
//! chain) and storing dtabs in its file store, which survives `kill -9`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aws_sdk_ecs::types::NetworkMode;
use common::{Running, TestAgent, channel, emulator_env, free_port};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use ecsmesh_test_support::ecs::{Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;
use pb::controller_message::Kind;

async fn connect(port: u16) -> tonic::transport::Channel {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return channel(addr).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the controller did not listen on {addr}");
}

#[tokio::test]
async fn the_binary_watches_ecs() {
    let moto = MotoServer::shared();
    let region = "ap-south-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "bin", 30, &["127.0.30.1", "127.0.30.2"]).await;
    let web = topology
        .task_definition(
            "world",
            NetworkMode::Bridge,
            "world",
            &[(8080, 0)],
            &[],
            &[],
        )
        .await;
    topology.create_service("world", &web, 2).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let grpc = format!("127.0.0.1:{port}");
    let store = dir.path().display().to_string();
    let _controller = Running::start(
        &[
            "--grpc-addr",
            &grpc,
            "--admin-addr",
            "127.0.0.1:0",
            "--store-dir",
            &store,
            "--cluster",
            "bin",
            "--resync-interval",
            "300ms",
        ],
        &emulator_env(&moto.endpoint(), region),
    );
    // The controller admits agents of the cluster's instances only.
    let node = &topology.nodes[0];
    let mut agent =
        TestAgent::connect_as(connect(port).await, &node.instance_id, &node.private_ip).await;
    let Kind::Snapshot(s) = agent.next().await else {
        panic!("expected a snapshot")
    };
    let mut state = MeshState::from_snapshot(&s).unwrap();
    agent.ack(s.version).await;
    assert_eq!(state.dtabs["default"].to_string(), "/svc=>/#/ecs/bin");
    let name = ecsmesh_dtab::Path::read("/#/ecs/bin/world").unwrap();
    assert_eq!(state.sets[&name].len(), 2);

    // A task stops: the next resync's delta removes it.
    let tasks = topology.service_tasks("world").await;
    topology.scale_service("world", 1).await;
    let Kind::Delta(d) = agent.next().await else {
        panic!("expected a delta")
    };
    state = state.apply(&d).unwrap();
    assert_eq!(state.sets[&name].len(), 1);
    assert!(tasks.len() == 2);
}

#[tokio::test]
async fn stored_dtabs_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display().to_string();
    let port = free_port("127.0.0.1");
    let grpc = format!("127.0.0.1:{port}");
    let args = [
        "--grpc-addr",
        grpc.as_str(),
        "--admin-addr",
        "127.0.0.1:0",
        "--store-dir",
        store.as_str(),
        "--base-dtab",
        "/svc=>/#/ecs/demo",
    ];
    let controller = Running::start(&args, &[]);
    let mut api = pb::dtab_admin_client::DtabAdminClient::new(connect(port).await);
    let mut version = api
        .create_dtab(pb::CreateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world=>/svc/world-v2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    // Writes in a burst, then SIGKILL in the middle of it.
    for i in 0..20 {
        version = api
            .update_dtab(pb::UpdateDtabRequest {
                namespace: "default".into(),
                dtab: format!("/svc/world=>/svc/world-v{i}"),
                expected_version: version,
            })
            .await
            .unwrap()
            .into_inner()
            .version;
    }
    controller.kill();

    let _controller = Running::start(&args, &[]);
    let mut api = pb::dtab_admin_client::DtabAdminClient::new(connect(port).await);
    let got = api
        .get_dtab(pb::GetDtabRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.dtab, "/svc/world=>/svc/world-v19");
    assert_eq!(got.version, version);
    // The store's leftovers are only the store itself.
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["dtabs.json"]);
}

#[tokio::test]
async fn two_clusters_in_one_mesh() {
    let moto = MotoServer::shared();
    let region = "us-east-2";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let blue = Topology::create(&conf, "blue", 54, &["127.0.54.1"]).await;
    let green = Topology::create(&conf, "green", 56, &["127.0.56.1"]).await;
    for (topology, replicas) in [(&blue, 1), (&green, 2)] {
        let web = topology
            .task_definition(
                "world",
                NetworkMode::Bridge,
                "world",
                &[(8080, 0)],
                &[],
                &[],
            )
            .await;
        topology.create_service("world", &web, replicas).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let grpc = format!("127.0.0.1:{port}");
    let store = dir.path().display().to_string();
    let _controller = Running::start(
        &[
            "--grpc-addr",
            &grpc,
            "--admin-addr",
            "127.0.0.1:0",
            "--store-dir",
            &store,
            "--cluster",
            "blue",
            "--cluster",
            "green",
            // Failover between the clusters, as a user would write it.
            "--base-dtab",
            "/svc=>/#/ecs/green|/#/ecs/blue",
            "--resync-interval",
            "300ms",
        ],
        &emulator_env(&moto.endpoint(), region),
    );
    // An agent of either cluster is admitted: here, green's instance.
    let node = &green.nodes[0];
    let mut agent =
        TestAgent::connect_as(connect(port).await, &node.instance_id, &node.private_ip).await;
    let Kind::Snapshot(s) = agent.next().await else {
        panic!("expected a snapshot")
    };
    let state = MeshState::from_snapshot(&s).unwrap();
    let set = |name: &str| state.sets[&ecsmesh_dtab::Path::read(name).unwrap()].len();
    assert_eq!(set("/#/ecs/blue/world"), 1);
    assert_eq!(set("/#/ecs/green/world"), 2);
    assert_eq!(
        state.dtabs["default"].to_string(),
        "/svc=>/#/ecs/green | /#/ecs/blue"
    );
}
