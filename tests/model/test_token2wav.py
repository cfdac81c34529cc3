"""Token2wav: chunked == offline for the voice LM's 15-token blocks and any other chunking, 960 samples
per token, audio as soon as a chunk and its lookahead are in (less HiFT's held-back frames), nested state
serialisation.

Tolerance: float32, atol = 1e-5 (observed ~1e-7): the flow model's ~1e-6 rounding differences (see
test_flow_matching) pass through the vocoder, whose output is clamped to [-0.99, 0.99].
"""

from __future__ import annotations

import pytest
import torch

from minmo.model.config import MinMoConfig, load_config
from minmo.model.token2wav import Token2Wav, Token2WavState

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
TOKENS = 75  # 3 s


@pytest.fixture(scope="module")
def cfg() -> MinMoConfig:
    return load_config("tiny")


@pytest.fixture(scope="module")
def model(cfg: MinMoConfig) -> Token2Wav:
    torch.manual_seed(0)
    return Token2Wav.from_config(cfg).eval()


def _tokens(cfg: MinMoConfig, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.flow.speech_vocab, (batch, TOKENS), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _stream(model: Token2Wav, tokens: torch.Tensor, sizes: list[int], resume_samples: int = 0) -> list[torch.Tensor]:
    state, outputs, start = model.init_state(tokens.shape[0], resume_samples=resume_samples), [], 0
    for size in sizes:
        pcm, state = model.step(tokens[:, start : start + size], state)
        outputs.append(pcm)
        start += size
    pcm, _ = model.flush(state)
    return [*outputs, pcm]


@pytest.mark.parametrize("sizes", [[15] * 5, [1] * TOKENS, [4, 29, 0, 42]], ids=["15", "1", "uneven"])
def test_chunked_equals_offline(model: Token2Wav, cfg: MinMoConfig, sizes: list[int]) -> None:
    tokens = _tokens(cfg, batch=2)
    with torch.no_grad():
        offline = model(tokens)
    assert offline.shape == (2, TOKENS * model.samples_per_token)
    assert offline.dtype == torch.float32 and torch.isfinite(offline).all()
    torch.testing.assert_close(torch.cat(_stream(model, tokens, sizes), dim=1), offline, **TOLERANCE)


def test_audio_arrives_per_chunk(model: Token2Wav, cfg: MinMoConfig) -> None:
    lengths = [pcm.shape[1] for pcm in _stream(model, _tokens(cfg), [18, 12, 15, 15, 15])]
    per_token, held = model.samples_per_token, model.hift.context_frames * cfg.hift.samples_per_frame
    assert model.sample_rate == 24000 and per_token == 960
    # chunks of 15, 25, 25, 10 tokens, each final 3 tokens later; HiFT holds back its receptive field
    assert lengths == [15 * per_token - held, 0, 25 * per_token, 0, 25 * per_token, 10 * per_token + held]


@torch.no_grad()
def test_state_round_trip_gives_identical_next_step(model: Token2Wav, cfg: MinMoConfig) -> None:
    tokens = _tokens(cfg)
    _, state = model.step(tokens[:, :45], model.init_state())
    restored = Token2WavState.from_bytes(state.to_bytes())
    expected, _ = model.step(tokens[:, 45:], state)
    actual, _ = model.step(tokens[:, 45:], restored)
    assert expected.shape[1] > 0
    assert torch.equal(actual, expected)



@pytest.mark.parametrize(
    ("sizes", "resume_samples"),
    [([75], 24_000), ([15] * 5, 24_000), ([4, 29, 0, 42], 30_000 + 123), ([15] * 5, 71_500), ([15] * 5, 72_000)],
    ids=["one-message", "15s", "mid-frame", "in-the-flush", "at-the-end"],
)
def test_a_resumed_stream_is_the_unbroken_streams_rest(
    model: Token2Wav, cfg: MinMoConfig, sizes: list[int], resume_samples: int
) -> None:
    """A failover's vocoder: fed every token again, it gives only the audio from the resume point on."""
    tokens = _tokens(cfg)
    whole = torch.cat(_stream(model, tokens, [15] * 5), dim=1)
    resumed = torch.cat(_stream(model, tokens, sizes, resume_samples), dim=1)
    torch.testing.assert_close(resumed, whole[:, resume_samples:], **TOLERANCE)


def test_a_resumed_stream_passes_over_the_audio_the_listener_has(model: Token2Wav, cfg: MinMoConfig) -> None:
    """Neither the vocoder's generator nor its harmonic source is run again on what is passed over (the source's
    phase runs on per frame): only the frames from a context window before the resume point are made, so resuming
    late in a turn costs about what a chunk costs."""
    tokens = _tokens(cfg)
    frames_in, source_samples = [], []
    hooks = [
        model.hift.conv_pre.register_forward_hook(lambda _m, args, _o: frames_in.append(args[0].shape[2])),
        model.hift.source.merge.register_forward_hook(lambda _m, args, _o: source_samples.append(args[0].shape[1])),
    ]
    try:
        _stream(model, tokens, [75], resume_samples=60_000)
    finally:
        for hook in hooks:
            hook.remove()
    frames = TOKENS * cfg.flow.token_mel_ratio
    made = frames - 60_000 // cfg.hift.samples_per_frame + 4 * model.hift.context_frames
    assert sum(frames_in) < made, frames_in
    assert sum(source_samples) < made * cfg.hift.samples_per_frame, source_samples
