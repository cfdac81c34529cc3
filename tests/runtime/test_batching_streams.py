"""Batching across sessions for the stream models: the encoder's and token2wav's chunk steps of several streams at
different positions, run as one forward, equal their unbatched steps; the local runtime's batching worker runs
concurrent sessions' chunks together and each session hears what it would alone (tiny model, real threads)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.runtime.base import InvalidInput, Sequence
from minmo.runtime.batching import BatchSettings
from minmo.runtime.local import LocalRuntime
from minmo.runtime.models import EncoderModel
from minmo.runtime.token2wav_model import Token2WavModel

ATOL = 1e-5
CHUNK_SAMPLES = (1280, 1280, 2000, 960)  # 80 ms chunks, and uneven ones (partial encoder chunks wait)
SETTINGS = BatchSettings(max_size=4, window_ms=50)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine every parallel region waits for a
    descheduled thread (a tiny flow step: 0.2 s alone, 10 s under contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder():
    return build_component(load_config("tiny"), "speech_encoder").eval()


@pytest.fixture(scope="module")
def token2wav():
    return build_component(load_config("tiny"), "token2wav").eval()


def _assert_states_close(got, expected) -> None:
    """Every tensor of two stream states has the same shape (the padding is cut off again) and close values."""
    got_tensors, expected_tensors = [], []
    got.map_tensors(got_tensors.append)
    expected.map_tensors(expected_tensors.append)
    assert len(got_tensors) == len(expected_tensors)
    for got_tensor, expected_tensor in zip(got_tensors, expected_tensors, strict=True):
        assert got_tensor.shape == expected_tensor.shape
        torch.testing.assert_close(got_tensor, expected_tensor, atol=ATOL, rtol=0)


def test_encoder_steps_of_streams_at_different_positions_equal_their_unbatched_steps(encoder):
    generator = torch.Generator().manual_seed(0)
    audio = [0.1 * torch.randn(16000 * 2, generator=generator) for _ in range(4)]
    heads = (0, 1280 * 3, 1280 * 7, 1280 * 11 + 321)  # 0 to 6 encoder chunks in, the caches not yet full
    with torch.inference_mode():
        alone = [encoder.step(pcm[:head], encoder.init_state())[1] for pcm, head in zip(audio, heads, strict=True)]
        together = [state.map_tensors(torch.clone) for state in alone]
        positions = list(heads)
        for step in range(8):
            size = CHUNK_SAMPLES[step % len(CHUNK_SAMPLES)]
            chunks = [pcm[at : at + size] for pcm, at in zip(audio, positions, strict=True)]
            expected = [encoder.step(chunk, state) for chunk, state in zip(chunks, alone, strict=True)]
            got = encoder.step_rows(chunks, together)
            for (embeddings, state), (batched, batched_state) in zip(expected, got, strict=True):
                assert batched.shape == embeddings.shape
                torch.testing.assert_close(batched, embeddings, atol=ATOL, rtol=0)
                _assert_states_close(batched_state, state)
            alone, together = [state for _, state in expected], [state for _, state in got]
            positions = [at + size for at in positions]
    assert len({state.voice_encoder.position for state in alone}) == len(audio), "the streams stay apart"


@pytest.mark.parametrize("cached_rows", [(0, 2), ()], ids=["cached-and-recomputing", "recomputing"])
def test_token2wav_steps_of_turns_at_different_positions_equal_their_unbatched_steps(token2wav, cached_rows):
    """Rows whose flow recomputes (no cache: `stream_cache_mb` 0 or outgrown) run as one padded batch; cached rows
    run one by one (each computes only its own frames)."""
    cfg = token2wav.flow.cfg
    generator = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, cfg.speech_vocab, (1, 75), generator=generator) for _ in range(3)]
    speaker = torch.randn(1, cfg.spk_embed_dim, generator=generator)
    heads = (0, 15, 45)  # the first chunk still to come, one and two chunks emitted
    with torch.inference_mode():
        fresh = [token2wav.init_state(speaker=speaker if row == 2 else None) for row in range(len(tokens))]
        for row, state in enumerate(fresh):
            state.flow.cache = state.flow.cache if row in cached_rows else None
        alone = [token2wav.step(t[:, :head], state)[1] for t, head, state in zip(tokens, heads, fresh, strict=True)]
        together = [state.map_tensors(torch.clone) for state in alone]
        positions = list(heads)
        emitted = 0
        for _ in range(2):
            chunks = [t[:, at : at + 15] for t, at in zip(tokens, positions, strict=True)]
            expected = [token2wav.step(chunk, state) for chunk, state in zip(chunks, alone, strict=True)]
            got = token2wav.step_rows(chunks, together)
            for (pcm, state), (batched, batched_state) in zip(expected, got, strict=True):
                assert batched.shape == pcm.shape
                torch.testing.assert_close(batched, pcm, atol=ATOL, rtol=0)
                _assert_states_close(batched_state, state)
                emitted += pcm.shape[1]
            alone, together = [state for _, state in expected], [state for _, state in got]
            positions = [at + 15 for at in positions]
    assert emitted > 0


async def _encode(runtime: LocalRuntime, sequence_id: str, pcm: torch.Tensor) -> torch.Tensor:
    """One utterance in 80 ms chunks, then a flush; the embeddings of all of it."""
    pieces, start = [], True
    for at in range(0, pcm.shape[0], 1280):
        inputs = {"pcm": pcm[at : at + 1280], "flush": torch.tensor([at + 1280 >= pcm.shape[0]])}
        outputs = await runtime.infer("encoder", inputs, Sequence(sequence_id, start=start))
        pieces.append(outputs["embeddings"])
        start = False
    await runtime.end_sequence("encoder", sequence_id)
    return torch.cat(pieces)


async def test_the_batching_runtime_encodes_concurrent_sessions_together_as_alone(encoder):
    generator = torch.Generator().manual_seed(1)
    audio = [0.1 * torch.randn(n, generator=generator) for n in (1280 * 6, 1280 * 9, 1280 * 12)]
    alone = LocalRuntime([EncoderModel(encoder)])
    expected = [await _encode(alone, f"alone-{i}", pcm) for i, pcm in enumerate(audio)]
    await alone.close()
    sizes: list[int] = []
    runtime = LocalRuntime([EncoderModel(encoder)], batching=SETTINGS, on_batch=lambda _, size: sizes.append(size))
    try:
        got = await asyncio.gather(*(_encode(runtime, f"together-{i}", pcm) for i, pcm in enumerate(audio)))
    finally:
        await runtime.close()
    for embeddings, batched in zip(expected, got, strict=True):
        assert batched.shape == embeddings.shape and embeddings.shape[0] > 0
        torch.testing.assert_close(batched, embeddings, atol=ATOL, rtol=0)
    assert max(sizes) > 1, sizes


async def _speak(runtime: LocalRuntime, sequence_id: str, tokens: torch.Tensor, voice: dict) -> torch.Tensor:
    """One turn in 15-token messages (the voice on the first), then a flush; its whole PCM."""
    pieces = []
    for at in range(0, tokens.shape[0], 15):
        first = at == 0
        inputs = {"tokens": tokens[at : at + 15], "flush": torch.tensor([False]), **(voice if first else {})}
        pieces.append((await runtime.infer("token2wav", inputs, Sequence(sequence_id, start=first)))["pcm"])
    end = {"tokens": tokens[:0], "flush": torch.tensor([True])}
    pieces.append((await runtime.infer("token2wav", end, Sequence(sequence_id, end=True)))["pcm"])
    return torch.cat(pieces)


async def test_the_batching_runtime_speaks_concurrent_turns_together_as_alone(token2wav):
    cfg = token2wav.flow.cfg
    generator = torch.Generator().manual_seed(2)
    turns = [torch.randint(0, cfg.speech_vocab, (n,), generator=generator) for n in (45, 60, 90)]
    voices = [{}, {"speaker": torch.randn(cfg.spk_embed_dim, generator=generator)}, {}]
    alone = LocalRuntime([Token2WavModel(token2wav)])
    expected = [await _speak(alone, f"alone-{i}", t, v) for i, (t, v) in enumerate(zip(turns, voices, strict=True))]
    await alone.close()
    sizes: list[int] = []
    runtime = LocalRuntime([Token2WavModel(token2wav)], batching=SETTINGS, on_batch=lambda _, size: sizes.append(size))
    try:
        got = await asyncio.gather(*(
            _speak(runtime, f"together-{i}", t, v) for i, (t, v) in enumerate(zip(turns, voices, strict=True))
        ))  # fmt: skip
    finally:
        await runtime.close()
    for pcm, batched, tokens in zip(expected, got, turns, strict=True):
        assert batched.shape == pcm.shape == (tokens.shape[0] * 960,)
        torch.testing.assert_close(batched, pcm, atol=ATOL, rtol=0)
    assert max(sizes) > 1, sizes


def test_a_bad_request_in_a_batch_gets_its_own_error_and_the_others_their_audio(token2wav):
    model = Token2WavModel(token2wav)
    good = {"tokens": torch.arange(18, dtype=torch.int64), "flush": torch.tensor([False])}
    bad = {"tokens": torch.tensor([-1, 5], dtype=torch.int64), "flush": torch.tensor([False])}
    with torch.inference_mode():
        results = model.execute_batch([(good, None), (bad, None), (good, None)])
        expected, _ = model.execute(good, None)
    assert isinstance(results[1], InvalidInput) and "speech token ids" in str(results[1])
    for result in (results[0], results[2]):
        outputs, state = result
        assert state is not None
        torch.testing.assert_close(outputs["pcm"], expected["pcm"], atol=ATOL, rtol=0)


def test_the_batch_bench_measures_the_encoder_batched_and_unbatched():
    from minmo.bench.batch import run_batch_bench

    (level,) = run_batch_bench("tiny", [3], 2, BatchSettings(max_size=3, window_ms=20), repeats=1, model="encoder")
    assert level.sessions == 3 and level.unbatched_tokens_per_s > 0 and level.batched_tokens_per_s > 0
    assert sum(level.batch_sizes.values()) > 0 and max(level.batch_sizes) <= 3
