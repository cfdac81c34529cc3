"""History: the Redis history and the LLM context change together, store first (real Redis; an LLM hop with no
replica listening, so every context write finds the stream lost)."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio

from minmo.duplex.history import ContextLost, History
from minmo.duplex.links import LinkLost, LlmLink, Replicas
from minmo.session.store import Role, SessionStore, Turn
from minmo.v1 import llm_pb2_grpc


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _ignore(_message) -> None:
    return None


@pytest.fixture
async def history(redis_client: redis.asyncio.Redis, key_prefix: str):
    store = SessionStore(redis_client, ttl_s=600, key_prefix=key_prefix)
    record, token = await store.create({})
    record = await store.claim(record.session_id, token, "replica-a")
    replicas = Replicas("llm", f"127.0.0.1:{_closed_port()}", llm_pb2_grpc.ReasonerStub)
    llm = LlmLink(replicas, _ignore, _ignore)
    rebuilt: list[list[Turn]] = []

    async def reopen_llm(turns: list[Turn]) -> None:
        rebuilt.append(turns)
        await llm.open(history.llm_config(turns))  # no replica listens: LinkLost

    history = History(store, llm, record.session_id, record.epoch, "be brief", 32, reopen_llm)
    yield history, rebuilt
    await replicas.close()


async def test_a_typed_turn_is_stored_before_the_context_and_kept_when_the_llm_is_gone(history) -> None:
    history, rebuilt = history
    with pytest.raises(ContextLost) as lost:
        await history.user_typed("t1", "hello", {})
    assert isinstance(lost.value.__cause__, LinkLost)
    turns = await history.turns()
    assert [(turn.turn_id, turn.role, turn.text) for turn in turns] == [("t1", Role.USER, "hello")]
    assert [[turn.text for turn in attempt] for attempt in rebuilt] == [["hello"], ["hello"]], (
        "a lost stream is rebuilt from the history that now holds the turn, and tried once more"
    )


async def test_the_llm_context_is_the_history_with_its_spoken_turns_still_untranscribed_left_out(
    history,
) -> None:
    history, _ = history
    await history.user_spoke("u1", 1234.4)
    await history.reply_completed("a1", "hi there", 800.0)
    config = history.llm_config(await history.turns())
    assert (config.system_prompt, config.max_response_tokens) == ("be brief", 32)
    assert [turn.text for turn in config.history] == ["hi there"]
    await history.user_transcript("u1", "hello")
    config = history.llm_config(await history.turns())
    assert [turn.text for turn in config.history] == ["hello", "hi there"]
    assert (await history.turns())[0].audio_ms == 1234


async def test_an_interrupted_reply_keeps_only_what_was_heard(history) -> None:
    history, _ = history
    await history.user_spoke("u1", 900.0)
    await history.reply_interrupted("a1", "Hello, I", 400.0, 1200.0, generating=True, trace_context={})
    assistant = (await history.turns())[-1]
    assert (assistant.turn_id, assistant.text, assistant.interrupted) == ("a1", "Hello, I", True)
    assert (assistant.audio_ms, assistant.heard_ms) == (1200, 400)


async def test_a_reply_interrupted_after_it_was_generated_is_cut_back(history) -> None:
    history, _ = history
    await history.user_spoke("u1", 900.0)
    await history.reply_completed("a1", "Hello, I can help with that.", 2000.0)
    await history.reply_interrupted("a1", "Hello, I can", 700.0, 2000.0, generating=False, trace_context={})
    assistant = (await history.turns())[-1]
    assert (assistant.text, assistant.interrupted, assistant.heard_ms) == ("Hello, I can", True, 700)


async def test_a_failed_reply_is_stored_with_what_was_heard_and_marked_failed(history) -> None:
    history, _ = history
    await history.user_spoke("u1", 900.0)
    await history.reply_failed("a1", "Sure", 300.0)
    assistant = (await history.turns())[-1]
    assert (assistant.role, assistant.text, assistant.heard_ms, assistant.outcome) == (
        Role.ASSISTANT,
        "Sure",
        300,
        "failed",
    )


async def test_the_llm_reads_a_typed_turns_voice_instruction_inside_the_turn_and_again_after_a_rebuild(
    history,
) -> None:
    history, rebuilt = history
    with pytest.raises(ContextLost):  # no llm listens; the store has the turn and the rebuild shows the context
        await history.user_typed("t1", "Tell me a joke.", {}, "Please speak very fast.")
    stored = (await history.turns())[0]
    assert (stored.text, stored.voice_instruction) == ("Tell me a joke.", "Please speak very fast.")
    config = history.llm_config(rebuilt[-1])
    assert [turn.text for turn in config.history] == ["Tell me a joke. Please speak very fast."]
