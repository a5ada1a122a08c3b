"""Fixtures: a two-host mesh on loopback, every piece real.

- ECS: the patched moto of tests/harness, cluster `protocols`, one container
  instance (host B, 127.0.31.2) running the services `greeter` (gRPC) and
  `echo` (WebSocket), each with a static host port. The controller's ECS
  source gives their endpoints `host_ip` = 127.0.31.2.
- The endpoints: a grpcio (C-core) server and a `websockets` echo server,
  in this process, listening on host B's IP at those host ports.
- The real `ecsmesh-controller`, watching that ECS.
- Two real `ecsmesh-agent`s in linker-to-linker mode, A on 127.0.31.1 and
  B on 127.0.31.2, with the same incoming port; `mesh` is parametrized:
  `plain`, and `mtls` (certificates from `ecsmeshctl certs init`).

A client talks to agent A's outgoing port; A sends to B's incoming port
(the endpoint's host), and B to the endpoint.
"""

import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.server import serve as ws_serve

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "harness"))
from fixtures import MotoServer, aws_env, container, create_topology  # noqa: E402

HOST_A = "127.0.31.1"
HOST_B = "127.0.31.2"
CLUSTER = "protocols"
GRPC_SERVICE = "greeter"
WS_SERVICE = "echo"
PROBE = "ecsmesh.protocols.Probe"  # the gRPC service's name (generic handlers, raw bytes)
# Every variable a client library (grpc, botocore, reqwest) would take a proxy from.
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy")


def bin_dir():
    if os.environ.get("ECSMESH_BIN_DIR"):
        return pathlib.Path(os.environ["ECSMESH_BIN_DIR"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(
        pathlib.Path.home() / ".cache" / "ecsmesh" / "target"
    )
    return pathlib.Path(target) / "debug"


def binary(name):
    path = bin_dir() / name
    assert path.exists(), (
        f"{path} is missing: cargo build -p ecsmesh-agent -p ecsmesh-controller -p ecsmesh-cli --bins"
    )
    return str(path)


def clean_env(**extra):
    """This environment without proxy settings (everything here is loopback),
    and without colours in the logs."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env.update(NO_COLOR="1", **extra)
    return env


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free_on(port, *hosts):
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def common_free_port(*hosts):
    """A port free on every host (both agents' incoming port)."""
    for _ in range(50):
        port = free_port(hosts[0])
        if port_free_on(port, *hosts):
            return port
    raise AssertionError(f"no port free on all of {hosts} after 50 tries")


def http_get(host, port, path, headers=None, timeout=2.0):
    """(status, body) of a GET; no proxy from the environment."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def delegates_to(host, admin_port, service, ip, port):
    """Whether the agent's delegator binds /svc/<service> to a set holding ip:port."""
    status, body = http_get(host, admin_port, f"/admin/delegator?path=/svc/{service}")

    def listed(node):
        if isinstance(node, dict):
            yield from ((e["ip"], e["port"]) for e in node.get("endpoints", []))
            for child in node.values():
                yield from listed(child)
        elif isinstance(node, list):
            for child in node:
                yield from listed(child)

    if status == 200 and (ip, port) in listed(json.loads(body)):
        return True
    raise AssertionError(f"delegator: {status} {body[:600]}")


class Process:
    """A subprocess whose output goes to a log file; stopped at teardown."""

    def __init__(self, name, args, log_dir, env=None):
        self.name = name
        self.log_path = pathlib.Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env or clean_env(),
        )

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, lines=30):
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text[-lines:])

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def wait_for(what, check, timeout, processes=()):
    """Polls `check()` (truthy: done; exceptions count as not yet) until
    `timeout` seconds pass or one of `processes` exits."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
            if last:
                return last
        except Exception as error:  # noqa: BLE001 - reported below if it never succeeds
            last = error
        dead = [p for p in processes if not p.alive()]
        if dead or time.monotonic() > deadline:
            why = f"{dead[0].name} exited" if dead else f"timed out after {timeout}s"
            logs = "\n".join(p.log_tail() for p in processes)
            raise AssertionError(f"waiting for {what}: {why} (last: {last!r})\n{logs}")
        time.sleep(0.05)


# --- The endpoints (on host B) ---------------------------------------------------------


@dataclass
class Endpoints:
    grpc_port: int
    ws_port: int
    # What the servers saw, by the token the test put in its request.
    calls: dict = field(default_factory=dict)
    seen: threading.Condition = field(default_factory=threading.Condition)

    def record(self, token, **info):
        with self.seen:
            self.calls.setdefault(token, {}).update(info)
            self.seen.notify_all()

    def wait_record(self, token, key, timeout=5.0):
        """What the server recorded under `key` for `token`, once it has."""
        with self.seen:
            ok = self.seen.wait_for(lambda: key in self.calls.get(token, {}), timeout=timeout)
        assert ok, f"the endpoint recorded no {key!r} for {token!r} within {timeout}s"
        return self.calls[token][key]


def _grpc_handlers(eps):
    """The Probe service (raw bytes, no codegen). Unary calls record what they
    saw under their request message, the test's token."""

    def via(context):
        return [v for k, v in context.invocation_metadata() if k == "via"]

    def unary(request, context):
        eps.record(request, via=via(context))
        return b"echo:" + request

    def server_stream(request, context):
        for i in range(int(request)):
            yield b"part-%d" % i

    def client_stream(requests, context):
        return b",".join(requests)

    def bidi(requests, context):
        for message in requests:
            yield message.upper()

    def sleep(request, context):
        """Waits until the call ends (its deadline, or the server stopping) or 4 s pass."""
        started = time.monotonic()
        ended = threading.Event()
        context.add_callback(ended.set)
        eps.record(request, time_remaining=context.time_remaining())
        ended.wait(timeout=4.0)
        eps.record(request, ended_after=time.monotonic() - started if ended.is_set() else None)
        return b"too late"

    def fail(request, context):
        context.set_trailing_metadata((("probe-reason", "checked"), ("probe-bin", b"\x00\x01\xfe\xff")))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")

    return grpc.method_handlers_generic_handler(PROBE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })


def _ws_echo(eps):
    def process_request(connection, request):
        """Plain HTTP GET /ping: 200 with the request's Via (the harness's check)."""
        if request.path == "/ping":
            return connection.respond(200, ", ".join(request.headers.get_all("Via")) + "\n")
        return None

    def handler(ws):
        token = ws.request.path
        eps.record(token, via=ws.request.headers.get_all("Via"))
        clean = True
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosedError:  # no close frame, or a protocol error
            clean = False
        eps.record(token, closed_cleanly=clean)

    return handler, process_request


@pytest.fixture(scope="session")
def endpoints():
    """The gRPC and WebSocket servers, on host B's IP, in this process."""
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    grpc_port = grpc_server.add_insecure_port(f"{HOST_B}:0")
    eps = Endpoints(grpc_port=grpc_port, ws_port=0)
    grpc_server.add_generic_rpc_handlers((_grpc_handlers(eps),))
    grpc_server.start()

    handler, process_request = _ws_echo(eps)
    ws_server = ws_serve(handler, HOST_B, 0, process_request=process_request)
    eps.ws_port = ws_server.socket.getsockname()[1]
    ws_thread = threading.Thread(target=ws_server.serve_forever, name="ws-echo", daemon=True)
    ws_thread.start()
    yield eps
    ws_server.shutdown()
    ws_thread.join(timeout=10)
    grpc_server.stop(grace=None).wait(timeout=10)


# --- ECS, the controller, certificates ------------------------------------------------------


@pytest.fixture(scope="session")
def ecs(endpoints):
    """moto's ECS: host B is the one container instance; greeter and echo run
    there with static host ports = the endpoints' ports."""
    with MotoServer(python=sys.executable) as moto:
        topo = create_topology(
            moto.endpoint, cluster=CLUSTER, node_cidr="127.0.31.0/24",
            task_cidr="127.0.32.0/24", node_ips=(HOST_B,),
        )
        for service, port in ((GRPC_SERVICE, endpoints.grpc_port), (WS_SERVICE, endpoints.ws_port)):
            cdef = container(service, [(port, port)], dockerLabels={"ecsmesh.service": service})
            arn = topo.ecs.register_task_definition(
                family=service, networkMode="bridge", containerDefinitions=[cdef]
            )["taskDefinition"]["taskDefinitionArn"]
            topo.ecs.create_service(cluster=CLUSTER, serviceName=service, taskDefinition=arn,
                                    desiredCount=1, launchType="EC2")
            arns = topo.ecs.list_tasks(cluster=CLUSTER, serviceName=service)["taskArns"]
            tasks = topo.ecs.describe_tasks(cluster=CLUSTER, tasks=arns)["tasks"]
            bindings = [(t["lastStatus"], t["containers"][0]["networkBindings"][0]["hostPort"])
                        for t in tasks]
            assert bindings == [("RUNNING", port)], f"{service}: {bindings}"
        yield moto


@pytest.fixture(scope="session")
def controller(ecs, tmp_path_factory):
    """The real controller on ECS (resync every second); yields its gRPC address."""
    logs = tmp_path_factory.mktemp("controller")
    grpc_addr, admin_port = f"127.0.0.1:{free_port()}", free_port()
    proc = Process("controller", [
        binary("ecsmesh-controller"),
        "--cluster", CLUSTER,
        "--aws-endpoint-url", ecs.endpoint,
        "--aws-region", "us-west-1",
        "--resync-interval", "1s",
        "--grpc-addr", grpc_addr,
        "--admin-addr", f"127.0.0.1:{admin_port}",
        "--store-dir", str(logs / "store"),
        "--base-dtab", f"/svc=>/#/ecs/{CLUSTER}",
        # The agents below claim instance ids ECS does not know (host A is no
        # container instance): admit them on credentials, as for agents off ECS.
        "--agent-admission", "credentials",
    ], logs, env=clean_env(**aws_env(ecs.endpoint)))
    try:
        wait_for("the controller's /ready",
                 lambda: http_get("127.0.0.1", admin_port, "/ready")[0] == 200, 30, [proc])
        yield grpc_addr
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A mesh CA and certificates for two agents (`ecsmeshctl certs init`)."""
    out = tmp_path_factory.mktemp("certs") / "mesh"
    subprocess.run([binary("ecsmeshctl"), "certs", "init", "--out", str(out), "--agents", "2"],
                   check=True, capture_output=True, timeout=60, env=clean_env())
    return out


# --- The two agents --------------------------------------------------------------------


@dataclass
class Mesh:
    kind: str
    outgoing_a: tuple  # (host, port): the clients' http_proxy
    incoming_port: int  # the same on both hosts
    admin_a: tuple
    admin_b: tuple
    agents: list


@pytest.fixture(scope="session", params=["plain", "mtls"])
def mesh(request, controller, endpoints, tmp_path_factory):
    """Agents A and B, linker-to-linker, ready and routing to both services."""
    kind = request.param
    logs = tmp_path_factory.mktemp(f"mesh-{kind}")
    incoming = common_free_port(HOST_A, HOST_B)
    ports = {}
    agents = []
    try:
        for n, (name, ip) in enumerate((("a", HOST_A), ("b", HOST_B)), start=1):
            ports[name] = (free_port(ip), free_port(ip))  # outgoing, admin
            tls = []
            if kind == "mtls":
                certs = request.getfixturevalue("certs")
                tls = ["--tls-ca", str(certs / "ca.pem"),
                       "--tls-cert", str(certs / f"agent-{n}.pem"),
                       "--tls-key", str(certs / f"agent-{n}-key.pem")]
            agents.append(Process(f"agent-{name}-{kind}", [
                binary("ecsmesh-agent"),
                "--controller", f"http://{controller}",
                "--host-ip", ip,
                "--instance-id", f"i-protocols-{name}",
                "--cluster", CLUSTER,
                "--mode", "linker-to-linker",
                "--outgoing-port", str(ports[name][0]),
                "--incoming-port", str(incoming),
                "--admin-port", str(ports[name][1]),
                "--state-dir", str(logs / f"state-{name}"),
                "--imds-endpoint", "http://127.0.0.1:1",
                "--summary-interval", "0",
                *tls,
            ], logs))
        admins = {"a": (HOST_A, ports["a"][1]), "b": (HOST_B, ports["b"][1])}
        for name, (ip, port) in admins.items():
            wait_for(f"agent {name}'s /ready", lambda: http_get(ip, port, "/ready")[0] == 200,
                     30, agents)
            for service, ep_port in ((GRPC_SERVICE, endpoints.grpc_port),
                                     (WS_SERVICE, endpoints.ws_port)):
                wait_for(f"agent {name} to know {service}'s endpoint {HOST_B}:{ep_port}",
                         lambda: delegates_to(ip, port, service, HOST_B, ep_port),
                         30, agents)
        yield Mesh(kind, (HOST_A, ports["a"][0]), incoming, admins["a"], admins["b"], agents)
    finally:
        for agent in agents:
            agent.stop()
