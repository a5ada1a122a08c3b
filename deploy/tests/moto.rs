//! `up` / `status` / `down` / `--dry-run` against the patched moto, read back
//! through the SDK. Each test has its own region and a loopback VPC
//! (127.0.0.0/16, subnet 127.0.N.0/24): nothing leaves 127/8.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    clippy::assigning_clones
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use aws_config::SdkConfig;
use aws_sdk_autoscaling as asg;
use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;
use aws_sdk_eventbridge as eventbridge;
use aws_sdk_sqs as sqs;
use aws_sdk_ssm as ssm;
use base64::Engine as _;
use ecsmesh_deploy::{
    Action, AgentPlacement, DeployConfig, Deployer, OWNER_TAG, Report, StoreKind,
};
use ecsmesh_test_support::ecs::{AMI, sdk_config};
use ecsmesh_test_support::moto::MotoServer;

async fn setup(region: &str, net: u8) -> (SdkConfig, String) {
    let conf = sdk_config(&MotoServer::shared().endpoint(), region).await;
    let ec2c = ec2::Client::new(&conf);
    let vpc = ec2c
        .create_vpc()
        .cidr_block("127.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = ec2c
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block(format!("127.0.{net}.0/24"))
        .availability_zone(format!("{region}a"))
        .send()
        .await
        .unwrap();
    (
        conf,
        subnet.subnet().unwrap().subnet_id().unwrap().to_owned(),
    )
}

const TARGET_GROUP: &str =
    "arn:aws:elasticloadbalancing:eu-west-2:123456789012:targetgroup/ecsmesh-beta/0123456789abcdef";

/// `secrets`: where the operator's material goes (a test's temporary
/// directory: it does not exist yet).
fn config(cluster: &str, region: &str, subnet: &str, secrets: &Path) -> DeployConfig {
    let mut cfg = DeployConfig::new(cluster, region);
    // One instance and one replica (no load balancer) unless a test says
    // otherwise: the topology these tests were written for.
    (cfg.min_size, cfg.desired_capacity, cfg.max_size) = (1, 1, 1);
    cfg.controller_replicas = 1;
    cfg.subnets = vec![subnet.to_owned()];
    cfg.secrets_dir = Some(secrets.join(cluster));
    cfg.ami = Some(AMI.to_owned());
    cfg.image_repo = "registry.example/ecsmesh".to_owned();
    cfg.image_tag = "v1".to_owned();
    cfg
}

fn changes(r: &Report) -> Vec<String> {
    r.steps
        .iter()
        .filter(|s| s.action.is_change())
        .map(|s| format!("{} {} {}", s.action, s.kind, s.name))
        .collect()
}

/// Everything in the region that carries the owner tag (or, for launch
/// configurations, our name), as a sorted list of descriptions. Queues and
/// rules: those named for the cluster and tagged.
async fn owned(conf: &SdkConfig, cluster: &str) -> Vec<String> {
    let (ec2c, ecsc, asgc) = (
        ec2::Client::new(conf),
        ecs::Client::new(conf),
        asg::Client::new(conf),
    );
    let tag = ec2::types::Filter::builder()
        .name(format!("tag:{OWNER_TAG}"))
        .values(cluster)
        .build();
    let mut out = Vec::new();
    for g in ec2c
        .describe_security_groups()
        .filters(tag.clone())
        .send()
        .await
        .unwrap()
        .security_groups()
    {
        out.push(format!("sg {}", g.group_name().unwrap()));
    }
    for t in ec2c
        .describe_launch_templates()
        .send()
        .await
        .unwrap()
        .launch_templates()
    {
        if t.tags().iter().any(|t| t.key() == Some(OWNER_TAG)) {
            out.push(format!("lt {}", t.launch_template_name().unwrap()));
        }
    }
    for g in asgc
        .describe_auto_scaling_groups()
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()
    {
        if g.tags().iter().any(|t| t.key() == Some(OWNER_TAG)) {
            out.push(format!("asg {}", g.auto_scaling_group_name().unwrap()));
        }
    }
    for lc in asgc
        .describe_launch_configurations()
        .send()
        .await
        .unwrap()
        .launch_configurations()
    {
        out.push(format!("lc {}", lc.launch_configuration_name().unwrap()));
    }
    let clusters = ecsc
        .describe_clusters()
        .clusters(cluster)
        .send()
        .await
        .unwrap();
    for c in clusters.clusters() {
        if c.status() == Some("ACTIVE") {
            out.push(format!("cluster {}", c.cluster_name().unwrap()));
            let svcs = ecsc.list_services().cluster(cluster).send().await.unwrap();
            if !svcs.service_arns().is_empty() {
                let d = ecsc
                    .describe_services()
                    .cluster(cluster)
                    .set_services(Some(svcs.service_arns().to_vec()))
                    .send()
                    .await
                    .unwrap();
                for s in d.services() {
                    if s.status() == Some("ACTIVE") {
                        out.push(format!(
                            "service {} {}",
                            s.service_name().unwrap(),
                            s.task_definition().unwrap()
                        ));
                    }
                }
            }
        }
    }
    let tds = ecsc
        .list_task_definitions()
        .status(ecs::types::TaskDefinitionStatus::Active)
        .send()
        .await
        .unwrap();
    out.extend(tds.task_definition_arns().iter().map(|a| format!("td {a}")));
    let prefix = format!("ecsmesh-{cluster}");
    let sqsc = sqs::Client::new(conf);
    let queues = sqsc
        .list_queues()
        .queue_name_prefix(&prefix)
        .send()
        .await
        .unwrap();
    for url in queues.queue_urls() {
        let tags = sqsc.list_queue_tags().queue_url(url).send().await.unwrap();
        if tags
            .tags()
            .and_then(|t| t.get(OWNER_TAG))
            .map(String::as_str)
            == Some(cluster)
        {
            out.push(format!("queue {}", url.rsplit('/').next().unwrap()));
        }
    }
    let evc = eventbridge::Client::new(conf);
    let rules = evc.list_rules().name_prefix(&prefix).send().await.unwrap();
    for r in rules.rules() {
        let tags = evc
            .list_tags_for_resource()
            .resource_arn(r.arn().unwrap())
            .send()
            .await
            .unwrap();
        if tags
            .tags()
            .iter()
            .any(|t| t.key() == OWNER_TAG && t.value() == cluster)
        {
            out.push(format!("rule {}", r.name().unwrap()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn up_creates_everything_with_the_right_settings_and_is_idempotent() {
    let region = "eu-west-1";
    let (conf, subnet) = setup(region, 11).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("alpha", region, &subnet, secrets.path());
    cfg.with_demo = true;
    cfg.key_pair = Some("ops".to_owned());
    let deployer = Deployer::new(&conf, cfg).unwrap();

    let first = deployer.up(false).await.unwrap();
    assert!(first.changed());
    assert!(
        changes(&first).contains(&"create launch-template ecsmesh-alpha".to_owned()),
        "{first:#?}"
    );

    // Launch template: user data decodes to the template with values filled; IMDSv2 required.
    let ec2c = ec2::Client::new(&conf);
    let lt = ec2c
        .describe_launch_template_versions()
        .launch_template_name("ecsmesh-alpha")
        .versions("$Latest")
        .send()
        .await
        .unwrap();
    let data = lt.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data.user_data().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(user_data, deployer.user_data().unwrap());
    assert!(user_data.starts_with("#!/bin/bash"));
    assert!(user_data.contains("ECS_CLUSTER=alpha\n"));
    assert!(user_data.contains("'registry.example/ecsmesh/ecsmesh-agent:v1'"));
    // TLS and tokens by default: agents dial the controller over https.
    assert!(user_data.contains("ECSMESH_CONTROLLER='https://127.0.0.1:4321'"));
    assert!(user_data.contains("if [ \"true\" = \"true\" ]"));
    assert!(user_data.contains("X-aws-ec2-metadata-token-ttl-seconds"));
    assert!(
        !user_data.contains("${"),
        "unrendered variable in\n{user_data}"
    );
    let md = data.metadata_options().unwrap();
    assert_eq!(
        md.http_tokens(),
        Some(&ec2::types::LaunchTemplateHttpTokensState::Required)
    );
    assert_eq!(md.http_put_response_hop_limit(), Some(2));
    assert_eq!(data.image_id(), Some(AMI));
    assert_eq!(data.key_name(), Some("ops"));

    // Security group: mesh ports from the group itself, SSH from the VPC.
    let sg = ec2c
        .describe_security_groups()
        .filters(
            ec2::types::Filter::builder()
                .name("group-name")
                .values("ecsmesh-alpha")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let sg = &sg.security_groups()[0];
    let gid = sg.group_id().unwrap();
    for port in [4140, 4141, 9990, 4321, 9991] {
        assert!(
            sg.ip_permissions()
                .iter()
                .any(|p| p.from_port() == Some(port)
                    && p.user_id_group_pairs()
                        .iter()
                        .any(|u| u.group_id() == Some(gid))),
            "port {port} missing: {sg:#?}"
        );
    }
    assert!(sg.ip_permissions().iter().any(|p| {
        p.from_port() == Some(22)
            && p.ip_ranges()
                .iter()
                .any(|r| r.cidr_ip() == Some("127.0.0.0/16"))
    }));
    assert_eq!(data.security_group_ids(), [gid.to_owned()]);

    // ASG on the loopback subnet, instances at 127.0.11.x.
    let asgc = asg::Client::new(&conf);
    let g = auto_scaling_group(&asgc, "ecsmesh-alpha").await;
    assert_eq!(
        (g.min_size(), g.desired_capacity(), g.max_size()),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(g.vpc_zone_identifier(), Some(subnet.as_str()));
    assert_eq!(
        g.launch_template().unwrap().launch_template_name(),
        Some("ecsmesh-alpha")
    );
    let iid = g.instances()[0].instance_id().unwrap();
    let inst = ec2c
        .describe_instances()
        .instance_ids(iid)
        .send()
        .await
        .unwrap();
    let ip = inst.reservations()[0].instances()[0]
        .private_ip_address()
        .unwrap()
        .to_owned();
    assert!(ip.starts_with("127.0.11."), "{ip}");

    // Task definitions: ports and environment.
    let ecsc = ecs::Client::new(&conf);
    let agent = task_definition(&ecsc, "ecsmesh-alpha-agent").await;
    assert_eq!(agent.network_mode(), Some(&ecs::types::NetworkMode::Host));
    let ports: Vec<_> = agent.container_definitions()[0]
        .port_mappings()
        .iter()
        .map(|p| (p.container_port(), p.host_port()))
        .collect();
    assert_eq!(
        ports,
        [
            (Some(4140), Some(4140)),
            (Some(4141), Some(4141)),
            (Some(9990), Some(9990))
        ]
    );
    // Secure by default: the controller authenticates writes and the mesh
    // stream, with no opt-out (the secure-default test checks the rest).
    let controller = task_definition(&ecsc, "ecsmesh-alpha-controller").await;
    assert!(
        controller.container_definitions()[0]
            .environment()
            .iter()
            .all(|e| !e
                .name()
                .unwrap()
                .starts_with("ECSMESH_ALLOW_UNAUTHENTICATED")),
        "{controller:#?}"
    );
    let hello = task_definition(&ecsc, "ecsmesh-alpha-hello").await;
    assert_eq!(hello.network_mode(), Some(&ecs::types::NetworkMode::Bridge));
    assert_eq!(
        hello.container_definitions()[0].port_mappings()[0].host_port(),
        Some(0)
    );
    let hello_c = &hello.container_definitions()[0];
    assert_eq!(
        hello_c.image(),
        Some("registry.example/ecsmesh/ecsmesh-hello-world:v1")
    );
    // The Rust helloworld: listens on the container port, calls `world`
    // through the host's agent (it fills in $HOST_IP from IMDSv2 itself).
    assert_eq!(
        hello_c.command(),
        [
            "--addr",
            "0.0.0.0:7777",
            "--text",
            "Hello",
            "--target",
            "world"
        ]
    );
    let env: Vec<_> = hello_c
        .environment()
        .iter()
        .map(|e| (e.name().unwrap(), e.value().unwrap()))
        .collect();
    assert_eq!(env, [("http_proxy", "$HOST_IP:4140")]);
    assert_eq!(hello_c.port_mappings()[0].container_port(), Some(7777));
    for (family, text) in [("world", "World"), ("world-v2", "World-V2")] {
        let td = task_definition(&ecsc, &format!("ecsmesh-alpha-{family}")).await;
        assert_eq!(td.network_mode(), Some(&ecs::types::NetworkMode::Bridge));
        let c = &td.container_definitions()[0];
        assert_eq!(c.command(), ["--addr", "0.0.0.0:7777", "--text", text]);
        assert!(c.environment().is_empty(), "{family} needs no proxy");
        assert_eq!(c.port_mappings()[0].host_port(), Some(0));
        assert_eq!(
            c.docker_labels().unwrap().get("ecsmesh.service"),
            Some(&family.to_owned())
        );
    }

    // Services: controller (1), demo; no agent DAEMON with user-data placement.
    let all = owned(&conf, "alpha").await;
    for want in [
        "service ecsmesh-controller",
        "service hello",
        "service world ",
        "service world-v2",
    ] {
        assert!(
            all.iter().any(|s| s.starts_with(want)),
            "{want} missing from {all:#?}"
        );
    }
    assert!(!all.iter().any(|s| s.starts_with("service ecsmesh-agent")));

    // A second up changes nothing.
    let second = deployer.up(false).await.unwrap();
    assert!(
        !second.changed(),
        "second up changed: {:#?}",
        changes(&second)
    );
    assert_eq!(owned(&conf, "alpha").await, all);

    // status: everything unchanged, the controller service listed.
    let status = deployer.status().await.unwrap();
    assert!(!status.changed());
    assert!(
        status
            .steps
            .iter()
            .any(|s| s.kind == "service-tasks" && s.name == "ecsmesh-controller")
    );
}

#[tokio::test]
async fn changed_settings_update_in_place_and_down_removes_only_ours() {
    let region = "eu-west-2";
    let (conf, subnet) = setup(region, 12).await;
    let secrets = tempfile::tempdir().unwrap();
    let cfg = config("beta", region, &subnet, secrets.path());
    Deployer::new(&conf, cfg.clone())
        .unwrap()
        .up(false)
        .await
        .unwrap();

    // Someone else's resources in the same region must survive `down`.
    let ec2c = ec2::Client::new(&conf);
    let vpc = ec2c
        .describe_subnets()
        .subnet_ids(&subnet)
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .vpc_id()
        .unwrap()
        .to_owned();
    ec2c.create_security_group()
        .group_name("not-ours")
        .description("x")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap();
    let ecsc = ecs::Client::new(&conf);
    ecsc.create_cluster()
        .cluster_name("other")
        .send()
        .await
        .unwrap();

    // New image tag, agent as DAEMON, max 2: new revisions, LT version, ASG, services.
    let mut cfg2 = cfg.clone();
    cfg2.image_tag = "v2".to_owned();
    cfg2.agent = AgentPlacement::Daemon;
    // Desired stays 1: moto 5.2.5 stores CreateLaunchTemplateVersion's
    // UserData unwrapped and then fails (HTTP 500, AssertionError) when an
    // ASG launches from that version; real EC2 has no such problem.
    cfg2.max_size = 2;
    // More than one instance: agents need a stable controller address, here
    // an internal NLB in front of the controller's target group.
    cfg2.controller_address = "http://ecsmesh-beta-ctl.elb.internal:4321".to_owned();
    cfg2.controller_target_group = Some(TARGET_GROUP.to_owned());
    let d2 = Deployer::new(&conf, cfg2).unwrap();
    let plan = d2.plan().await.unwrap();
    let planned = changes(&plan);
    let report = d2.up(false).await.unwrap();
    assert_eq!(changes(&report), planned, "the plan is what up does");
    for want in [
        "update task-definition ecsmesh-beta-controller",
        "update task-definition ecsmesh-beta-agent",
        "update launch-template ecsmesh-beta",
        "update auto-scaling-group ecsmesh-beta",
        "update service ecsmesh-controller",
        "create service ecsmesh-agent",
        "create ingress-rule tcp/4321 from 127.0.0.0/16 (load balancer)",
        "create ingress-rule tcp/9991 from 127.0.0.0/16 (load balancer)",
    ] {
        assert!(
            planned.contains(&want.to_owned()),
            "{want} not in {planned:#?}"
        );
    }
    let svc = service(&ecsc, "beta", "ecsmesh-agent").await;
    assert_eq!(
        svc.scheduling_strategy(),
        Some(&ecs::types::SchedulingStrategy::Daemon)
    );
    let ctl = service(&ecsc, "beta", "ecsmesh-controller").await;
    let lb = &ctl.load_balancers()[0];
    assert_eq!(
        (
            lb.target_group_arn(),
            lb.container_name(),
            lb.container_port()
        ),
        (Some(TARGET_GROUP), Some("controller"), Some(4321))
    );
    let ud = launch_template_user_data(&conf, "ecsmesh-beta").await;
    assert!(ud.contains("if [ \"false\" = \"true\" ]"));
    // TLS (the default): an http:// address is dialed as https://.
    assert!(ud.contains("ECSMESH_CONTROLLER='https://ecsmesh-beta-ctl.elb.internal:4321'"));
    assert!(!d2.up(false).await.unwrap().changed());

    // down: dry run first (nothing changes), then for real, then again (idempotent).
    let before = owned(&conf, "beta").await;
    let dry = d2.down(true).await.unwrap();
    assert!(dry.changed());
    assert_eq!(owned(&conf, "beta").await, before);
    let down = d2.down(false).await.unwrap();
    assert_eq!(changes(&down), changes(&dry));
    let left = owned(&conf, "beta").await;
    assert!(
        left.iter().all(|s| !s.contains("beta")),
        "left behind: {left:#?}"
    );
    let again = d2.down(false).await.unwrap();
    assert!(!again.changed(), "{:#?}", changes(&again));
    assert!(
        again
            .steps
            .iter()
            .all(|s| s.action == Action::Absent || s.detail.contains("not owned"))
    );

    // Not ours: still there.
    let sgs = ec2c
        .describe_security_groups()
        .group_names("not-ours")
        .send()
        .await
        .unwrap();
    assert_eq!(sgs.security_groups().len(), 1);
    let other = ecsc
        .describe_clusters()
        .clusters("other")
        .send()
        .await
        .unwrap();
    assert_eq!(other.clusters()[0].status(), Some("ACTIVE"));
}

#[tokio::test]
async fn dry_run_mutates_nothing() {
    let region = "eu-central-1";
    let (conf, subnet) = setup(region, 13).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("gamma", region, &subnet, secrets.path());
    cfg.with_demo = true;
    // Progress: one line per step, as each is decided.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&lines);
    let deployer = Deployer::new(&conf, cfg)
        .unwrap()
        .with_progress(move |s| seen.lock().unwrap().push(format!("{} {}", s.kind, s.name)));
    let before = owned(&conf, "gamma").await;
    let plan = deployer.up(true).await.unwrap();
    assert!(plan.dry_run);
    let reported: Vec<String> = plan
        .steps
        .iter()
        .map(|s| format!("{} {}", s.kind, s.name))
        .collect();
    assert_eq!(*lines.lock().unwrap(), reported);
    assert!(
        plan.steps
            .iter()
            .filter(|s| s.kind != "network")
            .all(|s| s.action == Action::Create),
        "{plan:#?}"
    );
    assert_eq!(
        owned(&conf, "gamma").await,
        before,
        "a dry run created something"
    );
    // No parameter, no local file: the secrets are only planned.
    assert!(
        plan.steps
            .iter()
            .any(|s| s.kind == "ssm-parameter" && s.name == "/ecsmesh/gamma/admin-token"),
        "{plan:#?}"
    );
    assert!(parameters(&conf, "/ecsmesh/gamma").await.is_empty());
    assert!(!secrets.path().join("gamma").exists());
    // The events plumbing is planned, not made (`owned` lists queues and rules).
    assert!(
        changes(&plan).contains(&"create sqs-queue ecsmesh-gamma-events".to_owned()),
        "{plan:#?}"
    );
    assert!(!queue_exists(&conf, "ecsmesh-gamma-events").await);
    // Nothing at all in the region either (the SG listing is unfiltered here).
    let sgs = ec2::Client::new(&conf)
        .describe_security_groups()
        .send()
        .await
        .unwrap();
    assert!(
        sgs.security_groups()
            .iter()
            .all(|g| g.group_name() == Some("default"))
    );
}

#[tokio::test]
async fn legacy_launch_configuration() {
    let region = "ap-south-1";
    let (conf, subnet) = setup(region, 14).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("delta", region, &subnet, secrets.path());
    cfg.launch_configuration = true;
    let d = Deployer::new(&conf, cfg.clone()).unwrap();
    d.up(false).await.unwrap();
    assert!(!d.up(false).await.unwrap().changed());
    let asgc = asg::Client::new(&conf);
    let lcs = asgc.describe_launch_configurations().send().await.unwrap();
    let lc = &lcs.launch_configurations()[0];
    let ud = base64::engine::general_purpose::STANDARD
        .decode(lc.user_data().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(ud).unwrap(), d.user_data().unwrap());
    let g = auto_scaling_group(&asgc, "ecsmesh-delta").await;
    assert_eq!(
        g.launch_configuration_name(),
        lc.launch_configuration_name()
    );
    // A change makes a new configuration and removes the old one.
    cfg.image_tag = "v9".to_owned();
    let d2 = Deployer::new(&conf, cfg).unwrap();
    let r = d2.up(false).await.unwrap();
    assert!(
        changes(&r)
            .iter()
            .any(|c| c.starts_with("delete launch-configuration")),
        "{:#?}",
        changes(&r)
    );
    assert_eq!(
        asgc.describe_launch_configurations()
            .send()
            .await
            .unwrap()
            .launch_configurations()
            .len(),
        1
    );
    d2.down(false).await.unwrap();
    assert!(
        owned(&conf, "delta")
            .await
            .iter()
            .all(|s| !s.contains("delta"))
    );
}

#[tokio::test]
async fn bad_settings_are_typed_errors() {
    let conf = sdk_config("http://127.0.0.1:9", "us-west-2").await;
    let mut cfg = DeployConfig::new("bad name!", "us-west-2");
    assert!(
        Deployer::new(&conf, cfg.clone())
            .unwrap_err()
            .to_string()
            .contains("cluster")
    );
    cfg.cluster = "ok".to_owned();
    cfg.controller_replicas = 2;
    // Two replicas need a shared store: not a file.
    cfg.store = StoreKind::File;
    let err = Deployer::new(&conf, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("shared store"), "{err}");
    cfg.store = StoreKind::Consul;
    let err = Deployer::new(&conf, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("--consul-address"), "{err}");
    // Two replicas with Consul and the loopback default: `up` makes the
    // load balancer agents dial.
    cfg.consul_address = Some("http://127.0.0.1:8500".to_owned());
    assert!(cfg.managed_load_balancer());
    assert!(Deployer::new(&conf, cfg.clone()).is_ok());
    // With the user's target group, the address must be its balancer's.
    let arn = "arn:aws:elasticloadbalancing:us-west-2:1:targetgroup/ctl/0123";
    cfg.controller_target_group = Some(arn.to_owned());
    assert!(!cfg.managed_load_balancer());
    let err = Deployer::new(&conf, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("controller-address"), "{err}");
    cfg.controller_address = "http://controller.internal:4321".to_owned();
    assert!(Deployer::new(&conf, cfg.clone()).is_ok());
    cfg.controller_target_group = Some("my-target-group".to_owned());
    let err = Deployer::new(&conf, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("controller-target-group"), "{err}");
    cfg.controller_target_group = None;
    // Replicas on distinct instances need as many instances.
    cfg.controller_replicas = 3;
    let err = Deployer::new(&conf, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("distinct instances"), "{err}");
    // More instances than one, one replica, a loopback address: the
    // load balancer too; any other address is the user's.
    let mut one = DeployConfig::new("ok", "us-west-2");
    (one.max_size, one.controller_replicas) = (3, 1);
    for local in [
        "http://127.0.0.1:4321",
        "http://localhost:4321",
        "http://[::1]:4321",
    ] {
        one.controller_address = local.to_owned();
        assert!(one.managed_load_balancer(), "{local}");
        assert!(Deployer::new(&conf, one.clone()).is_ok(), "{local}");
    }
    one.controller_address = "http://10.0.0.5:4321".to_owned();
    assert!(!one.managed_load_balancer());
    assert!(Deployer::new(&conf, one).is_ok());
    cfg.controller_replicas = 1;
    cfg.min_size = 3;
    assert!(Deployer::new(&conf, cfg).is_err());
}

#[tokio::test]
async fn aws_errors_name_operation_and_resource() {
    let region = "sa-east-1";
    let conf = sdk_config(&MotoServer::shared().endpoint(), region).await;
    let mut cfg = DeployConfig::new("eps", region);
    cfg.subnets = vec!["subnet-doesnotexist".to_owned()];
    let err = Deployer::new(&conf, cfg)
        .unwrap()
        .up(true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("DescribeSubnets subnet-doesnotexist: "),
        "{err}"
    );
}

#[tokio::test]
async fn status_finds_the_controller_tasks_and_down_deregisters_instances() {
    let region = "us-east-2";
    let (conf, subnet) = setup(region, 15).await;
    let secrets = tempfile::tempdir().unwrap();
    let d = Deployer::new(&conf, config("zeta", region, &subnet, secrets.path())).unwrap();
    assert!(
        d.controller_endpoints().await.unwrap().is_empty(),
        "no cluster yet"
    );
    d.up(false).await.unwrap();

    // The ASG's instance joins the cluster as its user data would make it;
    // the (patched moto) service scheduler then places the controller there.
    let asgc = asg::Client::new(&conf);
    let g = auto_scaling_group(&asgc, "ecsmesh-zeta").await;
    let iid = g.instances()[0].instance_id().unwrap().to_owned();
    let ecsc = ecs::Client::new(&conf);
    ecsc.register_container_instance()
        .cluster("zeta")
        .instance_identity_document(format!(r#"{{"instanceId": "{iid}"}}"#))
        .send()
        .await
        .unwrap();

    // The controller's host port on that instance's private IP (TLS: https).
    let endpoints = d.controller_endpoints().await.unwrap();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert!(
        endpoints[0].starts_with("https://127.0.15.") && endpoints[0].ends_with(":4321"),
        "{endpoints:?}"
    );
    let status = d.status().await.unwrap();
    let instances = status
        .steps
        .iter()
        .find(|s| s.kind == "container-instances")
        .unwrap();
    assert_eq!(instances.detail, format!("1 registered: {iid}"));
    assert_eq!(d.cluster_instances().await.unwrap().len(), 1);

    // down deregisters the instance before it deletes the cluster.
    let down = d.down(false).await.unwrap();
    assert!(
        changes(&down).contains(&format!("delete container-instance {iid}")),
        "{:#?}",
        changes(&down)
    );
    let left = ecsc
        .list_container_instances()
        .cluster("zeta")
        .send()
        .await
        .unwrap();
    assert!(left.container_instance_arns().is_empty());
    assert!(
        owned(&conf, "zeta")
            .await
            .iter()
            .all(|s| !s.contains("zeta"))
    );
}

#[tokio::test]
async fn user_data_is_valid_bash_and_logs_in_to_a_private_ecr() {
    let conf = sdk_config("http://127.0.0.1:9", "eu-west-1").await;
    let mut cfg = DeployConfig::new("ecr", "eu-west-1");
    cfg.image_repo = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ecsmesh".to_owned();
    let user_data = Deployer::new(&conf, cfg).unwrap().user_data().unwrap();
    assert!(
        user_data.contains("REGISTRY=$(echo '123456789012.dkr.ecr.eu-west-1.amazonaws.com/ecsmesh/ecsmesh-agent:latest' | cut -d/ -f1)"),
        "{user_data}"
    );
    assert!(user_data.contains("aws ecr get-login-password --region 'eu-west-1'"));
    assert_bash_parses(&user_data);
}

/// bash parses `script` (`bash -n`, from stdin: nothing runs).
fn assert_bash_parses(script: &str) {
    use std::io::Write as _;
    let mut bash = std::process::Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = bash.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The auto scaling group of that name.
async fn auto_scaling_group(asgc: &asg::Client, name: &str) -> asg::types::AutoScalingGroup {
    asgc.describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .clone()
}

/// The service of that name in the cluster.
async fn service(ecsc: &ecs::Client, cluster: &str, name: &str) -> ecs::types::Service {
    ecsc.describe_services()
        .cluster(cluster)
        .services(name)
        .send()
        .await
        .unwrap()
        .services()[0]
        .clone()
}

/// The task definition of a family (or family:revision), as ECS describes it.
async fn task_definition(ecsc: &ecs::Client, family: &str) -> ecs::types::TaskDefinition {
    ecsc.describe_task_definition()
        .task_definition(family)
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .clone()
}

/// The user data of the latest launch template version, decoded.
async fn launch_template_user_data(conf: &SdkConfig, name: &str) -> String {
    let lt = ec2::Client::new(conf)
        .describe_launch_template_versions()
        .launch_template_name(name)
        .versions("$Latest")
        .send()
        .await
        .unwrap();
    let ud = base64::engine::general_purpose::STANDARD
        .decode(
            lt.launch_template_versions()[0]
                .launch_template_data()
                .unwrap()
                .user_data()
                .unwrap(),
        )
        .unwrap();
    String::from_utf8(ud).unwrap()
}

#[tokio::test]
async fn tls_from_ssm_is_fetched_mounted_and_configured() {
    let region = "ca-central-1";
    let (conf, subnet) = setup(region, 16).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("kappa", region, &subnet, secrets.path());
    // The user's own certificates, put by hand (untagged).
    let ssmc = ssm::Client::new(&conf);
    for name in ecsmesh_deploy::TLS_PARAMETERS {
        ssmc.put_parameter()
            .name(format!("/ecsmesh/kappa/tls/{name}"))
            .value(format!("the user's {name}"))
            .r#type(ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    }
    cfg.tls_ssm_prefix = Some("/ecsmesh/kappa/tls".to_owned());
    let deployer = Deployer::new(&conf, cfg).unwrap();

    // A dry run with TLS still creates nothing.
    let before = owned(&conf, "kappa").await;
    let plan = deployer.up(true).await.unwrap();
    assert!(plan.changed());
    assert_eq!(
        owned(&conf, "kappa").await,
        before,
        "a dry run created something"
    );

    let first = deployer.up(false).await.unwrap();
    // Their TLS parameters are used as they are; the tokens are still managed.
    let created = changes(&first);
    assert!(
        created.contains(&"create ssm-parameter /ecsmesh/kappa/admin-token".to_owned())
            && created.contains(&"create ssm-parameter /ecsmesh/kappa/agent-token".to_owned())
            && !created.iter().any(|c| c.contains("/tls/")),
        "{created:#?}"
    );
    for name in ecsmesh_deploy::TLS_PARAMETERS {
        let p = parameter(&conf, &format!("/ecsmesh/kappa/tls/{name}")).await;
        assert_eq!(p.value(), Some(format!("the user's {name}").as_str()));
    }
    // The operator's directory: the token, their CA (from SSM) and settings.
    let dir = secrets.path().join("kappa");
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        "the user's ca.pem"
    );
    let settings = std::fs::read_to_string(dir.join("ecsmeshctl.yaml")).unwrap();
    assert!(
        settings.contains("token_file: admin-token")
            && settings.contains("ca: ca.pem")
            && !settings.contains("admin.pem"),
        "{settings}"
    );

    // User data: each parameter fetched (decrypted, the key owner-only)
    // before the agent starts, a timer to refresh them, and the agent's
    // mount and settings.
    let ud = launch_template_user_data(&conf, "ecsmesh-kappa").await;
    assert_eq!(ud, deployer.user_data().unwrap());
    assert!(!ud.contains("${"), "unrendered variable in\n{ud}");
    for (name, mode) in [
        ("ca.pem", "0640"),
        ("agent.pem", "0640"),
        ("agent-key.pem", "0600"),
        ("controller.pem", "0640"),
        ("controller-key.pem", "0600"),
    ] {
        assert!(
            ud.contains(&format!(
                "\nfetch '/ecsmesh/kappa/tls/{name}' '/etc/ecsmesh/tls/{name}' {mode}\n"
            )),
            "{name}: {ud}"
        );
    }
    for want in [
        "aws ssm get-parameter --region 'ca-central-1' --with-decryption",
        "--name \"$1\"",
        "install -d -m 0750 -o 65532 -g 65532 '/etc/ecsmesh/tls'",
        "chown 65532:65532",
        "mv -f \"$tmp\" \"$2\"",
        "OnUnitActiveSec=15min",
        "systemctl enable --now ecsmesh-fetch-secrets.timer",
        "    -v /etc/ecsmesh/tls:/etc/ecsmesh/tls:ro \\\n",
        "    -e ECSMESH_TLS_CA='/etc/ecsmesh/tls/ca.pem' \\\n",
        "    -e ECSMESH_TLS_CERT='/etc/ecsmesh/tls/agent.pem' \\\n",
        "    -e ECSMESH_TLS_KEY='/etc/ecsmesh/tls/agent-key.pem' \\\n",
        "    -e ECSMESH_CONTROLLER_SERVER_NAME='ecsmesh-controller' \\\n",
        "ECSMESH_CONTROLLER='https://127.0.0.1:4321'",
    ] {
        assert!(ud.contains(want), "{want:?} missing from\n{ud}");
    }
    let first_fetch = ud
        .find("\n/usr/local/sbin/ecsmesh-fetch-secrets\n")
        .unwrap();
    assert!(first_fetch < ud.find("docker run").unwrap());
    assert_bash_parses(&ud);

    // Task definitions: the host directory, mounted read-only, and the files.
    let ecsc = ecs::Client::new(&conf);
    for (family, envs) in [
        (
            "agent",
            vec![
                ("ECSMESH_CONTROLLER", "https://127.0.0.1:4321"),
                ("ECSMESH_CONTROLLER_SERVER_NAME", "ecsmesh-controller"),
                ("ECSMESH_TLS_CA", "/etc/ecsmesh/tls/ca.pem"),
                ("ECSMESH_TLS_CERT", "/etc/ecsmesh/tls/agent.pem"),
                ("ECSMESH_TLS_KEY", "/etc/ecsmesh/tls/agent-key.pem"),
            ],
        ),
        (
            "controller",
            vec![
                ("ECSMESH_ADMIN_IDENTITIES", "ecsmesh-admin"),
                ("ECSMESH_TLS_CA", "/etc/ecsmesh/tls/ca.pem"),
                ("ECSMESH_TLS_CERT", "/etc/ecsmesh/tls/controller.pem"),
                ("ECSMESH_TLS_KEY", "/etc/ecsmesh/tls/controller-key.pem"),
            ],
        ),
    ] {
        let td = task_definition(&ecsc, &format!("ecsmesh-kappa-{family}")).await;
        let vol = td
            .volumes()
            .iter()
            .find(|v| v.name() == Some("tls"))
            .unwrap();
        assert_eq!(vol.host().unwrap().source_path(), Some("/etc/ecsmesh/tls"));
        let c = &td.container_definitions()[0];
        let m = c
            .mount_points()
            .iter()
            .find(|m| m.source_volume() == Some("tls"))
            .unwrap();
        assert_eq!(
            (m.container_path(), m.read_only()),
            (Some("/etc/ecsmesh/tls"), Some(true))
        );
        let env: Vec<_> = c
            .environment()
            .iter()
            .map(|e| (e.name().unwrap(), e.value().unwrap()))
            .collect();
        for want in envs {
            assert!(env.contains(&want), "{family}: {want:?} not in {env:?}");
        }
        // With TLS the admin identity authenticates writes and the agent
        // certificate the stream: no opt-out.
        assert!(
            env.iter()
                .all(|(name, _)| *name != "ECSMESH_ALLOW_UNAUTHENTICATED_WRITES"
                    && *name != "ECSMESH_ALLOW_UNAUTHENTICATED_AGENTS"),
            "{family}: {env:?}"
        );
    }

    // Idempotent with TLS too; then turning it off (--insecure, no prefix)
    // is an update that removes all of it.
    assert!(!deployer.up(false).await.unwrap().changed());
    let mut off = config("kappa", region, &subnet, secrets.path());
    off.tls_ssm_prefix = None;
    off.insecure = true;
    let plain = Deployer::new(&conf, off).unwrap().plan().await.unwrap();
    let planned = changes(&plain);
    for want in [
        "update task-definition ecsmesh-kappa-controller",
        "update task-definition ecsmesh-kappa-agent",
        "update launch-template ecsmesh-kappa",
    ] {
        assert!(
            planned.contains(&want.to_owned()),
            "{want} not in {planned:#?}"
        );
    }
    // down: the tokens go; the user's parameters stay.
    let down = deployer.down(false).await.unwrap();
    assert!(
        down.steps
            .iter()
            .any(|s| s.name == "/ecsmesh/kappa/tls/ca.pem"
                && s.action == Action::Unchanged
                && s.detail.contains("not owned")),
        "{down:#?}"
    );
    let left = parameters(&conf, "/ecsmesh/kappa").await;
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(left.iter().all(|n| n.starts_with("/ecsmesh/kappa/tls/")));
}

/// The names of the parameters under `path`, sorted.
async fn parameters(conf: &SdkConfig, path: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut pages = ssm::Client::new(conf)
        .get_parameters_by_path()
        .path(path)
        .recursive(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        names.extend(
            page.unwrap()
                .parameters()
                .iter()
                .map(|p| p.name().unwrap().to_owned()),
        );
    }
    names.sort();
    names
}

/// One parameter, decrypted.
async fn parameter(conf: &SdkConfig, name: &str) -> ssm::types::Parameter {
    ssm::Client::new(conf)
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .unwrap()
        .parameter()
        .unwrap()
        .clone()
}

/// A parameter's value, decrypted.
async fn value(conf: &SdkConfig, name: &str) -> String {
    parameter(conf, name).await.value().unwrap().to_owned()
}

/// `cert` chains to `ca` and is valid now: as a server certificate for
/// `server_name`, or else as a client certificate.
fn assert_chains(ca: &str, cert: &str, server_name: Option<&str>) {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let roots = std::sync::Arc::new(roots);
    let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    match server_name {
        Some(name) => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .unwrap()
                .verify_server_cert(
                    &cert,
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap();
        }
        None => {
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .unwrap()
                .verify_client_cert(&cert, &[], UnixTime::now())
                .unwrap();
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn is_token(t: &str) -> bool {
    t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit())
}

/// The environment of a task definition's only container.
async fn environment(ecsc: &ecs::Client, family: &str) -> Vec<(String, String)> {
    task_definition(ecsc, family).await.container_definitions()[0]
        .environment()
        .iter()
        .map(|e| (e.name().unwrap().to_owned(), e.value().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn up_manages_the_secrets_by_default() {
    let region = "us-west-1";
    let (conf, subnet) = setup(region, 17).await;
    let secrets = tempfile::tempdir().unwrap();
    let deployer = Deployer::new(&conf, config("lambda", region, &subnet, secrets.path())).unwrap();
    let first = deployer.up(false).await.unwrap();

    // Seven SecureString parameters under the managed prefix, tagged ours.
    let names = parameters(&conf, "/ecsmesh/lambda").await;
    let mut want: Vec<String> = ecsmesh_deploy::TLS_PARAMETERS
        .iter()
        .map(|n| format!("/ecsmesh/lambda/tls/{n}"))
        .chain(["admin-token", "agent-token"].map(|n| format!("/ecsmesh/lambda/{n}")))
        .collect();
    want.sort();
    assert_eq!(names, want);
    let ssmc = ssm::Client::new(&conf);
    for name in &names {
        assert!(
            changes(&first).contains(&format!("create ssm-parameter {name}")),
            "{name}: {:#?}",
            changes(&first)
        );
        assert_eq!(
            parameter(&conf, name).await.r#type(),
            Some(&ssm::types::ParameterType::SecureString),
            "{name}"
        );
        let tags = ssmc
            .list_tags_for_resource()
            .resource_type(ssm::types::ResourceTypeForTagging::Parameter)
            .resource_id(name)
            .send()
            .await
            .unwrap();
        assert!(
            tags.tag_list()
                .iter()
                .any(|t| t.key() == OWNER_TAG && t.value() == "lambda"),
            "{name}: {tags:?}"
        );
    }

    // The certificates chain to the CA and carry the names agents verify.
    let ca = value(&conf, "/ecsmesh/lambda/tls/ca.pem").await;
    assert_chains(
        &ca,
        &value(&conf, "/ecsmesh/lambda/tls/controller.pem").await,
        Some("ecsmesh-controller"),
    );
    assert_chains(
        &ca,
        &value(&conf, "/ecsmesh/lambda/tls/agent.pem").await,
        Some("ecsmesh-agent"),
    );
    for key in ["agent-key.pem", "controller-key.pem"] {
        let k = value(&conf, &format!("/ecsmesh/lambda/tls/{key}")).await;
        assert!(k.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }
    let admin_token = value(&conf, "/ecsmesh/lambda/admin-token").await;
    let agent_token = value(&conf, "/ecsmesh/lambda/agent-token").await;
    assert!(is_token(&admin_token) && is_token(&agent_token));
    assert_ne!(admin_token, agent_token);

    // The operator's material: private, the same CA, the admin certificate,
    // the token, and a settings file ecsmeshctl reads.
    let dir = secrets.path().join("lambda");
    assert_eq!(mode(&dir), 0o700);
    for file in [
        "ca.pem",
        "ca-key.pem",
        "admin.pem",
        "admin-key.pem",
        "admin-token",
        "ecsmeshctl.yaml",
    ] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca);
    assert_chains(
        &ca,
        &std::fs::read_to_string(dir.join("admin.pem")).unwrap(),
        None,
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("admin-token")).unwrap(),
        admin_token
    );
    let settings = std::fs::read_to_string(dir.join("ecsmeshctl.yaml")).unwrap();
    for line in [
        "controller: \"https://127.0.0.1:4321\"",
        "token_file: admin-token",
        "  ca: ca.pem",
        "  cert: admin.pem",
        "  key: admin-key.pem",
        "  server_name: ecsmesh-controller",
    ] {
        assert!(settings.lines().any(|l| l == line), "{line:?}: {settings}");
    }

    // The controller: both token files, TLS, no opt-out; the admin token's
    // directory for it alone.
    let ecsc = ecs::Client::new(&conf);
    let env = environment(&ecsc, "ecsmesh-lambda-controller").await;
    for (name, value) in [
        (
            "ECSMESH_ADMIN_TOKEN_FILE",
            "/etc/ecsmesh/tokens/admin/admin-token",
        ),
        (
            "ECSMESH_AGENT_TOKEN_FILE",
            "/etc/ecsmesh/tokens/agent/agent-token",
        ),
        ("ECSMESH_TLS_CERT", "/etc/ecsmesh/tls/controller.pem"),
        ("ECSMESH_ADMIN_IDENTITIES", "ecsmesh-admin"),
    ] {
        assert!(
            env.contains(&(name.to_owned(), value.to_owned())),
            "{name} not in {env:?}"
        );
    }
    assert!(
        env.iter()
            .all(|(n, _)| !n.starts_with("ECSMESH_ALLOW_UNAUTHENTICATED")),
        "{env:?}"
    );
    let env = environment(&ecsc, "ecsmesh-lambda-agent").await;
    assert!(env.contains(&(
        "ECSMESH_CONTROLLER_TOKEN_FILE".to_owned(),
        "/etc/ecsmesh/tokens/agent/agent-token".to_owned()
    )));
    for (family, volumes) in [
        ("controller", vec!["admin-token", "agent-token"]),
        ("agent", vec!["agent-token"]),
    ] {
        let td = task_definition(&ecsc, &format!("ecsmesh-lambda-{family}")).await;
        let c = &td.container_definitions()[0];
        let mounted: Vec<_> = c
            .mount_points()
            .iter()
            .filter(|m| m.source_volume().unwrap().ends_with("-token"))
            .map(|m| {
                assert_eq!(m.read_only(), Some(true), "{family}: {m:?}");
                m.source_volume().unwrap()
            })
            .collect();
        assert_eq!(mounted, volumes, "{family}");
    }

    // User data: the tokens fetched (owner-only) beside the TLS files, the
    // agent given its token and not the admin's.
    let ud = launch_template_user_data(&conf, "ecsmesh-lambda").await;
    assert_eq!(ud, deployer.user_data().unwrap());
    for want in [
        "\nfetch '/ecsmesh/lambda/tls/ca.pem' '/etc/ecsmesh/tls/ca.pem' 0640\n",
        "\nfetch '/ecsmesh/lambda/agent-token' '/etc/ecsmesh/tokens/agent/agent-token' 0600\n",
        "\nfetch '/ecsmesh/lambda/admin-token' '/etc/ecsmesh/tokens/admin/admin-token' 0600\n",
        "install -d -m 0750 -o 65532 -g 65532 '/etc/ecsmesh/tokens/admin'",
        "    -v /etc/ecsmesh/tokens/agent:/etc/ecsmesh/tokens/agent:ro \\\n",
        "    -e ECSMESH_CONTROLLER_TOKEN_FILE='/etc/ecsmesh/tokens/agent/agent-token' \\\n",
        "ECSMESH_CONTROLLER='https://127.0.0.1:4321'",
    ] {
        assert!(ud.contains(want), "{want:?} missing from\n{ud}");
    }
    let docker_run = &ud[ud.find("docker run").unwrap()..];
    assert!(!docker_run.contains("tokens/admin"), "{docker_run}");
    assert_bash_parses(&ud);

    // A second up changes nothing: the same tokens, the files untouched.
    let settings_before = std::fs::metadata(dir.join("ecsmeshctl.yaml"))
        .unwrap()
        .modified()
        .unwrap();
    let second = deployer.up(false).await.unwrap();
    assert!(!second.changed(), "{:#?}", changes(&second));
    assert!(
        second
            .steps
            .iter()
            .filter(|s| s.kind == "ssm-parameter")
            .all(|s| s.action == Action::Unchanged && s.detail == "kept"),
        "{second:#?}"
    );
    assert_eq!(
        value(&conf, "/ecsmesh/lambda/admin-token").await,
        admin_token
    );
    assert_eq!(
        value(&conf, "/ecsmesh/lambda/agent-token").await,
        agent_token
    );
    assert_eq!(value(&conf, "/ecsmesh/lambda/tls/ca.pem").await, ca);
    assert_eq!(
        std::fs::metadata(dir.join("ecsmeshctl.yaml"))
            .unwrap()
            .modified()
            .unwrap(),
        settings_before
    );

    // down: a dry run lists every parameter and deletes none; then all go.
    let dry = deployer.down(true).await.unwrap();
    for name in &names {
        assert!(
            changes(&dry).contains(&format!("delete ssm-parameter {name}")),
            "{name}"
        );
    }
    assert_eq!(parameters(&conf, "/ecsmesh/lambda").await, names);
    deployer.down(false).await.unwrap();
    assert!(parameters(&conf, "/ecsmesh/lambda").await.is_empty());
    // The operator's copy stays (it holds the CA's key).
    assert!(dir.join("ca-key.pem").exists());
}

#[tokio::test]
async fn insecure_creates_no_parameters_and_keeps_the_opt_outs() {
    let region = "ap-northeast-1";
    let (conf, subnet) = setup(region, 18).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("mu", region, &subnet, secrets.path());
    cfg.insecure = true;
    let deployer = Deployer::new(&conf, cfg).unwrap();
    let report = deployer.up(false).await.unwrap();
    assert!(
        report.steps.iter().all(|s| s.kind != "ssm-parameter"),
        "{report:#?}"
    );
    assert!(parameters(&conf, "/ecsmesh/mu").await.is_empty());
    assert!(!secrets.path().join("mu").exists());

    // Today's opt-outs, and nothing of TLS or tokens anywhere.
    let ecsc = ecs::Client::new(&conf);
    let env = environment(&ecsc, "ecsmesh-mu-controller").await;
    for name in [
        "ECSMESH_ALLOW_UNAUTHENTICATED_WRITES",
        "ECSMESH_ALLOW_UNAUTHENTICATED_AGENTS",
    ] {
        assert!(
            env.contains(&(name.to_owned(), "true".to_owned())),
            "{env:?}"
        );
    }
    for family in ["controller", "agent"] {
        let td = task_definition(&ecsc, &format!("ecsmesh-mu-{family}")).await;
        let c = &td.container_definitions()[0];
        assert!(
            td.volumes().len() == 1
                && c.mount_points().len() == 1
                && c.environment().iter().all(|e| {
                    let n = e.name().unwrap();
                    !n.contains("TLS") && !n.contains("TOKEN")
                }),
            "{family}: {td:#?}"
        );
    }
    let ud = launch_template_user_data(&conf, "ecsmesh-mu").await;
    assert!(
        !ud.to_lowercase().contains("tls") && !ud.contains("ssm") && !ud.contains("token/"),
        "{ud}"
    );
    assert!(ud.contains("ECSMESH_CONTROLLER='http://127.0.0.1:4321'"));
    assert!(!deployer.up(false).await.unwrap().changed());
    deployer.down(false).await.unwrap();
}

#[tokio::test]
async fn existing_secrets_are_never_regenerated() {
    let region = "eu-west-3";
    let (conf, subnet) = setup(region, 19).await;
    let (first_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = config("nu", region, &subnet, first_dir.path());
    let deployer = Deployer::new(&conf, cfg.clone()).unwrap();
    deployer.up(false).await.unwrap();
    let admin_token = value(&conf, "/ecsmesh/nu/admin-token").await;
    let agent_pem = value(&conf, "/ecsmesh/nu/tls/agent.pem").await;

    // From another machine (no operator directory there): the parameters
    // are kept, and what is missing locally is reported, not made.
    let elsewhere = Deployer::new(&conf, config("nu", region, &subnet, other_dir.path())).unwrap();
    let report = elsewhere.up(false).await.unwrap();
    assert!(!report.changed(), "{:#?}", changes(&report));
    let step = report
        .steps
        .iter()
        .find(|s| s.kind == "operator-secrets")
        .unwrap();
    assert_eq!(step.action, Action::Absent);
    for file in ["admin-token", "ca.pem", "ca-key.pem", "admin.pem"] {
        assert!(step.detail.contains(file), "{file}: {}", step.detail);
    }
    assert!(!other_dir.path().join("nu").exists());
    assert_eq!(value(&conf, "/ecsmesh/nu/admin-token").await, admin_token);

    // An up cut short (two parameters missing): the certificate comes back
    // from the operator's files, the token is made anew (and saved there).
    let ssmc = ssm::Client::new(&conf);
    for name in ["/ecsmesh/nu/tls/agent.pem", "/ecsmesh/nu/admin-token"] {
        ssmc.delete_parameter().name(name).send().await.unwrap();
    }
    // Not from a directory that does not hold them.
    let err = elsewhere.up(false).await.unwrap_err().to_string();
    assert!(
        err.contains("only some of the mesh's TLS parameters"),
        "{err}"
    );
    let report = deployer.up(false).await.unwrap();
    let dir = first_dir.path().join("nu");
    assert_eq!(
        changes(&report),
        [
            "create ssm-parameter /ecsmesh/nu/tls/agent.pem".to_owned(),
            "create ssm-parameter /ecsmesh/nu/admin-token".to_owned(),
            format!("create operator-secrets {}", dir.display()),
        ]
    );
    assert_eq!(value(&conf, "/ecsmesh/nu/tls/agent.pem").await, agent_pem);
    let new_token = value(&conf, "/ecsmesh/nu/admin-token").await;
    assert!(is_token(&new_token) && new_token != admin_token);
    assert_eq!(
        std::fs::read_to_string(first_dir.path().join("nu/admin-token")).unwrap(),
        new_token
    );
    deployer.down(false).await.unwrap();
    assert!(parameters(&conf, "/ecsmesh/nu").await.is_empty());
}

/// A queue's URL and attributes (all of them).
async fn queue(
    conf: &SdkConfig,
    name: &str,
) -> (String, std::collections::HashMap<String, String>) {
    let sqsc = sqs::Client::new(conf);
    let url = sqsc
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let attrs = sqsc
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .collect();
    (url, attrs)
}

/// Whether a queue of that name exists.
async fn queue_exists(conf: &SdkConfig, name: &str) -> bool {
    sqs::Client::new(conf)
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .is_ok()
}

/// The changes of a report that concern the events plumbing.
fn event_changes(r: &Report) -> Vec<String> {
    changes(r)
        .into_iter()
        .filter(|c| c.contains(" sqs-") || c.contains(" event-"))
        .collect()
}

#[tokio::test]
async fn up_makes_the_ecs_events_queue_rule_and_policy_and_down_removes_them() {
    let region = "ap-southeast-1";
    let (conf, subnet) = setup(region, 20).await;
    let secrets = tempfile::tempdir().unwrap();
    let deployer = Deployer::new(&conf, config("xi", region, &subnet, secrets.path())).unwrap();
    let first = deployer.up(false).await.unwrap();
    assert_eq!(
        event_changes(&first),
        [
            "create sqs-queue ecsmesh-xi-events-dlq",
            "create sqs-queue ecsmesh-xi-events",
            "create event-rule ecsmesh-xi-ecs-events",
            "create event-target ecsmesh-xi-ecs-events",
            "create sqs-queue-policy ecsmesh-xi-events",
        ]
    );

    // The queues: SSE, retention, visibility, redrive to the DLQ after 5.
    let (dlq_url, dlq) = queue(&conf, "ecsmesh-xi-events-dlq").await;
    assert_eq!(dlq["SqsManagedSseEnabled"], "true");
    assert_eq!(dlq["MessageRetentionPeriod"], "1209600");
    let (url, q) = queue(&conf, "ecsmesh-xi-events").await;
    assert_eq!(q["SqsManagedSseEnabled"], "true");
    assert_eq!(q["MessageRetentionPeriod"], "86400");
    assert_eq!(q["VisibilityTimeout"], "60");
    let redrive: serde_json::Value = serde_json::from_str(&q["RedrivePolicy"]).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], dlq["QueueArn"].as_str());
    assert_eq!(redrive["maxReceiveCount"], 5);
    let sqsc = sqs::Client::new(&conf);
    for u in [&url, &dlq_url] {
        let tags = sqsc.list_queue_tags().queue_url(u).send().await.unwrap();
        assert_eq!(
            tags.tags().unwrap().get(OWNER_TAG).map(String::as_str),
            Some("xi"),
            "{u}"
        );
    }

    // The rule: this cluster's (its ARN as ECS gives it) two kinds of change.
    let cluster_arn = ecs::Client::new(&conf)
        .describe_clusters()
        .clusters("xi")
        .send()
        .await
        .unwrap()
        .clusters()[0]
        .cluster_arn()
        .unwrap()
        .to_owned();
    let evc = eventbridge::Client::new(&conf);
    let rule = evc
        .describe_rule()
        .name("ecsmesh-xi-ecs-events")
        .send()
        .await
        .unwrap();
    assert_eq!(rule.state(), Some(&eventbridge::types::RuleState::Enabled));
    let pattern: serde_json::Value = serde_json::from_str(rule.event_pattern().unwrap()).unwrap();
    assert_eq!(
        pattern,
        serde_json::json!({
            "source": ["aws.ecs"],
            "detail-type": ["ECS Task State Change", "ECS Container Instance State Change"],
            "detail": {"clusterArn": [cluster_arn]},
        })
    );
    let rule_arn = rule.arn().unwrap();
    let tags = evc
        .list_tags_for_resource()
        .resource_arn(rule_arn)
        .send()
        .await
        .unwrap();
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.key() == OWNER_TAG && t.value() == "xi"),
        "{tags:?}"
    );
    let targets = evc
        .list_targets_by_rule()
        .rule("ecsmesh-xi-ecs-events")
        .send()
        .await
        .unwrap();
    let arns: Vec<&str> = targets
        .targets()
        .iter()
        .map(eventbridge::types::Target::arn)
        .collect();
    assert_eq!(arns, [q["QueueArn"].as_str()]);

    // The policy: EventBridge may send, for this rule only.
    let policy: serde_json::Value = serde_json::from_str(&q["Policy"]).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1, "{policy:#}");
    let st = &statements[0];
    assert_eq!(st["Effect"], "Allow");
    assert_eq!(st["Principal"]["Service"], "events.amazonaws.com");
    assert_eq!(st["Action"], "sqs:SendMessage");
    assert_eq!(st["Resource"], q["QueueArn"].as_str());
    assert_eq!(st["Condition"]["ArnEquals"]["aws:SourceArn"], rule_arn);

    // The controller follows the queue.
    let ecsc = ecs::Client::new(&conf);
    let env = environment(&ecsc, "ecsmesh-xi-controller").await;
    assert!(
        env.contains(&("ECSMESH_ECS_EVENTS_QUEUE_URL".to_owned(), url.clone())),
        "{env:?}"
    );

    // Events flow: an instance joining this cluster reaches the queue, one
    // joining another cluster does not.
    let g = auto_scaling_group(&asg::Client::new(&conf), "ecsmesh-xi").await;
    let iid = g.instances()[0].instance_id().unwrap().to_owned();
    ecsc.create_cluster()
        .cluster_name("xi-other")
        .send()
        .await
        .unwrap();
    for cluster in ["xi-other", "xi"] {
        ecsc.register_container_instance()
            .cluster(cluster)
            .instance_identity_document(format!(r#"{{"instanceId": "{iid}"}}"#))
            .send()
            .await
            .unwrap();
    }
    let got = sqsc
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let kinds: Vec<String> = got
        .messages()
        .iter()
        .map(|m| {
            let event: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            assert_eq!(
                event["detail"]["clusterArn"],
                cluster_arn.as_str(),
                "{event:#}"
            );
            event["detail-type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| k == "ECS Container Instance State Change"),
        "{kinds:?}"
    );

    // A second up changes nothing and says so.
    let second = deployer.up(false).await.unwrap();
    assert!(!second.changed(), "{:#?}", changes(&second));
    let kept: Vec<_> = second
        .steps
        .iter()
        .filter(|s| s.kind.starts_with("sqs-") || s.kind.starts_with("event-"))
        .collect();
    assert_eq!(kept.len(), 5, "{kept:#?}");
    assert!(kept.iter().all(|s| s.action == Action::Unchanged));
    assert!(!deployer.status().await.unwrap().changed());

    // down: a dry run lists them and deletes nothing; then they all go.
    let dry = deployer.down(true).await.unwrap();
    let planned = event_changes(&dry);
    assert_eq!(
        planned,
        [
            "delete event-target ecsmesh-xi-ecs-events",
            "delete event-rule ecsmesh-xi-ecs-events",
            "delete sqs-queue ecsmesh-xi-events",
            "delete sqs-queue ecsmesh-xi-events-dlq",
        ]
    );
    assert!(queue_exists(&conf, "ecsmesh-xi-events").await);
    let down = deployer.down(false).await.unwrap();
    assert_eq!(event_changes(&down), planned);
    assert!(!queue_exists(&conf, "ecsmesh-xi-events").await);
    assert!(!queue_exists(&conf, "ecsmesh-xi-events-dlq").await);
    assert!(
        evc.describe_rule()
            .name("ecsmesh-xi-ecs-events")
            .send()
            .await
            .is_err()
    );
    let left = owned(&conf, "xi").await;
    assert!(left.is_empty(), "left behind: {left:#?}");
    let again = deployer.down(false).await.unwrap();
    assert!(event_changes(&again).is_empty(), "{again:#?}");
}

#[tokio::test]
async fn up_puts_drifted_events_plumbing_right() {
    let region = "ap-southeast-2";
    let (conf, subnet) = setup(region, 21).await;
    let secrets = tempfile::tempdir().unwrap();
    let deployer =
        Deployer::new(&conf, config("omicron", region, &subnet, secrets.path())).unwrap();
    deployer.up(false).await.unwrap();
    let (url, before) = queue(&conf, "ecsmesh-omicron-events").await;
    let evc = eventbridge::Client::new(&conf);
    let rule = "ecsmesh-omicron-ecs-events";
    let pattern = evc
        .describe_rule()
        .name(rule)
        .send()
        .await
        .unwrap()
        .event_pattern()
        .unwrap()
        .to_owned();

    // Someone widens the pattern, removes the target, shortens the
    // visibility timeout and drops the policy.
    evc.put_rule()
        .name(rule)
        .event_pattern(r#"{"source": ["aws.ecs"]}"#)
        .send()
        .await
        .unwrap();
    evc.remove_targets()
        .rule(rule)
        .ids("ecsmesh-events-queue")
        .send()
        .await
        .unwrap();
    sqs::Client::new(&conf)
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(sqs::types::QueueAttributeName::VisibilityTimeout, "30")
        .attributes(sqs::types::QueueAttributeName::Policy, "")
        .send()
        .await
        .unwrap();

    let plan = deployer.plan().await.unwrap();
    assert_eq!(
        event_changes(&plan),
        [
            "update sqs-queue ecsmesh-omicron-events",
            "update event-rule ecsmesh-omicron-ecs-events",
            "create event-target ecsmesh-omicron-ecs-events",
            "create sqs-queue-policy ecsmesh-omicron-events",
        ]
    );
    let step = |r: &Report, kind: &str| {
        r.steps
            .iter()
            .find(|s| s.kind == kind && s.action == Action::Update)
            .unwrap()
            .detail
            .clone()
    };
    assert_eq!(step(&plan, "sqs-queue"), "VisibilityTimeout");
    assert_eq!(step(&plan, "event-rule"), "event pattern");
    let up = deployer.up(false).await.unwrap();
    assert_eq!(changes(&up), changes(&plan), "the plan is what up does");

    // Back as it was, and stable.
    let (_, after) = queue(&conf, "ecsmesh-omicron-events").await;
    for attr in [
        "VisibilityTimeout",
        "Policy",
        "RedrivePolicy",
        "SqsManagedSseEnabled",
    ] {
        assert_eq!(after.get(attr), before.get(attr), "{attr}");
    }
    let now = evc.describe_rule().name(rule).send().await.unwrap();
    assert_eq!(now.event_pattern(), Some(pattern.as_str()));
    let targets = evc.list_targets_by_rule().rule(rule).send().await.unwrap();
    assert_eq!(targets.targets()[0].arn(), before["QueueArn"].as_str());
    let again = deployer.up(false).await.unwrap();
    assert!(!again.changed(), "{:#?}", changes(&again));
    deployer.down(false).await.unwrap();
}

#[tokio::test]
async fn no_events_creates_no_queue_or_rule_and_the_controller_polls() {
    let region = "ap-northeast-2";
    let (conf, subnet) = setup(region, 22).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("pi", region, &subnet, secrets.path());
    cfg.ecs_events = false;
    let deployer = Deployer::new(&conf, cfg.clone()).unwrap();
    let plan = deployer.plan().await.unwrap();
    let report = deployer.up(false).await.unwrap();
    for r in [&plan, &report] {
        assert!(
            r.steps
                .iter()
                .all(|s| !s.kind.starts_with("sqs-") && !s.kind.starts_with("event-")),
            "{r:#?}"
        );
    }
    assert!(!queue_exists(&conf, "ecsmesh-pi-events").await);
    assert!(!queue_exists(&conf, "ecsmesh-pi-events-dlq").await);
    let rules = eventbridge::Client::new(&conf)
        .list_rules()
        .name_prefix("ecsmesh-pi")
        .send()
        .await
        .unwrap();
    assert!(rules.rules().is_empty(), "{rules:?}");
    let env = environment(&ecs::Client::new(&conf), "ecsmesh-pi-controller").await;
    assert!(
        env.iter().all(|(n, _)| n != "ECSMESH_ECS_EVENTS_QUEUE_URL"),
        "{env:?}"
    );
    assert!(!deployer.up(false).await.unwrap().changed());

    // Turned on later: the queue appears and the controller gets a new
    // revision; `down` removes it whatever its own flag says.
    cfg.ecs_events = true;
    let on = Deployer::new(&conf, cfg).unwrap().up(false).await.unwrap();
    assert!(
        changes(&on).contains(&"update task-definition ecsmesh-pi-controller".to_owned()),
        "{:#?}",
        changes(&on)
    );
    assert!(queue_exists(&conf, "ecsmesh-pi-events").await);
    let down = deployer.down(false).await.unwrap();
    assert!(
        changes(&down).contains(&"delete sqs-queue ecsmesh-pi-events".to_owned()),
        "{:#?}",
        changes(&down)
    );
    let left = owned(&conf, "pi").await;
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Issue #17: the dtab store's table (on-demand, `pk` S, point-in-time
/// recovery, tagged), the controller told to use it, two replicas allowed
/// with it; drift put right, another key schema refused, `down` deletes it.
#[tokio::test]
async fn up_makes_the_dynamodb_table_and_the_controller_uses_it() {
    use aws_sdk_dynamodb as ddb;
    let region = "eu-south-1";
    let (conf, subnet) = setup(region, 23).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("rho", region, &subnet, secrets.path());
    cfg.controller_replicas = 2;
    (cfg.min_size, cfg.desired_capacity, cfg.max_size) = (2, 2, 2);
    cfg.controller_address = "http://controller.internal:4321".to_owned();
    let d = Deployer::new(&conf, cfg.clone()).unwrap();
    let first = d.up(false).await.unwrap();
    assert!(
        changes(&first).contains(&"create dynamodb-table ecsmesh-rho-dtabs".to_owned()),
        "{:?}",
        changes(&first)
    );
    let ddbc = ddb::Client::new(&conf);
    let table = ddbc
        .describe_table()
        .table_name("ecsmesh-rho-dtabs")
        .send()
        .await
        .unwrap()
        .table()
        .unwrap()
        .clone();
    assert_eq!(
        table.billing_mode_summary().unwrap().billing_mode(),
        Some(&ddb::types::BillingMode::PayPerRequest)
    );
    let key = table.key_schema();
    assert_eq!(key.len(), 1);
    assert_eq!(
        (key[0].attribute_name(), key[0].key_type()),
        ("pk", &ddb::types::KeyType::Hash)
    );
    let pitr = |ddbc: ddb::Client| async move {
        ddbc.describe_continuous_backups()
            .table_name("ecsmesh-rho-dtabs")
            .send()
            .await
            .unwrap()
            .continuous_backups_description()
            .unwrap()
            .point_in_time_recovery_description()
            .unwrap()
            .point_in_time_recovery_status()
            .cloned()
    };
    assert_eq!(
        pitr(ddbc.clone()).await,
        Some(ddb::types::PointInTimeRecoveryStatus::Enabled)
    );
    let tags = ddbc
        .list_tags_of_resource()
        .resource_arn(table.table_arn().unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.key() == OWNER_TAG && t.value() == "rho")
    );
    let ecsc = ecs::Client::new(&conf);
    let env = environment(&ecsc, "ecsmesh-rho-controller").await;
    assert!(env.contains(&("ECSMESH_STORE".to_owned(), "dynamodb".to_owned())));
    assert!(env.contains(&(
        "ECSMESH_DYNAMODB_TABLE".to_owned(),
        "ecsmesh-rho-dtabs".to_owned()
    )));
    assert_eq!(
        service(&ecsc, "rho", "ecsmesh-controller")
            .await
            .desired_count(),
        2
    );
    assert!(changes(&d.up(false).await.unwrap()).is_empty());

    // Drift: recovery turned off is turned on again.
    ddbc.update_continuous_backups()
        .table_name("ecsmesh-rho-dtabs")
        .point_in_time_recovery_specification(
            ddb::types::PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(false)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let fixed = d.up(false).await.unwrap();
    assert_eq!(
        changes(&fixed),
        ["update dynamodb-table ecsmesh-rho-dtabs"],
        "{fixed:?}"
    );
    assert_eq!(
        pitr(ddbc.clone()).await,
        Some(ddb::types::PointInTimeRecoveryStatus::Enabled)
    );

    // down deletes it with the rest; with another key schema up refuses.
    let down = d.down(false).await.unwrap();
    assert!(changes(&down).contains(&"delete dynamodb-table ecsmesh-rho-dtabs".to_owned()));
    assert!(
        ddbc.describe_table()
            .table_name("ecsmesh-rho-dtabs")
            .send()
            .await
            .is_err()
    );
    ddbc.create_table()
        .table_name("ecsmesh-rho-dtabs")
        .billing_mode(ddb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            ddb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ddb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            ddb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(ddb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = d.up(true).await.unwrap_err().to_string();
    assert!(err.contains("key schema"), "{err}");
    // Not ours: down leaves it.
    let down = d.down(false).await.unwrap();
    assert!(!changes(&down).iter().any(|c| c.contains("dynamodb-table")));
}

/// Issue #16 (nothing but AWS credentials): without `--instance-profile`,
/// `up` makes the instances' role (trusted by EC2, the agent's and the
/// controller's policies) and profile, and the launch template names it; an
/// edited policy is put back; `down` removes both. With a profile given,
/// none of it.
#[tokio::test]
async fn up_makes_the_instance_role_unless_one_is_given() {
    use aws_sdk_iam as iam;
    let region = "ap-east-1";
    let (conf, subnet) = setup(region, 24).await;
    let secrets = tempfile::tempdir().unwrap();
    let cfg = config("sigma", region, &subnet, secrets.path());
    let d = Deployer::new(&conf, cfg.clone()).unwrap();
    let first = d.up(false).await.unwrap();
    for c in [
        "create iam-role ecsmesh-sigma-instance",
        "create iam-role-policy ecsmesh-sigma-instance/ecsmesh-instance",
        "create instance-profile ecsmesh-sigma-instance",
        "create iam-role ecsmesh-sigma-controller",
        "create iam-role-policy ecsmesh-sigma-controller/ecsmesh-controller",
    ] {
        assert!(
            changes(&first).contains(&c.to_owned()),
            "{c}: {:?}",
            changes(&first)
        );
    }
    let iamc = iam::Client::new(&conf);
    let role = iamc
        .get_role()
        .role_name("ecsmesh-sigma-instance")
        .send()
        .await
        .unwrap();
    let role = role.role().unwrap();
    assert!(
        role.tags()
            .iter()
            .any(|t| t.key() == OWNER_TAG && t.value() == "sigma")
    );
    let trust = role.assume_role_policy_document().unwrap();
    assert!(trust.contains("ec2.amazonaws.com"), "{trust}");
    let policies = iamc
        .list_role_policies()
        .role_name("ecsmesh-sigma-instance")
        .send()
        .await
        .unwrap();
    // The instances get the ECS agent's policy only: the controller's
    // rights are its task's.
    assert_eq!(policies.policy_names(), ["ecsmesh-instance"]);
    let controller = iamc
        .get_role()
        .role_name("ecsmesh-sigma-controller")
        .send()
        .await
        .unwrap();
    let controller = controller.role().unwrap();
    assert!(
        controller
            .assume_role_policy_document()
            .unwrap()
            .contains("ecs-tasks.amazonaws.com")
    );
    let policies = iamc
        .list_role_policies()
        .role_name("ecsmesh-sigma-controller")
        .send()
        .await
        .unwrap();
    assert_eq!(policies.policy_names(), ["ecsmesh-controller"]);
    let doc = iamc
        .get_role_policy()
        .role_name("ecsmesh-sigma-controller")
        .policy_name("ecsmesh-controller")
        .send()
        .await
        .unwrap();
    // This cluster's table and queue, no other.
    let doc = doc
        .policy_document()
        .replace("%3A", ":")
        .replace("%2F", "/");
    assert!(
        doc.contains("table/ecsmesh-sigma-dtabs") && doc.contains(":ecsmesh-sigma-events"),
        "{doc}"
    );
    assert!(!doc.contains("ecsmesh-*"), "{doc}");
    let ecsc = ecs::Client::new(&conf);
    let td = task_definition(&ecsc, "ecsmesh-sigma-controller").await;
    assert_eq!(td.task_role_arn(), Some(controller.arn()));
    assert!(
        task_definition(&ecsc, "ecsmesh-sigma-agent")
            .await
            .task_role_arn()
            .is_none()
    );
    let user_data = launch_template_user_data(&conf, "ecsmesh-sigma").await;
    assert!(user_data.contains("ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true"));
    let profile = iamc
        .get_instance_profile()
        .instance_profile_name("ecsmesh-sigma-instance")
        .send()
        .await
        .unwrap();
    let roles: Vec<&str> = profile
        .instance_profile()
        .unwrap()
        .roles()
        .iter()
        .map(aws_sdk_iam::types::Role::role_name)
        .collect();
    assert_eq!(roles, ["ecsmesh-sigma-instance"]);
    let ec2c = ec2::Client::new(&conf);
    let versions = ec2c
        .describe_launch_template_versions()
        .launch_template_name("ecsmesh-sigma")
        .versions("$Latest")
        .send()
        .await
        .unwrap();
    let data = versions.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(
        data.iam_instance_profile().and_then(|p| p.name()),
        Some("ecsmesh-sigma-instance")
    );
    assert!(changes(&d.up(false).await.unwrap()).is_empty());

    // An edited policy is put back.
    iamc.put_role_policy()
        .role_name("ecsmesh-sigma-controller")
        .policy_name("ecsmesh-controller")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        changes(&d.up(false).await.unwrap()),
        ["update iam-role-policy ecsmesh-sigma-controller/ecsmesh-controller"]
    );

    let down = d.down(false).await.unwrap();
    assert!(changes(&down).contains(&"delete iam-role ecsmesh-sigma-instance".to_owned()));
    assert!(changes(&down).contains(&"delete iam-role ecsmesh-sigma-controller".to_owned()));
    assert!(
        iamc.get_role()
            .role_name("ecsmesh-sigma-controller")
            .send()
            .await
            .is_err()
    );
    assert!(
        iamc.get_role()
            .role_name("ecsmesh-sigma-instance")
            .send()
            .await
            .is_err()
    );
    assert!(
        iamc.get_instance_profile()
            .instance_profile_name("ecsmesh-sigma-instance")
            .send()
            .await
            .is_err()
    );

    // The user's own profile: no role made.
    let mut own = cfg;
    own.instance_profile = Some("team-instances".to_owned());
    let report = Deployer::new(&conf, own).unwrap().up(false).await.unwrap();
    assert!(
        !report.steps.iter().any(|s| s.kind.starts_with("iam-")),
        "{:?}",
        changes(&report)
    );
    assert!(
        iamc.get_role()
            .role_name("ecsmesh-sigma-instance")
            .send()
            .await
            .is_err()
    );
}

/// Issue #17: by default two controller replicas on distinct instances,
/// behind an internal Network Load Balancer `up` makes (target group with
/// client IP preservation off, cross-zone on, a TCP listener on 4321) that
/// the service registers in and the agents dial; `down` removes it.
#[tokio::test]
async fn two_replicas_by_default_behind_a_load_balancer_up_makes() {
    use aws_sdk_elasticloadbalancingv2 as elb;
    let region = "eu-north-1";
    let (conf, subnet) = setup(region, 25).await;
    let secrets = tempfile::tempdir().unwrap();
    let mut cfg = config("tau", region, &subnet, secrets.path());
    let defaults = DeployConfig::new("tau", region);
    cfg.controller_replicas = defaults.controller_replicas;
    (cfg.min_size, cfg.desired_capacity, cfg.max_size) = (
        defaults.min_size,
        defaults.desired_capacity,
        defaults.max_size,
    );
    assert_eq!((cfg.controller_replicas, cfg.max_size), (2, 2));
    let d = Deployer::new(&conf, cfg).unwrap();
    let plan = d.up(true).await.unwrap();
    assert!(changes(&plan).contains(&"create load-balancer ecsmesh-tau".to_owned()));
    // Not known before the balancer exists.
    assert_eq!(plan.controller_address, None);
    let first = d.up(false).await.unwrap();
    for c in [
        "create load-balancer ecsmesh-tau",
        "create target-group ecsmesh-tau",
        "create lb-listener ecsmesh-tau",
    ] {
        assert!(
            changes(&first).contains(&c.to_owned()),
            "{c}: {:?}",
            changes(&first)
        );
    }
    let elbc = elb::Client::new(&conf);
    let lbs = elbc
        .describe_load_balancers()
        .names("ecsmesh-tau")
        .send()
        .await
        .unwrap();
    let lb = &lbs.load_balancers()[0];
    assert_eq!(
        lb.r#type(),
        Some(&elb::types::LoadBalancerTypeEnum::Network)
    );
    assert_eq!(
        lb.scheme(),
        Some(&elb::types::LoadBalancerSchemeEnum::Internal)
    );
    let lb_arn = lb.load_balancer_arn().unwrap();
    let dns = lb.dns_name().unwrap().to_owned();
    let tgs = elbc
        .describe_target_groups()
        .names("ecsmesh-tau")
        .send()
        .await
        .unwrap();
    let tg = &tgs.target_groups()[0];
    let tg_arn = tg.target_group_arn().unwrap().to_owned();
    assert_eq!(tg.protocol(), Some(&elb::types::ProtocolEnum::Tcp));
    assert_eq!(tg.port(), Some(4321));
    assert_eq!(tg.health_check_path(), Some("/ready"));
    assert_eq!(tg.health_check_port(), Some("9991"));
    let attrs = elbc
        .describe_target_group_attributes()
        .target_group_arn(&tg_arn)
        .send()
        .await
        .unwrap();
    assert!(
        attrs
            .attributes()
            .iter()
            .any(|a| a.key() == Some("preserve_client_ip.enabled") && a.value() == Some("false"))
    );
    let listeners = elbc
        .describe_listeners()
        .load_balancer_arn(lb_arn)
        .send()
        .await
        .unwrap();
    let listener = &listeners.listeners()[0];
    assert_eq!(listener.port(), Some(4321));
    assert_eq!(
        listener.default_actions()[0].target_group_arn(),
        Some(tg_arn.as_str())
    );
    // The controller's service: two replicas, registered in the group.
    let ecsc = ecs::Client::new(&conf);
    let svc = service(&ecsc, "tau", "ecsmesh-controller").await;
    assert_eq!(svc.desired_count(), 2);
    assert_eq!(
        svc.load_balancers()[0].target_group_arn(),
        Some(tg_arn.as_str())
    );
    // The agents dial the balancer (https: TLS by default).
    let user_data = launch_template_user_data(&conf, "ecsmesh-tau").await;
    assert!(
        user_data.contains(&format!("ECSMESH_CONTROLLER='https://{dns}:4321'")),
        "{user_data}"
    );
    // ecsmeshctl too: `up` reports the address and the settings file names it.
    let address = format!("https://{dns}:4321");
    assert_eq!(first.controller_address.as_deref(), Some(address.as_str()));
    let dir = secrets.path().join("tau");
    let path = dir.join("ecsmeshctl.yaml");
    let settings = std::fs::read_to_string(&path).unwrap();
    let line = format!("controller: \"{address}\"");
    assert!(settings.lines().any(|l| l == line), "{settings}");
    assert!(changes(&d.up(false).await.unwrap()).is_empty());
    // A settings file an older `up` wrote (loopback) gets the balancer's
    // address; the rest of it is left as it is.
    let older = settings.replace(&line, "controller: \"https://127.0.0.1:4321\"");
    std::fs::write(&path, format!("{older}timeout: 5s\n")).unwrap();
    let again = d.up(false).await.unwrap();
    assert_eq!(
        changes(&again),
        [format!("update operator-secrets {}", dir.display())]
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{settings}timeout: 5s\n")
    );
    assert_eq!(mode(&path), 0o600);
    assert!(changes(&d.up(false).await.unwrap()).is_empty());

    let down = d.down(false).await.unwrap();
    for c in [
        "delete load-balancer ecsmesh-tau",
        "delete target-group ecsmesh-tau",
    ] {
        assert!(
            changes(&down).contains(&c.to_owned()),
            "{c}: {:?}",
            changes(&down)
        );
    }
    assert!(
        elbc.describe_load_balancers()
            .names("ecsmesh-tau")
            .send()
            .await
            .is_err()
    );
}
