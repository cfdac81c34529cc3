"""Batching across sessions: batched decode steps (LLM, voice LM) equal unbatched ones, and the local runtime's
batching worker runs concurrent sessions' steps together (tiny model, real threads, no fakes)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from minmo.model.config import load_config
from minmo.model.dialogue import Dialogue, DialogueState
from minmo.runtime.base import Sequence
from minmo.runtime.batching import BatchSettings, StepBatcher
from minmo.runtime.llm_model import OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, LlmModel, text_tensor
from minmo.runtime.local import LocalRuntime
from minmo.runtime.voicelm_model import VoiceLmModel

ATOL = 1e-5
PROMPTS = ("Hi", "You are a helpful assistant who answers briefly.", "x" * 40, "Tell me about the weather today.")
TOKENS = 6


@pytest.fixture(scope="module")
def dialogue() -> Dialogue:
    return LlmModel.from_config(load_config("tiny")).dialogue


def _responding(dialogue: Dialogue, prompt: str) -> DialogueState:
    return dialogue.begin_response(dialogue.start(prompt))


def test_batched_decode_steps_equal_unbatched_ones_for_contexts_of_different_lengths(dialogue):
    unbatched = [_responding(dialogue, prompt) for prompt in PROMPTS]
    batched = list(unbatched)
    assert len({state.position for state in unbatched}) == len(PROMPTS), "contexts of different lengths"
    for _ in range(TOKENS):
        expected = [dialogue.generate_step(state) for state in unbatched]
        got = dialogue.generate_steps([(state, 0.0, 0) for state in batched])
        for (step, state), (batched_step, batched_state) in zip(expected, got, strict=True):
            assert batched_step.token_id == step.token_id and batched_step.is_end == step.is_end
            torch.testing.assert_close(batched_step.hidden, step.hidden, atol=ATOL, rtol=0)
            torch.testing.assert_close(batched_step.token_embedding, step.token_embedding, atol=ATOL, rtol=0)
            assert batched_state.position == state.position and batched_state.pending_token == state.pending_token
            for keys, batched_keys in zip(state.llm.keys, batched_state.llm.keys, strict=True):
                assert batched_keys.shape == keys.shape  # the padding is cut off again
                torch.testing.assert_close(batched_keys, keys, atol=ATOL, rtol=0)
        unbatched = [state for _, state in expected]
        batched = [state for _, state in got]


async def _generate(runtime: LocalRuntime, prompt: str, sequence_id: str) -> list[int]:
    await runtime.infer("llm", {"op": torch.tensor([OP_START]), "system_prompt": text_tensor(prompt)},
                        Sequence(sequence_id, start=True))  # fmt: skip
    await runtime.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence(sequence_id))
    inputs = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([TOKENS])}
    tokens = [int(out["token_id"][0]) async for out in runtime.infer_stream("llm", inputs, Sequence(sequence_id))]
    await runtime.end_sequence("llm", sequence_id)
    return tokens


async def test_the_batching_runtime_runs_concurrent_sessions_together_and_answers_as_alone(dialogue):
    sizes: list[int] = []
    alone = LocalRuntime([LlmModel(dialogue)])
    expected = [await _generate(alone, prompt, f"alone-{i}") for i, prompt in enumerate(PROMPTS)]
    await alone.close()
    batching = LocalRuntime(
        [LlmModel(dialogue)], batching=BatchSettings(max_size=4, window_ms=50), on_batch=lambda _, n: sizes.append(n)
    )
    try:
        got = await asyncio.gather(*(_generate(batching, p, f"together-{i}") for i, p in enumerate(PROMPTS)))
    finally:
        await batching.close()
    assert got == expected
    assert sum(sizes) == TOKENS * len(PROMPTS) and max(sizes) > 1, sizes


def test_a_failing_batch_fails_each_of_its_callers_and_the_batcher_goes_on():
    def run(requests: list[int]) -> list[int]:
        if any(request < 0 for request in requests):
            raise ValueError("negative")
        return [2 * request for request in requests]

    batcher = StepBatcher("doubler", run, BatchSettings(max_size=4, window_ms=1))
    try:
        with pytest.raises(ValueError, match="negative"):
            batcher(-1)
        results: list[int] = []
        threads = [threading.Thread(target=lambda r=r: results.append(batcher(r))) for r in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert sorted(results) == [0, 2, 4]
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher(1)


def test_batch_settings_reject_nonsense():
    assert not BatchSettings(max_size=1).enabled
    with pytest.raises(ValueError, match="max size"):
        BatchSettings(max_size=0)


async def _synthesize(runtime: LocalRuntime, sequence_id: str, hidden: torch.Tensor) -> list[int]:
    """One greedy turn: all text positions, then the text end; the speech tokens the voice LM wrote."""
    start = {"temperature": torch.tensor([0.0]), "top_p": torch.tensor([1.0]), "top_k": torch.tensor([0]),
             "seed": torch.tensor([0])}  # fmt: skip
    inputs = {"hidden": hidden, "token_embedding": hidden.flip(0), "text_end": torch.tensor([True]), **start}
    outputs = await runtime.infer("voice_lm", inputs, Sequence(sequence_id, start=True, end=True))
    return outputs["speech_tokens"].tolist()


async def test_voice_lm_turns_batched_together_speak_as_they_do_alone():
    model = VoiceLmModel.from_config(load_config("tiny"))
    generator = torch.Generator().manual_seed(0)
    texts = [torch.randn(n, model.llm_dim, generator=generator) for n in (3, 7, 11)]
    alone = LocalRuntime([model])
    expected = [await _synthesize(alone, f"alone-{i}", text) for i, text in enumerate(texts)]
    await alone.close()
    sizes: list[int] = []
    batched_model = VoiceLmModel(model.projector, model.voice_lm, model.tokenizer)
    runtime = LocalRuntime([batched_model], batching=BatchSettings(4, 50), on_batch=lambda _, n: sizes.append(n))
    try:
        got = await asyncio.gather(*(_synthesize(runtime, f"together-{i}", t) for i, t in enumerate(texts)))
    finally:
        await runtime.close()
    assert got == expected and all(expected)
    assert max(sizes) > 1, sizes
