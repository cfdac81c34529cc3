"""First audio first: duplex holds the text positions after those that complete token2wav's first chunk until the
vocoder has been sent that chunk's speech tokens, so voicelm does not run ahead on the CPUs those tokens need
(duplex/response.py).

The voicelm and vocoder serve through real runtimes whose calls are timed (a LocalRuntime that notes when each
call starts and ends, then does the real work); the turn runs through the five services over real gRPC.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass

import pytest

from minmo.audio.synthetic import utterance
from minmo.client.chat import ChatRequest, run_chat
from minmo.client.wav import InputAudio
from minmo.model.config import load_config
from minmo.model.interleave import first_audio_positions, first_audio_tokens
from minmo.model.placement import CPU_FLOAT32
from minmo.runtime.base import Sequence, TensorMap
from minmo.runtime.factory import MODEL_FACTORIES
from minmo.runtime.local import LocalRuntime


@dataclass
class Call:
    model: str
    started: float
    ended: float
    inputs: TensorMap
    outputs: TensorMap


class TimedRuntime(LocalRuntime):
    """The local runtime, noting every call's inputs, outputs and start and end times."""

    def __init__(self, models, calls: list[Call]) -> None:
        super().__init__(models)
        self.calls = calls

    async def infer(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: bool = False
    ) -> TensorMap:
        started = time.monotonic()
        outputs = await super().infer(model, inputs, sequence, steady)
        self.calls.append(Call(model, started, time.monotonic(), inputs, outputs))
        return outputs


async def _start_timed(stack, name: str, model: str, calls: list[Call]) -> None:
    module = importlib.import_module(f"minmo.services.{name}.main")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINMO_PORT", "0")
        patch.setenv("MINMO_CONFIG", "tiny")
        settings_class = next(n for n in dir(module) if n.endswith("Settings") and n != "ServerSettings")
        settings = getattr(module, settings_class).from_env()
    runtime = TimedRuntime([MODEL_FACTORIES[model](load_config("tiny"), None, CPU_FLOAT32)], calls)
    host = await module.start(settings, runtime)
    stack.hosts.setdefault(name, []).append(host)


def test_the_first_chunk_needs_two_voice_blocks_on_tiny():
    assert first_audio_positions(load_config("tiny")) == 10  # 15 + 3 tokens: two blocks of 15, from 10 positions


async def test_voicelm_runs_ahead_only_once_the_first_chunks_tokens_are_made(stack):
    calls: list[Call] = []
    await stack.start_model_service("encoder")
    await stack.start_model_service("llm")
    await _start_timed(stack, "voicelm", "voice_lm", calls)
    await _start_timed(stack, "vocoder", "token2wav", calls)
    await stack.start_duplex()
    calls.clear()  # the services' warm-up calls
    request = ChatRequest(audio=InputAudio(utterance(seed=1), 16000), realtime=False, timeout_s=120)
    result = await run_chat(stack.address("duplex"), request)
    assert result.problems() == []

    cfg = load_config("tiny")
    held, first_audio = first_audio_positions(cfg), first_audio_tokens(cfg)
    positions, tokens, completing, ahead = 0, 0, None, []
    for call in sorted((c for c in calls if c.model == "voice_lm"), key=lambda c: c.started):
        if completing is None:
            positions += call.inputs["hidden"].shape[0]
            tokens += call.outputs["speech_tokens"].numel()
            if tokens >= first_audio:
                completing = call
                assert positions <= held, f"voicelm had {positions} positions before the first chunk's tokens"
        elif call.inputs["hidden"].shape[0]:
            ahead.append(call)
    assert completing is not None and ahead, "the response must be longer than the first chunk's text"
    assert all(call.started >= completing.ended for call in ahead)
