"""WebSocket through two agents (client -> A's outgoing port -> B's incoming
port -> endpoint), plain and with mTLS between the agents: the upgrade must
cross both hops, then the connection carries frames both ways."""

import socket
import uuid

from websockets.sync.client import connect

from conftest import WS_SERVICE

MESSAGES = [
    "hello",
    "ünïcödé ✓",
    b"\x00\x01\x02\xff",
    "x" * 70_000,  # several TCP segments, a 64-bit frame length
    bytes(range(256)) * 300,
]


def open_ws(mesh, path):
    """A WebSocket client on a TCP connection to agent A's outgoing port; the
    URI's host (the Host header) names the service."""
    sock = socket.create_connection(mesh.outgoing_a, timeout=5)
    return connect(f"ws://{WS_SERVICE}{path}", sock=sock, open_timeout=5, close_timeout=5)


def test_websocket_echo_through_both_hops(mesh, endpoints):
    """Text and binary messages are echoed through both agents, and the
    connection closes cleanly on both ends."""
    path = f"/echo?token={uuid.uuid4().hex}"
    with open_ws(mesh, path) as ws:
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(timeout=5) == message
    assert ws.close_code == 1000
    via = endpoints.wait_record(path, "via")
    assert ", ".join(via).count("ecsmesh") == 2, f"Via at the endpoint: {via}"
    assert endpoints.wait_record(path, "closed_cleanly") is True

