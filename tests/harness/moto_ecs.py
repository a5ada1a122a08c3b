#!/usr/bin/env python3
"""moto with the ECS behaviour ecsmesh depends on, served on loopback.

Usage:  python tests/harness/moto_ecs.py [--port 0] [--ready-file PATH] [--exit-with-parent]

Imports moto 5.2.5, patches its ECS model in this process (moto's files are
never edited), and serves moto's app plus a per-instance IMDSv2 endpoint at
/imds/<instance-id>/latest/... on 127.0.0.1. When the socket accepts
connections it prints {"port": N, "pid": P} and writes the same JSON to
--ready-file (atomically). SIGTERM/SIGINT stop it cleanly (exit 0).

Every patch_* function below restores one documented ECS behaviour that
stock moto 5.2.5 lacks, and names the moto internal it touches. The service
scheduler runs synchronously inside the API calls that change what a service
needs (create/update/delete_service, stop_task, (de)register_container_instance,
update_container_instances_state); there is no background tick, so results are
deterministic. All requests are serialized by one lock (moto is not
thread-safe), except that an SQS long poll waits outside it, as SQS's does:
it is answered from short polls, so a consumer waiting 20 s for events does
not hold up every other API.
"""
import argparse
import collections
import functools
import inspect
import io
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time

MOTO_VERSION = "5.2.5"
EPHEMERAL_PORTS = range(49153, 65536)  # ECS dynamic host port range (bridge mode)
_tls = threading.local()  # carries a pre-allocated awsvpc IP into moto's Task.__init__


def check_moto_version():
    """Refuse to run on a moto other than the one these patches were written against."""
    import moto

    if moto.__version__ != MOTO_VERSION:
        sys.exit(
            f"moto_ecs.py: these patches target moto {MOTO_VERSION} but moto {moto.__version__} "
            f"is installed; install the pins in deps/python.txt (bash scripts/deps.sh)"
        )


def _ec2(backend):
    from moto.ec2 import ec2_backends

    return ec2_backends[backend.account_id][backend.region_name]


def _instance_of(backend, task):
    """The registered container instance a task runs on (None: Fargate or deregistered)."""
    arn = task.container_instance_arn
    return backend.container_instances.get(task.cluster_name, {}).get(arn.split("/")[-1]) if arn else None


def _live(backend, cluster_name):
    return [t for t in backend.tasks.get(cluster_name, {}).values() if t.desired_status == "RUNNING"]


def _detail(task, name):
    for att in task.attachments:
        for d in att["details"]:
            if d["name"] == name:
                return d["value"]
    return None


def patch_task_lifecycle():
    """Tasks stay RUNNING until stopped, as in ECS.

    moto 5.2.5 registers the `ecs::task` transition as manual/times=1 (moto/moto_api/__init__.py),
    so every describe_tasks (Task.advance) moves a task one state towards STOPPED. Re-register the
    default as manual with an unreachable count; it lives in moto.moto_api.state_manager and
    therefore survives POST /moto-api/reset.
    """
    from moto.moto_api import state_manager

    state_manager.register_default_transition("ecs::task", {"progression": "manual", "times": 10**15})


def patch_port_reservations():
    """Only static host ports are reserved on a container instance, as in ECS.

    moto's EC2ContainerServiceBackend._calculate_task_resource_requirements reserves every
    `hostPort` key, including 0 (dynamic), and awsvpc ports, so a second dynamic-port or
    awsvpc task cannot be placed on the same instance. Reserve: bridge -> hostPort if non-zero,
    host -> hostPort or containerPort, awsvpc -> nothing (each task has its own ENI).
    """
    from moto.ecs.models import EC2ContainerServiceBackend as B

    orig = B._calculate_task_resource_requirements

    def requirements(task_definition):
        req = orig(task_definition)
        mode = task_definition.network_mode or "bridge"
        ports = []
        for cdef in task_definition.container_definitions:
            for pm in cdef.get("portMappings") or []:
                hp = pm.get("hostPort") or (pm.get("containerPort") if mode == "host" else 0)
                if hp and mode in ("bridge", "host"):
                    ports.append(hp)
        req["PORTS"] = ports
        return req

    B._calculate_task_resource_requirements = staticmethod(requirements)


def patch_awsvpc_ip():
    """awsvpc task ENIs get their private IP from the task's subnet, as in ECS.

    moto's Task.__init__ creates the ENI with `moto.ecs.models.random_private_ip()` (a random 10.x
    address). Allocate the next free address of the first awsvpcConfiguration subnet instead
    (moto.ec2 Subnet.get_available_subnet_ip) and hand it to that call; released on stop.
    Also gives moto.ec2 NetworkInterface a `private_dns_name` default: moto only sets it when the
    VPC has EnableDnsHostnames, and Task.__init__ otherwise fails with HTTP 500.
    """
    from moto.ec2.models.elastic_network_interfaces import NetworkInterface
    from moto.ecs import models as m

    NetworkInterface.private_dns_name = None
    orig_ip, orig_init = m.random_private_ip, m.Task.__init__
    sig = inspect.signature(orig_init)
    m.random_private_ip = lambda *a, **k: getattr(_tls, "eni_ip", None) or orig_ip(*a, **k)

    @functools.wraps(orig_init)
    def __init__(self, *args, **kwargs):
        a = sig.bind(self, *args, **kwargs).arguments
        net = (a.get("networking_configuration") or {}).get("awsvpcConfiguration") or {}
        ip = subnet = None
        if a["task_definition"].network_mode == "awsvpc" and net.get("subnets"):
            try:
                subnet = _ec2(a["backend"]).get_subnet(net["subnets"][0])
            except Exception:
                subnet = None  # let moto raise its own error below
            ip = subnet.get_available_subnet_ip(self) if subnet else None
        _tls.eni_ip = ip
        try:
            orig_init(self, *args, **kwargs)
        except Exception:
            if ip:
                subnet.del_subnet_ip(ip)
            raise
        finally:
            _tls.eni_ip = None

    m.Task.__init__ = __init__


def _tasks_on(backend, container_instance_arn):
    """Every task ever started on a container instance (filled in by Task.__init__), so that
    placing a task looks at its instance's tasks, not at every task in the cluster."""
    return backend.__dict__.setdefault("_ecsmesh_tasks_on", {}).setdefault(container_instance_arn, [])


def _dynamic_port(backend, task, used):
    ci = _instance_of(backend, task)
    taken = set(used)
    cluster_tasks = backend.tasks.get(task.cluster_name, {})
    for other in _tasks_on(backend, task.container_instance_arn) if task.container_instance_arn else ():
        if other is not task and other.desired_status == "RUNNING" and cluster_tasks.get(other.task_arn) is other:
            taken.update(b["hostPort"] for c in other.containers for b in getattr(c, "network_bindings", []))
    for res in ci.remaining_resources if ci else []:
        if res["name"] == "PORTS":
            taken.update(int(p) for p in res["stringSetValue"])
    return next(p for p in EPHEMERAL_PORTS if p not in taken)


def patch_task_fields():
    """describe_tasks shows what ECS reports for a running task.

    Wraps moto.ecs.models.Task.__init__, which builds a single Container from the first container
    definition only (PENDING, taskArn = task-definition ARN, no networkBindings). Instead: one
    RUNNING container per definition, with containerArn/taskArn in ECS form; `networkBindings`
    (bridge: hostPort from the task definition or a free dynamic port in 49153-65535 unique per
    container instance; host: hostPort = containerPort); awsvpc `networkInterfaces` and a
    resolvable privateDnsName; task createdAt/startedAt/connectivityAt, availabilityZone,
    healthStatus (HEALTHY when essential containers define health checks, else UNKNOWN),
    version, launchType (EC2 on container instances) and task-level cpu/memory.
    """
    from moto.core.utils import utcnow
    from moto.ecs import models as m

    orig_init = m.Task.__init__
    sig = inspect.signature(orig_init)

    @functools.wraps(orig_init)
    def __init__(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        a = sig.bind(self, *args, **kwargs).arguments
        td, backend = a["task_definition"], a["backend"]
        mode, now = td.network_mode or "bridge", utcnow()
        att_id = self.attachments[0]["id"] if self.attachments else None
        eni_ip = _detail(self, "privateIPv4Address")
        if self.attachments and not _detail(self, "privateDnsName"):
            for d in self.attachments[0]["details"]:
                if d["name"] == "privateDnsName":
                    d["value"] = f"ip-{eni_ip.replace('.', '-')}.{self.region_name}.compute.internal"
        used, self.containers, checked = [], [], []
        for cdef in td.container_definitions:
            c = m.Container(td)
            c.container_arn = self.task_arn.replace(":task/", ":container/") + f"/{m.mock_random.uuid4()}"
            c.task_arn, c.name, c.image = self.task_arn, cdef.get("name"), cdef.get("image")
            c.cpu, c.memory = str(cdef.get("cpu", 0)), cdef.get("memory") and str(cdef["memory"])
            c.memory_reservation = cdef.get("memoryReservation") and str(cdef["memoryReservation"])
            c.environment, c.command = cdef.get("environment"), cdef.get("command")
            c.last_status, c.exitCode, c.runtime_id = "RUNNING", None, secrets.token_hex(32)
            c.health_status = "HEALTHY" if cdef.get("healthCheck") else "UNKNOWN"
            if cdef.get("essential", True) and cdef.get("healthCheck"):
                checked.append(cdef)
            c.network_bindings = []
            mappings = (cdef.get("portMappings") or []) if mode in ("bridge", "host") else []
            for pm in mappings:
                hp = pm["containerPort"] if mode == "host" else pm.get("hostPort")
                hp = hp or _dynamic_port(backend, self, used)  # bridge, hostPort 0 or absent
                used.append(hp)
                c.network_bindings.append({"bindIP": "0.0.0.0", "containerPort": pm["containerPort"],
                                           "hostPort": hp, "protocol": pm.get("protocol", "tcp")})
            c.network_interfaces = [{"attachmentId": att_id, "privateIpv4Address": eni_ip}] if eni_ip else []
            self.containers.append(c)
        ci = _instance_of(backend, self)
        if ci is not None:
            self.availability_zone = ci.attributes.get("ecs.availability-zone")
        elif self.attachments:
            self.availability_zone = _ec2(backend).get_subnet(_detail(self, "subnetId")).availability_zone
        self.launch_type = self.launch_type or ("EC2" if self.container_instance_arn else "FARGATE")
        self.created_at = self.started_at = self.connectivity_at = now
        self.connectivity, self.version = "CONNECTED", 1
        self.health_status = "HEALTHY" if checked else "UNKNOWN"
        self.cpu, self.memory = td.cpu, td.memory
        if self.container_instance_arn:
            _tasks_on(backend, self.container_instance_arn).append(self)

    m.Task.__init__ = __init__


def _stop(backend, task, reason, code):
    """Stop one task the way ECS reports it; frees its static ports and its ENI address."""
    from moto.core.utils import utcnow

    if task.last_status == "STOPPED":
        return
    ci = _instance_of(backend, task)
    if ci is not None and task.resource_requirements:
        backend.update_container_instance_resources(ci, task.resource_requirements, removing=True)
    now = utcnow()
    task.last_status = task.desired_status = "STOPPED"
    task.stopped_reason, task.stop_code = reason, code
    task.stopping_at = task.execution_stopped_at = task.stopped_at = now
    task.version = getattr(task, "version", 1) + 1
    for c in task.containers:
        c.last_status, c.exitCode = "STOPPED", 0
    for att in task.attachments:
        if att["type"] == "ElasticNetworkInterface" and att["status"] == "ATTACHED":
            att["status"] = "DELETED"
            ec2 = _ec2(backend)
            try:
                ec2.get_subnet(_detail(task, "subnetId")).del_subnet_ip(_detail(task, "privateIPv4Address"))
                ec2.delete_network_interface(_detail(task, "networkInterfaceId"))
            except Exception:
                pass  # subnet or ENI already gone


def _place(backend, svc, deployment_id, candidates, mine):
    """Start one task of `svc` on the least-loaded candidate instance (ECS spread); None if none fits.

    `mine` counts the service's live tasks per container instance ARN; the new task is added.
    """
    from moto.ecs.models import Task

    cluster = backend.clusters[svc.cluster_name]
    td = backend.describe_task_definition(svc.task_definition)
    req = backend._calculate_task_resource_requirements(td)
    ci = None
    if svc.launch_type != "FARGATE":
        fits = [c for c in candidates if backend._can_be_placed(c, req)]
        if not fits:
            return None
        ci = min(fits, key=lambda c: (mine[c.container_instance_arn], c.running_tasks_count))
    try:
        task = Task(cluster, td, ci.container_instance_arn if ci else None, req, backend=backend,
                    group=f"service:{svc.name}", started_by=deployment_id, launch_type=svc.launch_type or "EC2",
                    networking_configuration=svc.network_configuration or None)
    except Exception as exc:
        logging.getLogger("moto_ecs").warning("service %s: cannot start a task: %s", svc.name, exc)
        return None
    if ci is not None:
        backend.update_container_instance_resources(ci, req)
    task._ecsmesh_service = svc.name
    backend.tasks.setdefault(cluster.name, {})[task.task_arn] = task
    mine[task.container_instance_arn] += 1
    return task


def reconcile(backend, cluster_name):
    """The ECS service scheduler, one pass: make every service in the cluster run what it should.

    REPLICA: keep desiredCount tasks of the primary deployment on ACTIVE container instances
    (replace stopped ones, stop extras newest-first, stop tasks of older deployments, replace
    tasks on DRAINING or deregistered instances). DAEMON: one task per ACTIVE instance.
    Tasks get group "service:<name>" and startedBy = the deployment id, as in ECS.
    """
    from moto.core.utils import utcnow

    active = [c for c in backend.container_instances.get(cluster_name, {}).values() if c.status == "ACTIVE"]
    # One pass over the cluster's tasks, not one per service.
    live_by_service = {}
    for t in _live(backend, cluster_name):
        live_by_service.setdefault(getattr(t, "_ecsmesh_service", None), []).append(t)
    for svc in [s for s in backend.services.values() if s.cluster_name == cluster_name]:
        if not svc.deployments or not svc.task_definition:
            continue  # EXTERNAL / CODE_DEPLOY controllers are not scheduled by ECS itself
        dep = svc.deployments[0]
        mine = sorted(live_by_service.get(svc.name, []), key=lambda t: t.created_at)
        for t in [t for t in mine if t.started_by != dep["id"]]:
            _stop(backend, t, "ECS deployment replaced this task", "ServiceSchedulerInitiated")
        current = [t for t in mine if t.started_by == dep["id"]]
        placed = [t for t in current if t.container_instance_arn is None or _instance_of(backend, t) in active]
        if svc.status != "ACTIVE":
            svc.desired_count = 0
        daemon = svc.scheduling_strategy == "DAEMON" and svc.status == "ACTIVE"
        if daemon:
            svc.desired_count = len(active)
        while len(placed) > svc.desired_count:
            _stop(backend, placed.pop(), "Service scaled in", "ServiceSchedulerInitiated")
        spread = collections.Counter(t.container_instance_arn for t in mine if t.desired_status == "RUNNING")
        for ci in active if daemon else []:
            if not any(_instance_of(backend, t) is ci for t in placed):
                placed += [t for t in [_place(backend, svc, dep["id"], [ci], spread)] if t]
        while not daemon and len(placed) < svc.desired_count:
            task = _place(backend, svc, dep["id"], active, spread)
            if task is None:
                break
            placed.append(task)
        for t in current:
            ci = _instance_of(backend, t)
            if ci is not None and ci.status == "DRAINING":
                _stop(backend, t, "Container instance is draining", "ServiceSchedulerInitiated")
        running = len([t for t in placed if t.desired_status == "RUNNING"])
        svc.running_count, svc.pending_count = running, max(svc.desired_count - running, 0)
        done = running == svc.desired_count
        dep.update(desiredCount=svc.desired_count, runningCount=running, pendingCount=svc.pending_count,
                   taskDefinition=svc.task_definition, updatedAt=utcnow(),
                   rolloutState="COMPLETED" if done else "IN_PROGRESS",
                   rolloutStateReason=f"ECS deployment {dep['id']} {'completed' if done else 'in progress'}.")
    cluster = backend.clusters.get(cluster_name)
    if cluster is not None:
        cluster.running_tasks_count = len([t for t in _live(backend, cluster_name) if t.last_status == "RUNNING"])
        cluster.pending_tasks_count = 0


def patch_stop_task():
    """stop_task as in ECS: stoppedAt/stoppingAt/stopCode set, containers STOPPED, ports and ENI IP
    freed, idempotent on a stopped task, InvalidParameterException for an unknown task, and the
    service scheduler replaces a stopped service task. Replaces moto's
    EC2ContainerServiceBackend.stop_task (which raises a bare Exception -> HTTP 500 when not found).
    """
    from moto.ecs.exceptions import InvalidParameterException
    from moto.ecs.models import EC2ContainerServiceBackend as B

    def stop_task(self, cluster_str, task_str, reason):
        cluster = self._get_cluster(cluster_str)
        task = self.tasks.get(cluster.name, {}).get(task_str) or next(
            (t for t in self.tasks.get(cluster.name, {}).values() if t.id == task_str.split("/")[-1]), None)
        if task is None:
            raise InvalidParameterException("The referenced task was not found.")
        _stop(self, task, reason or "Task stopped by user", "UserInitiated")
        reconcile(self, cluster.name)
        return task

    B.stop_task = stop_task


def patch_list_tasks():
    """list_tasks filters as the ECS API documents them.

    Replaces moto's EC2ContainerServiceBackend.list_tasks, which ignores `serviceName`, has no
    `desiredStatus` default (ECS: RUNNING), matches the cluster by substring, and fails with
    HTTP 500 on `containerInstance` when a task has no container instance (Fargate).
    """
    from moto.ecs.models import EC2ContainerServiceBackend as B

    def list_tasks(self, cluster_str=None, container_instance=None, family=None, started_by=None,
                   service_name=None, desiredStatus=None):
        cluster = self._get_cluster(cluster_str or "default")
        ci_id = container_instance.split("/")[-1] if container_instance else None
        svc = service_name.split("/")[-1] if service_name else None
        out = []
        for t in self.tasks.get(cluster.name, {}).values():
            if t.desired_status != (desiredStatus or "RUNNING"):
                continue
            if ci_id and (t.container_instance_arn or "").split("/")[-1] != ci_id:
                continue
            if family and t.task_definition_arn.split("/")[-1].rsplit(":", 1)[0] != family:
                continue
            if (started_by and t.started_by != started_by) or (svc and getattr(t, "_ecsmesh_service", None) != svc):
                continue
            out.append(t)
        return out

    B.list_tasks = list_tasks


def patch_describe_tasks():
    """describe_tasks looks only in the given cluster, matches task ids exactly, and reports
    unknown tasks as failures [{arn, reason: MISSING}] like ECS. Replaces moto's
    EC2ContainerServiceBackend.describe_tasks (searches every cluster by substring) and
    EC2ContainerServiceResponse.describe_tasks (always returns failures: []).
    """
    from moto.core.responses import ActionResult
    from moto.ecs import responses as r
    from moto.ecs.exceptions import InvalidParameterException
    from moto.ecs.models import EC2ContainerServiceBackend as B

    def describe_tasks(self, cluster_str, tasks):
        cluster = self._get_cluster(cluster_str)
        if not tasks:
            raise InvalidParameterException("Tasks cannot be empty.")
        by_id = {t.id: t for t in self.tasks.get(cluster.name, {}).values()}
        return [by_id[x.split("/")[-1]] for x in tasks if x.split("/")[-1] in by_id]

    def describe_tasks_response(self):
        wanted = self._get_param("tasks", [])
        tasks = self.ecs_backend.describe_tasks(self._get_param("cluster", "default"), wanted)
        if "TAGS" in self._get_param("include", []):
            self._include_in_response(r.DESCRIBE_TASKS_TAGS)
        else:
            self._exclude_from_response(r.DESCRIBE_TASKS_TAGS)
        found = {t.id for t in tasks}
        failures = [{"arn": x, "reason": "MISSING"} for x in wanted if x.split("/")[-1] not in found]
        return ActionResult({"tasks": tasks, "failures": failures})

    B.describe_tasks = describe_tasks
    r.EC2ContainerServiceResponse.describe_tasks = describe_tasks_response


def patch_service_scheduler():
    """Services run their tasks, as the ECS service scheduler does (moto's create_service and
    update_service only change counters). Wraps EC2ContainerServiceBackend.create_service,
    update_service (also stores the task definition as a full ARN, not the raw string, and starts
    a new deployment when it changes), delete_service (stops the service's tasks),
    register_container_instance, deregister_container_instance and
    update_container_instances_state, running `reconcile` after each.
    """
    from moto.core.utils import utcnow
    from moto.ecs.models import EC2ContainerServiceBackend as B

    def after(name, cluster_of):
        orig = getattr(B, name)

        def wrapped(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            reconcile(self, cluster_of(self, result, args, kwargs))
            return result

        setattr(B, name, wrapped)

    def cluster_arg(self, result, args, kwargs):
        return self._get_cluster(args[0] if args else kwargs.get("cluster_str", "default")).name

    orig_update = B.update_service

    def update_service(self, props):
        svc = self._get_service(props.get("cluster", "default"), props["service"].split("/")[-1])
        old_td, td_str = svc.task_definition, props.get("task_definition")
        svc = orig_update(self, props)
        if td_str:
            svc.task_definition = self.describe_task_definition(td_str).arn
        if svc.task_definition != old_td and svc.deployments:
            svc.deployments[0].update(id=f"ecs-svc/{secrets.randbelow(32**12)}", createdAt=utcnow())
        reconcile(self, svc.cluster_name)
        return svc

    B.update_service = update_service
    for name in ("create_service", "delete_service"):
        after(name, lambda self, result, a, k: result.cluster_name)
    for name in ("register_container_instance", "deregister_container_instance", "update_container_instances_state"):
        after(name, cluster_arg)


def _emit(backend, detail_type, detail, resources):
    """Puts an ECS event on the default event bus of the backend's account and region, as ECS
    does on every task and container instance state change; moto's EventBridge then delivers it
    to the targets of the matching rules (an SQS queue, for the controller)."""
    from moto.events.models import events_backends

    bus = events_backends[backend.account_id][backend.region_name]
    bus.put_events([{"Source": "aws.ecs", "DetailType": detail_type, "Resources": resources,
                     "Detail": json.dumps(detail, default=str)}])


def _task_event(backend, task):
    """An "ECS Task State Change" event for the task as it is now."""
    containers = [{
        "containerArn": getattr(c, "container_arn", None), "name": c.name, "lastStatus": c.last_status,
        "healthStatus": getattr(c, "health_status", None),
        "networkBindings": getattr(c, "network_bindings", None) or [],
        "networkInterfaces": getattr(c, "network_interfaces", None) or [],
    } for c in task.containers]
    _emit(backend, "ECS Task State Change", {
        "clusterArn": task.cluster_arn, "taskArn": task.task_arn, "lastStatus": task.last_status,
        "desiredStatus": task.desired_status, "group": task.group,
        "containerInstanceArn": task.container_instance_arn, "taskDefinitionArn": task.task_definition_arn,
        "availabilityZone": getattr(task, "availability_zone", None),
        "healthStatus": getattr(task, "health_status", None), "launchType": task.launch_type,
        "version": getattr(task, "version", 1), "stoppedReason": task.stopped_reason or None,
        "containers": containers, "attachments": task.attachments,
    }, [task.task_arn])


def _instance_event(backend, ci):
    """An "ECS Container Instance State Change" event for the instance as it is now."""
    cluster = ci.container_instance_arn.split("/")[-2]
    _emit(backend, "ECS Container Instance State Change", {
        "clusterArn": backend._get_cluster(cluster).arn, "containerInstanceArn": ci.container_instance_arn,
        "ec2InstanceId": ci.ec2_instance_id, "status": ci.status, "agentConnected": True,
        "version": getattr(ci, "_event_version", 1),
    }, [ci.container_instance_arn])


def patch_state_change_events():
    """ECS events, as EventBridge receives them from ECS: a task change when a task starts
    (Task.__init__, patched above: tasks start RUNNING) and when it stops (`_stop`), each with the
    task's `version`; a container instance change on register, deregister and state updates.
    Wraps the methods patch_service_scheduler set up, so the scheduler's own starts and stops
    emit too."""
    from moto.ecs import models as m
    from moto.ecs.models import EC2ContainerServiceBackend as B

    task_init = m.Task.__init__

    @functools.wraps(task_init)
    def __init__(self, *args, **kwargs):
        task_init(self, *args, **kwargs)
        _task_event(self._backend, self)

    m.Task.__init__ = __init__

    global _stop
    stop = _stop

    def stop_and_emit(backend, task, reason, code):
        was = task.last_status
        stop(backend, task, reason, code)
        if was != "STOPPED":
            _task_event(backend, task)

    _stop = stop_and_emit

    def instance_events(name, instances_of):
        orig = getattr(B, name)

        @functools.wraps(orig)
        def wrapped(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            for ci in instances_of(result):
                ci._event_version = getattr(ci, "_event_version", 0) + 1
                _instance_event(self, ci)
            return result

        setattr(B, name, wrapped)

    instance_events("register_container_instance", lambda r: [r])
    instance_events("deregister_container_instance", lambda r: [r])
    instance_events("update_container_instances_state", lambda r: r[0])


def apply_patches():
    check_moto_version()
    for patch in (patch_task_lifecycle, patch_port_reservations, patch_awsvpc_ip, patch_task_fields,
                  patch_stop_task, patch_list_tasks, patch_describe_tasks, patch_service_scheduler,
                  patch_state_change_events):
        patch()


class Gateway:
    """WSGI front: serializes requests into moto, and serves an IMDSv2 endpoint per EC2 instance.

    /imds/<instance-id>/latest/... behaves like http://169.254.169.254/latest/... on that
    instance with HttpTokens=required: PUT /latest/api/token needs
    X-aws-ec2-metadata-token-ttl-seconds (1-21600) and echoes it in the response (aws-config's
    Rust IMDS client requires the echo); GETs without a valid token for that instance get 401.
    moto's own /latest/meta-data serves one static fake instance and sends no TTL header.
    """

    def __init__(self, app):
        self.app, self.lock, self.tokens = app, threading.RLock(), {}

    def __call__(self, environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage":
            return self.receive_message(environ, start_response)
        with self.lock:
            if environ.get("PATH_INFO", "").startswith("/imds/"):
                status, headers, body = self.imds(environ)
                start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))] + headers)
                return [body]
            it = self.app(environ, start_response)
            try:
                return [b"".join(it)]
            finally:
                getattr(it, "close", lambda: None)()

    def receive_message(self, environ, start_response):
        """SQS ReceiveMessage (JSON protocol): a long poll becomes short polls
        under the lock, 50 ms apart, until a message or the wait's end."""
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            body = json.loads(raw or b"{}")
            wait = float(body.get("WaitTimeSeconds") or 0)
        except (ValueError, TypeError, AttributeError):
            body, wait = None, 0.0
        if body is not None:
            body["WaitTimeSeconds"] = 0
            raw = json.dumps(body).encode()
        deadline = time.monotonic() + min(wait, 20.0)
        while True:
            answer = {}

            def capture(status, headers, exc_info=None):
                answer["status"], answer["headers"] = status, headers

            env = dict(environ, **{"wsgi.input": io.BytesIO(raw), "CONTENT_LENGTH": str(len(raw))})
            with self.lock:
                it = self.app(env, capture)
                try:
                    out = b"".join(it)
                finally:
                    getattr(it, "close", lambda: None)()
            try:
                got = bool(json.loads(out or b"{}").get("Messages"))
            except (ValueError, AttributeError):
                got = True
            if got or not answer["status"].startswith("200") or time.monotonic() >= deadline:
                start_response(answer["status"], answer["headers"])
                return [out]
            time.sleep(0.05)

    @staticmethod
    def find_instance(iid):
        from moto.ec2 import ec2_backends

        for account in list(ec2_backends.values()):
            for region, backend in list(account.items()):
                try:
                    inst = backend.get_instance(iid)
                except Exception:
                    continue
                if inst.state != "terminated":
                    return inst, region, backend.account_id
        return None

    def imds(self, environ):
        _, _, iid, path = (environ["PATH_INFO"] + "/").split("/", 3)
        path = "/" + path.rstrip("/") if path.rstrip("/") else "/"
        if path.endswith("/meta-data"):
            path += "/"
        method = environ["REQUEST_METHOD"]
        found = self.find_instance(iid)
        if found is None:
            return "404 Not Found", [], b"Not Found"
        inst, region, account = found
        if method == "PUT" and path == "/latest/api/token":
            ttl = environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN_TTL_SECONDS", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return "400 Bad Request", [], b"Bad Request"
            token = secrets.token_urlsafe(32)
            self.tokens[token] = (iid, time.monotonic() + int(ttl))
            return "200 OK", [("X-aws-ec2-metadata-token-ttl-seconds", ttl)], token.encode()
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [], b"Method Not Allowed"
        owner, expiry = self.tokens.get(environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN", ""), (None, 0))
        if owner != iid or expiry < time.monotonic():
            return "401 Unauthorized", [], b"Unauthorized"
        az = inst.availability_zone
        meta = {
            "ami-id": inst.image_id, "hostname": inst.private_dns_name, "instance-id": inst.id,
            "instance-type": inst.instance_type, "local-hostname": inst.private_dns_name,
            "local-ipv4": inst.private_ip, "placement/availability-zone": az, "placement/region": region,
        }
        doc = {
            "accountId": account, "architecture": inst.architecture, "availabilityZone": az,
            "imageId": inst.image_id, "instanceId": inst.id, "instanceType": inst.instance_type,
            "pendingTime": inst.launch_time.strftime("%Y-%m-%dT%H:%M:%SZ"), "privateIp": inst.private_ip,
            "region": region, "version": "2017-09-30",
        }
        if path == "/latest/meta-data/":
            body = "\n".join(sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in meta}))
        elif path.startswith("/latest/meta-data/") and path[len("/latest/meta-data/"):] in meta:
            body = str(meta[path[len("/latest/meta-data/"):]])
        elif path == "/latest/dynamic/instance-identity/document":
            body = json.dumps(doc, indent=2)
        else:
            return "404 Not Found", [], b"Not Found"
        return "200 OK", [], body.encode()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default)")
    p.add_argument("--ready-file", help='write {"port": N, "pid": P} here once serving')
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process dies")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            raise ValueError
    except ValueError:
        p.error(f"--host must be a loopback address (127.0.0.0/8), got {args.host!r}")
    check_moto_version()
    apply_patches()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="moto_ecs: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)
    server = make_server(args.host, args.port, Gateway(DomainDispatcherApplication(create_backend_app)),
                         threaded=True, request_handler=MotoRequestHandler)
    stop, parent = threading.Event(), os.getppid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    info = json.dumps({"port": server.server_port, "pid": os.getpid()})
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(info + "\n")
        os.replace(tmp, args.ready_file)
    print(info, flush=True)
    while not stop.wait(0.5):
        if args.exit_with_parent and os.getppid() != parent:
            break
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
