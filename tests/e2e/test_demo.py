"""End to end: scripts/demo.sh (DEMO_NO_WAIT=1) against the patched moto, the real controller,
two real agents (127.0.1.1, 127.0.1.2, linker-to-linker) and real helloworld processes.

Checks the seed's two requests, the gRPC override and its removal, and that the demo
leaves no listener behind. Uses the demo's fixed ports (4140/4141/9990 on 127.0.1.1-2,
127.0.0.1:4321/9991), so it cannot run while a `make demo` is up.

    $HOME/.cache/ecsmesh/venv/bin/python -m pytest tests/e2e -q
"""
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORTS = [(h, p) for h in ("127.0.1.1", "127.0.1.2") for p in (4140, 4141, 9990)] + \
        [("127.0.0.1", 4321), ("127.0.0.1", 9991)]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def listening(host, port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def answers(transcript, command):
    """The output lines that follow each `$ <command>` line."""
    lines = transcript.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == f"$ {command}"]


# "linker-to-linker+tls": the demo's TLS=1 mode (TLS on every hop it owns).
@pytest.fixture(scope="module", params=["linker-to-linker", "direct", "linker-to-linker+tls"])
def transcript(request, tmp_path_factory):
    busy = [f"{h}:{p}" for h, p in PORTS if listening(h, p)]
    if busy:
        pytest.skip(f"demo ports in use (a demo running?): {busy}")
    env = dict(
        os.environ,
        DEMO_NO_WAIT="1",
        DEMO_PROFILE=os.environ.get("DEMO_PROFILE", "debug"),
        DEMO_MODE=request.param.removesuffix("+tls"),
        TLS="1" if request.param.endswith("+tls") else "",
        ECSMESH_DEMO_DIR=str(tmp_path_factory.mktemp("demo")),
    )
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    out = ANSI.sub("", proc.stdout)
    assert proc.returncode == 0, f"{out}\n{proc.stderr}"
    return out


HELLO = r"Hello \(127\.0\.1\.[12]\) World \(127\.0\.1\.[12]\)!!"
HELLO_V2 = r"Hello \(127\.0\.1\.[12]\) World-V2 \(127\.0\.1\.[12]\)!!"


def test_hello_world(transcript):
    got = answers(transcript, "http_proxy=127.0.1.1:4140 curl -s hello")
    assert len(got) >= 3, transcript
    assert all(re.fullmatch(HELLO, a) for a in got[:3]), got


def test_l5d_dtab_header_travels_to_world(transcript):
    got = answers(transcript, "http_proxy=127.0.1.1:4140 curl -s -H 'l5d-dtab: /svc/world => /svc/world-v2' hello")
    assert len(got) == 2 and all(re.fullmatch(HELLO_V2, a) for a in got), got


def test_grpc_override_then_removal(transcript):
    after_set = transcript.split("$ ecsmeshctl dtab set default")[1].split("$ ecsmeshctl dtab delete default")[0]
    routed = re.findall(r"^Hello .*!!$", after_set, re.M)
    assert len(routed) == 3 and all(re.fullmatch(HELLO_V2, a) for a in routed), after_set
    after_delete = transcript.split("$ ecsmeshctl dtab delete default")[1]
    last = answers(after_delete, "http_proxy=127.0.1.1:4140 curl -s hello")
    assert len(last) == 1 and re.fullmatch(HELLO, last[0]), after_delete


def test_status_converged_and_nothing_left_behind(transcript):
    assert "2/2 agents converged" in transcript
    assert [f"{h}:{p}" for h, p in PORTS if listening(h, p)] == []


def test_weighted_canary_sends_about_a_tenth(transcript):
    section = transcript.split("3b. a weighted canary")[1].split("$ ecsmeshctl dtab delete default")[0]
    counts = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s*(\d+) (Hello World(?:-V2)?!!)$", section, re.M)}
    assert sum(counts.values()) == 200, section
    # 10 % of 200 is 20; three standard deviations either side.
    assert 7 <= counts.get("Hello World-V2!!", 0) <= 33, counts


def test_tls_incoming_port_takes_mesh_certificates_only(transcript):
    if "TLS: on every hop" not in transcript:
        pytest.skip("TLS off in this mode")
    section = transcript.split("1b. TLS:")[1].split("2. a per-request override")[0]
    lines = section.splitlines()
    mesh_client = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("$ curl -s --http1.1 --cacert")]
    assert len(mesh_client) == 1 and re.fullmatch(HELLO, mesh_client[0]), section
    # The echoed line, not the command that prints it: a non-zero curl exit.
    assert re.search(r"^refused \(curl exit [1-9][0-9]*\)$", section, re.M), section
    assert re.search(r'^ecsmesh_agent_tls_handshake_failures_total\{listener="incoming",reason="not_tls"\} [1-9]',
                     section, re.M), section
