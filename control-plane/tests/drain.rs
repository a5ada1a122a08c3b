//! ECS and controller changes reaching the data plane end to end: the real controller
//! binary watching the patched moto, a real agent, and an upstream server
//! on each host port moto's tasks report. While requests run in a loop, a
//! new task starts receiving traffic, and a task the service scales away
//! receives none after the controller's next observation, and a task stopped
//! outright is replaced (even on its host port) — with no failed
//! request while it drains; a controller killed and restarted costs no
//! request, and the agent reconverges on the new one.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::NetworkMode;
use bytes::Bytes;
use common::{Running, Upstream, agent, clients, emulator_env, free_port, upstream};
use ecsmesh_agent::Agent;
use ecsmesh_test_support::ecs::{Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioExecutor;

fn endpoints(agent: &Agent) -> usize {
    let table = agent.routes.load();
    table
        .mesh
        .sets
        .get(&ecsmesh_dtab::Path::read("/#/ecs/drain/world").unwrap())
        .map_or(0, |s| s.len())
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_reaches_the_data_plane_without_failed_requests() {
    let moto = MotoServer::shared();
    let region = "sa-east-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "drain", 40, &["127.0.40.1", "127.0.40.2"]).await;
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
    let mut upstreams: HashMap<String, (SocketAddr, Upstream)> = HashMap::new();
    for (arn, addr) in topology
        .task_addresses(&topology.service_tasks("world").await)
        .await
    {
        upstreams.insert(arn, (addr, upstream(addr).await));
    }
    assert_eq!(upstreams.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let _controller = controller(grpc, &dir.path().join("store"), moto, region, "drain");
    let agent = Arc::new(agent(&topology.nodes[0], &[grpc], dir.path().join("agent")).await);
    until("the agent to see both tasks", async || {
        endpoints(&agent) == 2
    })
    .await;

    // Four clients in a loop for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients = clients(4, agent.outgoing_addr, &stop, &ok, &failed);

    // A new task joins: its server starts, and it receives traffic.
    topology.scale_service("world", 3).await;
    let tasks = topology.service_tasks("world").await;
    let (new_arn, new_addr) = topology
        .task_addresses(&tasks)
        .await
        .into_iter()
        .find(|(arn, _)| !upstreams.contains_key(arn))
        .expect("a third task");
    upstreams.insert(new_arn.clone(), (new_addr, upstream(new_addr).await));
    until("the new task to get traffic", async || {
        upstreams[&new_arn].1.hits.load(Ordering::SeqCst) > 20
    })
    .await;

    // Scale in: the newest task stops; its server keeps running (draining),
    // and after the controller's next observation no request reaches it.
    topology.scale_service("world", 2).await;
    let remaining = topology.service_tasks("world").await;
    let gone: Vec<String> = upstreams
        .keys()
        .filter(|a| !remaining.contains(a))
        .cloned()
        .collect();
    assert_eq!(gone.len(), 1);
    until("the agent to drop the task", async || {
        endpoints(&agent) == 2
    })
    .await;
    let frozen = upstreams[&gone[0]].1.hits.load(Ordering::SeqCst);
    let before = ok.load(Ordering::SeqCst);
    until("more traffic", async || {
        ok.load(Ordering::SeqCst) > before + 500
    })
    .await;
    assert_eq!(
        upstreams[&gone[0]].1.hits.load(Ordering::SeqCst),
        frozen,
        "a removed task got traffic"
    );

    // A task stopped outright: its container exits at once (requests to it
    // fail and are retried elsewhere), and the service replaces it —
    // possibly on the same host port — which then receives traffic. No
    // request fails meanwhile.
    let victim = remaining[0].clone();
    topology.stop_task(&victim).await;
    upstreams[&victim].1.exit().await;
    let (new_arn, new_addr) = topology
        .task_addresses(&topology.service_tasks("world").await)
        .await
        .into_iter()
        .find(|(arn, _)| !upstreams.contains_key(arn))
        .expect("a replacement task");
    upstreams.insert(new_arn.clone(), (new_addr, upstream(new_addr).await));
    until("the replacement to get traffic", async || {
        upstreams[&new_arn].1.hits.load(Ordering::SeqCst) > 20
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed while tasks came and went"
    );
    assert!(ok.load(Ordering::SeqCst) > 1000);
}

fn controller(
    grpc: u16,
    store: &std::path::Path,
    moto: &MotoServer,
    region: &str,
    cluster: &str,
) -> Running {
    let grpc = format!("127.0.0.1:{grpc}");
    let store = store.display().to_string();
    Running::start(
        &[
            "--grpc-addr",
            &grpc,
            "--admin-addr",
            "127.0.0.1:0",
            "--store-dir",
            &store,
            "--cluster",
            cluster,
            "--resync-interval",
            "300ms",
        ],
        &emulator_env(&moto.endpoint(), region),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_and_restarted_loses_nothing() {
    let moto = MotoServer::shared();
    let region = "ca-central-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "restart", 42, &["127.0.42.1", "127.0.42.2"]).await;
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
    let mut servers = Vec::new();
    for (_, addr) in topology
        .task_addresses(&topology.service_tasks("world").await)
        .await
    {
        servers.push(upstream(addr).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let first = controller(grpc, &dir.path().join("store"), moto, region, "restart");
    let agent = agent(&topology.nodes[0], &[grpc], dir.path().join("agent")).await;
    let set = ecsmesh_dtab::Path::read("/#/ecs/restart/world").unwrap();
    let has = |n: usize| {
        agent
            .routes
            .load()
            .mesh
            .sets
            .get(&set)
            .map_or(0, |s| s.len())
            == n
    };
    until("the agent to see both tasks", async || has(2)).await;
    let first_epoch = agent.status.borrow().epoch.clone();

    // The controller dies: every request still succeeds.
    drop(first);
    let mut status = agent.status.clone();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.connected))
        .await
        .expect("the agent notices")
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    for _ in 0..500 {
        let req = http::Request::get(format!("http://{}/", agent.outgoing_addr))
            .header("host", "world")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let _ = resp.into_body().collect().await;
    }

    // Meanwhile ECS changes; a new controller starts on the same address
    // and store: the agent reconnects and converges on the new state.
    topology.scale_service("world", 1).await;
    let _second = controller(grpc, &dir.path().join("store"), moto, region, "restart");
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.connected && s.epoch != first_epoch && s.version > 0),
    )
    .await
    .expect("the agent reconverges on the new controller")
    .unwrap();
    until("the agent to see the scale-in", async || has(1)).await;
    assert!(
        servers
            .iter()
            .map(|s| s.hits.load(Ordering::SeqCst))
            .sum::<u64>()
            >= 500
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_serves_only_when_nothing_else_can() {
    use aws_sdk_ecs::types::ContainerInstanceStatus;
    let moto = MotoServer::shared();
    let region = "ap-southeast-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "drain", 58, &["127.0.58.1", "127.0.58.2"]).await;
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
    // Standalone tasks, one per instance: a drain does not move them, so
    // they keep running there until someone stops them.
    let mut arns = Vec::new();
    for node in &topology.nodes {
        let out = topology
            .ecs
            .start_task()
            .cluster("drain")
            .task_definition(&web)
            .container_instances(&node.container_instance_arn)
            .send()
            .await
            .unwrap();
        arns.extend(
            out.tasks()
                .iter()
                .filter_map(|t| t.task_arn().map(str::to_owned)),
        );
    }
    let mut upstreams: HashMap<String, Upstream> = HashMap::new();
    for (arn, addr) in topology.task_addresses(&arns).await {
        upstreams.insert(arn, upstream(addr).await);
    }
    let on_first = arns[0].clone();
    let on_second = arns[1].clone();

    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let _controller = controller(grpc, &dir.path().join("store"), moto, region, "drain");
    let agent = Arc::new(agent(&topology.nodes[1], &[grpc], dir.path().join("agent")).await);
    until("the agent to see both tasks", async || {
        endpoints(&agent) == 2
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let running = clients(2, agent.outgoing_addr, &stop, &ok, &failed);
    until("both tasks to get traffic", async || {
        upstreams
            .values()
            .all(|u| u.hits.load(Ordering::SeqCst) > 20)
    })
    .await;

    // The first instance drains: its task keeps running, but gets no new
    // traffic once the agent knows.
    topology
        .ecs
        .update_container_instances_state()
        .cluster("drain")
        .container_instances(&topology.nodes[0].container_instance_arn)
        .status(ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();
    until("the agent to see the drain", async || {
        let table = agent.routes.load();
        table.clients().iter().any(|c| c.total == 1)
    })
    .await;
    let frozen = upstreams[&on_first].hits.load(Ordering::SeqCst);
    let before = ok.load(Ordering::SeqCst);
    until("more traffic", async || {
        ok.load(Ordering::SeqCst) > before + 300
    })
    .await;
    // A request already on its way may land; no new ones do.
    assert!(upstreams[&on_first].hits.load(Ordering::SeqCst) <= frozen + 2);

    // The only other task stops: the draining one is all that is left, and
    // it serves again rather than nothing serving.
    topology.stop_task(&on_second).await;
    upstreams[&on_second].exit().await;
    let revived = upstreams[&on_first].hits.load(Ordering::SeqCst);
    until("the draining task to serve again", async || {
        upstreams[&on_first].hits.load(Ordering::SeqCst) > revived + 50
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for c in running {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the drain"
    );
}
