"""Start the patched moto (moto_ecs.py) and build an ECS-on-loopback topology with boto3.

Used by test_moto_ecs.py and meant for the demo too:

    with MotoServer() as moto:
        topo = create_topology(moto.endpoint)                   # VPC, subnets, 2 nodes, cluster
        tds = register_task_definitions(topo.ecs)               # web, dyn, hostnet, api
        env = aws_env(moto.endpoint, imds=moto.imds_endpoint(topo.nodes[0].instance_id))

Every address is in 127.0.0.0/8: VPC 127.0.0.0/16, nodes in 127.0.1.0/24 with explicit
PrivateIpAddress, awsvpc tasks in 127.0.2.0/24.
"""
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

LAUNCHER = Path(__file__).resolve().parent / "moto_ecs.py"
REGION = "us-west-1"
LINUX_AMI = "ami-760aaa0f"  # amzn-ami-hvm in moto's built-in image list (ecs.os-type = linux)
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class MotoServer:
    """The launcher as a subprocess on a free loopback port (ready-file protocol)."""

    def __init__(self, python=sys.executable, timeout=30.0):
        self.python, self.timeout = python, timeout
        self.proc = self.port = None

    def start(self):
        self._dir = tempfile.TemporaryDirectory(prefix="moto-ecs-")
        ready = Path(self._dir.name, "ready.json")
        self._log = open(Path(self._dir.name, "stderr.log"), "w+")
        self.proc = subprocess.Popen(
            [self.python, str(LAUNCHER), "--port", "0", "--ready-file", str(ready), "--exit-with-parent"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + self.timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_ecs.py did not start:\n{self.stderr()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == self.proc.pid, info
        self.port = info["port"]
        return self

    def stderr(self):
        self._log.seek(0)
        return self._log.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_dir"):
            self._log.close()
            self._dir.cleanup()
            del self._dir
        return self.proc.returncode if self.proc else None

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def imds_endpoint(self, instance_id):
        return f"{self.endpoint}/imds/{instance_id}"

    def reset(self):
        """Drop all moto state (the task-state patch survives)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.load(resp) == {"status": "ok"}


def client(endpoint, service, region=REGION):
    """boto3 client for moto; no retries so a moto 500 fails fast."""
    return boto3.client(service, endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"total_max_attempts": 1}), **CREDENTIALS)


def aws_env(endpoint, region=REGION, imds=None):
    """Environment for a process (e.g. a Rust test binary) that talks to this moto."""
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": region, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
    if imds:
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds
    return env


@dataclass
class Node:
    instance_id: str
    private_ip: str
    container_instance_arn: str = ""


@dataclass
class Topology:
    ec2: object
    ecs: object
    region: str
    cluster: str
    vpc_id: str
    node_subnet_id: str
    task_subnet_id: str
    security_group_id: str
    ami: str = LINUX_AMI
    nodes: list = field(default_factory=list)

    def add_node(self, private_ip, register=True):
        """Launch an EC2 instance at `private_ip` and register it as an ECS container instance."""
        assert ipaddress.ip_address(private_ip).is_loopback, private_ip
        inst = self.ec2.run_instances(ImageId=self.ami, MinCount=1, MaxCount=1, InstanceType="t3.medium",
                                      SubnetId=self.node_subnet_id, PrivateIpAddress=private_ip,
                                      SecurityGroupIds=[self.security_group_id])["Instances"][0]
        node = Node(inst["InstanceId"], inst["PrivateIpAddress"])
        if register:
            self.register(node)
        self.nodes.append(node)
        return node

    def register(self, node):
        doc = json.dumps({"instanceId": node.instance_id})
        ci = self.ecs.register_container_instance(cluster=self.cluster, instanceIdentityDocument=doc)
        node.container_instance_arn = ci["containerInstance"]["containerInstanceArn"]
        return node

    def awsvpc_configuration(self):
        return {"awsvpcConfiguration": {"subnets": [self.task_subnet_id],
                                        "securityGroups": [self.security_group_id]}}


def create_topology(endpoint, region=REGION, cluster="demo", vpc_cidr="127.0.0.0/16",
                    node_cidr="127.0.1.0/24", task_cidr="127.0.2.0/24", node_ips=("127.0.1.1", "127.0.1.2"),
                    dns_hostnames=True, register=True):
    """VPC + node subnet + awsvpc subnet + security group + ECS cluster + one node per IP."""
    for net in (vpc_cidr, node_cidr, task_cidr):
        assert ipaddress.ip_network(net).subnet_of(ipaddress.ip_network("127.0.0.0/8")), net
    ec2, ecs = client(endpoint, "ec2", region), client(endpoint, "ecs", region)
    vpc = ec2.create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
    if dns_hostnames:
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    az = f"{region}a"
    nodes = ec2.create_subnet(VpcId=vpc, CidrBlock=node_cidr, AvailabilityZone=az)["Subnet"]["SubnetId"]
    tasks = ec2.create_subnet(VpcId=vpc, CidrBlock=task_cidr, AvailabilityZone=az)["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"{cluster}-mesh", Description="ecsmesh test", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName=cluster)
    topo = Topology(ec2, ecs, region, cluster, vpc, nodes, tasks, sg)
    for ip in node_ips:
        topo.add_node(ip, register=register)
    return topo


def container(name, ports=(), image="public.ecr.aws/nginx/nginx:stable", memory=128, **extra):
    """A container definition; `ports` holds (containerPort, hostPort or None) pairs."""
    mappings = [{"containerPort": c, "protocol": "tcp", **({} if h is None else {"hostPort": h})} for c, h in ports]
    return {"name": name, "image": image, "memory": memory, "essential": True, "portMappings": mappings, **extra}


def register_task_definitions(ecs):
    """The task definitions the tests use; returns {family: taskDefinitionArn}.

    web:     bridge, web 80 -> static host port 7777 plus an admin sidecar 9901 -> dynamic (hostPort 0)
    dyn:     bridge, 8080 with no hostPort (dynamic)
    hostnet: host network mode, 9000
    api:     awsvpc, 8080 (for subnet 127.0.2.0/24)
    """
    defs = {
        "web": ("bridge", [container("web", [(80, 7777)]), container("admin", [(9901, 0)], memory=64)]),
        "dyn": ("bridge", [container("dyn", [(8080, None)])]),
        "hostnet": ("host", [container("hostnet", [(9000, None)])]),
        "api": ("awsvpc", [container("api", [(8080, None)])]),
    }
    return {family: ecs.register_task_definition(family=family, networkMode=mode, containerDefinitions=cdefs)
            ["taskDefinition"]["taskDefinitionArn"] for family, (mode, cdefs) in defs.items()}


if __name__ == "__main__":  # manual smoke run: python tests/harness/fixtures.py
    with MotoServer() as moto:
        topo = create_topology(moto.endpoint)
        print(json.dumps({"endpoint": moto.endpoint, "nodes": [n.__dict__ for n in topo.nodes],
                          "taskDefinitions": register_task_definitions(topo.ecs)}, indent=2))
        sys.stdout.flush()
        if os.environ.get("HOLD"):
            input("serving; press Enter to stop ")
