"""Fixtures: Python stubs generated from proto/ with grpcio-tools, and a
real ecsmesh-controller process on a loopback port."""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto" / "proto"


def _bin_dir():
    if os.environ.get("ECSMESH_BIN_DIR"):
        return pathlib.Path(os.environ["ECSMESH_BIN_DIR"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(
        pathlib.Path.home() / ".cache" / "ecsmesh" / "target"
    )
    return pathlib.Path(target) / "debug"


@pytest.fixture(scope="session")
def pb():
    """Generates the stubs into a temp dir and imports them."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="ecsmesh-pb-")
    protos = [str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto")]
    rc = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    )
    assert rc == 0, f"protoc failed ({rc})"
    sys.path.insert(0, out)
    from ecsmesh.v1 import (
        dtab_admin_pb2,
        dtab_admin_pb2_grpc,
        mesh_pb2,
        mesh_pb2_grpc,
        policy_admin_pb2,
        policy_admin_pb2_grpc,
    )

    class Stubs:
        admin = dtab_admin_pb2
        admin_grpc = dtab_admin_pb2_grpc
        mesh = mesh_pb2
        mesh_grpc = mesh_pb2_grpc
        policy = policy_admin_pb2
        policy_grpc = policy_admin_pb2_grpc

    return Stubs


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Controller:
    """A running controller binary: its process, ports and a gRPC channel."""

    def __init__(self, proc, channel, grpc_port, admin_port):
        self.proc, self.channel = proc, channel
        self.grpc_port, self.admin_port = grpc_port, admin_port

    def stop(self):
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_controller(tmp_path, *extra_args, env=None):
    """Starts the binary on loopback ports with an empty store and no ECS
    (it publishes at once); `extra_args` and `env` add settings."""
    binary = _bin_dir() / "ecsmesh-controller"
    assert binary.exists(), f"{binary} is missing: build it with `cargo build -p ecsmesh-controller`"
    grpc_port, admin_port = _free_port(), _free_port()
    # A file, not a pipe nobody reads: a full pipe would stall the process.
    log = tmp_path / f"controller-{grpc_port}.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                str(binary),
                "--grpc-addr", f"127.0.0.1:{grpc_port}",
                "--admin-addr", f"127.0.0.1:{admin_port}",
                "--store-dir", str(tmp_path / "store"),
                "--base-dtab", "/svc=>/#/ecs/demo",
                *extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=20)
    except grpc.FutureTimeoutError:
        proc.kill()
        proc.wait()
        raise AssertionError(f"controller did not start: {log.read_text()}")
    return Controller(proc, channel, grpc_port, admin_port)


@pytest.fixture
def controller(tmp_path):
    """A controller with an empty store, no ECS: it publishes at once."""
    c = start_controller(tmp_path)
    yield c.channel
    c.stop()
