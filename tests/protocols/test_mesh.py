"""The harness's own checks: plain HTTP/1.1 crosses both agents, and the
`mtls` mesh really speaks mutual TLS between them. These pass whatever the
agents do with gRPC and WebSocket, so a failure elsewhere is about those."""

import socket
import ssl

import pytest

from conftest import HOST_B, WS_SERVICE, http_get


def test_http_through_both_hops(mesh):
    """A plain GET through agent A reaches the endpoint via agent B (two Via entries)."""
    status, body = http_get(*mesh.outgoing_a, "/ping", headers={"Host": WS_SERVICE}, timeout=5)
    assert status == 200, body
    assert body.count("ecsmesh") == 2, f"Via at the endpoint: {body!r}"


@pytest.mark.parametrize("mesh", ["mtls"], indirect=True)
def test_incoming_port_is_mutual_tls(mesh, certs):
    """Agent B's incoming port gives no HTTP answer to plaintext, and completes
    a TLS handshake with a mesh certificate (the name agents dial: ecsmesh-agent)."""
    with socket.create_connection((HOST_B, mesh.incoming_port), timeout=5) as plain:
        plain.sendall(f"GET /ping HTTP/1.1\r\nHost: {WS_SERVICE}\r\n\r\n".encode())
        try:
            answer = plain.recv(64)
        except (ConnectionResetError, socket.timeout):
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer

    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "agent-1.pem"), str(certs / "agent-1-key.pem"))
    with socket.create_connection((HOST_B, mesh.incoming_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="ecsmesh-agent") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
