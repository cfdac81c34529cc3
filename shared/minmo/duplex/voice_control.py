"""Voice control at the front door: a session's voice instruction and voice prompt, checked once, kept with it.

- The instruction ("Please speak very fast", "Speak with a tone of sadness") comes with the SessionConfig and
  may be replaced for one turn by TextInput.voice_instruction. It goes to the LLM (inside the user turn) and to
  the voice-token LM (CosyVoice 2's instruct form, `voice_token_lm.py`), and the user turn's history entry keeps
  it. At most `InputLimits.max_instruction_chars` characters (MINMO_MAX_INSTRUCTION_CHARS, default 500).
- The prompt is a 3-30 s recording of the voice to mimic (PCM16 mono at 8, 16, 24 or 48 kHz), resampled once to
  24 kHz (CosyVoice 2's rate) and kept in the session record, so a resumed session speaks in the same voice.
  What the flow conditions on (speaker x-vector, prompt speech tokens and their mel) is derived from it once per
  session by `VoicePromptModels` when the deployment has CosyVoice 2's two front-end models (README "Voice
  control"), and goes with every turn's VocodeConfig. Without them the prompt is checked and kept but does not
  change the voice: the prompt mel alone is no use to the flow without the prompt's speech tokens.

Every refusal is INVALID_ARGUMENT with a message that names the field and never quotes the input.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import soxr
import torch

from minmo.api.tensors import tensor_to_proto
from minmo.audio.pcm import PCM16_BYTES, float_to_pcm16, pcm16_to_float
from minmo.duplex.limits import InputLimits, ProtocolError
from minmo.model.voice_prompt import SAMPLE_RATE, InvalidPrompt, VoicePromptModels, check_prompt
from minmo.v1 import conversation_pb2, vocoder_pb2

PROMPT_RATES = (8000, 16000, 24000, 48000)  # VoicePrompt.sample_rate_hz the server accepts, in Hz
DEFAULT_PROMPT_RATE = 16000  # what VoicePrompt.sample_rate_hz 0 means


@dataclass(frozen=True)
class VoiceControl:
    """A session's voice settings as checked: the instruction, and the prompt as PCM16 at 24 kHz (empty: none)."""

    instruction: str = ""
    prompt: bytes = b""

    @classmethod
    def from_session_config(cls, config: conversation_pb2.SessionConfig, limits: InputLimits) -> VoiceControl:
        """Check the SessionConfig's voice fields; raises ProtocolError(INVALID_ARGUMENT) for bad ones."""
        field, limit = "session_config.voice_instruction", limits.max_instruction_chars
        instruction = check_instruction(field, config.voice_instruction, limit)
        prompt = _checked_prompt(config.voice_prompt) if config.HasField("voice_prompt") else b""
        return cls(instruction, prompt)

    @classmethod
    def from_record(cls, config: dict[str, Any]) -> VoiceControl:
        """The voice settings kept in a stored session config (`to_record`); older records have none."""
        return cls(config.get("voice_instruction", ""), base64.b64decode(config.get("voice_prompt_24k", "")))

    def to_record(self) -> dict[str, str]:
        """The JSON-safe fields the session record keeps (the prompt as base64 of its 24 kHz PCM16)."""
        return {"voice_instruction": self.instruction, "voice_prompt_24k": base64.b64encode(self.prompt).decode()}

    def turn_instruction(self, override: str, limits: InputLimits) -> str:
        """The instruction for one text turn: TextInput.voice_instruction when given, else the session's."""
        field, limit = "text_input.voice_instruction", limits.max_instruction_chars
        return check_instruction(field, override, limit) or self.instruction

    def conditioning(self, models: VoicePromptModels | None) -> vocoder_pb2.VoiceConditioning | None:
        """What the flow conditions on for this session's replies: derived once per session, sent every turn.
        None without a prompt or without the front-end models that derive it (the default voice)."""
        if not self.prompt or models is None:
            return None
        features = models.derive(torch.from_numpy(pcm16_to_float(self.prompt)))
        return vocoder_pb2.VoiceConditioning(
            speaker_embedding=tensor_to_proto(features.speaker),
            prompt_speech_tokens=features.tokens.tolist(),
            prompt_mel=tensor_to_proto(features.mel),
        )


async def session_conditioning(
    voice: VoiceControl, models: VoicePromptModels | None
) -> vocoder_pb2.VoiceConditioning | None:
    """The conditioning derived from a new or resumed session's prompt (once per session, off the event loop:
    the front-end models take a while on a long prompt)."""
    return await asyncio.to_thread(voice.conditioning, models)


def check_instruction(field: str, instruction: str, limit: int) -> str:
    """The instruction without surrounding white space; longer than `limit` characters is INVALID_ARGUMENT."""
    if len(instruction) > limit:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{field} has {len(instruction)} characters; the limit is {limit}"
        )
    return instruction.strip()


def _checked_prompt(prompt: conversation_pb2.VoicePrompt) -> bytes:
    """The prompt as PCM16 at 24 kHz, after the rate, length and silence checks."""
    rate = prompt.sample_rate_hz or DEFAULT_PROMPT_RATE
    if rate not in PROMPT_RATES:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"session_config.voice_prompt.sample_rate_hz {prompt.sample_rate_hz} is not supported; use one of "
            f"{PROMPT_RATES} (0 means {DEFAULT_PROMPT_RATE})",
        )
    if len(prompt.audio) % PCM16_BYTES:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "session_config.voice_prompt.audio must be 16-bit PCM: an even number of bytes",
        )
    samples = pcm16_to_float(prompt.audio)
    resampled = soxr.resample(samples, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else samples
    try:  # length on the recording as sent; the resampler may round it by a sample
        check_prompt(torch.from_numpy(np.ascontiguousarray(samples)), rate, expected_rate=rate)
    except InvalidPrompt as error:
        raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"session_config.voice_prompt: {error}") from error
    return float_to_pcm16(np.asarray(resampled, dtype=np.float32))
