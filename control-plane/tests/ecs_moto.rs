//! The ECS source against ECS emulated by the patched moto
//! (`tests/harness/moto_ecs.py`), through the real AWS SDK. Each test owns a
//! region, so tests share one emulator without seeing each other.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::NetworkMode;
use ecsmesh_controller::metrics::Metrics;
use ecsmesh_controller::sources::SourceSets;
use ecsmesh_controller::sources::ecs::EcsSource;
use ecsmesh_dtab::Path;
use ecsmesh_test_support::ecs::{Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;

fn endpoints(sets: &SourceSets, name: &str) -> Vec<String> {
    let path = Path::read(name).unwrap();
    let mut addrs: Vec<String> = sets
        .get(&path)
        .map(|s| s.iter().map(|e| e.addr.to_string()).collect())
        .unwrap_or_default();
    addrs.sort();
    addrs
}

async fn source_for(
    topology: &Topology,
    endpoint: &str,
    region: &str,
) -> (EcsSource, Arc<Metrics>) {
    let conf = sdk_config(endpoint, region).await;
    let metrics = Arc::new(Metrics::new());
    let source = EcsSource::new(
        aws_sdk_ecs::Client::new(&conf),
        aws_sdk_ec2::Client::new(&conf),
        topology.cluster.clone(),
        Arc::clone(&metrics),
    );
    (source, metrics)
}

/// `api="ecs",operation="X"` call count from the metrics text.
fn calls(metrics: &Metrics, api: &str, operation: &str) -> u64 {
    let needle =
        format!("ecsmesh_controller_api_calls_total{{api=\"{api}\",operation=\"{operation}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn network_modes_and_service_names() {
    let moto = MotoServer::shared();
    let region = "us-west-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "modes", 1, &["127.0.1.1", "127.0.1.2"]).await;

    // bridge, dynamic host port, named by the ECS service
    let web = topology
        .task_definition("web", NetworkMode::Bridge, "web", &[(8080, 0)], &[], &[])
        .await;
    topology.create_service("hello", &web, 2).await;
    // bridge, static port, named by a docker label
    let labelled = topology
        .task_definition(
            "labelled",
            NetworkMode::Bridge,
            "app",
            &[(80, 7777)],
            &[("SERVICE_NAME", "ignored-env")],
            &[("ecsmesh.service", "world")],
        )
        .await;
    topology.run_task(&labelled, 1, false).await;
    // host mode, named by registrator's per-port variable
    let host = topology
        .task_definition(
            "hostnet",
            NetworkMode::Host,
            "metrics",
            &[(9100, 9100)],
            &[("SERVICE_9100_NAME", "node-exporter")],
            &[],
        )
        .await;
    topology.run_task(&host, 1, false).await;
    // awsvpc: the task's ENI IP and the container port; named by container
    let api = topology
        .task_definition("api", NetworkMode::Awsvpc, "api", &[(8443, 0)], &[], &[])
        .await;
    topology.run_task(&api, 1, true).await;

    let (mut source, metrics) = source_for(&topology, &moto.endpoint(), region).await;
    let sets = source.resync().await.unwrap();

    let hello = endpoints(&sets, "/#/ecs/modes/hello");
    assert_eq!(hello.len(), 2, "{hello:?}");
    for addr in &hello {
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        assert!((49153..=65535).contains(&port), "dynamic host port {addr}");
        assert!(addr.starts_with("127.0.1."), "host IP {addr}");
    }
    let world = endpoints(&sets, "/#/ecs/modes/world");
    assert_eq!(world.len(), 1);
    assert!(world[0].ends_with(":7777"));
    assert_eq!(endpoints(&sets, "/#/ecs/modes/node-exporter").len(), 1);
    assert!(endpoints(&sets, "/#/ecs/modes/node-exporter")[0].ends_with(":9100"));
    let api_eps = endpoints(&sets, "/#/ecs/modes/api");
    assert_eq!(api_eps.len(), 1);
    assert!(
        api_eps[0].starts_with("127.0.2.") && api_eps[0].ends_with(":8443"),
        "{api_eps:?}"
    );

    // Metadata carries where the endpoint runs.
    let one = sets[&Path::read("/#/ecs/modes/world").unwrap()]
        .iter()
        .next()
        .unwrap()
        .clone();
    assert!(one.meta["task_arn"].contains(":task/modes/"));
    assert!(one.meta["instance_id"].starts_with("i-"));
    assert_eq!(one.meta["host_ip"], one.addr.ip().to_string());
    assert_eq!(one.meta["task_definition"], "labelled:1");

    // Batched reads: five tasks, one call each, not one per task.
    assert_eq!(calls(&metrics, "ecs", "ListTasks"), 1);
    assert_eq!(calls(&metrics, "ecs", "DescribeTasks"), 1);
    assert_eq!(calls(&metrics, "ecs", "DescribeContainerInstances"), 1);
    assert_eq!(calls(&metrics, "ec2", "DescribeInstances"), 1);
    assert_eq!(calls(&metrics, "ecs", "DescribeTaskDefinition"), 4);
    // A second resync reuses every cache.
    source.resync().await.unwrap();
    assert_eq!(calls(&metrics, "ecs", "DescribeTaskDefinition"), 4);
    assert_eq!(calls(&metrics, "ec2", "DescribeInstances"), 1);
    assert_eq!(calls(&metrics, "ecs", "ListTasks"), 2);
}

#[tokio::test]
async fn stopped_and_scaled_in_tasks_leave_new_ones_join() {
    let moto = MotoServer::shared();
    let region = "us-east-2";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "life", 3, &["127.0.3.1", "127.0.3.2"]).await;
    let web = topology
        .task_definition("web", NetworkMode::Bridge, "web", &[(8080, 0)], &[], &[])
        .await;
    topology.create_service("world", &web, 3).await;
    let (mut source, _) = source_for(&topology, &moto.endpoint(), region).await;
    assert_eq!(
        endpoints(&source.resync().await.unwrap(), "/#/ecs/life/world").len(),
        3
    );

    // Stop one task: it leaves at the next observation (the emulated
    // scheduler starts a replacement, which joins).
    let tasks = topology.service_tasks("world").await;
    topology.stop_task(&tasks[0]).await;
    let sets = source.resync().await.unwrap();
    let after = &sets[&Path::read("/#/ecs/life/world").unwrap()];
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|e| e.meta["task_arn"] != tasks[0]),
        "the stopped task must be gone"
    );

    topology.scale_service("world", 1).await;
    assert_eq!(
        endpoints(&source.resync().await.unwrap(), "/#/ecs/life/world").len(),
        1
    );
    topology.scale_service("world", 0).await;
    let sets = source.resync().await.unwrap();
    assert!(endpoints(&sets, "/#/ecs/life/world").is_empty());
}

#[tokio::test]
async fn a_failing_api_keeps_the_last_state() {
    let moto = MotoServer::shared();
    let region = "eu-west-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "flaky", 5, &["127.0.5.1"]).await;
    let web = topology
        .task_definition("web", NetworkMode::Bridge, "web", &[(8080, 0)], &[], &[])
        .await;
    topology.create_service("world", &web, 1).await;

    // The source talks to ECS through a proxy that can start failing.
    let proxy = ecsmesh_test_support::faults::FaultProxy::start(moto.port()).await;
    let (mut source, metrics) = source_for(&topology, &proxy.endpoint(), region).await;
    let observed = ecsmesh_controller::sources::Observed::new(["ecs:flaky".to_owned()]);
    let good = source.resync().await.unwrap();
    assert_eq!(endpoints(&good, "/#/ecs/flaky/world").len(), 1);
    observed.replace("ecs:flaky", good.clone());

    proxy.throttle(true);
    let err = source.resync().await.unwrap_err();
    assert!(err.throttled, "{err}");
    assert!(err.to_string().contains("ListTasks"), "{err}");
    assert!(
        metrics
            .encode()
            .contains("ecsmesh_controller_api_errors_total{api=\"ecs\",operation=\"ListTasks\"} 1"),
        "the error is counted"
    );
    // The loop, which keeps the view on error, holds the last good state.
    let mut rx = observed.subscribe();
    let run = tokio::spawn(async move {
        source.run(&observed, Duration::from_millis(100)).await;
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(600), rx.changed())
            .await
            .is_err(),
        "a failing resync must not change the view"
    );
    assert_eq!(rx.borrow().merged(), good);
    // Recovery: the next successful resync picks up a scale-up.
    topology.scale_service("world", 2).await;
    proxy.throttle(false);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            rx.changed().await.unwrap();
            if endpoints(&rx.borrow().merged(), "/#/ecs/flaky/world").len() == 2 {
                break;
            }
        }
    })
    .await
    .expect("recovered after the API came back");
    run.abort();
}

/// The value of an unlabelled series in the metrics text.
fn gauge(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(f64::NAN, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn the_call_budget_paces_calls_and_throttling_shrinks_it() {
    use ecsmesh_controller::sources::budget::{BudgetSettings, CallBudget};
    let moto = MotoServer::shared();
    let region = "ap-southeast-2";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "budget", 46, &["127.0.46.1"]).await;
    let web = topology
        .task_definition("web", NetworkMode::Bridge, "web", &[(8080, 0)], &[], &[])
        .await;
    topology.create_service("world", &web, 1).await;
    let proxy = ecsmesh_test_support::faults::FaultProxy::start(moto.port()).await;
    let (mut source, metrics) = source_for(&topology, &proxy.endpoint(), region).await;
    source.budget = Arc::new(CallBudget::new(BudgetSettings {
        rate: 4.0,
        burst: 1.0,
    }));

    // A first resync: every call waits its turn at 4 a second.
    let started = std::time::Instant::now();
    let good = source.resync().await.unwrap();
    let took = started.elapsed().as_secs_f64();
    let made: u64 = [
        ("ecs", "ListTasks"),
        ("ecs", "DescribeTasks"),
        ("ecs", "DescribeContainerInstances"),
        ("ec2", "DescribeInstances"),
        ("ecs", "DescribeTaskDefinition"),
    ]
    .iter()
    .map(|(api, op)| calls(&metrics, api, op))
    .sum();
    assert_eq!(made, 5);
    #[allow(clippy::cast_precision_loss)]
    let least = (made - 1) as f64 / 4.0;
    assert!(took >= least - 0.05, "{made} calls in {took:.2} s");
    assert!(
        gauge(&metrics, "ecsmesh_controller_api_budget_wait_seconds_total") > 0.5,
        "{}",
        metrics.encode()
    );

    // Throttled: the rate halves at each throttle, and the view stays.
    proxy.throttle(true);
    assert!(source.resync().await.unwrap_err().throttled);
    assert!((gauge(&metrics, "ecsmesh_controller_api_budget_rate") - 2.0).abs() < 1e-9);
    assert!(source.resync().await.unwrap_err().throttled);
    assert!((gauge(&metrics, "ecsmesh_controller_api_budget_rate") - 1.0).abs() < 1e-9);
    assert!(
        metrics.encode().contains(
            "ecsmesh_controller_api_throttles_total{api=\"ecs\",operation=\"ListTasks\"} 2"
        ),
        "{}",
        metrics.encode()
    );

    // Calls that succeed win the rate back a little at a time.
    proxy.throttle(false);
    assert_eq!(source.resync().await.unwrap(), good);
    let rate = gauge(&metrics, "ecsmesh_controller_api_budget_rate");
    assert!(rate > 1.0 && rate < 4.0, "{rate}");
}

#[tokio::test]
async fn tasks_on_a_draining_instance_are_marked_until_it_is_active_again() {
    use aws_sdk_ecs::types::ContainerInstanceStatus;
    let moto = MotoServer::shared();
    let region = "eu-west-3";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "drainmark", 52, &["127.0.52.1", "127.0.52.2"]).await;
    let web = topology
        .task_definition("web", NetworkMode::Bridge, "web", &[(8080, 0)], &[], &[])
        .await;
    // Standalone tasks, one per instance: ECS does not move those on a drain.
    for node in &topology.nodes {
        topology
            .ecs
            .start_task()
            .cluster("drainmark")
            .task_definition(&web)
            .container_instances(&node.container_instance_arn)
            .send()
            .await
            .unwrap();
    }
    let (mut source, _) = source_for(&topology, &moto.endpoint(), region).await;
    let draining = |sets: &SourceSets| -> Vec<(String, bool)> {
        let path = Path::read("/#/ecs/drainmark/web").unwrap();
        let mut v: Vec<(String, bool)> = sets[&path]
            .iter()
            .map(|e| {
                (
                    e.meta["host_ip"].clone(),
                    e.meta
                        .get(ecsmesh_state::meta::DRAINING)
                        .map(String::as_str)
                        == Some("true"),
                )
            })
            .collect();
        v.sort();
        v
    };
    let set_state = |status: ContainerInstanceStatus| {
        let ecs = topology.ecs.clone();
        let arn = topology.nodes[0].container_instance_arn.clone();
        async move {
            ecs.update_container_instances_state()
                .cluster("drainmark")
                .container_instances(arn)
                .status(status)
                .send()
                .await
                .unwrap();
        }
    };
    let before = source.resync().await.unwrap();
    assert_eq!(
        draining(&before),
        [
            ("127.0.52.1".to_owned(), false),
            ("127.0.52.2".to_owned(), false)
        ]
    );
    set_state(ContainerInstanceStatus::Draining).await;
    assert_eq!(
        draining(&source.resync().await.unwrap()),
        [
            ("127.0.52.1".to_owned(), true),
            ("127.0.52.2".to_owned(), false)
        ]
    );
    set_state(ContainerInstanceStatus::Active).await;
    assert_eq!(draining(&source.resync().await.unwrap()), draining(&before));
}
