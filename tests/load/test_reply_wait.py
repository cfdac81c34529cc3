"""The load generator's patience with a reply: a reply slower than real time whose audio keeps coming is waited for
(its cost shows as underruns), one whose audio stalls fails after `stall_timeout_s`, and none is waited for past
`max_reply_s`. Times are scaled down (tenths of a second); each case checks when the wait returned."""

from __future__ import annotations

import asyncio
import time

import pytest

from minmo.load.user import Scenario, _Reply, wait_for_reply_end

SCENARIO = Scenario(turn_timeout_s=0.3, stall_timeout_s=0.2, max_reply_s=1.2)
CHUNK_S = 0.1


async def _speak(reply: _Reply, chunks: int, end: bool) -> None:
    """Audio every CHUNK_S (100 ms of it: half real time would be slower), then the reply's end if `end`."""
    for _ in range(chunks):
        await asyncio.sleep(CHUNK_S)
        reply.play(time.monotonic(), 100.0)
    if end:
        reply.ended.set()


@pytest.mark.parametrize(
    ("chunks", "end", "ended", "returns_after_s"),
    [
        (8, True, True, 0.8),  # slow but steady: waited for past turn_timeout_s, to its end
        (1, False, False, 0.3),  # audio stopped early: fails at turn_timeout_s (its stall timeout ran out before)
        (5, False, False, 0.7),  # audio stopped at 0.5 s: fails stall_timeout_s later
        (100, False, False, 1.2),  # audio that never ends: fails at max_reply_s
    ],
    ids=["steady", "stalled-early", "stalled-late", "endless"],
)
async def test_a_reply_is_waited_for_while_its_audio_keeps_coming(chunks, end, ended, returns_after_s):
    asked_at = time.monotonic()
    reply = _Reply("turn", asked_at)
    speaker = asyncio.create_task(_speak(reply, chunks, end))
    await wait_for_reply_end(reply, SCENARIO, asked_at)
    waited_s = time.monotonic() - asked_at
    speaker.cancel()
    assert reply.ended.is_set() == ended
    assert returns_after_s - 0.05 <= waited_s <= returns_after_s + 0.3, waited_s  # late on a busy machine, never early
