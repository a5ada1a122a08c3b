"""The controller's gRPC API, exercised by a client that is not ours: Python
grpcio with stubs generated from proto/ecsmesh/v1/*.proto."""

import queue
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def test_dtab_crud_with_compare_and_set(pb, controller):
    api = pb.admin_grpc.DtabAdminStub(controller)
    created = api.CreateDtab(
        pb.admin.CreateDtabRequest(namespace="default", dtab="/svc/world => /svc/world-v2;")
    )
    assert created.dtab == "/svc/world=>/svc/world-v2"
    assert created.effective_dtab == "/svc=>/#/ecs/demo;/svc/world=>/svc/world-v2"

    updated = api.UpdateDtab(
        pb.admin.UpdateDtabRequest(
            namespace="default", dtab="/svc/world=>/svc/world-v3", expected_version=created.version
        )
    )
    assert updated.version != created.version

    # A stale version: FAILED_PRECONDITION, and nothing is written.
    with pytest.raises(grpc.RpcError) as stale:
        api.UpdateDtab(
            pb.admin.UpdateDtabRequest(
                namespace="default", dtab="/svc/x=>/svc/y", expected_version=created.version
            )
        )
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A malformed dtab: INVALID_ARGUMENT with the parser's position.
    with pytest.raises(grpc.RpcError) as bad:
        api.UpdateDtab(
            pb.admin.UpdateDtabRequest(
                namespace="default", dtab="/svc/x=>/svc/y |", expected_version=updated.version
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "error at offset 16" in bad.value.details()

    got = api.GetDtab(pb.admin.GetDtabRequest(namespace="default"))
    assert got.dtab == "/svc/world=>/svc/world-v3"
    assert got.version == updated.version
    assert list(api.ListNamespaces(pb.admin.ListNamespacesRequest()).namespaces) == ["default"]

    with pytest.raises(grpc.RpcError) as missing:
        api.GetDtab(pb.admin.GetDtabRequest(namespace="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_agent_stream_snapshot_then_delta(pb, controller):
    mesh = pb.mesh_grpc.MeshStub(controller)
    outbox = queue.Queue()
    outbox.put(
        pb.mesh.AgentMessage(
            hello=pb.mesh.Hello(instance_id="i-py", host_ip="127.0.1.9", namespace="default")
        )
    )

    def requests():
        while True:
            msg = outbox.get()
            if msg is None:
                return
            yield msg

    replies = mesh.Stream(requests())
    first = next(replies)
    assert first.WhichOneof("kind") == "snapshot"
    assert [(d.namespace, d.dtab) for d in first.snapshot.dtabs] == [("default", "/svc=>/#/ecs/demo")]
    outbox.put(pb.mesh.AgentMessage(ack=pb.mesh.Ack(version=first.snapshot.version)))

    api = pb.admin_grpc.DtabAdminStub(controller)
    api.CreateDtab(pb.admin.CreateDtabRequest(namespace="default", dtab="/svc/a=>/svc/b"))
    second = next(replies)
    assert second.WhichOneof("kind") == "delta"
    assert second.delta.base_version == first.snapshot.version
    assert second.delta.dtabs[0].dtab == "/svc=>/#/ecs/demo;/svc/a=>/svc/b"
    outbox.put(pb.mesh.AgentMessage(ack=pb.mesh.Ack(version=second.delta.version)))

    status = pb.mesh_grpc.MeshStatusStub(controller)
    for _ in range(100):
        agents = status.ListAgents(pb.mesh.ListAgentsRequest()).agents
        if agents and agents[0].acked_version == second.delta.version:
            break
        threading.Event().wait(0.05)
    assert agents[0].instance_id == "i-py"
    assert agents[0].acked_version == second.delta.version
    outbox.put(None)
    replies.cancel()


def test_health_and_reflection(controller):
    health = health_pb2_grpc.HealthStub(controller)
    for service in ("", "ecsmesh.v1.Mesh", "ecsmesh.v1.DtabAdmin", "ecsmesh.v1.MeshStatus"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

    refl = reflection_pb2_grpc.ServerReflectionStub(controller)
    replies = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for s in next(replies).list_services_response.service}
    assert {"ecsmesh.v1.Mesh", "ecsmesh.v1.DtabAdmin", "ecsmesh.v1.MeshStatus"} <= services
