"""Health, reflection and graceful shutdown of the front door."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from minmo.v1 import conversation_pb2

from .test_conversation import _config, _events_until, _is_latency, _text

TurnType = conversation_pb2.TurnEvent.Type


def _describe(address: str) -> tuple[set[str], int]:
    """What a grpcurl-style client sees (sync reflection client, so it runs in a thread)."""
    with grpc.insecure_channel(address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        request = health_pb2.HealthCheckRequest(service="minmo.v1.Conversation")
        return services, health_pb2_grpc.HealthStub(channel).Check(request).status


async def test_health_and_reflection_describe_the_public_api(stack):
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    await stack.start_duplex(MINMO_REFLECTION="1")
    services, status = await asyncio.to_thread(_describe, stack.address("duplex"))
    assert {"minmo.v1.Conversation", "grpc.health.v1.Health"} <= services
    assert status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_is_off_unless_enabled(full_stack):
    """Reflection tells anyone who reaches a port what it serves: off by default (MINMO_REFLECTION=1 turns it on)."""
    for name in ("duplex", "llm"):
        with pytest.raises(grpc.RpcError) as error:
            await asyncio.to_thread(_describe, full_stack.address(name))
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_shutdown_stops_new_sessions_but_drains_the_turn_in_flight(full_stack):
    _, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    await call.read()
    await call.write(_text("finish what you are saying"))
    await _events_until(call, lambda event: event.HasField("turn_event"))  # RESPONSE_STARTED: the turn is in flight
    duplex = full_stack.hosts["duplex"][0]
    stopping = asyncio.create_task(duplex.stop())
    await asyncio.sleep(0)  # let stop() begin
    status = await duplex.health.Check(health_pb2.HealthCheckRequest(), None)
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING, "load balancers stop sending sessions"
    events = await _events_until(call, _is_latency)
    assert TurnType.RESPONSE_DONE in [event.turn_event.type for event in events if event.HasField("turn_event")]
    call.cancel()
    await stopping
