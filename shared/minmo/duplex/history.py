"""The conversation kept twice — the session's turns in Redis and the LLM's context — and changed in one place.

Redis holds what a resumed session, a rebuilt LLM stream (another replica) and observers read; the LLM's context
is what the next reply is conditioned on. They must say the same thing, above all after a reply was cut short:
both keep only the part of the reply the user heard. Every change goes through `History`, which writes the store
first (a store failure leaves both unchanged) and then the context:

| what happened              | Redis history                              | LLM context                               |
|----------------------------|--------------------------------------------|-------------------------------------------|
| typed user turn            | user turn with its text                    | AppendTurn (a lost stream: rebuilt)       |
| spoken user turn           | user turn, audio length (text comes later) | has the audio embeddings already          |
| its transcript             | the user turn's text filled in             | has the audio already                     |
| reply completed            | assistant turn, full text                  | generated it                              |
| reply interrupted          | assistant turn cut to what was heard       | CancelGeneration, then the heard text     |
| reply failed               | assistant turn with what was heard, failed | CancelGeneration, then the heard text     |
| LLM stream (re)opened      | read                                       | built from the history                    |
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from redis.exceptions import RedisError

from minmo.duplex.limits import ProtocolError
from minmo.duplex.links import LinkLost, LlmLink, history_turn
from minmo.session.store import Role, SessionError, SessionStore, Turn
from minmo.v1 import common_pb2, llm_pb2

log = logging.getLogger(__name__)


class ContextLost(Exception):
    """The LLM context could not take a turn (no live replica, or its rebuild failed); the store has it."""


class History:
    """One session's history and LLM context. `reopen_llm` opens a new LLM stream with a context built from the
    turns it is given (the conductor's, which also maps its failures to client statuses)."""

    def __init__(
        self,
        store: SessionStore,
        llm: LlmLink,
        session_id: str,
        epoch: int,
        system_prompt: str,
        max_response_tokens: int,
        reopen_llm: Callable[[list[Turn]], Awaitable[None]],
    ) -> None:
        self.store = store
        self.llm = llm
        self.session_id = session_id
        self.epoch = epoch
        self.system_prompt = system_prompt
        self.max_response_tokens = max_response_tokens
        self.reopen_llm = reopen_llm

    async def turns(self) -> list[Turn]:
        return await self.store.history(self.session_id)

    def llm_config(self, turns: list[Turn]) -> llm_pb2.LlmSessionConfig:
        """The LLM session whose context is the system prompt and these turns (empty texts skipped)."""
        return llm_pb2.LlmSessionConfig(
            session_id=self.session_id,
            system_prompt=self.system_prompt,
            history=[
                history_turn(turn.role, llm_text(turn.text, turn.voice_instruction)) for turn in turns if turn.text
            ],
            max_response_tokens=self.max_response_tokens,
        )

    async def rebuild_llm(self) -> None:
        """A new LLM stream whose context is the stored history (a lost replica, or a write that failed)."""
        await self.reopen_llm(await self.turns())

    # --- user turns ----------------------------------------------------------------------------------------

    async def user_typed(
        self, turn_id: str, text: str, trace_context: dict[str, str], voice_instruction: str = ""
    ) -> None:
        """Raises RedisError when the store failed (neither has the turn), ContextLost when only the store has it."""
        user = Turn(turn_id, Role.USER, text, 0, voice_instruction=voice_instruction)
        await self.store.append_turn(self.session_id, self.epoch, user)
        text = llm_text(text, voice_instruction)
        append = llm_pb2.AppendTurn(role=common_pb2.ROLE_USER, text=text, turn_id=turn_id, trace_context=trace_context)
        try:
            if self.llm.usable:
                await self.llm.write(llm_pb2.LlmRequest(append_turn=append))
            else:  # the replica died since the last turn: rebuild, the history now holds this turn
                await self.rebuild_llm()
        except (LinkLost, ProtocolError, grpc.aio.AioRpcError, RedisError) as error:
            try:  # one more try: the write found the stream broken, a rebuild goes to a live replica
                await self.rebuild_llm()
            except (LinkLost, ProtocolError, RedisError) as rebuild_error:
                raise ContextLost(str(error)) from rebuild_error

    async def user_spoke(self, turn_id: str, audio_ms: float, voice_instruction: str = "") -> None:
        """The spoken turn's audio is in the LLM context already (its embeddings); the store gets its length now and
        its text when the LLM transcribes it. Raises RedisError."""
        user = Turn(turn_id, Role.USER, "", round(audio_ms), voice_instruction=voice_instruction)
        await self.store.append_turn(self.session_id, self.epoch, user)

    async def user_transcript(self, turn_id: str, text: str) -> None:
        """The transcript is a bonus: losing it costs the turn nothing (logged)."""
        try:
            await self.store.set_turn_text(self.session_id, self.epoch, turn_id, text)
        except (RedisError, SessionError) as error:
            log.warning("session %s: transcript of %s not stored: %s", self.session_id, turn_id, error)

    # --- assistant turns -----------------------------------------------------------------------------------

    async def reply_completed(self, turn_id: str, text: str, audio_ms: float) -> None:
        """The LLM's context has the reply (it generated it). Raises RedisError."""
        await self.store.append_turn(self.session_id, self.epoch, Turn(turn_id, Role.ASSISTANT, text, round(audio_ms)))

    async def reply_interrupted(
        self,
        turn_id: str,
        heard_text: str,
        heard_ms: float,
        audio_ms: float,
        generating: bool,
        trace_context: dict[str, str],
    ) -> None:
        """Both keep only what the user heard. A reply still generating had no turn stored yet (it gets one); a
        reply that finished generating while its audio played is cut back. The LLM already dropped the reply (the
        response's CancelGeneration) and gets the heard part instead. Raises RedisError."""
        if generating:
            turn = Turn(turn_id, Role.ASSISTANT, heard_text, round(audio_ms), True, round(heard_ms))
            await self.store.append_turn(self.session_id, self.epoch, turn)
        else:
            await self.store.truncate_last_assistant_turn(self.session_id, self.epoch, heard_text, round(heard_ms))
        await self._append_heard(turn_id, heard_text, trace_context)

    async def reply_failed(self, turn_id: str, heard_text: str, heard_ms: float) -> None:
        """The failed reply's heard part, marked failed, so no user turn is left without an outcome (a store
        failure is logged: the turn has failed already)."""
        turn = Turn(turn_id, Role.ASSISTANT, heard_text, round(heard_ms), True, round(heard_ms), "failed")
        try:
            await self.store.append_turn(self.session_id, self.epoch, turn)
        except RedisError as error:
            log.warning("session %s turn %s: failed turn not stored: %s", self.session_id, turn_id, error)
        await self._append_heard(turn_id, heard_text, {})

    async def _append_heard(self, turn_id: str, heard_text: str, trace_context: dict[str, str]) -> None:
        """The heard part of a reply into the LLM context; a lost stream is rebuilt from the store at the next turn,
        which holds the same text."""
        append = llm_pb2.AppendTurn(
            role=common_pb2.ROLE_ASSISTANT, text=heard_text, turn_id=turn_id, trace_context=trace_context
        )
        with contextlib.suppress(LinkLost):
            await self.llm.write(llm_pb2.LlmRequest(append_turn=append))


def llm_text(text: str, voice_instruction: str) -> str:
    """A user turn as the LLM reads it: its text, then the voice instruction inside the same turn, as a spoken turn
    has it after its audio (`Dialogue.begin_response`), so the reply's wording can follow it too. The history keeps
    the two apart; a context rebuilt from it reads them the same way again."""
    return f"{text} {voice_instruction}" if voice_instruction else text
