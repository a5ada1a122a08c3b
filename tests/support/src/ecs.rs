//! ECS topology fixtures on loopback, built through the real AWS SDK: a VPC
//! `127.0.0.0/16`, a node subnet `127.0.<n>.0/24` and an awsvpc subnet, EC2
//! instances with explicit private IPs registered as container instances.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;
use aws_sdk_ecs::types::{
    ContainerDefinition, KeyValuePair, NetworkMode, PortMapping, TransportProtocol,
};

/// A Linux AMI moto knows (container instances then report `ecs.os-type: linux`).
pub const AMI: &str = "ami-760aaa0f";

/// SDK configuration for the emulator: static credentials, no retries (so
/// failures show at once), the given region.
pub async fn sdk_config(endpoint: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(ecs::config::Credentials::new(
            "testing", "testing", None, None, "static",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}

/// One fake host.
#[derive(Clone, Debug)]
pub struct Node {
    pub instance_id: String,
    pub private_ip: String,
    pub container_instance_arn: String,
}

/// A cluster with its network and nodes.
#[derive(Debug)]
pub struct Topology {
    pub ecs: ecs::Client,
    pub ec2: ec2::Client,
    pub cluster: String,
    pub node_subnet: String,
    pub awsvpc_subnet: String,
    pub security_group: String,
    pub nodes: Vec<Node>,
}

impl Topology {
    /// Creates the cluster, the VPC `127.0.0.0/16` (DNS hostnames on), the
    /// node subnet `127.0.<node_net>.0/24` and the awsvpc subnet
    /// `127.0.<node_net + 1>.0/24`, and one registered node per IP.
    pub async fn create(conf: &SdkConfig, cluster: &str, node_net: u8, node_ips: &[&str]) -> Self {
        let ecs = ecs::Client::new(conf);
        let ec2 = ec2::Client::new(conf);
        ecs.create_cluster()
            .cluster_name(cluster)
            .send()
            .await
            .expect("create_cluster");
        let vpc = ec2
            .create_vpc()
            .cidr_block("127.0.0.0/16")
            .send()
            .await
            .expect("create_vpc")
            .vpc
            .and_then(|v| v.vpc_id)
            .expect("vpc id");
        ec2.modify_vpc_attribute()
            .vpc_id(&vpc)
            .enable_dns_hostnames(
                ec2::types::AttributeBooleanValue::builder()
                    .value(true)
                    .build(),
            )
            .send()
            .await
            .expect("enable DNS hostnames");
        let subnet = |cidr: String| {
            let (ec2, vpc) = (ec2.clone(), vpc.clone());
            async move {
                ec2.create_subnet()
                    .vpc_id(vpc)
                    .cidr_block(cidr)
                    .availability_zone(format!("{}a", region_of(&ec2)))
                    .send()
                    .await
                    .expect("create_subnet")
                    .subnet
                    .and_then(|s| s.subnet_id)
                    .expect("subnet id")
            }
        };
        let node_subnet = subnet(format!("127.0.{node_net}.0/24")).await;
        let awsvpc_subnet = subnet(format!("127.0.{}.0/24", node_net + 1)).await;
        let security_group = ec2
            .create_security_group()
            .group_name(format!("{cluster}-sg"))
            .description("ecsmesh test")
            .vpc_id(&vpc)
            .send()
            .await
            .expect("create_security_group")
            .group_id
            .expect("group id");
        let mut topology = Self {
            ecs,
            ec2,
            cluster: cluster.to_owned(),
            node_subnet,
            awsvpc_subnet,
            security_group,
            nodes: Vec::new(),
        };
        for ip in node_ips {
            topology.add_node(ip).await;
        }
        topology
    }

    /// Launches an instance with `ip` and registers it in the cluster.
    pub async fn add_node(&mut self, ip: &str) -> Node {
        let instance_id = self
            .ec2
            .run_instances()
            .image_id(AMI)
            .instance_type(ec2::types::InstanceType::T3Small)
            .min_count(1)
            .max_count(1)
            .subnet_id(&self.node_subnet)
            .private_ip_address(ip)
            .send()
            .await
            .expect("run_instances")
            .instances()
            .first()
            .and_then(|i| i.instance_id().map(str::to_owned))
            .expect("instance id");
        let document = serde_json::json!({ "instanceId": instance_id }).to_string();
        let container_instance_arn = self
            .ecs
            .register_container_instance()
            .cluster(&self.cluster)
            .instance_identity_document(document)
            .send()
            .await
            .expect("register_container_instance")
            .container_instance
            .and_then(|c| c.container_instance_arn)
            .expect("container instance arn");
        let node = Node {
            instance_id,
            private_ip: ip.to_owned(),
            container_instance_arn,
        };
        self.nodes.push(node.clone());
        node
    }

    /// Registers a task definition of one container with the given port
    /// mappings (container port, host port; 0 for a dynamic host port).
    pub async fn task_definition(
        &self,
        family: &str,
        mode: NetworkMode,
        container: &str,
        ports: &[(i32, i32)],
        env: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> String {
        let mut def = ContainerDefinition::builder()
            .name(container)
            .image("public.ecr.aws/docker/library/busybox:latest")
            .memory(64)
            .essential(true);
        for (container_port, host_port) in ports {
            let mut pm = PortMapping::builder()
                .container_port(*container_port)
                .protocol(TransportProtocol::Tcp);
            if mode != NetworkMode::Awsvpc {
                pm = pm.host_port(*host_port);
            }
            def = def.port_mappings(pm.build());
        }
        for (k, v) in env {
            def = def.environment(KeyValuePair::builder().name(*k).value(*v).build());
        }
        for (k, v) in labels {
            def = def.docker_labels(*k, *v);
        }
        self.ecs
            .register_task_definition()
            .family(family)
            .network_mode(mode)
            .container_definitions(def.build())
            .send()
            .await
            .expect("register_task_definition")
            .task_definition
            .and_then(|t| t.task_definition_arn)
            .expect("task definition arn")
    }

    /// Runs `count` standalone tasks (placed by the emulator's scheduler).
    pub async fn run_task(&self, task_definition: &str, count: i32, awsvpc: bool) -> Vec<String> {
        let mut req = self
            .ecs
            .run_task()
            .cluster(&self.cluster)
            .task_definition(task_definition)
            .count(count)
            .launch_type(ecs::types::LaunchType::Ec2);
        if awsvpc {
            req = req.network_configuration(self.awsvpc_configuration());
        }
        req.send()
            .await
            .expect("run_task")
            .tasks()
            .iter()
            .filter_map(|t| t.task_arn().map(str::to_owned))
            .collect()
    }

    pub fn awsvpc_configuration(&self) -> ecs::types::NetworkConfiguration {
        ecs::types::NetworkConfiguration::builder()
            .awsvpc_configuration(
                ecs::types::AwsVpcConfiguration::builder()
                    .subnets(&self.awsvpc_subnet)
                    .security_groups(&self.security_group)
                    .build()
                    .expect("awsvpc configuration"),
            )
            .build()
    }

    /// Creates a REPLICA service (the emulator's scheduler keeps
    /// `desired` tasks running).
    pub async fn create_service(&self, name: &str, task_definition: &str, desired: i32) {
        self.ecs
            .create_service()
            .cluster(&self.cluster)
            .service_name(name)
            .task_definition(task_definition)
            .desired_count(desired)
            .launch_type(ecs::types::LaunchType::Ec2)
            .send()
            .await
            .expect("create_service");
    }

    pub async fn scale_service(&self, name: &str, desired: i32) {
        self.ecs
            .update_service()
            .cluster(&self.cluster)
            .service(name)
            .desired_count(desired)
            .send()
            .await
            .expect("update_service");
    }

    pub async fn stop_task(&self, task_arn: &str) {
        self.ecs
            .stop_task()
            .cluster(&self.cluster)
            .task(task_arn)
            .reason("test")
            .send()
            .await
            .expect("stop_task");
    }

    /// Where each task listens: its node's IP and its first host port
    /// (bridge and host mode).
    pub async fn task_addresses(
        &self,
        task_arns: &[String],
    ) -> Vec<(String, std::net::SocketAddr)> {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.cluster)
            .set_tasks(Some(task_arns.to_vec()))
            .send()
            .await
            .expect("describe_tasks");
        out.tasks()
            .iter()
            .filter_map(|t| {
                let node = self.nodes.iter().find(|n| {
                    Some(n.container_instance_arn.as_str()) == t.container_instance_arn()
                })?;
                let port = t
                    .containers()
                    .iter()
                    .flat_map(aws_sdk_ecs::types::Container::network_bindings)
                    .find_map(aws_sdk_ecs::types::NetworkBinding::host_port)?;
                let addr = format!("{}:{port}", node.private_ip).parse().ok()?;
                Some((t.task_arn()?.to_owned(), addr))
            })
            .collect()
    }

    /// The running tasks of a service.
    pub async fn service_tasks(&self, service: &str) -> Vec<String> {
        self.ecs
            .list_tasks()
            .cluster(&self.cluster)
            .service_name(service)
            .send()
            .await
            .expect("list_tasks")
            .task_arns()
            .to_vec()
    }
}

fn region_of(ec2: &ec2::Client) -> String {
    ec2.config()
        .region()
        .map_or_else(|| "us-west-1".to_owned(), ToString::to_string)
}
