//! A mesh whose snapshot is larger than gRPC's default 4 MiB message limit
//! reaches the agent: the controller sends it in parts, which the agent puts
//! together before it installs anything (the bench found the limit at
//! ~10,800 endpoints when snapshots went as one message).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::{SOURCE, agent, controller, converged, free_port};
use ecsmesh_agent::config::Mode;
use ecsmesh_dtab::Path;
use ecsmesh_state::{Endpoint, EndpointSet};
use prost::Message as _;

#[tokio::test]
async fn a_snapshot_above_four_mebibytes_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    // 200 services × 80 tasks with ECS-like metadata: ~16,000 endpoints.
    let mut sets = BTreeMap::new();
    for service in 0..200u32 {
        let set: EndpointSet = (0..80u16)
            .map(|task| {
                let ip = Ipv4Addr::new(10, 1, u8::try_from(service % 250).unwrap(), 1);
                let addr = SocketAddr::new(ip.into(), 32768 + task + u16::try_from(service).unwrap());
                Endpoint::new(addr)
                    .with_meta("host_ip", ip.to_string())
                    .with_meta(
                        "task_arn",
                        format!("arn:aws:ecs:us-west-1:123456789012:task/large/{service:08x}{task:024x}"),
                    )
                    .with_meta(
                        "container_instance_arn",
                        format!("arn:aws:ecs:us-west-1:123456789012:container-instance/large/{service:032x}"),
                    )
            })
            .collect();
        sets.insert(
            Path::read(&format!("/#/ecs/large/svc{service}")).unwrap(),
            Arc::new(set),
        );
    }
    ctl.observed.replace(SOURCE, sets);
    let a = agent(
        "127.0.18.1",
        grpc,
        free_port("127.0.18.1"),
        Mode::Direct,
        &dir.path().join("a"),
    )
    .await;
    converged(&a, 1).await;
    let table = a.routes.load();
    assert_eq!(table.mesh.endpoint_count(), 16_000);
    let size = table.mesh.to_snapshot(1, "x").encoded_len();
    assert!(size > 4 * 1024 * 1024, "the snapshot is only {size} bytes");
}
