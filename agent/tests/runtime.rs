//! The agent's worker threads: as configured, or the CPUs the process may
//! use (its affinity mask and cgroup quota), never the host's core count.

#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod common;

use common::{AgentProcess, Upstream, mesh, rewrite};

#[tokio::test]
async fn worker_threads_follow_the_setting_or_the_cpus_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let world = Upstream::start("127.0.59.11", "world").await;
    let (_ctl, grpc) = mesh(
        dir.path(),
        &[("/#/ecs/demo/world", &[(world.addr, "127.0.59.11")])],
    )
    .await;
    let workers = "ecsmesh_agent_worker_threads";

    let flag = AgentProcess::start(
        "127.0.59.1",
        grpc,
        &dir.path().join("a"),
        &["--worker-threads", "3"],
    )
    .await;
    assert_eq!(flag.metric(workers).await, 3.0);

    let env = AgentProcess::start_with("127.0.59.2", grpc, &dir.path().join("b"), &[], |cmd| {
        cmd.env("ECSMESH_WORKER_THREADS", "2");
    })
    .await;
    assert_eq!(env.metric(workers).await, 2.0);

    // Allowed one CPU, whatever the host has: one worker.
    let pinned = AgentProcess::start_with("127.0.59.3", grpc, &dir.path().join("c"), &[], |cmd| {
        rewrite(cmd, &["taskset", "-c", "0"], &[]);
    })
    .await;
    assert_eq!(pinned.metric(workers).await, 1.0);
    let (status, _, body) = common::get_via(pinned.outgoing_addr, "world", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "world"));
}
