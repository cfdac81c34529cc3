"""What duplex keeps of the utterance in progress for an encoder replay: every message since the last
acknowledged flush, in order, within a bound; past the bound, nothing until the utterances it cut are flushed.
And for an llm failover: the audio of the user turn the last response answers."""

import torch

from minmo.api.tensors import tensor_to_proto
from minmo.duplex.replay import LlmTurnLog, UtteranceLog
from minmo.v1 import encoder_pb2, llm_pb2

SAMPLES = 1600  # 100 ms at 16 kHz per chunk


def _audio(turn: str, samples: int = SAMPLES) -> encoder_pb2.EncodeRequest:
    chunk = encoder_pb2.EncodeAudioChunk(audio=b"\0\0" * samples, turn_id=turn)
    return encoder_pb2.EncodeRequest(audio_chunk=chunk)


def _end(turn: str, samples: int = 0) -> encoder_pb2.EncodeRequest:
    end = encoder_pb2.EndOfUtterance(turn_id=turn, audio=b"\0\0" * samples)
    return encoder_pb2.EncodeRequest(end_of_utterance=end)


def test_a_flush_drops_its_utterance_and_keeps_what_came_after() -> None:
    log = UtteranceLog()
    first = [_audio("t1"), _audio("t1"), _end("t1")]
    second = [_audio("t2")]
    for request in first + second:
        log.add(request)
    assert log.requests == first + second and log.samples == 3 * SAMPLES
    log.flushed(end_position=7)
    assert log.requests == second and log.samples == SAMPLES and log.start_position == 7
    assert log.replayable


def test_the_samples_an_end_of_utterance_carries_count_toward_the_bound() -> None:
    log = UtteranceLog(max_samples=3 * SAMPLES)
    for request in (_audio("t1"), _audio("t1"), _end("t1", samples=SAMPLES)):
        log.add(request)
    assert log.samples == 3 * SAMPLES and log.replayable
    log.add(_end("t2", samples=SAMPLES))
    assert not log.replayable, "its samples overflowed the bound"


def test_an_utterance_past_the_bound_is_not_replayable_until_a_later_utterance_starts() -> None:
    log = UtteranceLog(max_samples=3 * SAMPLES)
    for _ in range(4):
        log.add(_audio("t1"))
    assert not log.replayable and log.requests == [] and log.samples == 0, "the log gives up and frees its audio"
    log.add(_audio("t1"))
    log.add(_end("t1"))
    log.flushed(end_position=10)
    assert log.replayable and log.start_position == 10, "the next utterance starts a new log"
    log.add(_audio("t2"))
    assert log.requests == [_audio("t2")]


def test_audio_cut_after_an_end_stays_unreplayable_through_that_flush() -> None:
    log = UtteranceLog(max_samples=2 * SAMPLES)
    log.add(_audio("t1"))
    log.add(_end("t1"))
    log.add(_audio("t2"))
    log.add(_audio("t2"))  # past the bound: t1's end and t2's audio are dropped
    log.flushed(end_position=3)  # t1 flushed, but t2's audio is gone
    assert not log.replayable
    log.add(_end("t2"))
    log.flushed(end_position=5)
    assert log.replayable and log.requests == []


def test_restart_forgets_everything() -> None:
    log = UtteranceLog(max_samples=SAMPLES)
    log.add(_audio("t1", 2 * SAMPLES))
    log.restart(position=42)
    assert log.replayable and log.requests == [] and log.start_position == 42


def _llm_audio(turn: str, frames: int = 2) -> llm_pb2.LlmRequest:
    embeddings = tensor_to_proto(torch.zeros(frames, 8))
    return llm_pb2.LlmRequest(audio_input=llm_pb2.AudioInput(embeddings=embeddings, turn_id=turn))


def _generate(turn: str) -> llm_pb2.LlmRequest:
    return llm_pb2.LlmRequest(generate_response=llm_pb2.GenerateResponse(turn_id=turn))


def test_the_llm_log_keeps_the_audio_each_response_answers_for_a_replay() -> None:
    log = LlmTurnLog()
    spoken = [_llm_audio("u1"), _llm_audio("u1")]
    for request in [*spoken, _generate("r1"), _llm_audio("u2")]:
        log.record(request)
    assert log.audio_answered_by("r1") == [request.audio_input for request in spoken]
    assert log.audio_answered_by("r0") is None, "only the last response can be continued"
    log.record(_generate("r2"))
    assert len(log.audio_answered_by("r2")) == 1
    log.restart()
    assert log.audio_answered_by("r2") is None


def test_an_llm_turn_past_the_bound_cannot_be_replayed() -> None:
    log = LlmTurnLog(max_bytes=2 * _llm_audio("u1").audio_input.ByteSize())
    for request in [_llm_audio("u1")] * 3 + [_generate("r1")]:
        log.record(request)
    assert log.audio_answered_by("r1") is None and log.open_turn == []
    log.record(_generate("r2"))  # a typed turn with no audio: nothing to replay, and that is replayable
    assert log.audio_answered_by("r2") == []
