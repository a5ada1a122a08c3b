//! `ecsmeshctl deploy` run as a user runs it, against the patched moto and a
//! live controller. The controller listens where `deploy up` made ECS put its
//! task: the ASG instance's private IP (127.0.41.x), port 4321. Everything
//! stays on loopback.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use ecsmesh_controller::Controller;
use ecsmesh_controller::config::{Args, Config, FileConfig, Security, ServerTlsSettings};
use ecsmesh_dtab::Path;
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::{Endpoint, EndpointSet};
use ecsmesh_test_support::ecs::{AMI, Topology, sdk_config};
use ecsmesh_test_support::moto::MotoServer;
use ecsmesh_tls::{ClientAuth, TlsFiles};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::Channel;

const REGION: &str = "eu-north-1";
const CLUSTER: &str = "omega";

/// ecsmeshctl against the shared moto, with test credentials.
async fn ctl(args: Vec<String>) -> (i32, String, String) {
    let env = vec![
        (
            "ECSMESH_AWS_ENDPOINT_URL",
            MotoServer::shared().endpoint().clone(),
        ),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    common::ecsmeshctl(args, env).await
}

/// `deploy <command>` for the test cluster, `--insecure` (its controller
/// here is a plaintext one), then `extra`.
fn deploy(command: &str, subnet: &str, extra: &[&str]) -> Vec<String> {
    let mut args = deploy_cluster(CLUSTER, command, subnet, extra);
    args.push("--insecure".to_owned());
    args
}

/// `deploy <command>` for `cluster`, then `extra`.
fn deploy_cluster(cluster: &str, command: &str, subnet: &str, extra: &[&str]) -> Vec<String> {
    [
        "deploy",
        command,
        "--cluster",
        cluster,
        "--region",
        REGION,
        "--subnet",
        subnet,
        "--ami",
        AMI,
        "--image-repo",
        "registry.example/ecsmesh",
        // One instance and one replica (no load balancer): the topology
        // these tests were written for.
        "--min",
        "1",
        "--desired",
        "1",
        "--max",
        "1",
        "--controller-replicas",
        "1",
    ]
    .iter()
    .chain(extra)
    .map(|s| (*s).to_owned())
    .collect()
}

/// A controller on `grpc` with one published state (so it is ready).
async fn controller(dir: &std::path::Path, grpc: &str) -> Controller {
    let args = Args::try_parse_from([
        "ecsmesh-controller",
        "--grpc-addr",
        grpc,
        "--admin-addr",
        "127.0.0.1:0",
        "--store-dir",
        dir.to_str().unwrap(),
        "--base-dtab",
        "/svc=>/#/ecs/omega",
    ])
    .unwrap();
    let config = Config::resolve(&args, FileConfig::default()).unwrap();
    let c = Controller::start(config, &["test"])
        .await
        .unwrap_or_else(|e| panic!("starting a controller on {grpc}: {e:#}"));
    let world: EndpointSet = [Endpoint::new("127.0.41.200:8080".parse().unwrap())]
        .into_iter()
        .collect();
    c.observed.replace(
        "test",
        BTreeMap::from([(Path::read("/#/ecs/omega/world").unwrap(), Arc::new(world))]),
    );
    c
}

/// One agent's end of `Mesh.Stream`: says hello, and acknowledges the first
/// snapshot when `ack`. The stream stays open while the sender lives.
async fn agent(channel: Channel, instance_id: &str, ack: bool) -> mpsc::Sender<pb::AgentMessage> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            instance_id: instance_id.to_owned(),
            host_ip: "127.0.41.4".to_owned(),
            namespace: "default".to_owned(),
            agent_version: "test".to_owned(),
            cluster: CLUSTER.to_owned(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut from_controller = pb::mesh_client::MeshClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), from_controller.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::controller_message::Kind::Snapshot(snapshot)) = first.kind else {
        panic!("the first message is not a snapshot: {first:?}");
    };
    if ack {
        tx.send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Ack(pb::Ack {
                version: snapshot.version,
            })),
        })
        .await
        .unwrap();
    }
    // Keep reading, as an agent does, so the controller never waits on us.
    tokio::spawn(async move { while let Ok(Some(_)) = from_controller.message().await {} });
    tx
}

#[tokio::test]
async fn status_reports_controller_health_and_agent_convergence() {
    let conf = sdk_config(&MotoServer::shared().endpoint(), REGION).await;
    // Only the network: VPC 127.0.0.0/16, subnet 127.0.41.0/24.
    let net = Topology::create(&conf, "network-only", 41, &[]).await;
    let subnet = net.node_subnet.clone();

    // The plan first: JSON for scripts, every resource to create, nothing made.
    let (code, out, err) = ctl(deploy("up", &subnet, &["--dry-run", "-o", "json"])).await;
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert!(
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|st| st["kind"] != "network")
            .all(|st| st["action"] == "create"),
        "{plan:#}"
    );
    let (_, out, _) = ctl(deploy("status", &subnet, &[])).await;
    assert!(
        out.contains("absent    cluster              omega"),
        "{out}"
    );
    assert!(out.contains("controller: no running task to ask"), "{out}");

    let (code, out, err) = ctl(deploy("up", &subnet, &[])).await;
    assert_eq!(code, 0, "{out}\n{err}");

    // The ASG's instance joins the cluster (as its user data makes it do);
    // the service scheduler then places the controller's task on it.
    let instances = net.ec2.describe_instances().send().await.unwrap();
    let instance = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances().iter())
        .find(|i| i.subnet_id() == Some(subnet.as_str()))
        .unwrap();
    let iid = instance.instance_id().unwrap().to_owned();
    let ip = instance.private_ip_address().unwrap().to_owned();
    net.ecs
        .register_container_instance()
        .cluster(CLUSTER)
        .instance_identity_document(format!(r#"{{"instanceId": "{iid}"}}"#))
        .send()
        .await
        .unwrap();

    // Before the controller is up: the task is found, and is unreachable.
    let (code, out, err) = ctl(deploy("status", &subnet, &[])).await;
    assert_eq!(code, 0, "an unreachable controller fails nothing: {err}");
    assert!(
        out.contains(&format!("controller http://{ip}:4321: unreachable: ")),
        "{out}"
    );
    assert!(out.contains("unchanged cluster"), "{out}");
    assert!(out.contains("only from inside its VPC"), "{out}");

    // The controller, and two agents: one converged (on the registered
    // instance), one that never acknowledges.
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), &format!("{ip}:4321")).await;
    let channel = Channel::from_shared(format!("http://{}", c.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let _converged = agent(channel.clone(), &iid, true).await;
    let _behind = agent(channel.clone(), "i-0elsewhere", false).await;
    let mut status = pb::mesh_status_client::MeshStatusClient::new(channel);
    for _ in 0..100 {
        let r = status
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner();
        if r.agents
            .iter()
            .any(|a| a.instance_id == iid && a.acked_version == r.version)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No --controller: the controller task's address comes from ECS and EC2.
    let (code, out, err) = ctl(deploy("status", &subnet, &["-o", "json"])).await;
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["operation"], "status");
    assert!(
        s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["kind"] == "cluster" && st["action"] == "unchanged"),
        "{s:#}"
    );
    let ctl0 = &s["controllers"][0];
    assert_eq!(ctl0["address"], format!("http://{ip}:4321"));
    assert_eq!(ctl0["reachable"], true);
    assert_eq!(ctl0["ready"], true);
    assert_eq!(ctl0["converged"], 1);
    assert_eq!(ctl0["agents"].as_array().unwrap().len(), 2);
    assert_eq!(s["instances_without_agent"], serde_json::json!([]));

    let (code, out, _) = ctl(deploy("status", &subnet, &[])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("controller http://{ip}:4321: ready\n")),
        "{out}"
    );
    assert!(out.contains(": 1/2 agents converged"), "{out}");
    assert!(out.contains("i-0elsewhere"), "{out}");
    assert!(
        out.contains("every registered instance has a connected agent"),
        "{out}"
    );

    // An explicit address that nothing serves: said plainly, the rest still printed.
    let (code, out, _) = ctl(deploy(
        "status",
        &subnet,
        &["--controller", "http://127.0.0.1:1", "-o", "json"],
    ))
    .await;
    assert_eq!(code, 0);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["controllers"][0]["reachable"], false);
    assert!(
        s["controllers"][0]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{s:#}"
    );
    assert_eq!(s["instances_without_agent"], Value::Null);
    assert!(!s["steps"].as_array().unwrap().is_empty());

    let (code, out, err) = ctl(deploy("down", &subnet, &[])).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("delete    container-instance   {iid}")),
        "{out}"
    );
}

#[tokio::test]
async fn aws_errors_name_the_operation_and_the_resource() {
    let (code, out, err) = ctl(deploy("up", "subnet-doesnotexist", &[])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with("ecsmeshctl: DescribeSubnets subnet-doesnotexist: "),
        "{err}"
    );
}

#[tokio::test]
async fn up_by_default_leaves_a_settings_file_that_ecsmeshctl_uses() {
    let conf = sdk_config(&MotoServer::shared().endpoint(), REGION).await;
    let net = Topology::create(&conf, "network-only-sigma", 43, &[]).await;
    let subnet = net.node_subnet.clone();
    // The default directory: $XDG_CONFIG_HOME/ecsmesh/<cluster>.
    let config_home = tempfile::tempdir().unwrap();
    let env = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            (
                "ECSMESH_AWS_ENDPOINT_URL",
                MotoServer::shared().endpoint().clone(),
            ),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("XDG_CONFIG_HOME", config_home.path().display().to_string()),
        ];
        env.extend(extra);
        env
    };
    let (code, out, err) =
        common::ecsmeshctl(deploy_cluster("sigma", "up", &subnet, &[]), env(vec![])).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let dir = config_home.path().join("ecsmesh/sigma");
    assert!(
        out.contains(&format!("create    operator-secrets     {}", dir.display())),
        "{out}"
    );
    assert!(
        out.contains("create    ssm-parameter        /ecsmesh/sigma/admin-token"),
        "{out}"
    );

    // A controller as the deployed one is configured: the generated TLS
    // files (the operator's directory holds what was put in SSM), the
    // admin identity and the admin token.
    let store = tempfile::tempdir().unwrap();
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        store_dir: store.path().to_owned(),
        admin_token: Some(
            std::fs::read_to_string(dir.join("admin-token"))
                .unwrap()
                .trim()
                .into(),
        ),
        base_dtabs: ecsmesh_controller::reconcile::BaseDtabs(
            [(
                "default".to_owned(),
                Arc::new(ecsmesh_dtab::Dtab::read("/svc=>/#/ecs/sigma").unwrap()),
            )]
            .into(),
        ),
        ecs: None,
        consul: None,
        consul_store: None,
        dynamodb_store: None,
        replicas: ecsmesh_controller::config::ReplicaSettings::default(),
        security: Security {
            tls: Some(ServerTlsSettings {
                files: TlsFiles {
                    ca: Some(dir.join("ca.pem")),
                    cert: Some(dir.join("controller.pem")),
                    key: Some(dir.join("controller-key.pem")),
                },
                client_auth: ClientAuth::Optional,
                reload_interval: ecsmesh_tls::DEFAULT_RELOAD_INTERVAL,
            }),
            admin_identities: vec![ecsmesh_deploy::TLS_ADMIN_IDENTITY.into()],
            ..Security::default()
        },
    };
    let c = Controller::start(config, &["test"]).await.unwrap();
    c.observed.replace("test", BTreeMap::new());

    // Only the settings file (and the address: the file's is the
    // instance's loopback, which a tunnel would forward).
    let settings = dir.join("ecsmeshctl.yaml");
    let with_settings = || {
        env(vec![
            ("ECSMESH_CTL_CONFIG", settings.display().to_string()),
            ("ECSMESH_CONTROLLER", format!("https://{}", c.grpc_addr)),
        ])
    };
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (code, out, err) = common::ecsmeshctl(
        args(&["dtab", "set", "default", "/svc/a=>/svc/b"]),
        with_settings(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) =
        common::ecsmeshctl(args(&["dtab", "get", "default"]), with_settings()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("/svc/a=>/svc/b"), "{out}");
    // Without the file's credentials the write is refused.
    let (code, _, err) = common::ecsmeshctl(
        args(&[
            "dtab",
            "set",
            "default",
            "/svc/a=>/svc/c",
            "--tls-ca",
            &dir.join("ca.pem").display().to_string(),
            "--tls-server-name",
            "ecsmesh-controller",
        ]),
        env(vec![(
            "ECSMESH_CONTROLLER",
            format!("https://{}", c.grpc_addr),
        )]),
    )
    .await;
    assert_ne!(code, 0, "a write without credentials: {err}");

    // A second up keeps everything; down removes the parameters it made.
    let (code, out, err) =
        common::ecsmeshctl(deploy_cluster("sigma", "up", &subnet, &[]), env(vec![])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("up: nothing to change for cluster sigma"),
        "{out}"
    );
    let (code, out, err) =
        common::ecsmeshctl(deploy_cluster("sigma", "down", &subnet, &[]), env(vec![])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("delete    ssm-parameter        /ecsmesh/sigma/tls/controller-key.pem"),
        "{out}"
    );
}

#[tokio::test]
async fn no_events_plans_no_queue_and_no_rule() {
    let conf = sdk_config(&MotoServer::shared().endpoint(), REGION).await;
    let net = Topology::create(&conf, "network-only-rho", 44, &[]).await;
    let subnet = net.node_subnet.clone();
    let kinds = |out: &str| -> Vec<String> {
        let plan: Value = serde_json::from_str(out).unwrap();
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s["kind"].as_str().unwrap(),
                    s["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let dry = ["--dry-run", "-o", "json"];
    let (code, out, err) = ctl(deploy_cluster(
        "rho",
        "up",
        &subnet,
        &[&dry[..], &["--insecure"]].concat(),
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    let with = kinds(&out);
    for want in [
        "sqs-queue ecsmesh-rho-events",
        "sqs-queue ecsmesh-rho-events-dlq",
        "event-rule ecsmesh-rho-ecs-events",
        "event-target ecsmesh-rho-ecs-events",
        "sqs-queue-policy ecsmesh-rho-events",
    ] {
        assert!(with.contains(&want.to_owned()), "{want} not in {with:#?}");
    }
    let (code, out, err) = ctl(deploy_cluster(
        "rho",
        "up",
        &subnet,
        &[&dry[..], &["--insecure", "--no-events"]].concat(),
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    let without = kinds(&out);
    assert!(
        without
            .iter()
            .all(|k| !k.starts_with("sqs-") && !k.starts_with("event-")),
        "{without:#?}"
    );
    assert_eq!(without.len() + 5, with.len(), "{without:#?}");
}
