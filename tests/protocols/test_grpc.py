"""gRPC through two agents (client -> A's outgoing port -> B's incoming port
-> endpoint), to a grpcio (C-core) server: it refuses a request without
`te: trailers`, so every call here needs the agents to keep it."""

import queue
import re
import subprocess
import time
import uuid

import grpc
import pytest

from conftest import GRPC_SERVICE, PROBE

CALL_TIMEOUT = 5.0  # bounds every call that is not about deadlines


@pytest.fixture
def channel(mesh):
    """A channel to agent A's outgoing port whose :authority names the service."""
    host, port = mesh.outgoing_a
    ch = grpc.insecure_channel(f"{host}:{port}", options=[
        ("grpc.default_authority", GRPC_SERVICE),
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 0),
    ])
    yield ch
    ch.close()


def method(channel, kind, name):
    return getattr(channel, kind)(f"/{PROBE}/{name}")


def test_unary(channel, endpoints):
    """A unary call is answered by the endpoint, and it went through both agents."""
    token = uuid.uuid4().hex.encode()
    reply = method(channel, "unary_unary", "Unary")(token, timeout=CALL_TIMEOUT)
    assert reply == b"echo:" + token
    via = endpoints.wait_record(token, "via")
    assert ", ".join(via).count("ecsmesh") == 2, f"Via at the endpoint: {via}"


def test_server_streaming(channel):
    """Every message of a server stream arrives, in order."""
    replies = method(channel, "unary_stream", "ServerStream")(b"5", timeout=CALL_TIMEOUT)
    assert list(replies) == [b"part-%d" % i for i in range(5)]


def test_client_streaming(channel):
    """Every message of a client stream reaches the endpoint, in order."""
    reply = method(channel, "stream_unary", "ClientStream")(
        iter([b"a", b"bb", b"ccc", b"dddd"]), timeout=CALL_TIMEOUT)
    assert reply == b"a,bb,ccc,dddd"


def test_bidi_streaming(channel):
    """A bidirectional stream is a conversation: each reply arrives before the
    client sends its next message (nothing waits for the end of the request)."""
    outbox = queue.Queue()

    def requests():
        while (message := outbox.get(timeout=CALL_TIMEOUT)) is not None:
            yield message

    call = method(channel, "stream_stream", "Bidi")(requests(), timeout=CALL_TIMEOUT)
    for message in (b"one", b"two", b"three"):
        outbox.put(message)
        assert next(call) == message.upper()
    outbox.put(None)
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK


def test_deadline_is_honoured(channel, endpoints):
    """The client's deadline (grpc-timeout) reaches the endpoint as the call's
    deadline, and a handler slower than it gives DEADLINE_EXCEEDED in about
    the deadline's time, well under the agents' own request timeouts."""
    token = uuid.uuid4().hex.encode()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        method(channel, "unary_unary", "Sleep")(token, timeout=0.5)
    elapsed = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert elapsed < 2.0
    remaining = endpoints.wait_record(token, "time_remaining")
    assert remaining is not None and 0 < remaining <= 0.6, (
        f"the endpoint's deadline: {remaining} s left (grpc-timeout lost on the way?)")
    ended_after = endpoints.wait_record(token, "ended_after")
    assert ended_after is not None and ended_after < 2.0, (
        f"the endpoint's call ended after {ended_after} s")


def test_agent_answers_an_expired_deadline_with_deadline_exceeded(mesh, endpoints, tmp_path):
    """When the mesh gives up on a call at its grpc-timeout, its answer says
    DEADLINE_EXCEEDED (grpc-status 4). curl is the client here: unlike grpcio,
    it has no deadline timer of its own to race the agents' answer."""
    token = uuid.uuid4().hex.encode()
    body = tmp_path / "request"
    body.write_bytes(b"\x00" + len(token).to_bytes(4, "big") + token)
    host, port = mesh.outgoing_a
    started = time.monotonic()
    curl = subprocess.run([
        "curl", "-sS", "--noproxy", "*", "--max-time", "5", "--http2-prior-knowledge",
        "--connect-to", f"{GRPC_SERVICE}:80:{host}:{port}",
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", "grpc-timeout: 500m",
        "--data-binary", f"@{body}", "-o", "/dev/null", "-D", "-",
        f"http://{GRPC_SERVICE}/{PROBE}/Sleep",
    ], capture_output=True, text=True, timeout=10)
    elapsed = time.monotonic() - started
    answer = curl.stdout + curl.stderr
    statuses = re.findall(r"^grpc-status: *(\d+)", curl.stdout, re.M | re.I)
    assert statuses == ["4"], f"the mesh's answer after {elapsed:.2f} s:\n{answer}"
    assert elapsed < 2.0, f"the mesh's answer came after {elapsed:.2f} s:\n{answer}"


def test_status_details_and_trailers_pass_through(channel):
    """An error status, its message and the trailing metadata (text and
    binary) reach the client as the endpoint sent them."""
    with pytest.raises(grpc.RpcError) as err:
        method(channel, "unary_unary", "Fail")(b"x", timeout=CALL_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details() == "bad thing"
    trailers = dict(err.value.trailing_metadata())
    assert trailers.get("probe-reason") == "checked"
    assert trailers.get("probe-bin") == b"\x00\x01\xfe\xff"
