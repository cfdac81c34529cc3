"""Mid-turn failover of the llm: a response whose llm replica died goes on, on another replica, from what was logged.

The llm keeps a session's KV cache in the replica serving its Session stream (DESIGN.md §5), so when that replica
dies mid-reply the context and the reply in progress are gone with it. Duplex still has everything needed to rebuild
them: the earlier turns in Redis (`History`), the audio of the user turn being answered (`LlmTurnLog`; a typed turn
is in the history already) and the token ids the reply has produced so far (`Response.token_ids`). `LlmFailover`
opens a new stream on any live replica with the context rebuilt from the history, replays the turn's audio, and asks
for the same turn again with those tokens as its prefix (`GenerateResponse.prefix_token_ids`): the new replica feeds
them and continues the reply after them, so the client gets the rest of the reply (text, and speech through the
voicelm stream that stays open) without resending anything and without hearing any part twice. With greedy
sampling the continuation is what the lost replica would have said.

Only when no replica takes the turn (`FAILOVER_DELAYS_S` spent, or the turn's deadline) does the turn fail, the one
way every failure ends (one RESPONSE_DONE with end_reason FAILED and an error code).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
from redis.exceptions import RedisError

from minmo.duplex.latency import now_ms
from minmo.duplex.limits import ProtocolError
from minmo.duplex.links import FAILOVER_DELAYS_S, LinkLost, LlmLink
from minmo.v1 import llm_pb2

if TYPE_CHECKING:
    from minmo.duplex.response import Response

log = logging.getLogger(__name__)
REOPEN_ERRORS = (LinkLost, ProtocolError, grpc.aio.AioRpcError, RedisError, TimeoutError)


class LlmFailover:
    """Continues a response on a new llm stream; `rebuild` opens one whose context is the stored history (the
    conductor's `History.rebuild_llm`, which also tells the turn policy and the client what the new stream says)."""

    def __init__(self, llm: LlmLink, rebuild: Callable[[], Awaitable[None]], session_id: str) -> None:
        self.llm = llm
        self.rebuild = rebuild
        self.session_id = session_id
        self.failovers = 0  # responses continued on another replica

    async def resume(self, response: Response, lost: LinkLost) -> asyncio.Queue:
        """The response's token queue on a new stream that continues it after `response.token_ids`; raises `lost`
        when the turn cannot be continued (its audio outgrew the log, no replica answered, the deadline passed)."""
        audio = self.llm.log.audio_answered_by(response.turn_id)
        if audio is None:
            raise lost
        started = response.timings.generate_sent or now_ms()
        for delay in FAILOVER_DELAYS_S:
            remaining_s = response.timeout_s - (now_ms() - started) / 1000 - delay
            if remaining_s <= 0:
                break
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(remaining_s):
                    queue = await self._reopen(response, audio)
            except REOPEN_ERRORS as error:
                log.warning(
                    "session %s turn %s: llm failover attempt failed: %s", self.session_id, response.turn_id, error
                )
                continue
            self.failovers += 1
            response.timings.failovers.append("llm")
            log.warning(
                "session %s turn %s: %s; continuing the reply after its %d tokens on another replica",
                self.session_id,
                response.turn_id,
                lost,
                len(response.token_ids),
            )
            return queue
        raise lost

    async def _reopen(self, response: Response, audio: list[llm_pb2.AudioInput]) -> asyncio.Queue:
        await self.rebuild()  # the earlier turns (and a typed user turn) from the history
        await self.llm.replay(audio)  # the spoken user turn the reply answers
        queue = self.llm.subscribe(response.turn_id, response.max_tokens)
        request = llm_pb2.GenerateResponse(
            turn_id=response.turn_id,
            trace_context=response.trace_context,
            instruction=response.instruction,
            max_tokens=response.max_tokens,
            prefix_token_ids=response.token_ids,
        )
        await self.llm.write(llm_pb2.LlmRequest(generate_response=request))
        return queue
