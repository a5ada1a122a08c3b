//! ECS events as the fast path: EventBridge-shaped "ECS Task State Change"
//! messages on an SQS queue (moto) change the ECS source's view between
//! full resyncs (here 5 minutes apart, so only events can explain a
//! change); duplicates and older versions are dropped; every message is
//! deleted once handled, and what is not an ECS event is deleted and
//! counted, never applied.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::{NetworkMode, Task};
use common::{Running, TestAgent, emulator_env, free_port};
use ecsmesh_controller::metrics::Metrics;
use ecsmesh_controller::sources::ecs::EcsSource;
use ecsmesh_controller::sources::{Observed, ObservedState};
use ecsmesh_dtab::Path;
use ecsmesh_proto::v1::controller_message::Kind;
use ecsmesh_state::MeshState;
use ecsmesh_test_support::ecs::{Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;
use serde_json::json;
use tokio::sync::watch;

/// The event EventBridge would deliver for `task` at `version`, `status`.
fn event(task: &Task, version: i64, status: &str) -> String {
    let containers: Vec<_> = task
        .containers()
        .iter()
        .map(|c| {
            json!({
                "name": c.name(),
                "networkBindings": c.network_bindings().iter().map(|b| json!({
                    "containerPort": b.container_port(),
                    "hostPort": b.host_port(),
                    "bindIP": b.bind_ip(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "version": "0",
        "id": uuid(),
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": "123456789012",
        "region": "ap-northeast-2",
        "resources": [task.task_arn()],
        "detail": {
            "clusterArn": task.cluster_arn(),
            "taskArn": task.task_arn(),
            "lastStatus": status,
            "desiredStatus": if status == "STOPPED" { "STOPPED" } else { "RUNNING" },
            "group": task.group(),
            "containerInstanceArn": task.container_instance_arn(),
            "taskDefinitionArn": task.task_definition_arn(),
            "version": version,
            "containers": containers,
        }
    })
    .to_string()
}

fn uuid() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn world(state: &ObservedState) -> usize {
    let name = Path::read("/#/ecs/events/world").unwrap();
    state.merged().get(&name).map_or(0, |s| s.len())
}

async fn until(
    rx: &mut watch::Receiver<ObservedState>,
    what: &str,
    done: impl Fn(&ObservedState) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&rx.borrow_and_update()) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}: {:?}",
            rx.borrow().by_source.keys().collect::<Vec<_>>()
        )
    });
}

fn counted(metrics: &Metrics, result: &str) -> u64 {
    let needle = format!("ecsmesh_controller_ecs_events_total{{result=\"{result}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A cluster `cluster` on one node `127.0.<net>.1` running the service
/// `world` (one task), and an empty SQS queue `<cluster>-events`.
async fn service_and_queue(
    moto: &MotoServer,
    region: &str,
    cluster: &str,
    net: u8,
) -> (aws_config::SdkConfig, Topology, aws_sdk_sqs::Client, String) {
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, cluster, net, &[&format!("127.0.{net}.1")]).await;
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
    topology.create_service("world", &web, 1).await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let queue = sqs
        .create_queue()
        .queue_name(format!("{cluster}-events"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (conf, topology, sqs, queue)
}

/// The cluster `events`' source (full resync every 5 min) fed by the
/// queue's consumer: its metrics, its view, and the two tasks.
#[allow(clippy::type_complexity)]
fn follow_events(
    conf: &aws_config::SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
) -> (
    Arc<Metrics>,
    watch::Receiver<ObservedState>,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<()>,
) {
    let metrics = Arc::new(Metrics::new());
    let mut source = EcsSource::new(
        aws_sdk_ecs::Client::new(conf),
        aws_sdk_ec2::Client::new(conf),
        "events".to_owned(),
        Arc::clone(&metrics),
    );
    let (tx, events) = tokio::sync::mpsc::channel(16);
    source.events = Some(events);
    let observed = Arc::new(Observed::new(["ecs:events".to_owned()]));
    let rx = observed.subscribe();
    let run = tokio::spawn(async move { source.run(&observed, Duration::from_mins(5)).await });
    let consumer = tokio::spawn(ecsmesh_controller::sources::ecs_events::run(
        sqs.clone(),
        queue.to_owned(),
        BTreeMap::from([("events".to_owned(), tx)]),
        Arc::clone(&metrics),
    ));
    (metrics, rx, run, consumer)
}

async fn send(sqs: &aws_sdk_sqs::Client, queue: &str, body: String) {
    sqs.send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_change_routing_between_full_resyncs() {
    let moto = MotoServer::shared();
    let region = "ap-northeast-2";
    let (conf, topology, sqs, queue) = service_and_queue(moto, region, "events", 48).await;

    let (metrics, mut rx, run, consumer) = follow_events(&conf, &sqs, &queue);
    until(&mut rx, "the first resync", |s| world(s) == 1).await;
    let first = topology.service_tasks("world").await;

    // A task starts: only its event can tell before the next full resync.
    topology.scale_service("world", 2).await;
    let tasks = topology.service_tasks("world").await;
    let described = topology
        .ecs
        .describe_tasks()
        .cluster("events")
        .set_tasks(Some(tasks.clone()))
        .send()
        .await
        .unwrap();
    let new = described
        .tasks()
        .iter()
        .find(|t| !first.iter().any(|a| Some(a.as_str()) == t.task_arn()))
        .unwrap()
        .clone();
    let old = described
        .tasks()
        .iter()
        .find(|t| first.iter().any(|a| Some(a.as_str()) == t.task_arn()))
        .unwrap()
        .clone();
    let send = |body: String| send(&sqs, &queue, body);
    send(event(&new, 3, "RUNNING")).await;
    until(&mut rx, "the started task's event", |s| world(s) == 2).await;

    // Redelivered, and an older version: both dropped.
    send(event(&new, 3, "RUNNING")).await;
    send(event(&new, 2, "PENDING")).await;
    // Not ECS events at all: deleted and counted, nothing applied.
    send("{not json".to_owned()).await;
    send(json!({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": {}}).to_string()).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while counted(&metrics, "stale") < 2
            || counted(&metrics, "malformed") < 1
            || counted(&metrics, "ignored") < 1
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{}", metrics.encode()));
    assert_eq!(world(&rx.borrow()), 2);

    // The first task stops: its event removes it; an older RUNNING event
    // for it arriving late does not bring it back.
    topology.stop_task(first[0].as_str()).await;
    send(event(&old, 10, "STOPPED")).await;
    until(&mut rx, "the stopped task's event", |s| world(s) == 1).await;
    send(event(&old, 9, "RUNNING")).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while counted(&metrics, "stale") < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(world(&rx.borrow()), 1);
    assert_eq!(counted(&metrics, "applied"), 2);

    // Everything handled was deleted.
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let count = |name: aws_sdk_sqs::types::QueueAttributeName| {
        attrs
            .attributes()
            .and_then(|a| a.get(&name))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages),
        0
    );
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        0
    );
    run.abort();
    consumer.abort();
}

/// The real binary, following the events the (patched) moto puts on its
/// event bus as ECS would, through a rule and a queue as `deploy up` sets
/// them up: a scale-out and a stop reach a subscribed agent as deltas with
/// no resync in between (one ListTasks in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_follows_the_events_an_account_sends() {
    let moto = MotoServer::shared();
    let region = "ap-northeast-3";
    let (conf, topology, sqs, queue) = service_and_queue(moto, region, "evbin", 50).await;
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .cloned()
        .unwrap();
    let events = aws_sdk_eventbridge::Client::new(&conf);
    events
        .put_rule()
        .name("evbin-ecs")
        .event_pattern(
            json!({"source": ["aws.ecs"], "detail-type": ["ECS Task State Change", "ECS Container Instance State Change"]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("evbin-ecs")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // Events from before the controller starts: its first resync covers them.
    let _ = sqs.purge_queue().queue_url(&queue).send().await;

    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let store = dir.path().join("store").display().to_string();
    let _controller = Running::start(
        &[
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
            "--store-dir",
            &store,
            "--cluster",
            "evbin",
            "--ecs-events-queue-url",
            &queue,
            "--full-resync-interval",
            "5m",
        ],
        &emulator_env(&moto.endpoint(), region),
    );
    let node = &topology.nodes[0];
    let channel = async {
        let addr = format!("127.0.0.1:{grpc}").parse().unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return common::channel(addr).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the controller did not listen");
    }
    .await;
    let mut agent = TestAgent::connect_as(channel, &node.instance_id, &node.private_ip).await;
    let Kind::Snapshot(s) = agent.next().await else {
        panic!("a snapshot first")
    };
    agent.ack(s.version).await;
    let mut state = MeshState::from_snapshot(&s).unwrap();
    let name = Path::read("/#/ecs/evbin/world").unwrap();
    assert_eq!(state.sets[&name].len(), 1);
    let first = topology.service_tasks("world").await;

    let started = std::time::Instant::now();
    topology.scale_service("world", 2).await;
    state = next_state(&mut agent, state).await;
    assert_eq!(state.sets[&name].len(), 2);
    topology.stop_task(first[0].as_str()).await;
    state = next_state(&mut agent, state).await;
    // The scheduler replaces the stopped task (another event) if it has
    // not yet: either way the stopped one is gone.
    let gone = |st: &MeshState| {
        st.sets[&name]
            .iter()
            .all(|e| e.meta.get("task_arn") != Some(&first[0]))
    };
    while !gone(&state) {
        state = next_state(&mut agent, state).await;
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    let metrics = metrics_text(admin).await;
    let list_tasks = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "ecsmesh_controller_api_calls_total{api=\"ecs\",operation=\"ListTasks\"} ",
            )
        })
        .unwrap();
    assert_eq!(list_tasks.trim(), "1", "no resync ran: the events did it");
    assert!(
        metrics.contains("ecsmesh_controller_ecs_events_total{result=\"applied\"}"),
        "{metrics}"
    );

    // Whoever can write to the queue can send anything: the binary drops
    // and counts it, and keeps following.
    for body in [
        "{not json",
        "{\"source\":\"aws.ecs\",\"detail-type\":\"ECS Task State Change\",\"detail\":{\"clusterArn\":\"x/evbin\"}}",
    ] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let malformed = "ecsmesh_controller_ecs_events_total{result=\"malformed\"} 2";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !metrics_text(admin).await.contains(malformed) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            metrics_text(admin).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    topology.scale_service("world", 3).await;
    let grown = next_state(&mut agent, state).await;
    assert!(grown.sets[&name].len() >= 2);
}

/// The agent's next message, a delta, applied to `state` and ACKed.
async fn next_state(agent: &mut TestAgent, state: MeshState) -> MeshState {
    let Kind::Delta(d) = agent.next().await else {
        panic!("a delta")
    };
    agent.ack(d.version).await;
    state.apply(&d).unwrap()
}

async fn metrics_text(admin: u16) -> String {
    let url = format!("http://127.0.0.1:{admin}/metrics");
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

/// `event` with `detail.updatedAt` set to `at`.
fn event_at(task: &Task, version: i64, status: &str, at: std::time::SystemTime) -> String {
    use aws_sdk_ecs::primitives::{DateTime, DateTimeFormat};
    let mut v: serde_json::Value = serde_json::from_str(&event(task, version, status)).unwrap();
    v["detail"]["updatedAt"] = DateTime::from(at)
        .fmt(DateTimeFormat::DateTime)
        .unwrap()
        .into();
    v.to_string()
}

/// A message delivered late (or one a replaced leader read and never
/// deleted) about a task that stopped before the last resync: older than
/// that resync, it cannot bring the task back; the same news, recent, is
/// applied (the task may just have started, not listed yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_the_resync_does_not_bring_a_stopped_task_back() {
    let moto = MotoServer::shared();
    let (conf, topology, sqs, queue) = service_and_queue(moto, "eu-south-1", "events", 68).await;
    let arns = topology.service_tasks("world").await;
    let task = topology
        .ecs
        .describe_tasks()
        .cluster("events")
        .set_tasks(Some(arns))
        .send()
        .await
        .unwrap()
        .tasks()[0]
        .clone();
    topology.scale_service("world", 0).await;

    let (metrics, mut rx, run, consumer) = follow_events(&conf, &sqs, &queue);
    until(&mut rx, "the first resync", ObservedState::ready).await;
    assert_eq!(world(&rx.borrow()), 0);
    let send = |body: String| send(&sqs, &queue, body);
    let ten_minutes_ago = std::time::SystemTime::now() - Duration::from_mins(10);
    send(event_at(&task, 5, "RUNNING", ten_minutes_ago)).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while counted(&metrics, "stale") < 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{}", metrics.encode()));
    assert_eq!(world(&rx.borrow()), 0, "a stopped task came back");

    send(event_at(&task, 6, "RUNNING", std::time::SystemTime::now())).await;
    until(&mut rx, "the recent event", |s| world(s) == 1).await;
    run.abort();
    consumer.abort();
}
