"""Voice control through the five services, real gRPC over loopback (tiny config, README "Voice control").

- Bad voice prompts (too short, too long, an unsupported rate, silence, odd bytes) and instructions over the
  limit (in the session config or on one text turn) are INVALID_ARGUMENT with a message that names the field.
- The whole stack takes an instruction and a prompt: with greedy speech-token sampling
  (MINMO_VOICELM_TEMPERATURE=0) and the prompt front end configured (small stand-ins for CosyVoice 2's ONNX
  models, tests/stack/voice_models.py), the same config gives the same audio, and a different prompt recording
  gives the same words in a different voice: the conditioning derived from the prompt reached the flow. A
  per-turn instruction replaces the session's for that turn and stays in the history.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
import soxr

from minmo.audio.pcm import PCM16_DTYPE, float_to_pcm16
from minmo.audio.synthetic import SAMPLE_RATE, speech_like
from minmo.client.session import Session
from minmo.duplex.limits import InputLimits
from minmo.duplex.voice_control import VoiceControl
from minmo.model.config import MAX_INSTRUCTION_CHARS, load_config
from minmo.model.voice_prompt import VoicePromptModels
from minmo.services.voicelm.main import VoiceLmSettings
from minmo.serving.settings import ServerSettings
from minmo.session.store import Role
from minmo.v1 import conversation_pb2

from .test_bad_input import _status
from .test_conversation import _config, _store
from .voice_models import write_voice_models

FAST, SAD = "Please speak very fast.", "Speak with a tone of sadness."
TOO_LONG = "x" * (InputLimits.max_instruction_chars + 1)


def _recording(seconds: float, seed: int, rate: int) -> bytes:
    """Speech-like audio (made at 16 kHz), at `rate`."""
    speech = speech_like(np.random.default_rng(seed), seconds).astype(np.float32)
    return float_to_pcm16(soxr.resample(speech, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else speech)


def _prompt(seconds: float = 3.5, seed: int = 0, rate: int = 0) -> conversation_pb2.VoicePrompt:
    """A prompt; rate 0 means 16 kHz (the server's default), an unsupported rate is sent with 16 kHz audio."""
    audio_rate = rate if rate in (8000, 24000, 48000) else SAMPLE_RATE
    return conversation_pb2.VoicePrompt(audio=_recording(seconds, seed, audio_rate), sample_rate_hz=rate)


def _text(text: str, instruction: str = "") -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=text, voice_instruction=instruction))


BAD = {
    "prompt too short": ([_config(voice_prompt=_prompt(1.0))], "must last 3-30 s, got 1.00 s"),
    "prompt too long": ([_config(voice_prompt=_prompt(30.5))], "must last 3-30 s, got 30.50 s"),
    "prompt rate": ([_config(voice_prompt=_prompt(rate=22050))], "sample_rate_hz 22050 is not supported"),
    "prompt silent": (
        [_config(voice_prompt=conversation_pb2.VoicePrompt(audio=bytes(2 * 4 * SAMPLE_RATE)))],
        "voice prompt is silent",
    ),
    "prompt odd bytes": ([_config(voice_prompt=conversation_pb2.VoicePrompt(audio=b"\1" * 7))], "even number of bytes"),
    "session instruction": ([_config(voice_instruction=TOO_LONG)], "session_config.voice_instruction has 501"),
    "turn instruction": ([_config(), _text("hi", TOO_LONG)], "text_input.voice_instruction has 501"),
}


async def test_bad_voice_input_is_invalid_argument_with_a_message(full_stack):
    _, stub = full_stack.conversation()
    results = await asyncio.gather(*(_status(stub, events) for events, _ in BAD.values()))
    for name, (code, details), (_, expected) in zip(BAD, results, BAD.values(), strict=True):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert expected in details and "xxxxxxxx" not in details and len(details) < 200, (name, details)


async def _turns(address: str, instruction: str, prompt: conversation_pb2.VoicePrompt, *texts: tuple[str, str]):
    """One session through the Python client: its id, and per (text, turn instruction) the reply's text and audio."""
    async with await Session.open(address, voice_instruction=instruction, voice_prompt=prompt) as session:
        replies = []
        for text, turn_instruction in texts:
            await session.send_text(text, voice_instruction=turn_instruction)
            reply = await session.reply(timeout_s=120)
            assert reply.end_reason in ("COMPLETED", "MAX_TOKENS") and not reply.errors, reply
            replies.append((reply.text, np.frombuffer(bytes(reply.audio), dtype=PCM16_DTYPE).astype(np.int32)))
        return session.session_id, replies


@pytest.fixture
async def voice_stack(stack, tmp_path):
    """Greedy speech tokens (reproducible audio) and the prompt front end configured."""
    models = write_voice_models(tmp_path / "voice", load_config("tiny").flow.spk_embed_dim)
    for name in ("encoder", "llm", "vocoder"):
        await stack.start_model_service(name)
    await stack.start_model_service("voicelm", MINMO_VOICELM_TEMPERATURE="0")
    await stack.start_duplex(MINMO_VOICE_PROMPT_MODELS=str(models))
    return stack


async def test_instruction_and_prompt_go_through_the_whole_stack(voice_stack):
    address = voice_stack.address("duplex")
    hello = ("Hello there", "")
    session, [(words, audio), (_, sad_audio)] = await _turns(address, FAST, _prompt(seed=1), hello, ("Again", SAD))
    _, [(same_words, same_audio)] = await _turns(address, FAST, _prompt(seed=1), hello)
    _, [(other_words, other_audio)] = await _turns(address, FAST, _prompt(seed=2, rate=24000), hello)

    assert audio.size > 0 and sad_audio.size > 0
    assert (same_words, same_audio.tolist()) == (words, audio.tolist()), "the same config speaks the same"
    assert other_words == words, "the prompt does not change the words"
    length = min(audio.size, other_audio.size)
    # the same config gives bit-identical audio (above), so any difference beyond PCM16 rounding is the prompt's
    assert np.abs(audio[:length] - other_audio[:length]).max() > 10, "another prompt voice changes the audio"

    history = await (await _store(voice_stack.redis_url)).history(session)
    users = [turn.voice_instruction for turn in history if turn.role == Role.USER]
    assert users == [FAST, SAD], "each user turn keeps the instruction its reply followed"


def test_limits_and_settings_refuse_what_the_voice_lm_cannot_take():
    with pytest.raises(ValueError, match="the voice LM's limit"):
        InputLimits(max_instruction_chars=MAX_INSTRUCTION_CHARS + 1)
    server = ServerSettings(port=0, model_config="tiny")
    with pytest.raises(ValueError, match="MINMO_VOICELM_TEMPERATURE"):
        VoiceLmSettings(server=server, max_positions_per_message=64, checkpoint=None, temperature=-1.0)


def test_the_checked_prompt_survives_the_session_record_and_derives_aligned_conditioning(tmp_path):
    """A resumed session rebuilds its voice from the stored record: same instruction, same 24 kHz prompt, and
    conditioning whose mel has two frames per prompt token (what the flow requires)."""
    config = _config(voice_instruction=FAST, voice_prompt=_prompt(seconds=4.0)).session_config
    voice = VoiceControl.from_session_config(config, InputLimits())
    stored = VoiceControl.from_record(json.loads(json.dumps(voice.to_record())))
    assert stored == voice and len(voice.prompt) == 2 * 4 * 24000, "4 s at 24 kHz, PCM16"
    models = VoicePromptModels(write_voice_models(tmp_path, load_config("tiny").flow.spk_embed_dim))
    conditioning = stored.conditioning(models)
    tokens = len(conditioning.prompt_speech_tokens)
    assert tokens == 100 and list(conditioning.prompt_mel.shape) == [80, 2 * tokens]
    assert stored.conditioning(None) is None and VoiceControl().conditioning(models) is None
