"""CI-sized fuzzing of every RPC (hypothesis, the same inputs every run): no call ends with UNKNOWN or INTERNAL,
every service still serves, and a session opened before the fuzzing still completes a turn after it.
`minmo fuzz` is the big run."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from minmo.reliability.fuzz import RPCS, FuzzTally, fuzz_rpc

from .test_conversation import _config, _events_until, _is_latency, _text

EXAMPLES_PER_RPC = 60


async def test_fuzzed_calls_get_documented_statuses_and_cost_a_healthy_session_nothing(full_stack):
    _, stub = full_stack.conversation()
    healthy = stub.Converse()
    await healthy.write(_config(text_only=True))
    await healthy.read()
    tally = FuzzTally()
    with contextlib.ExitStack() as channels:
        opened = {
            name: channels.enter_context(grpc.insecure_channel(full_stack.address(name)))
            for name in ("duplex", "encoder", "llm", "voicelm", "vocoder")
        }
        for rpc in RPCS:
            await asyncio.to_thread(fuzz_rpc, opened.__getitem__, rpc, EXAMPLES_PER_RPC, tally)
    assert tally.inputs == EXAMPLES_PER_RPC * len(RPCS)
    assert tally.forbidden == [], tally.forbidden
    one_code = {rpc: dict(codes) for rpc, codes in tally.codes.items() if len(codes) < 2}
    assert not one_code, f"every RPC's inputs must reach past its first check: {one_code}"
    await healthy.write(_text("still there?"))
    events = await _events_until(healthy, _is_latency)
    assert not any(event.HasField("error") for event in events), events
    healthy.cancel()
