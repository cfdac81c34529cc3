"""The llm keeps a session's context in the replica serving its stream; when that replica dies mid-reply, duplex
continues the same reply on another replica from what it logged (issue 13, turn-level failover): the history, the
user turn's audio and the tokens produced so far. The user gets the rest of the reply without resending, no error,
one RESPONSE_DONE, and the reply is the one the lost replica would have given (greedy decoding: a fresh session on
the surviving replica answers the same turn with the same text)."""

from __future__ import annotations

import pytest

from minmo.audio.synthetic import utterance
from minmo.session.store import Role
from minmo.v1 import common_pb2, conversation_pb2

from .test_conversation import _audio_events, _config, _events_until, _is_latency, _store, _text

TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
ANSWERED = (EndReason.COMPLETED, EndReason.MAX_TOKENS)
REPLY_TOKENS = "160"  # long enough that the reply is still generating when its replica is stopped
PIECES_BEFORE_LOSS = 5


def _is_assistant_piece(event: conversation_pb2.ServerEvent) -> bool:
    return event.HasField("transcript") and event.transcript.role == common_pb2.ROLE_ASSISTANT


def _is_user_transcript(event: conversation_pb2.ServerEvent) -> bool:
    return event.HasField("transcript") and event.transcript.role == common_pb2.ROLE_USER and event.transcript.is_final


def _reply(events: list[conversation_pb2.ServerEvent]) -> tuple[str, str]:
    """(the streamed pieces joined, the final transcript) of the assistant's reply."""
    pieces = [event.transcript for event in events if _is_assistant_piece(event)]
    return "".join(piece.text for piece in pieces if not piece.is_final), [p.text for p in pieces if p.is_final][-1]


def _user_turn(spoken: bool) -> list[conversation_pb2.ClientEvent]:
    return _audio_events(utterance(seed=1)) if spoken else [_text("tell me about the weather today")]


async def _answer(stub, spoken: bool) -> list[conversation_pb2.ServerEvent]:
    """A fresh session's reply to the same user turn, uninterrupted."""
    call = stub.Converse()
    await call.write(_config(text_only=True))
    await call.read()
    for event in _user_turn(spoken):
        await call.write(event)
    events = await _events_until(call, _is_latency, timeout_s=120)
    call.cancel()
    return events


@pytest.mark.parametrize("spoken", [False, True], ids=["typed", "spoken"])
async def test_an_llm_replica_lost_mid_reply_is_continued_on_another_and_the_turn_completes(stack, spoken):
    for name in ("encoder", "llm", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name, MINMO_GRACE_S="0")
    await stack.start_duplex(MINMO_MAX_RESPONSE_TOKENS=REPLY_TOKENS)
    _, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    started = (await call.read()).session_started
    (serving,) = [host for host in stack.hosts["llm"] if host.active_sessions() > 0]
    for event in _user_turn(spoken):
        await call.write(event)
    pieces = iter(range(PIECES_BEFORE_LOSS, 0, -1))
    before = await _events_until(call, lambda event: _is_assistant_piece(event) and next(pieces) == 1, timeout_s=120)
    await serving.stop()  # mid-reply: its stream, the KV cache and the reply in progress are gone
    after = await _events_until(call, _is_latency, timeout_s=120)
    events = before + after

    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert [event.end_reason in ANSWERED for event in done] == [True], [event.error for event in events]
    assert not any(event.HasField("error") for event in events)
    (other,) = [host for host in stack.hosts["llm"] if host is not serving]
    assert other.active_sessions() == 1, "the session's llm stream now lives on the other replica"
    (report,) = [event.latency_report for event in events if _is_latency(event)]
    assert list(report.failovers) == ["llm"], "the turn's LatencyReport names the hop that failed over"
    streamed, final = _reply(events)
    assert any(_is_assistant_piece(event) for event in after), "the reply went on after the loss"
    assert streamed == final and final, "the client got every piece once, in order"
    if spoken and not any(_is_user_transcript(event) for event in after):
        await _events_until(call, _is_user_transcript, timeout_s=60)  # the new replica transcribes the replayed turn

    history = await (await _store(stack.redis_url)).history(started.session_id)
    assert [(turn.role, turn.outcome) for turn in history] == [(Role.USER, "completed"), (Role.ASSISTANT, "completed")]
    assert history[1].text == final, "the history has the whole reply the user got"
    call.cancel()

    stack.hosts["llm"].remove(serving)
    uninterrupted, _ = _reply(await _answer(stub, spoken))
    assert final == uninterrupted, "the continued reply is the one the lost replica would have given"
