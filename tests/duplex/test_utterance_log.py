"""What duplex keeps of the utterance in progress for an encoder replay: every message since the last
acknowledged flush, in order, within a bound; past the bound, nothing until the utterances it cut are flushed."""

from minmo.duplex.replay import UtteranceLog
from minmo.v1 import encoder_pb2

SAMPLES = 1600  # 100 ms at 16 kHz per chunk


def _audio(turn: str, samples: int = SAMPLES) -> encoder_pb2.EncodeRequest:
    chunk = encoder_pb2.EncodeAudioChunk(audio=b"\0\0" * samples, turn_id=turn)
    return encoder_pb2.EncodeRequest(audio_chunk=chunk)


def _end(turn: str) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(end_of_utterance=encoder_pb2.EndOfUtterance(turn_id=turn))


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
