//! The agent end to end on loopback: a real controller, real agents on
//! their own 127.0.x.y host IPs, real upstream servers, real curl. Each test
//! owns a 127.0.N.0/24 range so the tests can run in parallel.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{
    SOURCE, Upstream, agent, agent_with, controller, converged, curl, free_port, get_via, sets,
};
use ecsmesh_agent::config::Mode;

#[tokio::test]
async fn routes_by_host_with_overrides_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let world = Upstream::start("127.0.10.11", "world").await;
    let v2 = Upstream::start("127.0.10.12", "world-v2").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[
            ("/#/ecs/demo/world", &[(world.addr, "127.0.10.11")]),
            ("/#/ecs/demo/world-v2", &[(v2.addr, "127.0.10.12")]),
            ("/#/ecs/demo/empty", &[]),
        ]),
    );
    let a = agent(
        "127.0.10.1",
        grpc,
        free_port("127.0.10.1"),
        Mode::Direct,
        &dir.path().join("a"),
    )
    .await;
    converged(&a, 1).await;

    // Forward-proxy form, as http_proxy makes curl send it.
    let (body, err) = curl(a.outgoing_addr, &["http://world/hello"]).await;
    assert_eq!(body, "world", "{err}");

    // A per-request override, and what the upstream receives.
    let (status, headers, body) = get_via(
        a.outgoing_addr,
        "world",
        "/x?y=1",
        &[("l5d-dtab", "/svc/world => /svc/world-v2")],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "world-v2"));
    assert_eq!(headers["x-seen-l5d-ctx-dtab"], "/svc/world=>/svc/world-v2");
    assert!(
        !headers.contains_key("x-seen-l5d-dtab"),
        "l5d-dtab is not forwarded"
    );
    assert_eq!(headers["x-seen-l5d-dst-service"], "/svc/world");
    assert_eq!(headers["x-seen-l5d-dst-client"], "/#/ecs/demo/world-v2");
    assert_eq!(headers["x-seen-host"], "world");
    assert_eq!(headers["x-seen-uri"], "/x?y=1");
    assert!(headers["x-seen-via"].to_str().unwrap().contains("ecsmesh"));
    assert_eq!(headers["x-seen-l5d-reqid"].len(), 16);
    // The context travels on: a context dtab from upstream keeps applying.
    let (_, _, body) = get_via(
        a.outgoing_addr,
        "world",
        "/",
        &[("l5d-ctx-dtab", "/svc/world=>/svc/world-v2")],
    )
    .await;
    assert_eq!(body, "world-v2");

    // An empty set is ~: the override falls back to the base route.
    let (_, _, body) = get_via(
        a.outgoing_addr,
        "world",
        "/",
        &[("l5d-dtab", "/svc/world=>/#/ecs/demo/empty")],
    )
    .await;
    assert_eq!(body, "world");

    // A malformed header: 400 naming the problem.
    let (status, headers, body) = get_via(
        a.outgoing_addr,
        "world",
        "/",
        &[("l5d-dtab", "/svc/world => ")],
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("invalid l5d-dtab header: error at offset 13"),
        "{body}"
    );
    assert!(
        headers["l5d-err"]
            .to_str()
            .unwrap()
            .starts_with("invalid+l5d-dtab+header")
    );

    // A fixed-address override is refused unless the operator allows it.
    let target = format!("/svc/world => /$/inet/127.0.10.11/{}", world.addr.port());
    let (status, _, body) = get_via(a.outgoing_addr, "world", "/", &[("l5d-dtab", &target)]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("may not name fixed addresses"), "{body}");

    // Nothing routes /svc/nowhere: 502 with Linkerd's message.
    let (status, headers, body) = get_via(a.outgoing_addr, "nowhere", "/", &[]).await;
    assert_eq!(status, 502);
    assert!(body.starts_with("Unable to route request!"), "{body}");
    assert!(body.contains("service name: /svc/nowhere"), "{body}");
    assert!(body.contains("/svc=>/#/ecs/demo"), "{body}");
    assert!(headers.contains_key("l5d-err"));

    // A proxy loop is refused.
    let via = vec!["1.1 x"; 1000].join(", ");
    let (status, _, body) = get_via(a.outgoing_addr, "world", "/", &[("via", &via)]).await;
    assert_eq!(status, 400);
    assert!(body.contains("Please check for proxy loops"), "{body}");

    // Unidentified: an HTTP/1.0 request with no Host.
    let raw = common::raw(a.outgoing_addr, "GET /x HTTP/1.0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.0 400"), "{raw}");
    assert!(
        raw.contains("Unknown destination: GET /x / host header is absent"),
        "{raw}"
    );
}

#[tokio::test]
async fn a_weighted_override_splits_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let world = Upstream::start("127.0.11.11", "world").await;
    let v2 = Upstream::start("127.0.11.12", "world-v2").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[
            ("/#/ecs/demo/world", &[(world.addr, "127.0.11.11")]),
            ("/#/ecs/demo/world-v2", &[(v2.addr, "127.0.11.12")]),
        ]),
    );
    let a = agent(
        "127.0.11.1",
        grpc,
        free_port("127.0.11.1"),
        Mode::Direct,
        &dir.path().join("a"),
    )
    .await;
    converged(&a, 1).await;
    // (`/svc/world => 9 * /svc/world & …` would rewrite /svc/world again,
    // as in Finagle: the split must name paths the dentry does not match.)
    let split = "/svc/world => 9 * /#/ecs/demo/world & 1 * /#/ecs/demo/world-v2";
    for _ in 0..2000 {
        let (status, _, _) = get_via(a.outgoing_addr, "world", "/", &[("l5d-dtab", split)]).await;
        assert_eq!(status, 200);
    }
    let share = f64::from(u32::try_from(v2.hits()).unwrap()) / 2000.0;
    assert!(
        (0.05..=0.15).contains(&share),
        "world-v2 got {share:.3} of the traffic, not ~0.10"
    );
    assert_eq!(world.hits() + v2.hits(), 2000);
}

#[tokio::test]
async fn linker_to_linker_goes_through_the_endpoints_host() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    // One world task on each host; hello's agent is on host A.
    let on_a = Upstream::start("127.0.12.1", "world-a").await;
    let on_b = Upstream::start("127.0.12.2", "world-b").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[(
            "/#/ecs/demo/world",
            &[(on_a.addr, "127.0.12.1"), (on_b.addr, "127.0.12.2")],
        )]),
    );
    let incoming = free_port("127.0.12.1");
    let a = agent(
        "127.0.12.1",
        grpc,
        incoming,
        Mode::LinkerToLinker,
        &dir.path().join("a"),
    )
    .await;
    let b = agent(
        "127.0.12.2",
        grpc,
        incoming,
        Mode::LinkerToLinker,
        &dir.path().join("b"),
    )
    .await;
    converged(&a, 1).await;
    converged(&b, 1).await;

    for _ in 0..40 {
        let (status, headers, body) = get_via(a.outgoing_addr, "world", "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        // Two agents on the way: A's outgoing, then the endpoint host's incoming.
        let via: Vec<&str> = headers
            .get_all("x-seen-via")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(via.concat().matches("ecsmesh").count(), 2, "{via:?}");
    }
    assert!(
        on_a.hits() > 0 && on_b.hits() > 0,
        "both hosts served: {} {}",
        on_a.hits(),
        on_b.hits()
    );

    // B's incoming side only ever picks B's own endpoints.
    let before = on_a.hits();
    for _ in 0..20 {
        let (_, _, body) = get_via(b.incoming_addr, "world", "/", &[]).await;
        assert_eq!(body, "world-b");
    }
    assert_eq!(on_a.hits(), before);
}

#[tokio::test]
async fn a_killed_endpoint_costs_no_get() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let ups = [
        Upstream::start("127.0.13.11", "w1").await,
        Upstream::start("127.0.13.12", "w2").await,
        Upstream::start("127.0.13.13", "w3").await,
    ];
    let eps: Vec<(SocketAddr, &str)> = ups.iter().map(|u| (u.addr, "127.0.13.11")).collect();
    ctl.observed
        .replace(SOURCE, sets(&[("/#/ecs/demo/world", &eps)]));
    let a = Arc::new(
        agent(
            "127.0.13.1",
            grpc,
            free_port("127.0.13.1"),
            Mode::Direct,
            &dir.path().join("a"),
        )
        .await,
    );
    converged(&a, 1).await;

    // Four clients in parallel, 75 GETs each; the second endpoint dies
    // after the first 100 requests.
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ups = Arc::new(ups);
    let killed_at = Arc::new(std::sync::Mutex::new(None));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (a, done, ups, killed_at) = (
            Arc::clone(&a),
            Arc::clone(&done),
            Arc::clone(&ups),
            Arc::clone(&killed_at),
        );
        clients.push(tokio::spawn(async move {
            let mut failures = 0;
            for _ in 0..75 {
                if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 100 {
                    *killed_at.lock().unwrap() = Some(ups[1].hits());
                    ups[1].kill();
                }
                let (status, _, body) = get_via(a.outgoing_addr, "world", "/", &[]).await;
                if status != 200 {
                    failures += 1;
                    eprintln!("{status} {body}");
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for c in clients {
        failures += c.await.unwrap();
    }
    let served_by_killed = killed_at.lock().unwrap().expect("the endpoint was killed");
    assert_eq!(failures, 0, "a GET failed while an endpoint died");
    // Every request was served once, by a live endpoint (requests in flight
    // on the dying one when it died were retried elsewhere).
    assert!(ups[0].hits() + ups[2].hits() + served_by_killed >= 300);
    assert!(ups[1].hits() <= served_by_killed + 4);
}

#[tokio::test]
async fn keeps_routing_without_the_controller_and_restarts_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let world = Upstream::start("127.0.14.11", "world").await;
    let state = dir.path().join("a");
    {
        let ctl = controller(&dir.path().join("ctl"), grpc).await;
        ctl.observed.replace(
            SOURCE,
            sets(&[("/#/ecs/demo/world", &[(world.addr, "127.0.14.11")])]),
        );
        let a = agent(
            "127.0.14.1",
            grpc,
            free_port("127.0.14.1"),
            Mode::Direct,
            &state,
        )
        .await;
        converged(&a, 1).await;
        drop(ctl); // the controller dies
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..500 {
            let (status, _, body) = get_via(a.outgoing_addr, "world", "/", &[]).await;
            assert_eq!((status, body.as_str()), (200, "world"));
        }
        a.shutdown().await;
    }
    // A restarted agent, controller still down: it serves the saved snapshot.
    let a = agent(
        "127.0.14.1",
        grpc,
        free_port("127.0.14.1"),
        Mode::Direct,
        &state,
    )
    .await;
    let status = a.status.borrow().clone();
    assert!(status.from_disk && status.version == 1, "{status:?}");
    let (code, _, body) = get_via(a.outgoing_addr, "world", "/", &[]).await;
    assert_eq!((code, body.as_str()), (200, "world"));
    // The admin page says where the state came from.
    let (ready, _) = curl(
        "127.0.0.1:1".parse().unwrap(),
        &["--noproxy", "*", &format!("http://{}/ready", a.admin_addr)],
    )
    .await;
    assert_eq!(ready, "ready: version 1 from the saved snapshot\n");
}

#[tokio::test]
async fn http2_passes_through() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let world = Upstream::start("127.0.15.11", "world").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[("/#/ecs/demo/world", &[(world.addr, "127.0.15.11")])]),
    );
    let a = agent(
        "127.0.15.1",
        grpc,
        free_port("127.0.15.1"),
        Mode::Direct,
        &dir.path().join("a"),
    )
    .await;
    converged(&a, 1).await;
    // curl with prior-knowledge h2c, addressed to the proxy with authority "world".
    let url = format!("http://{}/h2", a.outgoing_addr);
    let (out, err) = curl(
        "127.0.0.1:1".parse().unwrap(),
        &[
            "--noproxy",
            "*",
            "--http2-prior-knowledge",
            "-H",
            "host: world",
            "-D",
            "-",
            &url,
        ],
    )
    .await;
    assert!(out.starts_with("HTTP/2 200"), "{out}{err}");
    assert!(out.contains("x-seen-version: HTTP/2.0"), "{out}");
    assert!(out.ends_with("world"), "{out}");
}

#[tokio::test]
async fn grpc_passes_through() {
    // The controller's own gRPC API, published as a service and called
    // through the proxy by a tonic client with authority "controller".
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let target: SocketAddr = format!("127.0.0.1:{grpc}").parse().unwrap();
    ctl.observed.replace(
        SOURCE,
        sets(&[("/#/ecs/demo/controller", &[(target, "127.0.0.1")])]),
    );
    let a = agent(
        "127.0.16.1",
        grpc,
        free_port("127.0.16.1"),
        Mode::Direct,
        &dir.path().join("a"),
    )
    .await;
    converged(&a, 1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", a.outgoing_addr))
        .unwrap()
        .origin("http://controller".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut api = ecsmesh_proto::v1::dtab_admin_client::DtabAdminClient::new(channel);
    let list = api
        .list_namespaces(ecsmesh_proto::v1::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.namespaces, ["default"]);
    // Streaming works too: the first WatchDtab message arrives.
    let mut watch = api
        .watch_dtab(ecsmesh_proto::v1::WatchDtabRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!watch.message().await.unwrap().unwrap().exists);
}

#[tokio::test]
async fn clear_context_strips_l5d_headers_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let world = Upstream::start("127.0.18.11", "world").await;
    let v2 = Upstream::start("127.0.18.12", "world-v2").await;
    ctl.observed.replace(
        SOURCE,
        sets(&[
            ("/#/ecs/demo/world", &[(world.addr, "127.0.18.11")]),
            ("/#/ecs/demo/world-v2", &[(v2.addr, "127.0.18.12")]),
        ]),
    );
    let a = agent_with(
        "127.0.18.1",
        grpc,
        free_port("127.0.18.1"),
        Mode::Direct,
        &dir.path().join("a"),
        |c| {
            c.clear_context = true;
        },
    )
    .await;
    converged(&a, 1).await;
    // An edge client's override is dropped, not obeyed.
    let (status, headers, body) = get_via(
        a.outgoing_addr,
        "world",
        "/",
        &[
            ("l5d-dtab", "/svc/world=>/svc/world-v2"),
            ("l5d-ctx-anything", "x"),
        ],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "world"));
    assert!(!headers.contains_key("x-seen-l5d-ctx-anything"));
    assert!(!headers.contains_key("x-seen-l5d-ctx-dtab"));
    // Proxy errors lose their l5d-err header and their body.
    let (status, headers, body) = get_via(a.outgoing_addr, "nowhere", "/", &[]).await;
    assert_eq!(status, 502);
    assert!(!headers.contains_key("l5d-err"));
    assert_eq!(body, "");
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port("127.0.0.1");
    let ctl = controller(&dir.path().join("ctl"), grpc).await;
    let slow = Upstream::start_slow("127.0.19.11", "slow", Duration::from_millis(700)).await;
    ctl.observed.replace(
        SOURCE,
        sets(&[("/#/ecs/demo/slow", &[(slow.addr, "127.0.19.11")])]),
    );
    let a = agent(
        "127.0.19.1",
        grpc,
        free_port("127.0.19.1"),
        Mode::Direct,
        &dir.path().join("a"),
    )
    .await;
    converged(&a, 1).await;
    let proxy = a.outgoing_addr;
    let in_flight = tokio::spawn(async move { get_via(proxy, "slow", "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    a.shutdown().await;
    // The request that was in flight completed; shutdown waited for it.
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(proxy).await.is_err());
}

#[tokio::test]
async fn fails_over_between_controller_replicas_without_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (dead, grpc_a, grpc_b) = (
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
    );
    let world = Upstream::start("127.0.61.11", "world").await;
    let world2 = Upstream::start("127.0.61.12", "world").await;
    let one = sets(&[("/#/ecs/demo/world", &[(world.addr, "127.0.61.11")])]);
    let ctl_a = Replica::start(dir.path().join("a"), grpc_a, one.clone());
    let ctl_b = controller(&dir.path().join("b"), grpc_b).await;
    ctl_b.observed.replace(SOURCE, one);
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    // The first replica listed is down: the agent goes on to the next.
    let replicas = format!("{},{}, {}", url(dead), url(grpc_a), url(grpc_b));
    let started = std::time::Instant::now();
    let a = agent_with(
        "127.0.61.1",
        0,
        free_port("127.0.61.1"),
        Mode::Direct,
        &dir.path().join("agent"),
        |c| c.controller = replicas,
    )
    .await;
    let mut status = a.status.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.connected && s.version > 0),
    )
    .await
    .expect("following a live replica within 5 s")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        a.status.borrow().controller.as_deref(),
        Some(url(grpc_a).as_str())
    );

    // Replica A dies while clients send requests; replica B has news.
    let client = {
        let addr = a.outgoing_addr;
        tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..300 {
                let (code, _, _) = get_via(addr, "world", "/", &[]).await;
                failed += usize::from(code != 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let died = std::time::Instant::now();
    ctl_a.kill();
    ctl_b.observed.replace(
        SOURCE,
        sets(&[(
            "/#/ecs/demo/world",
            &[(world.addr, "127.0.61.11"), (world2.addr, "127.0.61.12")],
        )]),
    );
    let routes = &a.routes;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let table = routes.load();
            let name = ecsmesh_dtab::Path::read("/#/ecs/demo/world").unwrap();
            if a.status.borrow().controller.as_deref() == Some(url(grpc_b).as_str())
                && table.mesh.sets.get(&name).is_some_and(|s| s.len() == 2)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("replica B's state within 5 s of A's death");
    assert!(died.elapsed() < Duration::from_secs(5));
    assert_eq!(
        client.await.unwrap(),
        0,
        "requests failed during the failover"
    );
}

/// A controller on a runtime of its own: killing it drops the runtime, and
/// with it every connection, as a dead process would (an in-process
/// controller dropped in the test's runtime leaves its streams running).
struct Replica {
    die: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Replica {
    fn start(
        dir: std::path::PathBuf,
        grpc: u16,
        endpoints: std::collections::BTreeMap<ecsmesh_dtab::Path, Arc<ecsmesh_state::EndpointSet>>,
    ) -> Self {
        let (die, died) = std::sync::mpsc::channel();
        let (ready, started) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let ctl = rt.block_on(controller(&dir, grpc));
            ctl.observed.replace(SOURCE, endpoints);
            ready.send(()).unwrap();
            let _ = died.recv();
            drop(ctl);
            rt.shutdown_background();
        });
        started.recv().unwrap();
        Self { die, thread }
    }

    fn kill(self) {
        self.die.send(()).unwrap();
        self.thread.join().unwrap();
    }
}
