//! `up` / `status` / `down` / `--dry-run` against the patched moto, read back
//! through the SDK. Each test has its own region and a loopback VPC
//! (127.0.0.0/16, subnet 127.0.N.0/24): nothing leaves 127/8.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    clippy::assigning_clones
)]

use aws_config::SdkConfig;
use aws_sdk_autoscaling as asg;
use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;
use base64::Engine as _;
use ecsmesh_deploy::{Action, AgentPlacement, DeployConfig, Deployer, OWNER_TAG, Report};
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

fn config(cluster: &str, region: &str, subnet: &str) -> DeployConfig {
    let mut cfg = DeployConfig::new(cluster, region);
    cfg.subnets = vec![subnet.to_owned()];
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
/// configurations, our name), as a sorted list of descriptions.
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
    out.sort();
    out
}

#[tokio::test]
async fn up_creates_everything_with_the_right_settings_and_is_idempotent() {
    let region = "eu-west-1";
    let (conf, subnet) = setup(region, 11).await;
    let mut cfg = config("alpha", region, &subnet);
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
    assert!(user_data.contains("ECSMESH_CONTROLLER='http://127.0.0.1:4321'"));
    assert!(user_data.contains("if [ \"true\" = \"true\" ]"));
    assert!(user_data.contains("X-aws-ec2-metadata-token-ttl-seconds"));
    assert!(
        !user_data.contains("${"),
        "unrendered variable in\n{user_data}"
    );
    // Without --tls-ssm-prefix nothing of TLS.
    assert!(
        !user_data.to_lowercase().contains("tls") && !user_data.contains("ssm"),
        "{user_data}"
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
    for family in ["agent", "controller"] {
        let td = task_definition(&ecsc, &format!("ecsmesh-alpha-{family}")).await;
        let c = &td.container_definitions()[0];
        assert!(
            td.volumes().iter().all(|v| v.name() != Some("tls"))
                && c.mount_points()
                    .iter()
                    .all(|m| m.source_volume() != Some("tls"))
                && c.environment()
                    .iter()
                    .all(|e| !e.name().unwrap().contains("TLS")),
            "TLS in {family} without --tls-ssm-prefix: {td:#?}"
        );
    }
    // Without TLS nothing authenticates dtab writes: the controller must be
    // told explicitly, or it would refuse to start on 0.0.0.0.
    let controller = task_definition(&ecsc, "ecsmesh-alpha-controller").await;
    assert!(
        controller.container_definitions()[0]
            .environment()
            .iter()
            .any(|e| e.name() == Some("ECSMESH_ALLOW_UNAUTHENTICATED_WRITES")
                && e.value() == Some("true")),
        "{controller:#?}"
    );
    // Nor the mesh stream, which hands out every endpoint and dtab.
    assert!(
        controller.container_definitions()[0]
            .environment()
            .iter()
            .any(|e| e.name() == Some("ECSMESH_ALLOW_UNAUTHENTICATED_AGENTS")
                && e.value() == Some("true")),
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
    let cfg = config("beta", region, &subnet);
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
    assert!(ud.contains("ECSMESH_CONTROLLER='http://ecsmesh-beta-ctl.elb.internal:4321'"));
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
    let mut cfg = config("gamma", region, &subnet);
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
    let mut cfg = config("delta", region, &subnet);
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
    assert!(
        Deployer::new(&conf, cfg.clone())
            .unwrap_err()
            .to_string()
            .contains("Consul")
    );
    // Two replicas with Consul, but agents told to use loopback.
    cfg.consul_address = Some("http://127.0.0.1:8500".to_owned());
    let err = Deployer::new(&conf, cfg.clone()).unwrap_err().to_string();
    assert!(
        err.contains("controller-address") && err.contains("--controller-target-group"),
        "{err}"
    );
    cfg.controller_address = "http://controller.internal:4321".to_owned();
    assert!(Deployer::new(&conf, cfg.clone()).is_ok());
    cfg.controller_target_group = Some("my-target-group".to_owned());
    let err = Deployer::new(&conf, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("controller-target-group"), "{err}");
    cfg.controller_target_group = None;
    // More instances than one with a loopback address.
    let mut one = DeployConfig::new("ok", "us-west-2");
    one.max_size = 3;
    for local in [
        "http://127.0.0.1:4321",
        "http://localhost:4321",
        "http://[::1]:4321",
    ] {
        one.controller_address = local.to_owned();
        assert!(Deployer::new(&conf, one.clone()).is_err(), "{local}");
    }
    one.controller_address = "http://10.0.0.5:4321".to_owned();
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
    let d = Deployer::new(&conf, config("zeta", region, &subnet)).unwrap();
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

    // The controller's host port on that instance's private IP.
    let endpoints = d.controller_endpoints().await.unwrap();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert!(
        endpoints[0].starts_with("http://127.0.15.") && endpoints[0].ends_with(":4321"),
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
    let mut cfg = config("kappa", region, &subnet);
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

    deployer.up(false).await.unwrap();

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
            ud.contains(&format!("\nfetch {name} {mode}\n")),
            "{name}: {ud}"
        );
    }
    for want in [
        "aws ssm get-parameter --region 'ca-central-1' --with-decryption",
        "--name '/ecsmesh/kappa/tls/'\"$1\"",
        "install -d -m 0750 -o 65532 -g 65532 '/etc/ecsmesh/tls'",
        "chown 65532:65532",
        "mv -f \"$tmp\" '/etc/ecsmesh/tls/'\"$1\"",
        "OnUnitActiveSec=15min",
        "systemctl enable --now ecsmesh-fetch-tls.timer",
        "    -v /etc/ecsmesh/tls:/etc/ecsmesh/tls:ro \\\n",
        "    -e ECSMESH_TLS_CA='/etc/ecsmesh/tls/ca.pem' \\\n",
        "    -e ECSMESH_TLS_CERT='/etc/ecsmesh/tls/agent.pem' \\\n",
        "    -e ECSMESH_TLS_KEY='/etc/ecsmesh/tls/agent-key.pem' \\\n",
        "    -e ECSMESH_CONTROLLER_SERVER_NAME='ecsmesh-controller' \\\n",
        "ECSMESH_CONTROLLER='https://127.0.0.1:4321'",
    ] {
        assert!(ud.contains(want), "{want:?} missing from\n{ud}");
    }
    let first_fetch = ud.find("\n/usr/local/sbin/ecsmesh-fetch-tls\n").unwrap();
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

    // Idempotent with TLS too; then turning it off is an update that
    // removes all of it.
    assert!(!deployer.up(false).await.unwrap().changed());
    let mut off = config("kappa", region, &subnet);
    off.tls_ssm_prefix = None;
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
    deployer.down(false).await.unwrap();
}
