//! Controller replicas sharing a store elect one leader (issue #17): the
//! real binaries over moto's DynamoDB and ECS, and over the Consul double.
//! Only the leader calls ECS; the followers serve agents the leader's
//! endpoint sets (and admit agents by the container instances it lists);
//! a killed leader is replaced within 15 s while requests through an agent
//! keep succeeding, and an ECS change made at the kill reaches the agent
//! within the lease time; a stopped leader (SIGTERM) hands over at once;
//! with the store unreachable nobody steps down and agents are still served.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_ecs::types::NetworkMode;
use common::{Running, agent, emulator_env, free_port, upstream};
use ecsmesh_agent::Agent;
use ecsmesh_test_support::ecs::{Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn create_table(conf: &aws_config::SdkConfig, name: &str) {
    aws_sdk_dynamodb::Client::new(conf)
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// One replica: the binary and its ports.
struct Replica {
    process: Option<Running>,
    grpc: u16,
    admin: u16,
}

impl Replica {
    fn start(extra: &[&str], env: &[(&str, String)]) -> Self {
        let (grpc, admin) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
        let (g, a) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{admin}"));
        let mut args = vec!["--grpc-addr", &g, "--admin-addr", &a];
        args.extend_from_slice(extra);
        Self {
            process: Some(Running::start(&args, env)),
            grpc,
            admin,
        }
    }

    async fn get(&self, path: &str) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    }

    /// `leader`, `follower`, `candidate`, or `None` while it does not answer.
    async fn role(&self) -> Option<String> {
        let body = self.get("/leader").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["role"].as_str().map(str::to_owned)
    }

    /// Calls this replica made to `api` (its `/metrics`).
    async fn calls(&self, api: &str) -> f64 {
        let metrics = self.get("/metrics").await.unwrap_or_default();
        let prefix = format!("ecsmesh_controller_api_calls_total{{api=\"{api}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    }
}

async fn until(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// The index of the one leader, once exactly one leads and the others follow.
async fn one_leader(replicas: &[&Replica], within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let mut roles = Vec::new();
        for r in replicas {
            roles.push(r.role().await);
        }
        let leaders: Vec<usize> = (0..roles.len())
            .filter(|&i| roles[i].as_deref() == Some("leader"))
            .collect();
        let followers = roles
            .iter()
            .filter(|r| r.as_deref() == Some("follower"))
            .count();
        if leaders.len() == 1 && followers + 1 == replicas.len() {
            return leaders[0];
        }
        // Says what each replica answered (None: not answering: exited?).
        assert!(
            start.elapsed() < within,
            "no single leader within {within:?}: roles {roles:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_watches_ecs_and_a_killed_one_is_replaced_under_load() {
    let moto = MotoServer::shared();
    let region = "me-south-1";
    let conf = sdk_config(&moto.endpoint(), region).await;
    let topology = Topology::create(&conf, "lead", 62, &["127.0.62.1", "127.0.62.2"]).await;
    create_table(&conf, "ecsmesh-lead").await;
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
    topology.create_service("world", &web, 3).await;
    let mut hits = Vec::new();
    for (_, addr) in topology
        .task_addresses(&topology.service_tasks("world").await)
        .await
    {
        hits.push(upstream(addr).await);
    }
    let env = emulator_env(&moto.endpoint(), region);
    let args = [
        "--store",
        "dynamodb",
        "--dynamodb-table",
        "ecsmesh-lead",
        "--cluster",
        "lead",
        "--resync-interval",
        "500ms",
    ];
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&args, &env)).collect();
    let leader = one_leader(
        &replicas.iter().collect::<Vec<_>>(),
        Duration::from_secs(20),
    )
    .await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // The agent follows a follower (the leader last in its list): it is
    // admitted by the instances the leader listed, and routes on the
    // leader's endpoint sets.
    let dir = tempfile::tempdir().unwrap();
    let order = [
        replicas[followers[0]].grpc,
        replicas[followers[1]].grpc,
        replicas[leader].grpc,
    ];
    let agent = agent(&topology.nodes[0], &order, dir.path().join("agent")).await;
    let set = ecsmesh_dtab::Path::read("/#/ecs/lead/world").unwrap();
    let seen = |agent: &Agent| {
        agent
            .routes
            .load()
            .mesh
            .sets
            .get(&set)
            .map_or(0, |s| s.len())
    };
    until(
        "the agent to route on 3 tasks",
        Duration::from_secs(20),
        async || seen(&agent) == 3,
    )
    .await;

    // Only the leader talks to ECS (and EC2).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(replicas[leader].calls("ecs").await > 0.0);
    for &f in &followers {
        assert!(
            replicas[f].calls("ecs").await == 0.0,
            "follower {f} called ECS"
        );
        assert!(
            replicas[f].calls("ec2").await == 0.0,
            "follower {f} called EC2"
        );
    }

    // Under load, the leader is killed and ECS changes at that moment.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = common::clients(4, agent.outgoing_addr, &stop, &ok, &failed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas[leader].process.take().unwrap().kill();
    // Scaled out, not in: the old tasks keep serving whatever routes the
    // agent holds; the new one must appear once a new leader watches.
    topology.scale_service("world", 4).await;
    for (_, addr) in topology
        .task_addresses(&topology.service_tasks("world").await)
        .await
        .into_iter()
        .skip(3)
    {
        hits.push(upstream(addr).await);
    }
    let survivors: Vec<&Replica> = followers.iter().map(|&f| &replicas[f]).collect();
    let took = Instant::now();
    let new_leader = one_leader(&survivors, Duration::from_secs(15)).await;
    let failover = took.elapsed();
    until(
        "the agent to see the task started at the kill",
        Duration::from_secs(15),
        async || seen(&agent) == 4,
    )
    .await;
    // From the kill: the lease's TTL, a look, and the new leader's first sync.
    let stale = took.elapsed();
    eprintln!(
        "failover {failover:?}; the change made at the kill reached the agent after {stale:?}"
    );
    assert!(
        stale <= Duration::from_secs(15),
        "routes stale for {stale:?}"
    );
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed while the leader changed"
    );
    assert!(ok.load(Ordering::SeqCst) > 200);

    // A stopping leader hands over at once (it releases the lease).
    let new_leader = followers[new_leader];
    let last = followers
        .iter()
        .copied()
        .find(|&f| f != new_leader)
        .unwrap();
    let stopped = Instant::now();
    replicas[new_leader].process.take().unwrap().terminate();
    until(
        "the last replica to lead",
        Duration::from_secs(5),
        async || replicas[last].role().await.as_deref() == Some("leader"),
    )
    .await;
    eprintln!("handover after SIGTERM: {:?}", stopped.elapsed());
    replicas.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_replicas_elect_through_a_session_lock() {
    let consul = ecsmesh_consul_double::ConsulDouble::start().await.unwrap();
    let address = format!("http://{}", consul.addr());
    consul
        .catalog_register(&serde_json::json!({
            "Datacenter": "dc1", "Node": "n1", "Address": "127.0.63.1",
            "Service": {"ID": "web-1", "Service": "web", "Port": 8080},
            "Check": {"CheckID": "web-1", "ServiceID": "web-1", "Status": "passing"},
        }))
        .unwrap();
    let args = [
        "--store",
        "consul",
        "--consul-address",
        &address,
        "--consul-datacenter",
        "dc1",
    ];
    let a = Replica::start(&args, &[]);
    let b = Replica::start(&args, &[]);
    let replicas = [&a, &b];
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let follower = 1 - leader;
    // The follower publishes the leader's view of the catalog without
    // reading the catalog itself.
    let addr: SocketAddr = format!("127.0.0.1:{}", replicas[follower].grpc)
        .parse()
        .unwrap();
    let mut watcher = common::TestAgent::connect(common::channel(addr).await, "i-watcher").await;
    let ecsmesh_proto::v1::controller_message::Kind::Snapshot(s) = watcher.next().await else {
        panic!("expected a snapshot")
    };
    let state = ecsmesh_state::MeshState::from_snapshot(&s).unwrap();
    let set = &state.sets[&ecsmesh_dtab::Path::read("/#/consul/dc1/web").unwrap()];
    let addrs: Vec<String> = set.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, ["127.0.63.1:8080"]);
    let catalog_reads = |metrics: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("ecsmesh_controller_api_calls_total{api=\"consul\"")
                    && (l.contains("health") || l.contains("catalog"))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // The dashboard says which replica it is.
    let overview = replicas[follower].get("/api/overview").await.unwrap();
    assert!(overview.contains("\"role\":\"follower\""), "{overview}");
    let leader_metrics = replicas[leader].get("/metrics").await.unwrap();
    let follower_metrics = replicas[follower].get("/metrics").await.unwrap();
    assert!(catalog_reads(&leader_metrics) > 0.0, "{leader_metrics}");
    assert!(
        catalog_reads(&follower_metrics) == 0.0,
        "the follower read the catalog"
    );
    // Consul unreachable: nobody steps down or takes over (the leader keeps
    // the routes fresh; the follower keeps following it), and the follower
    // still serves agents.
    consul.fail_all(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas[leader].role().await.as_deref(), Some("leader"));
    assert_eq!(replicas[follower].role().await.as_deref(), Some("follower"));
    let mut late = common::TestAgent::connect(common::channel(addr).await, "i-late").await;
    assert!(matches!(
        late.next().await,
        ecsmesh_proto::v1::controller_message::Kind::Snapshot(_)
    ));
    consul.fail_all(false);

    // SIGTERM: the lock is released and the follower takes it at its next look.
    let (a, b) = (a, b);
    let (stopping, staying) = if leader == 0 { (a, b) } else { (b, a) };
    stopping.process.unwrap().terminate();
    let took = until("the follower to lead", Duration::from_secs(5), async || {
        staying.role().await.as_deref() == Some("leader")
    })
    .await;
    eprintln!("Consul handover after SIGTERM: {took:?}");
}

/// The lease's store semantics on DynamoDB, through the library: one of two
/// racing replicas wins; the other takes over only after a TTL of the same
/// heartbeat (never while it moves); the old holder then learns it lost;
/// a release hands over at the next look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamodb_lease_is_taken_once_and_over_only_after_a_silent_ttl() {
    use ecsmesh_controller::leader::dynamodb::DynamoLease;
    use ecsmesh_controller::leader::{Attempt, Holder, Lease, LeaseSettings};
    let moto = MotoServer::shared();
    let conf = sdk_config(&moto.endpoint(), "eu-central-1").await;
    create_table(&conf, "lease").await;
    let ttl = Duration::from_millis(600);
    let lease = |id: &str| {
        Lease::Dynamo(DynamoLease::new(
            aws_sdk_dynamodb::Client::new(&conf),
            "lease".to_owned(),
            LeaseSettings {
                me: Holder {
                    id: id.to_owned(),
                    address: format!("{id}:4321"),
                },
                ttl,
            },
            Arc::new(ecsmesh_controller::metrics::Metrics::new()),
        ))
    };
    let (mut a, mut b) = (lease("a"), lease("b"));
    let (ra, rb) = tokio::join!(a.try_acquire(), b.try_acquire());
    let won = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Ok(Attempt::Acquired)))
        .count();
    assert_eq!(won, 1, "{ra:?} {rb:?}");
    let (mut leader, mut other) = if matches!(ra, Ok(Attempt::Acquired)) {
        (a, b)
    } else {
        (b, a)
    };
    // While the leader renews, the other never takes over.
    let mut renewed = Instant::now();
    for _ in 0..8 {
        assert!(leader.renew().await.unwrap());
        renewed = Instant::now();
        match other.try_acquire().await.unwrap() {
            Attempt::HeldBy(h) => assert!(h.address.ends_with(":4321")),
            other => panic!("{other:?} for a lease whose heartbeat moves"),
        }
        tokio::time::sleep(ttl / 4).await;
    }
    // Silent for a TTL: taken over; the old holder learns it at its renewal.
    loop {
        if other.try_acquire().await.unwrap() == Attempt::Acquired {
            break;
        }
        assert!(renewed.elapsed() < ttl * 5, "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        renewed.elapsed() >= ttl,
        "taken over before a TTL of silence"
    );
    assert!(
        !leader.renew().await.unwrap(),
        "the old holder still renews"
    );
    // A release lets the other in at once.
    other.release().await.unwrap();
    assert_eq!(leader.try_acquire().await.unwrap(), Attempt::Acquired);
}

/// `Replication.Follow` hands out every endpoint: through the real binary
/// it needs the admin token (none: UNAUTHENTICATED, a wrong one:
/// PERMISSION_DENIED), only the leader serves it (FAILED_PRECONDITION),
/// and its request is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_needs_the_admin_token_and_the_leader() {
    use ecsmesh_proto::v1 as pb;
    let consul = ecsmesh_consul_double::ConsulDouble::start().await.unwrap();
    let address = format!("http://{}", consul.addr());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "replicas-share-this-admin-token\n").unwrap();
    let token_file = token_file.display().to_string();
    let args = [
        "--store",
        "consul",
        "--consul-address",
        &address,
        "--admin-token-file",
        &token_file,
        // Something to publish, so the leader's stream has a first message.
        "--base-dtab",
        "/svc=>/#/consul/dc1",
    ];
    let a = Replica::start(&args, &[]);
    let b = Replica::start(&args, &[]);
    let replicas = [&a, &b];
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let follow = |port: u16, bearer: Option<&'static str>, replica_id: String| async move {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut client =
            pb::replication_client::ReplicationClient::new(common::channel(addr).await);
        let mut request = tonic::Request::new(pb::FollowRequest { replica_id });
        if let Some(b) = bearer {
            request
                .metadata_mut()
                .insert("authorization", b.parse().unwrap());
        }
        match client.follow(request).await {
            Ok(stream) => stream
                .into_inner()
                .message()
                .await
                .map(|m| m.is_some())
                .map_err(|s| s.code()),
            Err(status) => Err(status.code()),
        }
    };
    let (lead, other) = (replicas[leader].grpc, replicas[1 - leader].grpc);
    let good = "Bearer replicas-share-this-admin-token";
    assert_eq!(
        follow(lead, None, "x".into()).await,
        Err(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        follow(lead, Some("Bearer not-the-token"), "x".into()).await,
        Err(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        follow(other, Some(good), "x".into()).await,
        Err(tonic::Code::FailedPrecondition)
    );
    let huge = "r".repeat(128 * 1024);
    assert!(
        follow(lead, Some(good), huge).await.is_err(),
        "an unbounded request"
    );
    // The real follower follows meanwhile, so the leader answers a good one.
    assert_eq!(follow(lead, Some(good), "x".into()).await, Ok(true));
}
