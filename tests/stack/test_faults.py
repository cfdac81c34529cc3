"""CI-sized fault suite: concurrent sessions on two replicas of the llm, voicelm and vocoder; one replica of each is
stopped abruptly (no grace) in turn while every session is taking a turn. No session is lost and no turn either:
the turns in flight fail over and complete (mid-turn failover), so do the turns after each loss, and the history
has every user turn with its answer. `minmo faults` is the full run (separate processes, kill -9, Redis with AOF)."""

from __future__ import annotations

import asyncio

import redis.asyncio

from minmo.reliability.harness import ProbeSession
from minmo.session.store import Role, SessionStore
from minmo.v1 import conversation_pb2

EndReason = conversation_pb2.TurnEvent.EndReason
ANSWERED = (EndReason.COMPLETED, EndReason.MAX_TOKENS)  # the reply was sent in full (tiny's often hit the cap)
SESSIONS = 2
TURNS_AFTER_EACH_LOSS = 1


async def test_losing_a_replica_of_each_component_loses_no_session_and_leaves_no_turn_open(stack):
    for name in ("encoder", "llm", "llm", "voicelm", "voicelm", "vocoder", "vocoder"):
        await stack.start_model_service(name, MINMO_GRACE_S="0")
    await stack.start_duplex()
    probes = [ProbeSession(stack.address("duplex")) for _ in range(SESSIONS)]
    await asyncio.gather(*(probe.open() for probe in probes))

    async def turns(probe: ProbeSession, count: int, label: str) -> None:
        for index in range(count):
            await probe.turn(f"{label} {index}")

    await asyncio.gather(*(turns(probe, 1, "warm") for probe in probes))
    for component in ("llm", "voicelm", "vocoder"):
        before = [len(probe.turns) for probe in probes]
        busy = asyncio.gather(*(turns(probe, 1, f"during {component}") for probe in probes))
        serving = [host for host in stack.hosts[component] if host.active_sessions() > 0] or stack.hosts[component]
        stack.hosts[component].remove(serving[0])
        await serving[0].stop()
        await busy
        await asyncio.gather(*(turns(probe, TURNS_AFTER_EACH_LOSS, f"after {component}") for probe in probes))
        after = [turn.outcome for probe, start in zip(probes, before, strict=True) for turn in probe.turns[start:]]
        assert after and all(outcome in ANSWERED for outcome in after), (component, after)

    assert all(probe.lost is None for probe in probes)
    store = SessionStore(redis.asyncio.Redis.from_url(stack.redis_url, decode_responses=True), ttl_s=3600)
    for probe in probes:
        roles = [turn.role for turn in await store.history(probe.session_id)]
        assert roles == [Role.USER, Role.ASSISTANT] * len(probe.turns), "every user turn has its answer"
    await asyncio.gather(*(probe.close() for probe in probes))
