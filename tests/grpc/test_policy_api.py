"""Issue #18: the PolicyAdmin API through the real controller binary with
Python's grpcio (loopback only, every process stopped at teardown): writes
need the token, every policy is validated with a positioned error and
nothing half-valid is stored, compare-and-set, the bounds (policy size,
request size, number of policies, echo of long input), explain, and the
policies agents are streamed."""

import json
import queue
import re
import time
import urllib.request

import grpc
import pytest

from conftest import start_controller

TOKEN = "policy-s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture
def start(tmp_path):
    started = []

    def run(*args, env=None):
        c = start_controller(tmp_path, "--admin-token-file", str(_token_file(tmp_path)), *args, env=env)
        started.append(c)
        return c

    yield run
    for c in started:
        c.stop()


def _token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


def metric(port, name, labels):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        body = r.read().decode()
    m = re.search("^" + re.escape(name + "{" + labels + "}") + r" (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def test_policies_are_written_with_the_token_validated_and_compare_and_set(pb, start):
    c = start()
    api = pb.policy_grpc.PolicyAdminStub(c.channel)

    # No token, a wrong token: refused, nothing stored.
    with pytest.raises(grpc.RpcError) as err:
        api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc/a", policy="{}"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        api.CreatePolicy(
            pb.policy.CreatePolicyRequest(prefix="/svc/a", policy="{}"),
            metadata=(("authorization", "Bearer wrong"),),
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert list(api.ListPolicies(pb.policy.ListPoliciesRequest()).policies) == []

    # A policy that does not parse: the line and column; out of range: the field.
    for text, expected in [
        ("timeouts:\n  total: 2s\n  bogus: 1\n", "line 3, column 3"),
        ('{"retries": {"max_attempts": 0}}', "retries.max_attempts: 0 is outside 1 to 10"),
        ("timeouts: {total: 1s, attempt: 2s}", "timeouts.attempt: 2s is longer than timeouts.total (1s)"),
        ("grpc: {retryable: [NOPE]}", 'grpc.retryable: "NOPE" is not a gRPC status code'),
        ("balancer: {kind: random}", "balancer.kind"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc/a", policy=text), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, text
        assert expected in err.value.details(), err.value.details()
    assert list(api.ListPolicies(pb.policy.ListPoliciesRequest()).policies) == []
    assert metric(c.admin_port, "ecsmesh_controller_policy_writes_refused_total", 'reason="invalid_policy"') == 5

    # Stored in canonical form, under the canonical prefix.
    created = api.CreatePolicy(
        pb.policy.CreatePolicyRequest(
            prefix="/svc/a", policy="retries:\n  max_attempts: 3\nclassifier: io.l5d.http.retryableRead5XX\n"
        ),
        metadata=AUTH,
    )
    assert json.loads(created.policy) == {"retries": {"max_attempts": 3}, "classifier": "retryableRead5XX"}
    with pytest.raises(grpc.RpcError) as err:
        api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc/a", policy="{}"), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Compare-and-set: a stale version is refused and changes nothing.
    with pytest.raises(grpc.RpcError) as err:
        api.UpdatePolicy(
            pb.policy.UpdatePolicyRequest(prefix="/svc/a", policy="{}", expected_version=b"12345"),
            metadata=AUTH,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    got = api.GetPolicy(pb.policy.GetPolicyRequest(prefix="/svc/a"))
    assert (got.policy, got.version) == (created.policy, created.version)
    updated = api.UpdatePolicy(
        pb.policy.UpdatePolicyRequest(prefix="/svc/a", policy="zone_aware: false", expected_version=created.version),
        metadata=AUTH,
    )
    assert int(updated.version) > int(created.version)

    # Explain: the longest stored prefix, label by label.
    api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc", policy="{}"), metadata=AUTH)
    e = api.ExplainPolicy(pb.policy.ExplainPolicyRequest(service="/svc/a/b"))
    assert [(x.prefix, x.stored, x.chosen) for x in e.candidates] == [
        ("/svc/a/b", False, False),
        ("/svc/a", True, True),
        ("/svc", True, False),
    ]
    assert e.chosen.prefix == "/svc/a" and e.chosen.version == updated.version
    e = api.ExplainPolicy(pb.policy.ExplainPolicyRequest(service="/svc/ab"))
    assert e.chosen.prefix == "/svc", "a prefix matches whole labels only"


def test_the_bounds_on_policies(pb, start):
    c = start(env={"ECSMESH_MAX_POLICIES": "2"})
    api = pb.policy_grpc.PolicyAdminStub(c.channel)

    # Over the 16 KiB policy limit: refused with the sizes, nothing stored.
    big = "# " + "x" * (17 * 1024) + "\n{}"
    with pytest.raises(grpc.RpcError) as err:
        api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc/a", policy=big), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 16384 bytes" in err.value.details()
    # Far past it the decoder refuses the request unread.
    with pytest.raises(grpc.RpcError) as err:
        api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc/a", policy="x" * 4_000_000), metadata=AUTH)
    assert err.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)

    # Long or invalid prefixes: a bounded message, never the input echoed.
    for prefix in ["/svc/" + "p" * 10_000, "svc" * 5_000, "/", "/a b"]:
        with pytest.raises(grpc.RpcError) as err:
            api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix=prefix, policy="{}"), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, prefix[:20]
        assert len(err.value.details()) < 400, err.value.details()[:500]
    with pytest.raises(grpc.RpcError) as err:
        api.ExplainPolicy(pb.policy.ExplainPolicyRequest(service="/svc/" + "q" * 10_000 + " x"))
    assert len(err.value.details()) < 400

    # The number of policies: the third is refused; updates still pass.
    for prefix in ("/svc/a", "/svc/b"):
        api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix=prefix, policy="{}"), metadata=AUTH)
    with pytest.raises(grpc.RpcError) as err:
        api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc/c", policy="{}"), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_policies" in err.value.details()
    assert [p.prefix for p in api.ListPolicies(pb.policy.ListPoliciesRequest()).policies] == ["/svc/a", "/svc/b"]
    assert metric(c.admin_port, "ecsmesh_controller_policy_writes_refused_total", 'reason="too_many_policies"') == 1


def test_agents_are_streamed_the_policies(pb, start):
    """The snapshot a new agent gets carries the stored policies; a change
    comes as a delta naming the changed and the removed prefixes."""
    c = start()
    api = pb.policy_grpc.PolicyAdminStub(c.channel)
    api.CreatePolicy(
        pb.policy.CreatePolicyRequest(prefix="/svc/payments", policy="timeouts: {total: 2s}"), metadata=AUTH
    )
    api.CreatePolicy(pb.policy.CreatePolicyRequest(prefix="/svc/gone", policy="{}"), metadata=AUTH)
    time.sleep(0.3)  # past the reconciler's debounce
    outbox = queue.Queue()
    outbox.put(pb.mesh.AgentMessage(hello=pb.mesh.Hello(instance_id="i-policy", host_ip="127.0.1.9")))

    def requests():
        while (msg := outbox.get()) is not None:
            yield msg

    replies = pb.mesh_grpc.MeshStub(c.channel).Stream(requests(), timeout=30)
    try:
        first = next(replies)
        assert first.WhichOneof("kind") == "snapshot"
        policies = {p.prefix: p for p in first.snapshot.policies}
        assert set(policies) == {"/svc/payments", "/svc/gone"}
        assert json.loads(policies["/svc/payments"].policy) == {"timeouts": {"total": "2s"}}
        outbox.put(pb.mesh.AgentMessage(ack=pb.mesh.Ack(version=first.snapshot.version)))

        current = api.GetPolicy(pb.policy.GetPolicyRequest(prefix="/svc/payments"))
        api.UpdatePolicy(
            pb.policy.UpdatePolicyRequest(
                prefix="/svc/payments", policy="timeouts: {total: 1s}", expected_version=current.version
            ),
            metadata=AUTH,
        )
        api.DeletePolicy(pb.policy.DeletePolicyRequest(prefix="/svc/gone"), metadata=AUTH)
        changed, removed = {}, set()
        deadline = time.monotonic() + 20
        while "/svc/gone" not in removed or "/svc/payments" not in changed:
            assert time.monotonic() < deadline, "no delta with the policy changes"
            msg = next(replies)
            assert msg.WhichOneof("kind") == "delta", msg.WhichOneof("kind")
            changed.update({p.prefix: p.policy for p in msg.delta.policies})
            removed.update(msg.delta.removed_policies)
            outbox.put(pb.mesh.AgentMessage(ack=pb.mesh.Ack(version=msg.delta.version)))
        assert json.loads(changed["/svc/payments"]) == {"timeouts": {"total": "1s"}}
    finally:
        outbox.put(None)
        replies.cancel()
