"""The demo's ECS topology in the patched moto (tests/harness/moto_ecs.py).

    python scripts/demo_topology.py http://127.0.0.1:PORT

Creates cluster `demo` (VPC 127.0.0.0/16, instance A = 127.0.1.1, instance B = 127.0.1.2,
both registered as container instances), the bridge-mode task definitions hello, world and
world-v2 (container port 7777, dynamic host port, docker label `ecsmesh.service`), and the
ECS services hello x2, world x2, world-v2 x1. Prints one line per node and per RUNNING task:

    node <instance-id> <private-ip>
    task <service> <host-ip> <host-port> <instance-id> <task-arn>
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "harness"))
from fixtures import container, create_topology  # noqa: E402

CLUSTER = "demo"
SERVICES = (("hello", 2), ("world", 2), ("world-v2", 1))
CONTAINER_PORT = 7777


def main(endpoint):
    topo = create_topology(endpoint, cluster=CLUSTER, node_ips=("127.0.1.1", "127.0.1.2"))
    ecs = topo.ecs
    for name, count in SERVICES:
        cdef = container(name, [(CONTAINER_PORT, 0)], image=f"ecsmesh/helloworld:{name}",
                         dockerLabels={"ecsmesh.service": name})
        arn = ecs.register_task_definition(family=name, networkMode="bridge",
                                           containerDefinitions=[cdef])["taskDefinition"]["taskDefinitionArn"]
        ecs.create_service(cluster=CLUSTER, serviceName=name, taskDefinition=arn, desiredCount=count,
                           launchType="EC2")
    ip_of_instance = {n.instance_id: n.private_ip for n in topo.nodes}
    for n in topo.nodes:
        print(f"node {n.instance_id} {n.private_ip}")
    cis = ecs.describe_container_instances(
        cluster=CLUSTER, containerInstances=[n.container_instance_arn for n in topo.nodes])["containerInstances"]
    instance_of_ci = {ci["containerInstanceArn"]: ci["ec2InstanceId"] for ci in cis}
    for name, count in SERVICES:
        arns = ecs.list_tasks(cluster=CLUSTER, serviceName=name, desiredStatus="RUNNING")["taskArns"]
        tasks = ecs.describe_tasks(cluster=CLUSTER, tasks=arns)["tasks"] if arns else []
        running = [t for t in tasks if t["lastStatus"] == "RUNNING"]
        if len(running) != count:
            sys.exit(f"service {name}: {len(running)} RUNNING tasks, expected {count}")
        for t in running:
            iid = instance_of_ci[t["containerInstanceArn"]]
            binding = t["containers"][0]["networkBindings"][0]
            print(f"task {name} {ip_of_instance[iid]} {binding['hostPort']} {iid} {t['taskArn']}")


if __name__ == "__main__":
    main(sys.argv[1])
