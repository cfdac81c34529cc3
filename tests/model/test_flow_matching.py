"""Flow matching: chunked == offline for any chunking (also with a voice prompt), frames emitted exactly when
their chunk (15 tokens, then 25) and its lookahead are in, a cached chunk computes only its own frames and a
cache past its budget is dropped (the stream then recomputes, still exact), full attention differs from chunked,
state serialisation, training loss, and the CosyVoice2-0.5B parameter count. Equality with CosyVoice 2's own
module is in tests/compat.

Tolerance: float32, atol = rtol = 1e-5 (observed ~1e-6). Streaming does the same arithmetic as the
offline pass, but matrix products and convolutions over different lengths sum in different orders, and
ten Euler steps carry those last-bit differences along.
"""

from __future__ import annotations

import pytest
import torch

from minmo.model.config import FlowMatchingConfig, load_config
from minmo.model.flow_matching import FlowMatching, FlowMatchingState

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
TOKENS = 75  # 3 s


def _model(cfg: FlowMatchingConfig) -> FlowMatching:
    torch.manual_seed(0)
    return FlowMatching(cfg).eval()


@pytest.fixture(scope="module")
def cfg() -> FlowMatchingConfig:
    return load_config("tiny").flow


@pytest.fixture(scope="module")
def model(cfg: FlowMatchingConfig) -> FlowMatching:
    return _model(cfg)


def _tokens(cfg: FlowMatchingConfig, length: int = TOKENS, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.speech_vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _stream(model: FlowMatching, tokens: torch.Tensor, sizes: list[int], state: FlowMatchingState) -> torch.Tensor:
    outputs, start = [], 0
    for size in sizes:
        mel, state = model.step(tokens[:, start : start + size], state)
        outputs.append(mel)
        start += size
    assert start == tokens.shape[1]
    mel, _ = model.flush(state)
    return torch.cat([*outputs, mel], dim=2)


@pytest.mark.parametrize("sizes", [[15] * 5, [1] * TOKENS, [7, 30, 2, 36], [TOKENS]], ids=["15", "1", "uneven", "all"])
def test_chunked_equals_offline(model: FlowMatching, cfg: FlowMatchingConfig, sizes: list[int]) -> None:
    tokens = _tokens(cfg)
    with torch.no_grad():
        offline = model(tokens)
    assert offline.shape == (2, cfg.mel_bins, TOKENS * cfg.token_mel_ratio)
    assert torch.isfinite(offline).all()
    torch.testing.assert_close(_stream(model, tokens, sizes, model.init_state(2)), offline, **TOLERANCE)


def test_a_lower_noise_scale_streams_exactly_and_changes_the_mel(model: FlowMatching, cfg: FlowMatchingConfig) -> None:
    """nano's temperature: the same weights start the Euler steps from scaled noise, chunked still equals offline."""
    import dataclasses

    cooler = _model(dataclasses.replace(cfg, noise_scale=0.5))
    cooler.load_state_dict(model.state_dict())
    tokens = _tokens(cfg)
    with torch.no_grad():
        offline, default = cooler(tokens), model(tokens)
    assert not torch.allclose(offline, default, atol=1e-3)
    torch.testing.assert_close(_stream(cooler, tokens, [7, 30, 2, 36], cooler.init_state(2)), offline, **TOLERANCE)


@torch.no_grad()
def test_frames_are_emitted_once_chunk_and_lookahead_arrived(model: FlowMatching, cfg: FlowMatchingConfig) -> None:
    tokens = _tokens(cfg, batch=1)
    first = cfg.first_chunk_tokens + cfg.lookahead_tokens  # 15 + 3, as MinMo runs token2wav
    mel, state = model.step(tokens[:, : first - 1], model.init_state())
    assert mel.shape[2] == 0
    mel, state = model.step(tokens[:, first - 1 : first], state)
    assert mel.shape[2] == cfg.first_chunk_tokens * cfg.token_mel_ratio
    mel, state = model.step(tokens[:, first:TOKENS], state)
    assert mel.shape[2] == 2 * cfg.chunk_tokens * cfg.token_mel_ratio  # 15 + 25 + 25 = 65 of 75 final
    mel, _ = model.flush(state)
    assert mel.shape[2] == (TOKENS - cfg.first_chunk_tokens - 2 * cfg.chunk_tokens) * cfg.token_mel_ratio


def _estimator_frames(model: FlowMatching, tokens: torch.Tensor, sizes: list[int]) -> int:
    """Mel frames the estimator computed (summed over its calls) while streaming `tokens` in `sizes`."""
    frames = []
    hook = model.estimator.register_forward_hook(lambda _module, inputs, _output: frames.append(inputs[0].shape[2]))
    try:
        _stream(model, tokens, sizes, model.init_state(tokens.shape[0]))
    finally:
        hook.remove()
    return sum(frames)


def test_a_cached_chunk_computes_only_its_own_frames(model: FlowMatching, cfg: FlowMatchingConfig) -> None:
    """With its cache a stream's Euler steps run once over each frame, however late in the turn; recomputing
    (CosyVoice 2's way, `stream_cache_mb = 0`) runs them over every frame so far at every chunk."""
    import dataclasses

    tokens, sizes = _tokens(cfg, batch=1), [15] * 5
    once = cfg.n_timesteps * TOKENS * cfg.token_mel_ratio
    assert _estimator_frames(model, tokens, sizes) == once
    recomputing = _model(dataclasses.replace(cfg, stream_cache_mb=0))
    recomputing.load_state_dict(model.state_dict())
    assert recomputing.init_state().cache is None
    assert _estimator_frames(recomputing, tokens, sizes) > 2 * once


def test_past_its_budget_the_cache_is_dropped_and_the_stream_stays_exact(
    model: FlowMatching, cfg: FlowMatchingConfig
) -> None:
    import dataclasses

    bounded = _model(dataclasses.replace(cfg, stream_cache_mb=2.0))  # the first chunk's cache (two streams): 1.1 MB
    bounded.load_state_dict(model.state_dict())
    tokens = _tokens(cfg)
    with torch.no_grad():
        _, state = bounded.step(tokens[:, :18], bounded.init_state(2))
        assert state.cache is not None and 0 < state.cache.nbytes() <= 2 * 2**20
        _, state = bounded.step(tokens[:, 18:45], state)
        assert state.cache is None
        offline = model(tokens)
    torch.testing.assert_close(_stream(bounded, tokens, [7, 30, 2, 36], bounded.init_state(2)), offline, **TOLERANCE)


@pytest.mark.parametrize("cache_mb", [256.0, 2.0], ids=["cached", "cache-outgrown-mid-way"])
def test_many_chunks_at_once_run_in_bounded_passes_and_equal_offline(
    model: FlowMatching, cfg: FlowMatchingConfig, cache_mb: float
) -> None:
    """A failover's rebuild gets a whole turn at once: its passes attend from at most MAX_PASS_TOKENS positions each
    (not the whole turn's square), and a cache outgrown mid-way hands the rest to the recomputing path."""
    import dataclasses

    from minmo.model.flow_matching import MAX_PASS_TOKENS

    bounded = _model(dataclasses.replace(cfg, stream_cache_mb=cache_mb))
    bounded.load_state_dict(model.state_dict())
    tokens = _tokens(cfg, length=600, batch=1)
    frames: list[int] = []
    hook = bounded.estimator.register_forward_hook(lambda _m, inputs, _o: frames.append(inputs[0].shape[2]))
    try:
        with torch.no_grad():
            streamed = _stream(bounded, tokens, [600], bounded.init_state())
            offline = model(tokens)
    finally:
        hook.remove()
    torch.testing.assert_close(streamed, offline, **TOLERANCE)
    if cache_mb > 100:
        assert max(frames) <= MAX_PASS_TOKENS * cfg.token_mel_ratio, sorted(set(frames))


@torch.no_grad()
def test_full_attention_is_the_offline_mode(model: FlowMatching, cfg: FlowMatchingConfig) -> None:
    tokens = _tokens(cfg)
    chunked, full = model(tokens), model(tokens, streaming=False)
    first = cfg.first_chunk_tokens * cfg.token_mel_ratio
    assert full.shape == chunked.shape and not torch.allclose(full[:, :, :first], chunked[:, :, :first], atol=1e-3)


def test_chunks_start_after_the_prompt(model: FlowMatching) -> None:
    assert model.chunk_ends(0, 75) == [15, 40, 65, 75]
    assert model.chunk_ends(10, 30) == [10, 25, 30]


@torch.no_grad()
def test_prompt_and_speaker_condition_the_stream(model: FlowMatching, cfg: FlowMatchingConfig) -> None:
    tokens = _tokens(cfg)
    prompt_tokens = _tokens(cfg, length=10, seed=2)
    prompt_mel = torch.randn(2, cfg.mel_bins, 10 * cfg.token_mel_ratio, generator=torch.Generator().manual_seed(3))
    speaker = torch.randn(2, cfg.spk_embed_dim, generator=torch.Generator().manual_seed(4))
    offline = model(tokens, speaker, prompt_tokens, prompt_mel)
    assert not torch.allclose(offline, model(tokens, speaker), atol=1e-3)
    assert offline.shape[2] == TOKENS * cfg.token_mel_ratio  # prompt frames are not emitted
    assert not torch.allclose(offline, model(tokens), atol=1e-3)
    state = model.init_state(2, speaker, prompt_tokens, prompt_mel)
    torch.testing.assert_close(_stream(model, tokens, [15] * 5, state), offline, **TOLERANCE)


@torch.no_grad()
def test_state_round_trip_gives_identical_next_step(model: FlowMatching, cfg: FlowMatchingConfig) -> None:
    tokens = _tokens(cfg)
    _, state = model.step(tokens[:, :40], model.init_state(2))
    restored = FlowMatchingState.from_bytes(state.to_bytes())
    expected, _ = model.step(tokens[:, 40:], state)
    actual, _ = model.step(tokens[:, 40:], restored)
    assert expected.shape[2] > 0
    assert torch.equal(actual, expected)


def test_training_loss_is_finite_with_gradients(cfg: FlowMatchingConfig) -> None:
    model = _model(cfg).train()
    tokens = _tokens(cfg, length=30)
    mel = torch.randn(2, cfg.mel_bins, 30 * cfg.token_mel_ratio)
    speaker = torch.randn(2, cfg.spk_embed_dim)
    loss = model.training_loss(tokens, mel, speaker, mel_mask=torch.ones(2, mel.shape[2]))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for parameter in (model.embedding.weight, model.estimator.output.weight, model.speaker_affine.weight):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
    assert model.estimator.output.weight.grad.abs().sum() > 0


def test_prior_loss_adds_the_weighted_error_of_mu_to_the_mel(cfg: FlowMatchingConfig) -> None:
    model = _model(cfg).train()
    tokens = _tokens(cfg, length=30)
    mel = torch.randn(2, cfg.mel_bins, 30 * cfg.token_mel_ratio)
    losses = []
    for weight in (0.0, 0.5):
        torch.manual_seed(3)  # the same time, noise and condition dropout draws for both
        losses.append(model.training_loss(tokens, mel, prior_weight=weight))
    blocks = model._blocks(0, tokens.shape[1])
    mu = model.encoder(model.embedding(tokens), tokens.shape[1], blocks)
    torch.testing.assert_close(losses[1] - losses[0], 0.5 * (mu - mel).square().mean())
    losses[1].backward()
    assert model.encoder.project.weight.grad.abs().sum() > 0


def test_paper_size_parameter_count() -> None:
    with torch.device("meta"):
        model = FlowMatching(load_config("minmo-8b").flow)
    count = sum(parameter.numel() for parameter in model.parameters())
    print(f"minmo-8b flow matching: {count / 1e6:.1f}M parameters")
    assert 112e6 < count < 113e6  # CosyVoice2-0.5B's flow.pt: 112.6M
