"""Issue #16: every bound on what clients send the controller, attacked
through the real binary (loopback only, bounded loops, every process
stopped at teardown)."""

import json
import queue
import re
import time
import urllib.error
import urllib.request

import grpc
import pytest

from conftest import start_controller

TOKEN = "s3cret-token"
DEADLINE_S = 60


@pytest.fixture
def start(tmp_path):
    """Starts controllers with extra settings; stops them all at teardown."""
    started = []

    def run(*args, env=None):
        c = start_controller(tmp_path, *args, env=env)
        started.append(c)
        return c

    yield run
    for c in started:
        c.stop()


def http_get(port, path, token=None):
    """(status, body bytes) of GET http://127.0.0.1:port/path."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(port, name, labels=""):
    """The value of one series in the controller's /metrics, 0 if absent."""
    _, body = http_get(port, "/metrics")
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_oversized_dtab_is_refused_and_nothing_is_stored(pb, start):
    c = start()
    api = pb.admin_grpc.DtabAdminStub(c.channel)
    entry = "/svc/a=>/svc/b;"
    big = entry * (65536 // len(entry) + 1)  # just over the 64 KiB default
    with pytest.raises(grpc.RpcError) as err:
        api.CreateDtab(pb.admin.CreateDtabRequest(namespace="default", dtab=big))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 65536 bytes" in err.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        api.GetDtab(pb.admin.GetDtabRequest(namespace="default"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # Update: refused too, the stored dtab unchanged.
    created = api.CreateDtab(pb.admin.CreateDtabRequest(namespace="default", dtab=entry))
    with pytest.raises(grpc.RpcError) as err:
        api.UpdateDtab(
            pb.admin.UpdateDtabRequest(namespace="default", dtab=big, expected_version=created.version)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = api.GetDtab(pb.admin.GetDtabRequest(namespace="default"))
    assert (got.dtab, got.version) == ("/svc/a=>/svc/b", created.version)

    # Far past the limit the decoder refuses the request unread (tonic's
    # default would have taken 4 MiB).
    with pytest.raises(grpc.RpcError) as err:
        api.CreateDtab(pb.admin.CreateDtabRequest(namespace="huge", dtab=entry * 100_000))
    assert err.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert list(api.ListNamespaces(pb.admin.ListNamespacesRequest()).namespaces) == ["default"]
    assert metric(c.admin_port, "ecsmesh_controller_dtab_writes_refused_total", 'reason="dtab_too_large"') == 2


def test_namespaces_stop_at_the_limit(pb, start):
    # The bound set through its environment variable.
    c = start(env={"ECSMESH_MAX_NAMESPACES": "3"})
    api = pb.admin_grpc.DtabAdminStub(c.channel)
    for ns in ("a", "b", "c"):
        api.CreateDtab(pb.admin.CreateDtabRequest(namespace=ns, dtab="/x=>/y"))
    with pytest.raises(grpc.RpcError) as err:
        api.CreateDtab(pb.admin.CreateDtabRequest(namespace="d", dtab="/x=>/y"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_namespaces" in err.value.details()
    names = set(api.ListNamespaces(pb.admin.ListNamespacesRequest()).namespaces)
    assert "d" not in names and {"a", "b", "c"} <= names
    # A delete makes room again.
    api.DeleteDtab(pb.admin.DeleteDtabRequest(namespace="a"))
    api.CreateDtab(pb.admin.CreateDtabRequest(namespace="d", dtab="/x=>/y"))
    assert metric(c.admin_port, "ecsmesh_controller_dtab_writes_refused_total", 'reason="too_many_namespaces"') == 1


def test_errors_quote_only_a_bounded_prefix_of_a_long_name(pb, start):
    c = start()
    api = pb.admin_grpc.DtabAdminStub(c.channel)
    name = "n" * 10_000
    calls = [
        lambda: api.CreateDtab(pb.admin.CreateDtabRequest(namespace=name, dtab="/x=>/y")),
        lambda: api.UpdateDtab(pb.admin.UpdateDtabRequest(namespace=name, dtab="/x=>/y", expected_version=b"1")),
        lambda: api.DeleteDtab(pb.admin.DeleteDtabRequest(namespace=name)),
        lambda: api.GetDtab(pb.admin.GetDtabRequest(namespace=name)),
        lambda: api.Delegate(pb.admin.DelegateRequest(namespace=name, path="/svc/a")),
        lambda: api.Resolve(pb.admin.ResolveRequest(namespace=name, path="/svc/a")),
        lambda: api.Delegate(pb.admin.DelegateRequest(namespace="default", path="/svc/" + "p" * 10_000 + " x")),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert len(err.value.details()) < 200, err.value.details()[:300]
    status, body = http_get(c.admin_port, f"/api/delegate?namespace={name}&path=/svc/a")
    assert status == 404
    assert len(body) < 200, body[:300]
    assert metric(c.admin_port, "ecsmesh_controller_dtab_writes_refused_total", 'reason="invalid_namespace"') == 3


def _summary(pb, names, requests=1):
    return pb.mesh.AgentMessage(
        summary=pb.mesh.TrafficSummary(
            agent_start_unix=1.0,
            services=[
                pb.mesh.ServiceTraffic(
                    service=n, direction="outgoing", requests=requests, successes=requests,
                    latency_counts=[requests] + [0] * 19,
                )
                for n in names
            ],
        )
    )


def _agent(pb, channel):
    """An agent stream: (outbox queue, replies). Put None to end it."""
    outbox = queue.Queue()
    outbox.put(pb.mesh.AgentMessage(hello=pb.mesh.Hello(instance_id="i-flood", host_ip="127.0.1.9")))

    def requests():
        while (msg := outbox.get()) is not None:
            yield msg

    replies = pb.mesh_grpc.MeshStub(channel).Stream(requests())
    assert next(replies).WhichOneof("kind") == "snapshot"
    return outbox, replies


def _wait_for(what, done):
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_flood_of_service_names_keeps_memory_and_the_overview_bounded(pb, start):
    c = start()
    outbox, replies = _agent(pb, c.channel)
    # A first summary, so the baseline includes a warmed-up traffic map.
    outbox.put(_summary(pb, ["/svc/warm"]))
    _wait_for("the first summary", lambda: metric(c.admin_port, "ecsmesh_controller_traffic_services") == 1)
    before = rss_kib(c.proc.pid)

    # 100,000 invented names, 1,000 a summary (the per-summary bound).
    for batch in range(100):
        outbox.put(_summary(pb, [f"/svc/attack-{batch:03}-{i:04}" for i in range(1000)]))
    dropped = 'reason="service_limit"'
    _wait_for(
        "every summary",
        lambda: metric(c.admin_port, "ecsmesh_controller_summary_services_dropped_total", dropped) >= 90_001,
    )
    assert metric(c.admin_port, "ecsmesh_controller_traffic_services") == 10_000
    growth_mib = (rss_kib(c.proc.pid) - before) / 1024
    assert growth_mib < 30, f"RSS grew {growth_mib:.1f} MiB"

    status, body = http_get(c.admin_port, "/api/overview")
    assert status == 200
    assert len(body) < 1_000_000, len(body)
    overview = json.loads(body)
    assert overview["summary"]["services"] == 10_000
    assert len(overview["services"]) <= 1_000

    # Past 1,000 services in one summary, the rest is dropped and counted.
    outbox.put(_summary(pb, [f"/svc/wide-{i}" for i in range(1500)]))
    _wait_for(
        "the wide summary",
        lambda: metric(
            c.admin_port, "ecsmesh_controller_summary_services_dropped_total", 'reason="summary_limit"'
        ) == 500,
    )

    # A message over 256 KiB ends the stream with a clear status.
    outbox.put(_summary(pb, ["/svc/" + "x" * 300_000]))
    with pytest.raises(grpc.RpcError) as err:
        for _ in range(100):
            next(replies)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_summary_bytes" in err.value.details()
    assert metric(c.admin_port, "ecsmesh_controller_agent_messages_refused_total", 'reason="too_large"') == 1
    outbox.put(None)
    # The agent is gone, and with it its hold on the names.
    _wait_for("the names to be released", lambda: metric(c.admin_port, "ecsmesh_controller_traffic_services") == 0)


def test_admin_http_reads_follow_admin_reads(start, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    c = start("--admin-token-file", str(token_file), "--admin-reads", "authenticated")
    for path in ("/api/delegate?path=/svc/world", "/api/overview", "/agents"):
        assert http_get(c.admin_port, path)[0] == 401, path
        assert http_get(c.admin_port, path, token="wrong")[0] == 403, path
        assert http_get(c.admin_port, path, token=TOKEN)[0] == 200, path
    # The page, the metrics and the probes stay open.
    for path in ("/", "/metrics", "/live"):
        assert http_get(c.admin_port, path)[0] == 200, path

    # With reads open (the default) nothing needs a token.
    open_reads = start()
    assert http_get(open_reads.admin_port, "/api/delegate?path=/svc/world")[0] == 200


def test_only_holders_of_the_agent_token_follow_the_mesh_stream(pb, start, tmp_path):
    """A made-up Hello without the agent token (or with a guessed one, or
    with the admin token) gets nothing and is counted; the token's holder
    gets the snapshot."""
    agent_token = tmp_path / "agent-token"
    agent_token.write_text("agent-" + TOKEN + "\n")
    admin_token = tmp_path / "admin-token"
    admin_token.write_text(TOKEN + "\n")
    c = start("--agent-token-file", str(agent_token), "--admin-token-file", str(admin_token))
    hello = pb.mesh.AgentMessage(hello=pb.mesh.Hello(instance_id="i-rogue", host_ip="127.0.1.9"))

    def first_reply(token):
        metadata = [("authorization", f"Bearer {token}")] if token else None
        replies = pb.mesh_grpc.MeshStub(c.channel).Stream(iter([hello]), metadata=metadata, timeout=10)
        return next(replies)

    for token, code, reason in ((None, grpc.StatusCode.UNAUTHENTICATED, "no_token"),
                                ("guess", grpc.StatusCode.PERMISSION_DENIED, "bad_token"),
                                (TOKEN, grpc.StatusCode.PERMISSION_DENIED, "bad_token")):
        with pytest.raises(grpc.RpcError) as refused:
            first_reply(token)
        assert refused.value.code() == code, refused.value.details()
    assert metric(c.admin_port, "ecsmesh_controller_agent_streams_refused_total", 'reason="no_token"') == 1
    assert metric(c.admin_port, "ecsmesh_controller_agent_streams_refused_total", 'reason="bad_token"') == 2
    status, body = http_get(c.admin_port, "/agents", token=TOKEN)
    assert status == 200 and b"i-rogue" not in body, body

    assert first_reply("agent-" + TOKEN).WhichOneof("kind") == "snapshot"
