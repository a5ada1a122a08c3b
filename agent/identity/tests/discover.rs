//! `discover` against IMDSv2 and ECS task metadata v4 doubles on loopback,
//! and against the project's patched moto IMDS. No test reaches a
//! non-loopback address: each one sets the IMDS endpoint or disables IMDS.
// Test helpers outside #[test] functions unwrap too (clippy.toml only covers
// the test functions themselves).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ecsmesh_agent_identity::{
    FetchError, Identity, IdentityConfig, IdentityError, Source, SourceError, discover,
};

const TOKEN: &str = "AQAEAdouble-token==";
const PREFIX: &str = "/imds/i-0double";
const DOUBLE_IP: &str = "127.0.9.77";
const DOUBLE_INSTANCE: &str = "i-0double";
const DOUBLE_AZ: &str = "eu-west-3b";

// ---------------------------------------------------------------- doubles

/// One request the IMDS double saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    ttl: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Behaviour {
    /// Echo `x-aws-ec2-metadata-token-ttl-seconds` on the token answer, as
    /// real IMDS does.
    echo_ttl: bool,
    /// Serve `placement/availability-zone` (404 otherwise).
    serve_az: bool,
    /// Answer the first token request with 503.
    fail_first_put: bool,
}

const REAL: Behaviour = Behaviour {
    echo_ttl: true,
    serve_az: true,
    fail_first_put: false,
};

#[derive(Clone)]
struct ImdsState {
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
    puts: Arc<AtomicUsize>,
}

/// An IMDSv2 double (`HttpTokens=required`) under `PREFIX`.
struct ImdsDouble {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl ImdsDouble {
    async fn start(behaviour: Behaviour) -> Self {
        let state = ImdsState {
            behaviour,
            seen: Arc::default(),
            puts: Arc::default(),
        };
        let seen = Arc::clone(&state.seen);
        let app = axum::Router::new().fallback(imds).with_state(state);
        let addr = serve(app).await;
        Self {
            endpoint: format!("http://{addr}{PREFIX}"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn imds(
    State(state): State<ImdsState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        method: method.clone(),
        path: uri.path().to_owned(),
        ttl: header("x-aws-ec2-metadata-token-ttl-seconds"),
        token: header("x-aws-ec2-metadata-token"),
    };
    state.seen.lock().unwrap().push(seen.clone());
    let Some(path) = uri.path().strip_prefix(PREFIX) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method == Method::PUT && path == "/latest/api/token" {
        let Some(ttl) = seen
            .ttl
            .filter(|t| t.parse::<u32>().is_ok_and(|t| (1..=21_600).contains(&t)))
        else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        if state.behaviour.fail_first_put && state.puts.fetch_add(1, Ordering::SeqCst) == 0 {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        return if state.behaviour.echo_ttl {
            ([("x-aws-ec2-metadata-token-ttl-seconds", ttl)], TOKEN).into_response()
        } else {
            TOKEN.into_response()
        };
    }
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if seen.token.as_deref() != Some(TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match path {
        "/latest/meta-data/local-ipv4" => DOUBLE_IP.into_response(),
        "/latest/meta-data/instance-id" => DOUBLE_INSTANCE.into_response(),
        "/latest/meta-data/placement/availability-zone" if state.behaviour.serve_az => {
            DOUBLE_AZ.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A task metadata v4 answer for an awsvpc task on EC2, shaped like the ECS
/// agent's (the pause container first, then the application container).
fn task_json(mode: &str, ip: &str) -> String {
    format!(
        r#"{{
  "Cluster": "demo",
  "TaskARN": "arn:aws:ecs:eu-west-3:111122223333:task/demo/158d1c8083dd49d6b527399fd6414f5c",
  "Family": "ecsmesh-agent",
  "Revision": "7",
  "DesiredStatus": "RUNNING",
  "KnownStatus": "RUNNING",
  "Limits": {{ "CPU": 0.25, "Memory": 256 }},
  "PullStartedAt": "2024-05-02T00:43:06.202617438Z",
  "PullStoppedAt": "2024-05-02T00:43:06.31288465Z",
  "AvailabilityZone": "eu-west-3c",
  "LaunchType": "EC2",
  "Containers": [
    {{
      "DockerId": "598cba581fe3f939459eaba1e071d5c93bb2c49b7d1ba7db6bb19deeb70d8e38",
      "Name": "~internal~ecs~pause",
      "Image": "amazon/amazon-ecs-pause:0.1.0",
      "Type": "CNI_PAUSE",
      "Labels": {{ "com.amazonaws.ecs.cluster": "demo" }},
      "Networks": [
        {{ "NetworkMode": "{mode}", "IPv4Addresses": ["{ip}"], "AttachmentIndex": 0,
          "MACAddress": "0e:10:e2:01:bd:91", "IPv4SubnetCIDRBlock": "127.0.2.0/24",
          "PrivateDNSName": "ip-127-0-2-61.eu-west-3.compute.internal",
          "SubnetGatewayIpv4Address": "127.0.2.1/24" }}
      ]
    }},
    {{
      "DockerId": "ee08638adaaf009d78c248913f629e38299471d45fe7dc944d1039077e3424ca",
      "Name": "agent",
      "Image": "ecsmesh/agent:latest",
      "Type": "NORMAL",
      "Ports": [{{ "ContainerPort": 4140, "Protocol": "tcp" }}],
      "ContainerARN": "arn:aws:ecs:eu-west-3:111122223333:container/abb51bdd-11b4-467f-8f6c-adcfe1fe059d",
      "Networks": [
        {{ "NetworkMode": "{mode}", "IPv4Addresses": ["{ip}"] }}
      ]
    }}
  ]
}}"#
    )
}

/// A task metadata v4 double; returns its `ECS_CONTAINER_METADATA_URI_V4`.
async fn ecs_metadata_double(body: String) -> String {
    let app = axum::Router::new().route(
        "/v4/ee08638adaaf/task",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let addr = serve(app).await;
    format!("http://{addr}/v4/ee08638adaaf")
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn config(imds_endpoint: &str) -> IdentityConfig {
    IdentityConfig {
        imds_endpoint: Some(imds_endpoint.to_owned()),
        ..IdentityConfig::default()
    }
}

/// The fallback's address on this machine, judged independently: some
/// IPv4 that is neither loopback nor link-local.
fn machine_has_routable_ipv4() -> bool {
    if_addrs::get_if_addrs()
        .unwrap()
        .iter()
        .any(|i| match i.ip() {
            IpAddr::V4(ip) => !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified(),
            IpAddr::V6(_) => false,
        })
}

/// Discovery reached the interface fallback: it either found a routable
/// IPv4 address (if this machine has one) or failed with a clear error whose
/// failures name every source, in order.
fn assert_interface_fallback(result: Result<Identity, IdentityError>) -> Option<Identity> {
    if machine_has_routable_ipv4() {
        let id = result.expect("this machine has a routable IPv4 address");
        assert_eq!(id.source, Source::Interface);
        let IpAddr::V4(ip) = id.host_ip else {
            panic!("IPv4 expected: {id:?}")
        };
        assert!(!ip.is_loopback() && !ip.is_link_local(), "{ip}");
        Some(id)
    } else {
        let err = result.expect_err("only loopback here");
        let IdentityError::NoHostIp { failures } = &err else {
            panic!("{err:?}")
        };
        let origins: Vec<Source> = failures.iter().map(SourceError::origin).collect();
        assert_eq!(
            origins,
            [Source::Imds, Source::EcsMetadata, Source::Interface],
            "{err}"
        );
        assert!(matches!(failures[2], SourceError::NoInterfaceAddress));
        assert!(err.to_string().starts_with("no host IP from any source: "));
        None
    }
}

// ---------------------------------------------------------------- moto

/// The project's moto IMDSv2 (a real token flow, per instance): the
/// instance's private IP, id and AZ come back.
#[tokio::test]
async fn imds_v2_against_moto() {
    let moto = tokio::task::spawn_blocking(ecsmesh_test_support::moto::MotoServer::shared)
        .await
        .unwrap();
    let region = "eu-west-3";
    let sdk = ecsmesh_test_support::ecs::sdk_config(&moto.endpoint(), region).await;
    let topology =
        ecsmesh_test_support::ecs::Topology::create(&sdk, "identity", 9, &["127.0.9.1"]).await;
    let node = &topology.nodes[0];

    let id = discover(&config(&moto.imds_endpoint(&node.instance_id)))
        .await
        .unwrap();
    assert_eq!(
        id,
        Identity {
            host_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 9, 1)),
            instance_id: Some(node.instance_id.clone()),
            availability_zone: Some(format!("{region}a")),
            source: Source::Imds,
        }
    );
}

/// An instance moto does not know: 404 on the token, so IMDS fails and
/// discovery goes on.
#[tokio::test]
async fn moto_unknown_instance_falls_through() {
    let moto = tokio::task::spawn_blocking(ecsmesh_test_support::moto::MotoServer::shared)
        .await
        .unwrap();
    let uri = ecs_metadata_double(task_json("awsvpc", "127.0.10.5")).await;
    let cfg = IdentityConfig {
        ecs_metadata_uri: Some(uri),
        ..config(&moto.imds_endpoint("i-00000000000000000"))
    };
    let id = discover(&cfg).await.unwrap();
    assert_eq!(id.source, Source::EcsMetadata);
    assert_eq!(id.host_ip, IpAddr::V4(Ipv4Addr::new(127, 0, 10, 5)));
    assert_eq!(id.instance_id, None);
}

// ---------------------------------------------------------------- IMDS double

/// The client asks for a token first (GETs without one get 401) and sends it
/// on every GET; the TTL it asks for is 21600 s.
#[tokio::test]
async fn token_first_then_gets_with_the_token() {
    let imds = ImdsDouble::start(REAL).await;
    let id = discover(&config(&imds.endpoint)).await.unwrap();
    assert_eq!(
        id,
        Identity {
            host_ip: DOUBLE_IP.parse().unwrap(),
            instance_id: Some(DOUBLE_INSTANCE.into()),
            availability_zone: Some(DOUBLE_AZ.into()),
            source: Source::Imds,
        }
    );
    let seen = imds.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0].method, Method::PUT);
    assert_eq!(seen[0].path, format!("{PREFIX}/latest/api/token"));
    assert_eq!(seen[0].ttl.as_deref(), Some("21600"));
    assert_eq!(seen[0].token, None);
    let mut gets: Vec<&str> = seen[1..]
        .iter()
        .map(|s| {
            assert_eq!(s.method, Method::GET);
            assert_eq!(s.token.as_deref(), Some(TOKEN), "{s:?}");
            s.path.strip_prefix(PREFIX).unwrap()
        })
        .collect();
    gets.sort_unstable();
    assert_eq!(
        gets,
        [
            "/latest/meta-data/instance-id",
            "/latest/meta-data/local-ipv4",
            "/latest/meta-data/placement/availability-zone"
        ]
    );
}

/// Lenient by design: a token answer without the TTL echo (which the AWS
/// Rust SDK would reject) is accepted.
#[tokio::test]
async fn token_without_ttl_echo_is_accepted() {
    let imds = ImdsDouble::start(Behaviour {
        echo_ttl: false,
        ..REAL
    })
    .await;
    let id = discover(&config(&imds.endpoint)).await.unwrap();
    assert_eq!(id.source, Source::Imds);
    assert_eq!(id.host_ip, DOUBLE_IP.parse::<IpAddr>().unwrap());
    assert_eq!(id.availability_zone.as_deref(), Some(DOUBLE_AZ));
}

/// A 404 for the AZ leaves it `None`; the identity still comes back.
#[tokio::test]
async fn missing_az_is_none() {
    let imds = ImdsDouble::start(Behaviour {
        serve_az: false,
        ..REAL
    })
    .await;
    let id = discover(&config(&imds.endpoint)).await.unwrap();
    assert_eq!(
        id,
        Identity {
            host_ip: DOUBLE_IP.parse().unwrap(),
            instance_id: Some(DOUBLE_INSTANCE.into()),
            availability_zone: None,
            source: Source::Imds,
        }
    );
}

/// A 503 on the first token request is retried once.
#[tokio::test]
async fn token_503_is_retried_once() {
    let imds = ImdsDouble::start(Behaviour {
        fail_first_put: true,
        ..REAL
    })
    .await;
    let id = discover(&config(&imds.endpoint)).await.unwrap();
    assert_eq!(id.source, Source::Imds);
    let puts = imds
        .seen()
        .iter()
        .filter(|s| s.method == Method::PUT)
        .count();
    assert_eq!(puts, 2);
}

// ---------------------------------------------------------------- config

/// Configured values are never overridden; with all three set, IMDS is not
/// even asked.
#[tokio::test]
async fn full_config_wins_without_asking_imds() {
    let imds = ImdsDouble::start(REAL).await;
    let cfg = IdentityConfig {
        host_ip: Some("10.1.2.3".parse().unwrap()),
        instance_id: Some("i-0configured".into()),
        availability_zone: Some("eu-west-3a".into()),
        ..config(&imds.endpoint)
    };
    let id = discover(&cfg).await.unwrap();
    assert_eq!(
        id,
        Identity {
            host_ip: "10.1.2.3".parse().unwrap(),
            instance_id: Some("i-0configured".into()),
            availability_zone: Some("eu-west-3a".into()),
            source: Source::Config,
        }
    );
    assert!(imds.seen().is_empty(), "{:?}", imds.seen());
}

/// A configured host IP stays, and is not even asked of IMDS; IMDS fills
/// the rest. The source is where the host IP came from.
#[tokio::test]
async fn partial_config_is_completed_by_imds() {
    let imds = ImdsDouble::start(REAL).await;
    let cfg = IdentityConfig {
        host_ip: Some("10.1.2.3".parse().unwrap()),
        availability_zone: Some("eu-west-3a".into()),
        ..config(&imds.endpoint)
    };
    let id = discover(&cfg).await.unwrap();
    assert_eq!(
        id,
        Identity {
            host_ip: "10.1.2.3".parse().unwrap(),
            instance_id: Some(DOUBLE_INSTANCE.into()),
            availability_zone: Some("eu-west-3a".into()),
            source: Source::Config,
        }
    );
    let paths: Vec<String> = imds.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            format!("{PREFIX}/latest/api/token"),
            format!("{PREFIX}/latest/meta-data/instance-id")
        ]
    );
}

// ---------------------------------------------------------------- fall-through

/// IMDS disabled: not asked at all; the awsvpc task metadata gives the ENI
/// IP and the AZ, and no instance id.
#[tokio::test]
async fn disabled_imds_falls_through_to_task_metadata() {
    let imds = ImdsDouble::start(REAL).await;
    let uri = ecs_metadata_double(task_json("awsvpc", "127.0.2.61")).await;
    let cfg = IdentityConfig {
        imds_disabled: true,
        ecs_metadata_uri: Some(uri),
        ..config(&imds.endpoint)
    };
    let id = discover(&cfg).await.unwrap();
    assert_eq!(
        id,
        Identity {
            host_ip: "127.0.2.61".parse().unwrap(),
            instance_id: None,
            availability_zone: Some("eu-west-3c".into()),
            source: Source::EcsMetadata,
        }
    );
    assert!(imds.seen().is_empty());
}

/// Bridge mode: the task metadata's address is the container's Docker
/// bridge address, so only its AZ is used and the interface fallback runs.
#[tokio::test]
async fn bridge_task_metadata_gives_the_az_but_not_the_ip() {
    let uri = ecs_metadata_double(task_json("bridge", "172.17.0.2")).await;
    let cfg = IdentityConfig {
        imds_disabled: true,
        ecs_metadata_uri: Some(uri.clone()),
        ..IdentityConfig::default()
    };
    let result = discover(&cfg).await;
    if let Err(IdentityError::NoHostIp { failures }) = &result {
        assert!(
            matches!(&failures[1], SourceError::EcsMetadata { url, kind: FetchError::NoHostIp { mode } }
                if *url == format!("{uri}/task") && mode == "bridge"),
            "{failures:?}"
        );
    }
    if let Some(id) = assert_interface_fallback(result) {
        assert_ne!(id.host_ip, "172.17.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(id.availability_zone.as_deref(), Some("eu-west-3c"));
        assert_eq!(id.instance_id, None);
    }
}

/// Nothing but the interfaces: a routable IPv4 address if the machine has
/// one, else a clear error listing every source.
#[tokio::test]
async fn interface_fallback_or_clear_error() {
    let cfg = IdentityConfig {
        imds_disabled: true,
        ..IdentityConfig::default()
    };
    let result = discover(&cfg).await;
    if let Err(err) = &result {
        assert!(
            err.to_string().contains("IMDSv2: skipped: disabled"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("ECS task metadata v4: skipped: no ECS_CONTAINER_METADATA_URI_V4"),
            "{err}"
        );
    }
    if let Some(id) = assert_interface_fallback(result) {
        assert_eq!(id.instance_id, None);
        assert_eq!(id.availability_zone, None);
    }
}

// ---------------------------------------------------------------- timeouts

/// An IMDS that accepts connections but never answers: two attempts of one
/// timeout each, then the task metadata answers. Bounded.
#[tokio::test]
async fn silent_imds_falls_through_within_the_timeout() {
    // Connections complete in the kernel backlog; nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let uri = ecs_metadata_double(task_json("awsvpc", "127.0.2.62")).await;
    let timeout = Duration::from_millis(300);
    let cfg = IdentityConfig {
        ecs_metadata_uri: Some(uri),
        timeout,
        ..config(&format!("http://{silent_addr}"))
    };
    let started = Instant::now();
    let id = discover(&cfg).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(id.source, Source::EcsMetadata);
    assert_eq!(id.host_ip, "127.0.2.62".parse::<IpAddr>().unwrap());
    assert!(elapsed >= timeout * 2, "one retry: {elapsed:?}");
    assert!(
        elapsed < timeout * 2 + Duration::from_secs(2),
        "{elapsed:?}"
    );
    drop(silent);
}

/// Nothing listens: refused at once, retried once, then the next source.
#[tokio::test]
async fn refused_imds_falls_through_quickly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let uri = ecs_metadata_double(task_json("host", "127.0.9.3")).await;
    let cfg = IdentityConfig {
        ecs_metadata_uri: Some(uri),
        ..config(&format!("http://{closed}/"))
    };
    let started = Instant::now();
    let id = discover(&cfg).await.unwrap();
    assert_eq!(id.source, Source::EcsMetadata);
    assert_eq!(id.host_ip, "127.0.9.3".parse::<IpAddr>().unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A task metadata endpoint that never answers is bounded the same way, and
/// the error (if the interfaces give nothing) names its URL.
#[tokio::test]
async fn silent_task_metadata_is_bounded() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/v4/abc", silent.local_addr().unwrap());
    let timeout = Duration::from_millis(200);
    let cfg = IdentityConfig {
        imds_disabled: true,
        ecs_metadata_uri: Some(uri.clone()),
        timeout,
        ..IdentityConfig::default()
    };
    let started = Instant::now();
    let result = discover(&cfg).await;
    assert!(started.elapsed() < timeout * 2 + Duration::from_secs(2));
    if let Err(IdentityError::NoHostIp { failures }) = &result {
        assert!(
            matches!(&failures[1], SourceError::EcsMetadata { url, kind: FetchError::Timeout(t) }
                if *url == format!("{uri}/task") && *t == timeout),
            "{failures:?}"
        );
    }
    assert_interface_fallback(result);
    drop(silent);
}
