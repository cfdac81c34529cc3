"""A session's configuration, parsed and checked once from the client's SessionConfig (or a resumed record).

The rest of duplex reads typed fields of `SessionConfig`, never the proto or the dict stored in Redis: the
checks (bounds in `minmo.duplex.limits`, supported rates here) run in `from_proto` / `resumed`, so a config that
exists is a valid one. `to_record` is the JSON form kept in the session's Redis hash, unchanged from the earlier
dict, so a session stored by an older replica still resumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import grpc

from minmo.audio.pcm import SUPPORTED_INPUT_RATES
from minmo.audio.turn_detection import TurnDetectionConfig
from minmo.duplex.limits import InputLimits, ProtocolError
from minmo.duplex.voice_control import VoiceControl
from minmo.model.config import VOCODER_SAMPLE_RATE_HZ
from minmo.v1 import common_pb2, conversation_pb2

OUTPUT_RATES = (8000, 16000, 24000, 48000)  # Hz the front door resamples the vocoder's audio to
DEFAULT_OUTPUT_RATE = VOCODER_SAMPLE_RATE_HZ  # output_sample_rate_hz 0: the vocoder's own rate, no resampling
PREDICTOR_MODE = "PREDICTOR"
DEFAULT_MODE = "MODE_UNSPECIFIED"


@dataclass(frozen=True)
class SessionConfig:
    """What the client asked for, within the server's bounds (see the proto's SessionConfig for units)."""

    input_sample_rate_hz: int
    output_sample_rate_hz: int
    system_prompt: str
    voice: VoiceControl  # the voice instruction and the prompt recording (checked in `voice_control`)
    text_only: bool
    mode: str  # conversation_pb2.TurnDetection.Mode name
    turn_detection: TurnDetectionConfig  # the client's values, the server's defaults where it sent 0
    server_silence: bool = False  # the client left silence_ms to the server (see `endpointing`)

    @classmethod
    def from_proto(
        cls, message: conversation_pb2.SessionConfig, defaults: TurnDetectionConfig, limits: InputLimits
    ) -> SessionConfig:
        """Check every field before anything is stored (the same answer for the same message, however many
        sessions open at once); ProtocolError names the first bad field."""
        limits.check_session_config(message)
        check_input_rate(message.input_sample_rate_hz)
        output_rate = message.output_sample_rate_hz or DEFAULT_OUTPUT_RATE
        check_output_rate(output_rate)
        detection = message.turn_detection
        return cls(
            input_sample_rate_hz=message.input_sample_rate_hz,
            output_sample_rate_hz=output_rate,
            system_prompt=message.system_prompt,
            voice=VoiceControl.from_session_config(message, limits),
            text_only=message.text_only,
            mode=conversation_pb2.TurnDetection.Mode.Name(detection.mode),
            turn_detection=turn_detection(
                detection.vad_threshold or defaults.threshold,
                detection.silence_ms or defaults.silence_duration_ms,
                detection.prefix_padding_ms or defaults.prefix_padding_ms,
                defaults,
            ),
            server_silence=detection.silence_ms == 0,
        )

    @classmethod
    def resumed(
        cls, record: Mapping[str, Any], resume: conversation_pb2.ResumeSession, defaults: TurnDetectionConfig
    ) -> SessionConfig:
        """The stored config of a resumed session, with the rates the resuming client may change (checked)."""
        input_rate = resume.input_sample_rate_hz or record["input_sample_rate_hz"]
        output_rate = resume.output_sample_rate_hz or record["output_sample_rate_hz"]
        check_input_rate(input_rate)
        check_output_rate(output_rate)
        return cls(
            input_sample_rate_hz=input_rate,
            output_sample_rate_hz=output_rate,
            system_prompt=record["system_prompt"],
            voice=VoiceControl.from_record(record),
            text_only=record["text_only"],
            mode=record["mode"],
            turn_detection=turn_detection(
                record["threshold"], record["silence_ms"], record["prefix_padding_ms"], defaults
            ),
            server_silence=record.get("server_silence", False),  # records stored before it: the value they hold
        )

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready form stored with the session (what `resumed` reads back)."""
        return {
            "input_sample_rate_hz": self.input_sample_rate_hz,
            "output_sample_rate_hz": self.output_sample_rate_hz,
            "system_prompt": self.system_prompt,
            **self.voice.to_record(),
            "text_only": self.text_only,
            "mode": self.mode,
            "threshold": self.turn_detection.threshold,
            "silence_ms": self.turn_detection.silence_duration_ms,
            "prefix_padding_ms": self.turn_detection.prefix_padding_ms,
            "server_silence": self.server_silence,
        }

    @property
    def voice_instruction(self) -> str:
        return self.voice.instruction

    @property
    def predictor_mode(self) -> bool:
        """The LLM's duplex predictor decides turns once the model's is trained: when the client asked for it, and by
        default (MODE_UNSPECIFIED, the API's documented default); SERVER_VAD keeps the VAD deciding."""
        return self.mode in (PREDICTOR_MODE, DEFAULT_MODE)

    def endpointing(self, predictor_decides: bool, predictor_silence_ms: float) -> SessionConfig:
        """The config with the silence that ends a speech segment in effect. The VAD alone must wait out a pause
        that may be mid-sentence, so it ends the turn after the server's `silence_duration_ms` (500 ms, as
        OpenAI's server_vad). A trained predictor hears whether the user is done, so a session it decides for
        ends the segment after `predictor_silence_ms`: the predictor answers at once or keeps listening, and the
        turn is taken sooner. A silence the client set is kept in both modes."""
        if not (predictor_decides and self.server_silence):
            return self
        return replace(self, turn_detection=replace(self.turn_detection, silence_duration_ms=predictor_silence_ms))

    def input_format(self) -> common_pb2.AudioFormat:
        return audio_format(self.input_sample_rate_hz)

    def output_format(self) -> common_pb2.AudioFormat:
        return audio_format(self.output_sample_rate_hz)

    def turn_detection_message(self) -> conversation_pb2.TurnDetection:
        """The turn detection in effect, as SessionStarted reports it (defaults filled in)."""
        return conversation_pb2.TurnDetection(
            mode=conversation_pb2.TurnDetection.Mode.Value(self.mode),
            vad_threshold=self.turn_detection.threshold,
            silence_ms=round(self.turn_detection.silence_duration_ms),
            prefix_padding_ms=round(self.turn_detection.prefix_padding_ms),
        )


def turn_detection(
    threshold: float, silence_ms: float, prefix_padding_ms: float, defaults: TurnDetectionConfig
) -> TurnDetectionConfig:
    """The detector's config; a combination it refuses is the client's INVALID_ARGUMENT."""
    try:
        return TurnDetectionConfig(
            threshold=threshold,
            prefix_padding_ms=prefix_padding_ms,
            silence_duration_ms=silence_ms,
            min_speech_duration_ms=defaults.min_speech_duration_ms,
        )
    except ValueError as error:
        raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error


def check_input_rate(rate: int) -> None:
    if rate not in SUPPORTED_INPUT_RATES:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input_sample_rate_hz {rate} is not supported; use one of {SUPPORTED_INPUT_RATES}",
        )


def check_output_rate(rate: int) -> None:
    if rate not in OUTPUT_RATES:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output_sample_rate_hz {rate} is not supported; use one of {OUTPUT_RATES}",
        )


def audio_format(rate: int) -> common_pb2.AudioFormat:
    return common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16LE, sample_rate_hz=rate, channels=1)
