#!/usr/bin/env python3
"""The simulated ECS of the control-plane benchmark (`make bench-control`).

    moto_bench.py serve    [--port 0] [--ready-file PATH] [--exit-with-parent]
    moto_bench.py populate --endpoint URL [--instances 500] [--services 200] [--tasks-per-service 50]
    moto_bench.py events   --endpoint URL [--queue NAME]... [--table NAME]...

`serve` runs tests/harness/moto_ecs.py (moto 5.2.5 with the project's ECS
patches) with two additions for measuring:
- ListTasks pages as ECS does (at most 100 ARNs a page, then `nextToken`).
  Stock moto returns every ARN in one answer, which would under-count the
  controller's calls at 10,000 tasks by 99 a resync.
- Every API call is logged (operation, whether it is the first page of a
  ListTasks, wall-clock start and end); `GET /bench/calls?since=N` returns
  the log from entry N. The benchmark finds resync boundaries and the moment
  a change became visible to the controller from it.
- Every ECS event the harness emits (it puts "ECS Task State Change" and
  "ECS Container Instance State Change" events on the default bus on each
  task and instance change; a rule delivers them to SQS) is logged with the
  wall-clock time it was on the queue; `GET /bench/events?since=N` returns
  the log from entry N and its length. The event path is timed from there.

`events` sets up what `deploy up` would in an account, after `populate`
(so the 10,000 starts are not queued): SQS queues, one EventBridge rule for
the cluster's task and container-instance changes whose targets become these
queues (replacing earlier ones: each benchmark run reads a fresh queue that
holds only the events from its own start on; SQS allows one PurgeQueue a
minute), and DynamoDB tables for the controller's store and leader lease
(partition key `pk`, on demand).

`populate` builds the cluster "bench" through the API (boto3, as the tests
do): a VPC on 127.0.0.0/16, container instances in 127.0.64.0/22, one
bridge-mode task definition per service (dynamic host port), and REPLICA
services the patched scheduler places (spread). Prints a JSON summary.
"""
import argparse
import io
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "tests" / "harness"
sys.path.insert(0, str(HARNESS))

CLUSTER = "bench"
ECS_TARGET = "AmazonEC2ContainerServiceV20141113."
LIST_TASKS_PAGE = 100  # the ECS API's maximum (and default) maxResults for ListTasks


def patch_list_tasks_pages():
    """ListTasks answers at most maxResults (<= 100) ARNs and a nextToken, as ECS does.

    Wraps moto.ecs.responses.EC2ContainerServiceResponse.list_tasks (which returns every ARN).
    The token is the offset of the next page in the listing the first page saw; ECS's tokens
    are opaque, so callers cannot tell.
    """
    from moto.core.responses import ActionResult
    from moto.ecs import responses as r

    orig = r.EC2ContainerServiceResponse.list_tasks
    # The listing a first page saw, by its filters: later pages slice it (as ECS's opaque
    # tokens do) instead of filtering every task again for each of a 10,000-task listing's
    # 100 pages, which made each page cost ~30 ms.
    listings, listings_lock = {}, threading.Lock()

    def list_tasks(self):
        filters = json.dumps({k: v for k, v in self._get_params().items() if k not in ("nextToken", "maxResults")},
                             sort_keys=True, default=str)
        token = self._get_param("nextToken")
        with listings_lock:
            arns = listings.get(filters) if token else None
        if arns is None:
            arns = orig(self).result["taskArns"]
            with listings_lock:
                listings[filters] = arns
        size = min(int(self._get_param("maxResults") or LIST_TASKS_PAGE), LIST_TASKS_PAGE)
        start = int(token or 0)
        out = {"taskArns": arns[start:start + size]}
        if start + size < len(arns):
            out["nextToken"] = str(start + size)
        return ActionResult(out)

    r.EC2ContainerServiceResponse.list_tasks = list_tasks


def logging_gateway(base):
    """moto_ecs.Gateway that also logs every API call and serves the log at /bench/calls.

    An entry is [operation, first ListTasks page, start, end, n, last ListTasks page] with wall
    clock times (start: when moto took the call up); only ECS and EC2 calls; n is the ARNs a ListTasks page returned or a DescribeTasks call asked for, so a
    reader can tell when a resync has described every task it listed. Calls that carry
    `x-bench-driver` (the benchmark's own changes) are not logged.
    """

    class LoggingGateway(base):
        def __init__(self, app):
            super().__init__(app)
            self.calls, self.in_flight, self.calls_lock = [], 0, threading.Lock()

        def __call__(self, environ, start_response):
            path = environ.get("PATH_INFO")
            if path in ("/bench/calls", "/bench/events"):
                query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
                since = int(query.get("since", ["0"])[0])
                if path == "/bench/events":
                    with EVENTS_LOCK:
                        return serve_json(start_response, {"total": len(EVENTS), "events": EVENTS[since:]})
                with self.calls_lock:
                    doc = {"in_flight": self.in_flight, "calls": self.calls[since:]}
                return serve_json(start_response, doc)
            # Only the ECS (JSON) and EC2 (query) calls are logged: the benchmark counts those, and a
            # consumer's SQS long poll, always in flight, or a lease renewal must not look like part
            # of a resync. The benchmark's own changes (`x-bench-driver`) are not logged either.
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if environ.get("HTTP_X_BENCH_DRIVER") or (target and not target.startswith(ECS_TARGET)):
                return super().__call__(environ, start_response)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(raw)  # moto reads the body again
            op, request = operation(environ, raw)
            with self.calls_lock:
                self.in_flight += 1
            started, out = time.time(), []
            try:
                # Gateway's lock is reentrant: taking it here first times the call from when
                # moto starts on it, so the log's order is the order moto served calls in.
                with self.lock:
                    started = time.time()
                    out = super().__call__(environ, start_response)
                return out
            finally:
                entry = [op, False, started, time.time(), 0, False]
                if op == "ListTasks":
                    entry[1] = not request.get("nextToken")
                    try:
                        page = json.loads(b"".join(out) or b"{}")
                        entry[4], entry[5] = len(page.get("taskArns", [])), not page.get("nextToken")
                    except ValueError:
                        pass
                elif op == "DescribeTasks":
                    entry[4] = len(request.get("tasks", []))
                with self.calls_lock:
                    self.in_flight -= 1
                    if op:
                        self.calls.append(entry)

    return LoggingGateway


# [detail-type, resource ARN, detail.version, detail.lastStatus or status, wall clock once queued]
EVENTS, EVENTS_LOCK = [], threading.Lock()


def logging_emit(moto_ecs):
    """Wraps moto_ecs._emit (which every task and instance event goes through) to log each event
    with the time put_events returned: moto's EventBridge delivers to SQS inside that call, so the
    message is on the queue (for a consumer's next poll) from then on."""
    emit = moto_ecs._emit

    def logged(backend, detail_type, detail, resources):
        emit(backend, detail_type, detail, resources)
        entry = [detail_type, (resources or [""])[0], detail.get("version"),
                 detail.get("lastStatus") or detail.get("status"), time.time()]
        with EVENTS_LOCK:
            EVENTS.append(entry)

    moto_ecs._emit = logged


def serve_json(start_response, doc):
    body = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def operation(environ, raw):
    """(operation name, JSON request body or {}) of an ECS (JSON) or EC2 (query) call."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            request = {}
        return target.rsplit(".", 1)[-1], request if isinstance(request, dict) else {}
    if raw:
        action = urllib.parse.parse_qs(raw.decode(errors="replace")).get("Action")
        if action:
            return action[0], {}
    return None, {}


def serve(argv):
    import moto_ecs

    patch_list_tasks_pages()
    logging_emit(moto_ecs)
    moto_ecs.Gateway = logging_gateway(moto_ecs.Gateway)
    return moto_ecs.main(argv)


def populate(argv):
    p = argparse.ArgumentParser(prog="moto_bench.py populate")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--instances", type=int, default=500)
    p.add_argument("--services", type=int, default=200)
    p.add_argument("--tasks-per-service", type=int, default=50)
    args = p.parse_args(argv)
    loopback(p, args.endpoint)
    from fixtures import client, container, create_topology

    started = time.monotonic()
    topo = create_topology(args.endpoint, cluster=CLUSTER, node_cidr="127.0.64.0/22", node_ips=())
    instances = []
    while len(instances) < args.instances:
        n = min(100, args.instances - len(instances))
        out = topo.ec2.run_instances(ImageId=topo.ami, MinCount=n, MaxCount=n, InstanceType="t3.medium",
                                     SubnetId=topo.node_subnet_id, SecurityGroupIds=[topo.security_group_id])
        instances += [(i["InstanceId"], i["PrivateIpAddress"]) for i in out["Instances"]]
    for iid, _ in instances:
        doc = json.dumps({"instanceId": iid})
        topo.ecs.register_container_instance(cluster=CLUSTER, instanceIdentityDocument=doc)
    registered = time.monotonic()
    services = []
    for s in range(args.services):
        name = f"svc{s:03d}"
        td = topo.ecs.register_task_definition(
            family=name, networkMode="bridge",
            containerDefinitions=[container("app", [(8080, 0)], memory=16, cpu=1)],
        )["taskDefinition"]["taskDefinitionArn"]
        topo.ecs.create_service(cluster=CLUSTER, serviceName=name, taskDefinition=td,
                                desiredCount=args.tasks_per_service)
        services.append(name)
    ecs = client(args.endpoint, "ecs")
    running = sum(len(page["taskArns"]) for page in
                  ecs.get_paginator("list_tasks").paginate(cluster=CLUSTER, desiredStatus="RUNNING"))
    print(json.dumps({
        "cluster": CLUSTER, "region": topo.region, "instances": len(instances), "services": services,
        "tasks": running, "instances_seconds": round(registered - started, 1),
        "tasks_seconds": round(time.monotonic() - registered, 1),
        "hosts": [{"instance_id": i, "ip": ip} for i, ip in instances],
    }))
    return 0


def loopback(p, endpoint):
    if urllib.parse.urlparse(endpoint).hostname not in ("127.0.0.1", "localhost"):
        p.error("--endpoint must be on loopback")


def events(argv):
    p = argparse.ArgumentParser(prog="moto_bench.py events")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--queue", action="append", default=[],
                   help="an SQS queue the rule delivers to from now on, instead of earlier ones (repeat)")
    p.add_argument("--table", action="append", default=[], help="a DynamoDB store table (repeat)")
    args = p.parse_args(argv)
    loopback(p, args.endpoint)
    from fixtures import client

    sqs, bus, ddb = (client(args.endpoint, s) for s in ("sqs", "events", "dynamodb"))
    queues, targets = {}, []
    for i, name in enumerate(args.queue):
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queues[name] = url
        targets.append({"Id": f"q{i}", "Arn": arn})
    if targets:
        # The pattern `deploy up` puts on its rule: this cluster's task and instance changes.
        cluster_arn = client(args.endpoint, "ecs").describe_clusters(clusters=[CLUSTER])["clusters"][0]["clusterArn"]
        pattern = {"source": ["aws.ecs"],
                   "detail-type": ["ECS Task State Change", "ECS Container Instance State Change"],
                   "detail": {"clusterArn": [cluster_arn]}}
        bus.put_rule(Name="bench-ecs-events", EventPattern=json.dumps(pattern), State="ENABLED")
        old = [t["Id"] for t in bus.list_targets_by_rule(Rule="bench-ecs-events")["Targets"]]
        if old:
            bus.remove_targets(Rule="bench-ecs-events", Ids=old)
        bus.put_targets(Rule="bench-ecs-events", Targets=targets)
    for name in args.table:
        ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    print(json.dumps({"queues": queues, "tables": args.table}))
    return 0


COMMANDS = {"serve": serve, "populate": populate, "events": events}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
