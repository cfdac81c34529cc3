"""Full duplex through the five services: with a trained predictor the LLM keeps listening while the reply plays,
and the predictor's decision, not the VAD, says whether the user's speech interrupts it.

The predictor's weights are real (the `tiny` DuplexPredictor, saved where the llm service loads trained weights)
but set to one decision whatever it hears, so each test knows what the predictor says: a backchannel must let the
reply go on; a stop-speaking must interrupt it and answer the user's turn.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from minmo.audio.synthetic import utterance
from minmo.duplex.turn_policy import PATIENCE_MS
from minmo.model.config import load_config
from minmo.model.duplex_predictor import DuplexPredictor
from minmo.v1 import conversation_pb2

from .conftest import MODEL_SERVICES
from .test_conversation import TurnType, _audio_events, _config, _events_until, _text, _turn_types


def _predictor_that_says(decision: str, folder: Path) -> Path:
    """A trained-predictor checkpoint whose output is `decision` for any input (a large bias on that class)."""
    cfg = load_config("tiny").duplex_predictor
    predictor = DuplexPredictor(cfg)
    with torch.no_grad():
        predictor.classifier.weight.zero_()
        predictor.classifier.bias.fill_(-10.0)
        predictor.classifier.bias[cfg.classes.index(decision)] = 10.0
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in predictor.state_dict().items()}
    save_file(weights, str(folder / "duplex_predictor.safetensors"))
    return folder


async def _stack_with_predictor(stack, decision: str, folder: Path, **duplex_env: str):
    checkpoint = str(_predictor_that_says(decision, folder))
    for name in MODEL_SERVICES:
        await stack.start_model_service(name, **({"MINMO_CHECKPOINT": checkpoint} if name == "llm" else {}))
    await stack.start_duplex(MINMO_MAX_RESPONSE_TOKENS="12", **duplex_env)  # the text is done soon after first audio
    return stack


async def _session(stack):
    """A new session with the default turn detection (the trained predictor decides); its SessionStarted read."""
    _channel, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    await call.read()
    return call


async def _reply_playing(call) -> None:
    """Ask a typed question and wait until its reply's audio plays and its text (12 tokens) is long done."""
    await call.write(_text("hello there"))
    await _events_until(call, lambda e: e.HasField("audio_output"))
    await asyncio.sleep(1.0)


async def test_a_backchannel_over_the_reply_lets_it_go_on(stack, tmp_path: Path):
    # paced as served (3 s ahead of playback): unpaced, tiny's 9.6 s reply is all vocoded within about a second, and
    # its RESPONSE_DONE would come before the backchannel is heard
    await _stack_with_predictor(stack, "backchannel", tmp_path / "ckpt", MINMO_AUDIO_LEAD_MS="3000")
    call = await _session(stack)
    await _reply_playing(call)
    for event in _audio_events(utterance(seed=4, lead_s=0.0, speech_s=0.8, tail_s=1.0)):
        await call.write(event)
    events = await _events_until(
        call, lambda e: e.HasField("turn_event") and e.turn_event.type in (TurnType.RESPONSE_DONE,
                                                                           TurnType.RESPONSE_INTERRUPTED),
        timeout_s=120,
    )
    types = _turn_types(events)
    assert TurnType.USER_SPEECH_STARTED in types and TurnType.BACKCHANNEL in types
    assert types[-1] == TurnType.RESPONSE_DONE, f"the reply went on to its end: {types}"
    assert events[-1].turn_event.end_reason != conversation_pb2.TurnEvent.EndReason.INTERRUPTED
    call.cancel()


async def test_stop_speaking_over_the_reply_interrupts_it_and_answers(stack, tmp_path: Path):
    await _stack_with_predictor(stack, "stop_speaking", tmp_path / "ckpt")
    call = await _session(stack)
    await _reply_playing(call)
    for event in _audio_events(utterance(seed=5, lead_s=0.0, speech_s=1.0, tail_s=1.0)):
        await call.write(event)
    events = await _events_until(
        call, lambda e: e.HasField("turn_event") and e.turn_event.type == TurnType.RESPONSE_STARTED, timeout_s=120
    )
    types = _turn_types(events)
    assert TurnType.RESPONSE_INTERRUPTED in types, f"the predictor's stop interrupted the reply: {types}"
    assert types.index(TurnType.USER_SPEECH_STARTED) < types.index(TurnType.RESPONSE_INTERRUPTED), (
        "the user's speech alone did not interrupt; the predictor's decision did"
    )
    assert types[-1] == TurnType.RESPONSE_STARTED, "the barge-in turn is answered"
    call.cancel()


async def test_a_turn_the_predictor_keeps_listening_to_is_answered_after_the_users_silence(stack, tmp_path: Path):
    await _stack_with_predictor(stack, "keep_listening", tmp_path / "ckpt")
    call = await _session(stack)
    for event in _audio_events(utterance(seed=6, speech_s=1.0, tail_s=1.0)):
        await call.write(event)
    stopped = await _events_until(
        call, lambda e: e.HasField("turn_event") and e.turn_event.type == TurnType.USER_SPEECH_STOPPED
    )
    assert TurnType.RESPONSE_STARTED not in _turn_types(stopped)
    waited = asyncio.get_running_loop().time()
    await _events_until(
        call, lambda e: e.HasField("turn_event") and e.turn_event.type == TurnType.RESPONSE_STARTED, timeout_s=60
    )
    assert asyncio.get_running_loop().time() - waited >= PATIENCE_MS / 1000 * 0.9, "answered after the wait"
    call.cancel()


async def _speech_stopped_after(stack, mode) -> tuple[int, int]:
    """One spoken turn (speech ends 1.5 s into the input) in a session of `mode`: the silence in effect, and how long
    after the speech's end USER_SPEECH_STOPPED came, in input audio ms."""
    _channel, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config(turn_detection=conversation_pb2.TurnDetection(mode=mode)))
    started = (await call.read()).session_started
    for event in _audio_events(utterance(seed=7, lead_s=0.5, speech_s=1.0, tail_s=1.0)):
        await call.write(event)
    events = await _events_until(
        call, lambda e: e.HasField("turn_event") and e.turn_event.type == TurnType.USER_SPEECH_STOPPED
    )
    call.cancel()
    return started.turn_detection.silence_ms, events[-1].turn_event.input_offset_ms - 1500


async def test_a_trained_predictor_ends_the_users_turn_after_a_shorter_silence_than_the_vad(stack, tmp_path: Path):
    await _stack_with_predictor(stack, "respond", tmp_path / "ckpt")
    Mode = conversation_pb2.TurnDetection.Mode
    predictor_silence, predictor_stop = await _speech_stopped_after(stack, Mode.PREDICTOR)
    vad_silence, vad_stop = await _speech_stopped_after(stack, Mode.SERVER_VAD)
    assert (predictor_silence, vad_silence) == (200, 500), "SessionStarted says which silence is in effect"
    assert 200 <= predictor_stop < 400 and 500 <= vad_stop < 700, (predictor_stop, vad_stop)


async def test_speech_after_the_predictor_kept_listening_goes_on_with_the_same_turn(stack, tmp_path: Path):
    await _stack_with_predictor(stack, "keep_listening", tmp_path / "ckpt")
    call = await _session(stack)
    first = utterance(seed=8, lead_s=0.5, speech_s=0.8, tail_s=0.6)  # a pause longer than the 200 ms segment end
    rest = utterance(seed=9, lead_s=0.0, speech_s=0.8, tail_s=1.0)
    for event in _audio_events(np.concatenate([first, rest])):
        await call.write(event)
    events = await _events_until(
        call, lambda e: e.HasField("turn_event") and e.turn_event.type == TurnType.RESPONSE_STARTED, timeout_s=60
    )
    heard = [e.turn_event for e in events if e.HasField("turn_event")]
    started = [e.turn_id for e in heard if e.type == TurnType.USER_SPEECH_STARTED]
    stopped = [e.turn_id for e in heard if e.type == TurnType.USER_SPEECH_STOPPED]
    assert len(started) == 2 and len(set(started + stopped)) == 1, f"one user turn, spoken in two parts: {heard}"
    call.cancel()
