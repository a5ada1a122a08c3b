//! The controller configured for Consul, as a user configures it: Consul
//! services become endpoint sets agents receive (also under Linkerd's
//! `/#/io.l5d.consul/…` names), and two replicas on one Consul KV share
//! their dtabs.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestAgent, channel};
use ecsmesh_consul_double::ConsulDouble;
use ecsmesh_controller::Controller;
use ecsmesh_controller::config::{Args, Config, FileConfig};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use pb::controller_message::Kind;
use serde_json::json;

fn consul_config(consul: &ConsulDouble, store: &str, dir: &std::path::Path) -> Config {
    let yaml = format!(
        "grpc_addr: 127.0.0.1:0\nadmin_addr: 127.0.0.1:0\nstore: {store}\nstore_dir: {}\n\
         namespaces:\n  default:\n    base_dtab: /svc=>/#/io.l5d.consul/dc1\n\
         consul:\n  address: {}\n  datacenters: [dc1]\n",
        dir.display(),
        consul.address()
    );
    let file: FileConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    let mut config = Config::resolve(&Args::default(), file).unwrap();
    // Short blocking queries so the test is quick.
    if let Some(c) = config.consul.as_mut() {
        c.wait = Duration::from_secs(1);
        c.min_interval = Duration::from_millis(20);
    }
    if let Some(s) = config.consul_store.as_mut() {
        s.wait = Duration::from_secs(1);
        s.min_interval = Duration::from_millis(20);
    }
    config
}

#[tokio::test]
async fn consul_services_reach_agents() {
    let consul = ConsulDouble::start().await.unwrap();
    consul
        .catalog_register(&json!({
            "Datacenter": "dc1", "Node": "n1", "Address": "127.0.20.1",
            "Service": {"ID": "world-1", "Service": "world", "Port": 7777},
            "Check": {"CheckID": "world-1", "ServiceID": "world-1", "Status": "passing"},
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(consul_config(&consul, "file", dir.path()), &[])
        .await
        .unwrap();
    let mut agent = TestAgent::connect(channel(controller.grpc_addr).await, "i-consul").await;
    let Kind::Snapshot(s) = agent.next().await else {
        panic!("expected a snapshot")
    };
    let state = MeshState::from_snapshot(&s).unwrap();
    let set = &state.sets[&ecsmesh_dtab::Path::read("/#/consul/dc1/world").unwrap()];
    let addrs: Vec<String> = set.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, ["127.0.20.1:7777"]);
    // Linkerd's name for it binds through the alias.
    let bound = ecsmesh_dtab::bind(
        &state.dtabs["default"],
        &ecsmesh_dtab::Path::read("/svc/world").unwrap(),
        &ecsmesh_state::MeshNamer::new(&state),
    )
    .unwrap();
    let ecsmesh_dtab::NameTree::Leaf(b) = bound else {
        panic!("{bound:?}")
    };
    assert_eq!(b.id().to_string(), "/#/io.l5d.consul/dc1/world");
}

#[tokio::test]
async fn two_replicas_share_dtabs_through_consul_kv() {
    let consul = ConsulDouble::start().await.unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r1 = Controller::start(consul_config(&consul, "consul", d1.path()), &[])
        .await
        .unwrap();
    let r2 = Controller::start(consul_config(&consul, "consul", d2.path()), &[])
        .await
        .unwrap();
    let mut api1 = pb::dtab_admin_client::DtabAdminClient::new(channel(r1.grpc_addr).await);
    let mut api2 = pb::dtab_admin_client::DtabAdminClient::new(channel(r2.grpc_addr).await);
    let mut agent = TestAgent::connect(channel(r2.grpc_addr).await, "i-r2").await;
    assert!(matches!(agent.next().await, Kind::Snapshot(_)));

    let created = api1
        .create_dtab(pb::CreateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world=>/svc/world-v2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // The other replica's agents get the override.
    let Kind::Delta(d) = agent.next().await else {
        panic!("expected a delta")
    };
    assert_eq!(
        d.dtabs[0].dtab,
        "/svc=>/#/io.l5d.consul/dc1;/svc/world=>/svc/world-v2"
    );
    // A write through replica 2 with the version replica 1 returned works
    // once; the stale one after it is refused.
    api2.update_dtab(pb::UpdateDtabRequest {
        namespace: "default".into(),
        dtab: "/svc/world=>/svc/world-v3".into(),
        expected_version: created.version.clone(),
    })
    .await
    .unwrap();
    let err = api1
        .update_dtab(pb::UpdateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world=>/svc/other".into(),
            expected_version: created.version,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}
