"""The encoder and token2wav runtime models are stateful per sequence, like the LLM and the voice LM: the stream's
caches stay in the runtime, a request carries only its new chunk, and the chunked results equal the offline pass
(with the same left-context masks) however the stream is cut and however streams interleave.

Tolerances: float32, 1e-5 (observed ~1e-7): chunked and offline attention sum in different orders.
"""

import pytest
import torch

from minmo.model.build import build_component
from minmo.model.config import MinMoConfig, load_config
from minmo.runtime.base import Sequence, UnknownSequence
from minmo.runtime.factory import build_local_runtime
from minmo.runtime.local import LocalRuntime

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
CHUNK_SAMPLES = 2560  # 160 ms at 16 kHz, one tiny encoder chunk
BLOCK = 15  # speech tokens per voice-LM block


@pytest.fixture(scope="module")
def cfg() -> MinMoConfig:
    return load_config("tiny")


@pytest.fixture(scope="module")
def runtime(cfg: MinMoConfig) -> LocalRuntime:
    return build_local_runtime(cfg, ["encoder", "token2wav"])


def _speech(seconds: float, seed: int) -> torch.Tensor:
    return 0.1 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(seed))


async def _encode(runtime: LocalRuntime, sequence_id: str, pcm: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """One utterance through the runtime in chunks of `sizes` samples (the last call flushes)."""
    pieces, start = [], 0
    for index, size in enumerate(sizes):
        last = index == len(sizes) - 1
        inputs = {"pcm": pcm[start : start + size], "flush": torch.tensor([last])}
        sequence = Sequence(sequence_id, start=index == 0)
        pieces.append((await runtime.infer("encoder", inputs, sequence))["embeddings"])
        start += size
    return torch.cat(pieces)


def test_every_preset_bounds_the_encoder_left_context() -> None:
    for name in ("tiny", "nano", "minmo-8b", "minmo-public"):
        assert load_config(name).voice_encoder.left_chunks >= 0, f"{name}: the encoder cache must be bounded"


async def test_encoder_stream_equals_offline_beyond_the_left_context(runtime: LocalRuntime, cfg: MinMoConfig) -> None:
    seconds = 3.0  # more than the tiny encoder's left context (8 chunks of 160 ms), so the bound shapes the result
    assert seconds * 1000 > cfg.voice_encoder.left_chunks * 160
    pcm = _speech(seconds, seed=1)
    sizes = [CHUNK_SAMPLES + 700, 333, *[CHUNK_SAMPLES] * 15]
    sizes.append(pcm.shape[0] - sum(sizes))
    streamed = await _encode(runtime, "utterance", pcm, sizes)
    with torch.no_grad():
        offline = build_component(cfg, "speech_encoder")(pcm)[0]
    torch.testing.assert_close(streamed, offline, **TOLERANCE)
    assert "utterance" in runtime.live_sequences("encoder"), "a flush ends the utterance, not the session's stream"
    await runtime.end_sequence("encoder", "utterance")
    assert runtime.live_sequences("encoder") == {}


async def test_after_a_flush_the_next_utterance_of_a_session_starts_fresh(runtime: LocalRuntime) -> None:
    first, second = _speech(1.0, seed=2), _speech(1.2, seed=3)
    session = await _encode(runtime, "session", first, [first.shape[0]])
    assert session.shape[0] > 0
    again = await _encode(runtime, "session-2", second, [CHUNK_SAMPLES, second.shape[0] - CHUNK_SAMPLES])
    # the same session's second utterance, after the first one's flush, equals a fresh stream's
    inputs = {"pcm": second, "flush": torch.tensor([True])}
    after_flush = (await runtime.infer("encoder", inputs, Sequence("session")))["embeddings"]
    torch.testing.assert_close(after_flush, again, **TOLERANCE)
    for sequence_id in ("session", "session-2"):
        await runtime.end_sequence("encoder", sequence_id)


async def test_token2wav_stream_equals_offline_and_streams_interleave(runtime: LocalRuntime, cfg: MinMoConfig) -> None:
    generator = torch.Generator().manual_seed(4)
    turns = {name: torch.randint(0, cfg.flow.speech_vocab, (75,), generator=generator) for name in ("a", "b")}
    pcm = {name: [] for name in turns}
    blocks = range(0, 75, BLOCK)
    for index, first in enumerate(blocks):
        for name, tokens in turns.items():  # two turns' blocks alternate on one runtime
            sequence = Sequence(name, start=index == 0)
            inputs = {"tokens": tokens[first : first + BLOCK], "flush": torch.tensor([False])}
            pcm[name].append((await runtime.infer("token2wav", inputs, sequence))["pcm"])
    for name in turns:
        flush = {"tokens": torch.zeros(0, dtype=torch.int64), "flush": torch.tensor([True])}
        pcm[name].append((await runtime.infer("token2wav", flush, Sequence(name, end=True)))["pcm"])
    token2wav = build_component(cfg, "token2wav")
    for name, tokens in turns.items():
        with torch.no_grad():
            offline = token2wav(tokens[None])[0]
        torch.testing.assert_close(torch.cat(pcm[name]), offline, **TOLERANCE)
    assert runtime.live_sequences("token2wav") == {}, "the flush ended both turns' sequences"


async def test_a_request_on_a_sequence_never_started_is_refused(runtime: LocalRuntime) -> None:
    with pytest.raises(UnknownSequence):
        await runtime.infer("encoder", {"pcm": torch.zeros(CHUNK_SAMPLES)}, Sequence("never-started"))
    with pytest.raises(UnknownSequence):
        await runtime.infer("token2wav", {"tokens": torch.zeros(BLOCK, dtype=torch.int64)}, Sequence("never-started"))
