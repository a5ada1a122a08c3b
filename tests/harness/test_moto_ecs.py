"""Each patch of moto_ecs.py yields what the Amazon ECS / EC2 API documents.

Run: $HOME/.cache/ecsmesh/venv/bin/python -m pytest tests/harness -q
One launcher subprocess serves the whole session; moto is reset before every test.
"""
import ipaddress
import json
import subprocess
import sys
from datetime import datetime

import botocore.exceptions
import pytest
import requests

import fixtures
from fixtures import MotoServer, create_topology, register_task_definitions

EPHEMERAL = range(49153, 65536)
TASK_NET = ipaddress.ip_network("127.0.2.0/24")


@pytest.fixture(scope="session")
def moto():
    server = MotoServer().start()
    yield server
    assert server.stop() == 0, server.stderr()  # SIGTERM -> clean exit


@pytest.fixture
def topo(moto):
    moto.reset()
    return create_topology(moto.endpoint)


@pytest.fixture
def tds(topo):
    return register_task_definitions(topo.ecs)


def describe(topo, arns):
    return topo.ecs.describe_tasks(cluster=topo.cluster, tasks=list(arns))["tasks"]


def run(topo, family, node=None, **kw):
    """run_task (or start_task on a given node); returns the task."""
    if node is not None:
        tasks = topo.ecs.start_task(cluster=topo.cluster, taskDefinition=family,
                                    containerInstances=[node.container_instance_arn], **kw)["tasks"]
    else:
        tasks = topo.ecs.run_task(cluster=topo.cluster, taskDefinition=family, **kw)["tasks"]
    assert len(tasks) == 1, tasks
    return tasks[0]


def bindings(task):
    return {(c["name"], b["containerPort"]): b for c in task["containers"] for b in c.get("networkBindings", [])}


def listed(topo, **kw):
    return set(topo.ecs.list_tasks(cluster=topo.cluster, **kw)["taskArns"])


def service_tasks(topo, name):
    arns = listed(topo, serviceName=name)
    return describe(topo, arns) if arns else []


def remaining_ports(topo, node):
    ci = topo.ecs.describe_container_instances(cluster=topo.cluster, containerInstances=[node.container_instance_arn])
    res = {r["name"]: r for r in ci["containerInstances"][0]["remainingResources"]}
    return set(res["PORTS"]["stringSetValue"])


# --- launcher ---------------------------------------------------------------------------------

def test_refuses_other_moto_version(tmp_path):
    code = ("import sys, runpy, moto; moto.__version__ = '5.2.4'; sys.argv = ['moto_ecs.py', '--ready-file', "
            f"{str(tmp_path / 'ready')!r}]; runpy.run_path({str(fixtures.LAUNCHER)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "moto 5.2.5" in proc.stderr and "5.2.4" in proc.stderr
    assert not (tmp_path / "ready").exists()


def test_refuses_non_loopback_host():
    proc = subprocess.run([sys.executable, str(fixtures.LAUNCHER), "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "loopback" in proc.stderr


def test_ready_file_names_this_process(moto):
    assert moto.proc.poll() is None and moto.port > 0
    assert requests.get(f"{moto.endpoint}/moto-api/", timeout=5).ok


# --- task lifecycle ------------------------------------------------------------------------------

def test_task_stays_running_until_stopped(topo, tds):
    arn = run(topo, "web")["taskArn"]
    for _ in range(12):
        (t,) = describe(topo, [arn])
        assert (t["lastStatus"], t["desiredStatus"]) == ("RUNNING", "RUNNING")
        assert "stoppedAt" not in t


def test_stop_task_reports_stopped_and_frees_ports(topo, tds):
    node = topo.nodes[0]
    task = run(topo, "web", node=node)
    assert "7777" in remaining_ports(topo, node)
    stopped = topo.ecs.stop_task(cluster=topo.cluster, task=task["taskArn"], reason="test")["task"]
    assert (stopped["lastStatus"], stopped["desiredStatus"], stopped["stoppedReason"]) == ("STOPPED", "STOPPED", "test")
    (t,) = describe(topo, [task["taskArn"]])
    assert t["lastStatus"] == "STOPPED" and t["stopCode"] == "UserInitiated"
    assert isinstance(t["stoppedAt"], datetime) and t["stoppedAt"] >= t["startedAt"]
    assert t["version"] > task["version"]
    assert all(c["lastStatus"] == "STOPPED" for c in t["containers"])
    assert "7777" not in remaining_ports(topo, node)
    again = run(topo, "web", node=node)  # the static host port is free again on that instance
    assert bindings(again)[("web", 80)]["hostPort"] == 7777
    # a stopped task is idempotently stopped; an unknown task is a client error, not a 500
    topo.ecs.stop_task(cluster=topo.cluster, task=task["taskArn"])
    with pytest.raises(botocore.exceptions.ClientError) as err:
        topo.ecs.stop_task(cluster=topo.cluster, task="0123456789abcdef0123456789abcdef")
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"


def test_task_fields(topo, tds):
    node = topo.nodes[0]
    t = run(topo, "web", node=node)
    (d,) = describe(topo, [t["taskArn"]])
    assert d["availabilityZone"] == "us-west-1a" and d["launchType"] == "EC2"
    assert isinstance(d["createdAt"], datetime) and isinstance(d["startedAt"], datetime)
    assert d["healthStatus"] == "UNKNOWN" and d["version"] >= 1  # no container health checks defined
    assert d["containerInstanceArn"] == node.container_instance_arn
    assert d["group"] == "family:web"
    ci = topo.ecs.describe_container_instances(cluster=topo.cluster, containerInstances=[node.container_instance_arn])
    attrs = {a["name"]: a.get("value") for a in ci["containerInstances"][0]["attributes"]}
    assert attrs["ecs.os-type"] == "linux" and ci["containerInstances"][0]["ec2InstanceId"] == node.instance_id


def test_describe_missing_task_is_a_failure(topo, tds):
    arn = run(topo, "web")["taskArn"]
    missing = arn.rsplit("/", 1)[0] + "/00000000000000000000000000000000"
    resp = topo.ecs.describe_tasks(cluster=topo.cluster, tasks=[arn, missing])
    assert [t["taskArn"] for t in resp["tasks"]] == [arn]
    assert resp["failures"] == [{"arn": missing, "reason": "MISSING"}]


# --- containers and network bindings -------------------------------------------------------------

def test_all_containers_present(topo, tds):
    t = run(topo, "web")
    (d,) = describe(topo, [t["taskArn"]])
    assert sorted(c["name"] for c in d["containers"]) == ["admin", "web"]
    for c in d["containers"]:
        assert c["lastStatus"] == "RUNNING" and c["taskArn"] == d["taskArn"]
        task_id = d["taskArn"].split("/")[-1]
        assert f":container/{topo.cluster}/{task_id}/" in c["containerArn"]
    assert {c["name"]: c["image"] for c in d["containers"]}["admin"].endswith("nginx:stable")


def test_bridge_static_host_port(topo, tds):
    (d,) = describe(topo, [run(topo, "web")["taskArn"]])
    assert bindings(d)[("web", 80)] == {"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 7777, "protocol": "tcp"}


def test_bridge_dynamic_host_ports_unique_per_instance(topo, tds):
    node = topo.nodes[0]
    first, second = run(topo, "dyn", node=node), run(topo, "dyn", node=node)
    web = run(topo, "web", node=node)  # admin sidecar: hostPort 0 -> dynamic as well
    ports = [bindings(t)[key]["hostPort"] for t, key in ((first, ("dyn", 8080)), (second, ("dyn", 8080)),
                                                           (web, ("admin", 9901)))]
    assert all(p in EPHEMERAL for p in ports) and len(set(ports)) == 3, ports
    # described tasks agree with run_task; a stopped task's dynamic port can be handed out again
    assert bindings(describe(topo, [first["taskArn"]])[0])[("dyn", 8080)]["hostPort"] == ports[0]
    topo.ecs.stop_task(cluster=topo.cluster, task=first["taskArn"])
    third = run(topo, "dyn", node=node)
    assert bindings(third)[("dyn", 8080)]["hostPort"] == ports[0]
    # dynamic ports are per instance: another node starts from the same range
    other = run(topo, "dyn", node=topo.nodes[1])
    assert bindings(other)[("dyn", 8080)]["hostPort"] in EPHEMERAL


def test_two_dynamic_tasks_placed_by_run_task_on_one_instance(moto):
    moto.reset()
    topo = create_topology(moto.endpoint, node_ips=("127.0.1.1",))
    register_task_definitions(topo.ecs)
    tasks = topo.ecs.run_task(cluster=topo.cluster, taskDefinition="dyn", count=2)["tasks"]
    assert len(tasks) == 2
    assert len({bindings(t)[("dyn", 8080)]["hostPort"] for t in tasks}) == 2


def test_host_mode_binding(topo, tds):
    (d,) = describe(topo, [run(topo, "hostnet")["taskArn"]])
    assert bindings(d)[("hostnet", 9000)] == {"bindIP": "0.0.0.0", "containerPort": 9000, "hostPort": 9000,
                                              "protocol": "tcp"}


# --- awsvpc -----------------------------------------------------------------------------------

def eni_ips(task):
    att = [a for a in task["attachments"] if a["type"] == "ElasticNetworkInterface"]
    details = {d["name"]: d["value"] for d in att[0]["details"]}
    from_containers = {ni["privateIpv4Address"] for c in task["containers"] for ni in c["networkInterfaces"]}
    return details, from_containers


def test_awsvpc_ip_from_task_subnet(topo, tds):
    tasks = [run(topo, "api", networkConfiguration=topo.awsvpc_configuration()) for _ in range(2)]
    ips = []
    for d in describe(topo, [t["taskArn"] for t in tasks]):
        details, from_containers = eni_ips(d)
        ip = details["privateIPv4Address"]
        assert ipaddress.ip_address(ip) in TASK_NET and from_containers == {ip}
        assert details["subnetId"] == topo.task_subnet_id and details["privateDnsName"]
        assert d["containers"][0]["networkInterfaces"][0]["attachmentId"] == d["attachments"][0]["id"]
        assert d["attachments"][0]["status"] == "ATTACHED"
        assert not d["containers"][0].get("networkBindings")
        ips.append(ip)
    assert len(set(ips)) == 2
    enis = topo.ec2.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [topo.task_subnet_id]}])
    assert {e["PrivateIpAddress"] for e in enis["NetworkInterfaces"]} == set(ips)
    topo.ecs.stop_task(cluster=topo.cluster, task=tasks[0]["taskArn"])
    (d,) = describe(topo, [tasks[0]["taskArn"]])
    assert d["attachments"][0]["status"] == "DELETED"
    enis = topo.ec2.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [topo.task_subnet_id]}])
    assert {e["PrivateIpAddress"] for e in enis["NetworkInterfaces"]} == {ips[1]}


def test_awsvpc_without_dns_hostnames(moto):
    moto.reset()
    topo = create_topology(moto.endpoint, dns_hostnames=False)
    register_task_definitions(topo.ecs)
    t = run(topo, "api", networkConfiguration=topo.awsvpc_configuration())
    details, _ = eni_ips(t)
    assert ipaddress.ip_address(details["privateIPv4Address"]) in TASK_NET
    assert details["privateDnsName"].startswith("ip-127-0-2-")


def test_fargate_awsvpc_task(topo, tds):
    topo.ecs.register_task_definition(family="fg", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                      cpu="256", memory="512", containerDefinitions=[fixtures.container("fg", [(80, None)])])
    t = run(topo, "fg", launchType="FARGATE", networkConfiguration=topo.awsvpc_configuration())
    assert "containerInstanceArn" not in t and t["launchType"] == "FARGATE"
    assert (t["cpu"], t["memory"], t["availabilityZone"]) == ("256", "512", "us-west-1a")
    assert ipaddress.ip_address(eni_ips(t)[0]["privateIPv4Address"]) in TASK_NET


# --- services -----------------------------------------------------------------------------------

def describe_service(topo, name):
    return topo.ecs.describe_services(cluster=topo.cluster, services=[name])["services"][0]


def test_service_runs_desired_count(topo, tds):
    svc = topo.ecs.create_service(cluster=topo.cluster, serviceName="websvc", taskDefinition="web",
                                  desiredCount=2)["service"]
    tasks = service_tasks(topo, "websvc")
    deployment = svc["deployments"][0]["id"]
    assert len(tasks) == 2
    for t in tasks:
        assert (t["lastStatus"], t["group"], t["startedBy"]) == ("RUNNING", "service:websvc", deployment)
    # spread over both instances (static host port 7777 allows one per instance anyway)
    assert {t["containerInstanceArn"] for t in tasks} == {n.container_instance_arn for n in topo.nodes}
    s = describe_service(topo, "websvc")
    assert (s["desiredCount"], s["runningCount"], s["pendingCount"]) == (2, 2, 0)
    assert s["deployments"][0]["runningCount"] == 2 and s["deployments"][0]["rolloutState"] == "COMPLETED"


def test_service_scale_up_and_down(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="dynsvc", taskDefinition="dyn", desiredCount=1)
    assert len(service_tasks(topo, "dynsvc")) == 1
    topo.ecs.update_service(cluster=topo.cluster, service="dynsvc", desiredCount=4)
    tasks = service_tasks(topo, "dynsvc")
    assert len(tasks) == 4
    assert len({(t["containerInstanceArn"], bindings(t)[("dyn", 8080)]["hostPort"]) for t in tasks}) == 4
    first = {t["taskArn"] for t in tasks}
    topo.ecs.update_service(cluster=topo.cluster, service="dynsvc", desiredCount=1)
    tasks = service_tasks(topo, "dynsvc")
    assert len(tasks) == 1 and tasks[0]["taskArn"] in first
    stopped = listed(topo, serviceName="dynsvc", desiredStatus="STOPPED")
    assert stopped == first - {tasks[0]["taskArn"]}
    assert describe_service(topo, "dynsvc")["runningCount"] == 1


def test_service_replaces_stopped_task(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="websvc", taskDefinition="web", desiredCount=2)
    victim = service_tasks(topo, "websvc")[0]
    topo.ecs.stop_task(cluster=topo.cluster, task=victim["taskArn"], reason="crash")
    tasks = service_tasks(topo, "websvc")
    assert len(tasks) == 2 and victim["taskArn"] not in {t["taskArn"] for t in tasks}
    replacement = [t for t in tasks if t["containerInstanceArn"] == victim["containerInstanceArn"]]
    assert replacement and bindings(replacement[0])[("web", 80)]["hostPort"] == 7777


def test_service_waits_for_container_instances(moto):
    moto.reset()
    topo = create_topology(moto.endpoint, node_ips=())
    register_task_definitions(topo.ecs)
    topo.ecs.create_service(cluster=topo.cluster, serviceName="websvc", taskDefinition="web", desiredCount=2)
    s = describe_service(topo, "websvc")
    assert (s["runningCount"], s["pendingCount"]) == (0, 2) and not listed(topo, serviceName="websvc")
    topo.add_node("127.0.1.4")
    assert len(service_tasks(topo, "websvc")) == 1
    topo.add_node("127.0.1.5")
    assert len(service_tasks(topo, "websvc")) == 2


def test_service_new_task_definition_replaces_tasks(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="websvc", taskDefinition="web", desiredCount=2)
    old = {t["taskArn"] for t in service_tasks(topo, "websvc")}
    cdefs = [fixtures.container("web", [(80, 7778)])]
    td2 = topo.ecs.register_task_definition(family="web", containerDefinitions=cdefs)["taskDefinition"]
    s = topo.ecs.update_service(cluster=topo.cluster, service="websvc", taskDefinition="web:2")["service"]
    assert s["taskDefinition"] == td2["taskDefinitionArn"]
    tasks = service_tasks(topo, "websvc")
    assert len(tasks) == 2 and not old & {t["taskArn"] for t in tasks}
    assert {bindings(t)[("web", 80)]["hostPort"] for t in tasks} == {7778}
    assert {t["startedBy"] for t in tasks} == {describe_service(topo, "websvc")["deployments"][0]["id"]}
    before = {t["taskArn"] for t in tasks}
    topo.ecs.update_service(cluster=topo.cluster, service="websvc", forceNewDeployment=True)
    tasks = service_tasks(topo, "websvc")
    assert len(tasks) == 2 and not before & {t["taskArn"] for t in tasks}
    assert {t["startedBy"] for t in tasks} == {describe_service(topo, "websvc")["deployments"][0]["id"]}


def test_delete_service_stops_its_tasks(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="apisvc", taskDefinition="api", desiredCount=2,
                            networkConfiguration=topo.awsvpc_configuration())
    arns = listed(topo, serviceName="apisvc")
    assert len(arns) == 2
    topo.ecs.delete_service(cluster=topo.cluster, service="apisvc", force=True)
    assert not listed(topo, serviceName="apisvc")
    assert all(t["lastStatus"] == "STOPPED" for t in describe(topo, arns))
    assert describe_service(topo, "apisvc")["status"] == "INACTIVE"


def test_draining_instance_tasks_move(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="dynsvc", taskDefinition="dyn", desiredCount=2)
    drained = topo.nodes[0].container_instance_arn
    topo.ecs.update_container_instances_state(cluster=topo.cluster, containerInstances=[drained], status="DRAINING")
    tasks = service_tasks(topo, "dynsvc")
    assert len(tasks) == 2 and {t["containerInstanceArn"] for t in tasks} == {topo.nodes[1].container_instance_arn}
    assert not listed(topo, containerInstance=drained)


def test_deregistered_instance_service_task_is_replaced(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="hostsvc", taskDefinition="hostnet", desiredCount=1)
    (orphan,) = service_tasks(topo, "hostsvc")
    node = next(n for n in topo.nodes if n.container_instance_arn == orphan["containerInstanceArn"])
    topo.ecs.deregister_container_instance(cluster=topo.cluster, containerInstance=node.container_instance_arn,
                                           force=True)
    elsewhere = [t for t in service_tasks(topo, "hostsvc") if t["taskArn"] != orphan["taskArn"]]
    assert len(elsewhere) == 1 and elsewhere[0]["containerInstanceArn"] != node.container_instance_arn


def test_daemon_service_one_task_per_instance(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="agent", taskDefinition="hostnet",
                            schedulingStrategy="DAEMON")
    tasks = service_tasks(topo, "agent")
    assert sorted(t["containerInstanceArn"] for t in tasks) == sorted(n.container_instance_arn for n in topo.nodes)
    topo.add_node("127.0.1.3")
    assert len(service_tasks(topo, "agent")) == 3


# --- list_tasks filters ---------------------------------------------------------------------------

def test_list_tasks_filters(topo, tds):
    topo.ecs.create_service(cluster=topo.cluster, serviceName="websvc", taskDefinition="web", desiredCount=2)
    svc = listed(topo, serviceName="websvc")
    loose = run(topo, "dyn")["taskArn"]
    fargate = run(topo, "api", launchType="FARGATE", networkConfiguration=topo.awsvpc_configuration())["taskArn"]
    assert len(svc) == 2 and listed(topo) == svc | {loose, fargate}  # default desiredStatus = RUNNING
    assert listed(topo, serviceName=f"arn:aws:ecs:us-west-1:123456789012:service/{topo.cluster}/websvc") == svc
    assert listed(topo, family="dyn") == {loose}
    topo.ecs.stop_task(cluster=topo.cluster, task=loose)
    assert loose not in listed(topo) and listed(topo, desiredStatus="STOPPED") == {loose}
    assert listed(topo, desiredStatus="RUNNING") == svc | {fargate}
    for node in topo.nodes:  # a Fargate task exists: must not be a 500
        on_node = listed(topo, containerInstance=node.container_instance_arn)
        by_id = listed(topo, containerInstance=node.container_instance_arn.split("/")[-1])
        assert on_node == by_id and len(on_node & svc) == 1 and fargate not in on_node
    topo.ecs.create_cluster(clusterName=topo.cluster + "2")  # cluster names must not match by prefix
    assert topo.ecs.list_tasks(cluster=topo.cluster + "2")["taskArns"] == []


# --- IMDS -------------------------------------------------------------------------------------------

def test_imds_token_flow(moto, topo):
    node = topo.add_node("127.0.1.3", register=False)  # an agent registers it from IMDS below
    base = moto.imds_endpoint(node.instance_id) + "/latest"
    assert requests.get(f"{base}/meta-data/local-ipv4", timeout=5).status_code == 401
    assert requests.put(f"{base}/api/token", timeout=5).status_code == 400  # TTL header is required
    r = requests.put(f"{base}/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, timeout=5)
    assert r.status_code == 200 and r.headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600" and r.text
    auth = {"X-aws-ec2-metadata-token": r.text}
    assert requests.get(f"{base}/meta-data/local-ipv4", headers={"X-aws-ec2-metadata-token": "bogus"},
                        timeout=5).status_code == 401

    def get(path):
        resp = requests.get(f"{base}/{path}", headers=auth, timeout=5)
        assert resp.status_code == 200, (path, resp.status_code)
        return resp.text

    assert get("meta-data/local-ipv4") == node.private_ip == "127.0.1.3"
    assert get("meta-data/instance-id") == node.instance_id
    assert get("meta-data/placement/availability-zone") == "us-west-1a"
    doc = json.loads(get("dynamic/instance-identity/document"))
    assert doc["instanceId"] == node.instance_id and doc["privateIp"] == "127.0.1.3"
    assert (doc["region"], doc["availabilityZone"], doc["accountId"]) == ("us-west-1", "us-west-1a", "123456789012")
    # the document registers the instance with ECS, as the agent does with the real one
    ci = topo.ecs.register_container_instance(cluster=topo.cluster, instanceIdentityDocument=json.dumps(doc))
    assert ci["containerInstance"]["ec2InstanceId"] == node.instance_id
    # a token is good for its own instance only; unknown instances and paths are 404
    other = moto.imds_endpoint(topo.nodes[0].instance_id) + "/latest/meta-data/local-ipv4"
    assert requests.get(other, headers=auth, timeout=5).status_code == 401
    assert requests.get(f"{base}/meta-data/nope", headers=auth, timeout=5).status_code == 404
    gone = moto.imds_endpoint("i-00000000000000000") + "/latest/api/token"
    assert requests.put(gone, headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}, timeout=5).status_code == 404


# --- response shapes (AWS API reference) ------------------------------------------------------------

def test_describe_tasks_shape_matches_api(moto, topo, tds):
    """Raw JSON keys are members of the botocore (API reference) shapes, with the documented types."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    members = {n: set(model.shape_for(n).members) for n in ("Task", "Container", "NetworkBinding",
                                                             "NetworkInterface", "Attachment", "KeyValuePair")}
    arns = [run(topo, "web")["taskArn"], run(topo, "api", networkConfiguration=topo.awsvpc_configuration())["taskArn"]]
    raw = requests.post(moto.endpoint + "/", timeout=5, data=json.dumps({"cluster": topo.cluster, "tasks": arns}), headers={
        "X-Amz-Target": "AmazonEC2ContainerServiceV20141113.DescribeTasks",
        "Content-Type": "application/x-amz-json-1.1",
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-1/ecs/aws4_request, "
                         "SignedHeaders=host, Signature=x"}).json()
    assert len(raw["tasks"]) == 2
    for t in raw["tasks"]:
        assert set(t) <= members["Task"]
        assert {"taskArn", "lastStatus", "desiredStatus", "containers", "createdAt", "startedAt",
                "availabilityZone", "healthStatus", "version", "launchType"} <= set(t)
        assert isinstance(t["createdAt"], (int, float)) and isinstance(t["version"], int)
        for a in t["attachments"]:
            assert set(a) <= members["Attachment"] and all(set(d) <= members["KeyValuePair"] for d in a["details"])
        for c in t["containers"]:
            assert set(c) <= members["Container"]
            for b in c.get("networkBindings", []):
                assert set(b) == {"bindIP", "containerPort", "hostPort", "protocol"}
                assert isinstance(b["hostPort"], int) and isinstance(b["containerPort"], int)
            for ni in c.get("networkInterfaces", []):
                assert set(ni) <= members["NetworkInterface"] and "privateIpv4Address" in ni


def test_an_sqs_long_poll_holds_up_no_other_call(moto, topo):
    """Requests are serialized, but an SQS long poll waits outside the lock,
    as SQS's own does: other APIs answer while it waits, and a message sent
    meanwhile ends it."""
    import threading
    import time

    sqs = fixtures.client(moto.endpoint, "sqs")
    url = sqs.create_queue(QueueName="long-poll")["QueueUrl"]
    got = {}

    def poll():
        started = time.monotonic()
        got["messages"] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5).get("Messages", [])
        got["after"] = time.monotonic() - started

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    topo.ecs.list_clusters()
    assert time.monotonic() - started < 1.0
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    waiter.join(timeout=10)
    assert [m["Body"] for m in got["messages"]] == ["hello"]
    assert got["after"] < 4.0


def test_state_changes_reach_eventbridge_rules_as_ecs_events(moto, topo, tds):
    """A task starting and stopping, and an instance draining, put the events ECS puts on the
    default bus; a rule for source aws.ecs delivers them to its SQS queue."""
    sqs, events = fixtures.client(moto.endpoint, "sqs"), fixtures.client(moto.endpoint, "events")
    url = sqs.create_queue(QueueName="ecs-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="ecs", EventPattern=json.dumps({"source": ["aws.ecs"]}))
    events.put_targets(Rule="ecs", Targets=[{"Id": "queue", "Arn": arn}])

    def drain():
        got = []
        while True:
            msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                return got
            for m in msgs:
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    task = topo.ecs.run_task(cluster=topo.cluster, taskDefinition="dyn", count=1)["tasks"][0]
    started = [e for e in drain() if e["detail-type"] == "ECS Task State Change"]
    assert len(started) == 1, started
    d = started[0]["detail"]
    assert started[0]["source"] == "aws.ecs" and started[0]["resources"] == [task["taskArn"]]
    assert (d["taskArn"], d["lastStatus"], d["desiredStatus"], d["version"]) == (task["taskArn"], "RUNNING", "RUNNING", 1)
    assert d["clusterArn"].endswith(f":cluster/{topo.cluster}")
    assert d["containers"][0]["networkBindings"][0]["hostPort"] in EPHEMERAL

    topo.ecs.stop_task(cluster=topo.cluster, task=task["taskArn"])
    stopped = [e["detail"] for e in drain()]
    assert [(s["lastStatus"], s["version"]) for s in stopped] == [("STOPPED", 2)], stopped

    node = topo.nodes[0]
    topo.ecs.update_container_instances_state(cluster=topo.cluster, containerInstances=[node.container_instance_arn],
                                              status="DRAINING")
    changes = [e for e in drain() if e["detail-type"] == "ECS Container Instance State Change"]
    assert [(c["detail"]["containerInstanceArn"], c["detail"]["status"]) for c in changes] == [
        (node.container_instance_arn, "DRAINING")]
