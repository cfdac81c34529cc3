"""SessionConfig: parsed and checked once from the client's message (or a resumed record), typed after that."""

from __future__ import annotations

import grpc
import pytest

from minmo.audio.turn_detection import TurnDetectionConfig
from minmo.duplex.limits import InputLimits, ProtocolError
from minmo.duplex.session_config import DEFAULT_OUTPUT_RATE, SessionConfig
from minmo.model.config import VOCODER_SAMPLE_RATE_HZ
from minmo.v1 import conversation_pb2

DEFAULTS = TurnDetectionConfig(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500, min_speech_duration_ms=80)
LIMITS = InputLimits(max_system_prompt_chars=20, max_instruction_chars=10)
Mode = conversation_pb2.TurnDetection.Mode


def parse(**fields) -> SessionConfig:
    return SessionConfig.from_proto(conversation_pb2.SessionConfig(**fields), DEFAULTS, LIMITS)


def test_zero_values_take_the_server_defaults() -> None:
    config = parse(input_sample_rate_hz=16000)
    assert config.output_sample_rate_hz == DEFAULT_OUTPUT_RATE == VOCODER_SAMPLE_RATE_HZ
    assert config.turn_detection == DEFAULTS
    assert config.mode == "MODE_UNSPECIFIED" and config.predictor_mode, "the predictor decides once trained"
    assert not parse(input_sample_rate_hz=16000, turn_detection=conversation_pb2.TurnDetection(
        mode=Mode.SERVER_VAD)).predictor_mode


def test_client_values_are_kept() -> None:
    detection = conversation_pb2.TurnDetection(mode=Mode.PREDICTOR, vad_threshold=0.25, silence_ms=700)
    config = parse(
        input_sample_rate_hz=48000,
        output_sample_rate_hz=16000,
        system_prompt="be brief",
        voice_instruction="calm",
        text_only=True,
        turn_detection=detection,
    )
    assert (config.input_sample_rate_hz, config.output_sample_rate_hz) == (48000, 16000)
    assert (config.system_prompt, config.voice_instruction, config.text_only) == ("be brief", "calm", True)
    assert config.predictor_mode
    assert config.turn_detection.threshold == pytest.approx(0.25)
    assert config.turn_detection.silence_duration_ms == 700
    assert config.turn_detection.prefix_padding_ms == DEFAULTS.prefix_padding_ms
    assert config.turn_detection.min_speech_duration_ms == DEFAULTS.min_speech_duration_ms  # server-side only
    message = config.turn_detection_message()
    assert (message.mode, message.silence_ms, message.prefix_padding_ms) == (Mode.PREDICTOR, 700, 300)


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"input_sample_rate_hz": 44100}, grpc.StatusCode.INVALID_ARGUMENT, "input_sample_rate_hz 44100"),
        ({"input_sample_rate_hz": 0}, grpc.StatusCode.INVALID_ARGUMENT, "input_sample_rate_hz 0"),
        (
            {"input_sample_rate_hz": 16000, "output_sample_rate_hz": 22050},
            grpc.StatusCode.INVALID_ARGUMENT,
            "output_sample_rate_hz 22050",
        ),
        (
            {"input_sample_rate_hz": 16000, "system_prompt": "x" * 21},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "session_config.system_prompt has 21 characters; the limit is 20",
        ),
        (
            {"input_sample_rate_hz": 16000, "voice_instruction": "y" * 11},
            grpc.StatusCode.INVALID_ARGUMENT,
            "session_config.voice_instruction has 11 characters",
        ),
        (
            {"input_sample_rate_hz": 16000, "turn_detection": conversation_pb2.TurnDetection(vad_threshold=1.5)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "turn_detection.vad_threshold 1.5 must be in (0, 1)",
        ),
        (
            {"input_sample_rate_hz": 16000, "turn_detection": conversation_pb2.TurnDetection(silence_ms=-1)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "turn_detection.silence_ms -1 must be in [0, 10000]",
        ),
    ],
)
def test_bad_fields_are_refused_with_the_fields_name(fields: dict, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(**fields)
    assert refused.value.code == code
    assert words in refused.value.message


def test_the_stored_record_resumes_to_the_same_config() -> None:
    detection = conversation_pb2.TurnDetection(mode=Mode.SERVER_VAD, prefix_padding_ms=100)
    config = parse(input_sample_rate_hz=16000, system_prompt="hi", turn_detection=detection)
    record = config.to_record()
    assert set(record) == {
        "input_sample_rate_hz",
        "output_sample_rate_hz",
        "system_prompt",
        "voice_instruction",
        "voice_prompt_24k",
        "text_only",
        "mode",
        "threshold",
        "silence_ms",
        "prefix_padding_ms",
        "server_silence",
    }, "the Redis form is what earlier replicas stored, and whether the client left the silence to the server"
    assert SessionConfig.resumed(record, conversation_pb2.ResumeSession(), DEFAULTS) == config
    del record["server_silence"]
    assert not SessionConfig.resumed(record, conversation_pb2.ResumeSession(), DEFAULTS).server_silence, (
        "a record stored before the field keeps the silence it holds"
    )


def test_a_trained_predictor_ends_segments_after_a_shorter_silence_unless_the_client_set_one() -> None:
    config = parse(input_sample_rate_hz=16000)
    assert config.endpointing(True, 200).turn_detection == TurnDetectionConfig(
        threshold=0.5, prefix_padding_ms=300, silence_duration_ms=200, min_speech_duration_ms=80
    )
    assert config.endpointing(False, 200) == config, "the VAD decides: it must wait out a pause mid-sentence"
    chosen = parse(input_sample_rate_hz=16000, turn_detection=conversation_pb2.TurnDetection(silence_ms=700))
    assert chosen.endpointing(True, 200) == chosen, "a silence the client asked for is kept"
    resumed = SessionConfig.resumed(config.to_record(), conversation_pb2.ResumeSession(), DEFAULTS)
    assert resumed.endpointing(True, 200).turn_detection.silence_duration_ms == 200, "a resumed session too"


def test_a_resume_may_change_the_rates_within_the_supported_ones() -> None:
    record = parse(input_sample_rate_hz=16000).to_record()
    resumed = SessionConfig.resumed(
        record, conversation_pb2.ResumeSession(input_sample_rate_hz=8000, output_sample_rate_hz=48000), DEFAULTS
    )
    assert (resumed.input_sample_rate_hz, resumed.output_sample_rate_hz) == (8000, 48000)
    with pytest.raises(ProtocolError, match="input_sample_rate_hz 11025"):
        SessionConfig.resumed(record, conversation_pb2.ResumeSession(input_sample_rate_hz=11025), DEFAULTS)


def test_the_config_is_frozen() -> None:
    config = parse(input_sample_rate_hz=16000)
    with pytest.raises(AttributeError):
        config.text_only = True
