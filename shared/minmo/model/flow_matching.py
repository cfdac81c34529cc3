"""Chunk-aware causal flow matching (CosyVoice 2): speech tokens (25 Hz) -> 80-bin mel (50 Hz).

Pipeline: token embedding -> pre-lookahead layer (each token also sees the next `lookahead_tokens`)
-> Transformer encoder with a chunk mask (`chunk_tokens` per chunk) -> 2x nearest upsampling and a
causal conv -> linear projection to `mu`, the mel-rate condition. The estimator, a causal conv +
chunk-masked attention network over mel frames, predicts the velocity of the flow from noise to mel
given `mu`, a speaker vector, an optional prompt mel and the time; `n_timesteps` Euler steps on the
cosine schedule with classifier-free guidance turn the noise into mel.

Streaming is exact: every operation only looks left, except the pre-lookahead layer (a fixed
`lookahead_tokens`) and attention inside a chunk. So the mel frames of token chunk c are final once
the tokens up to the end of chunk c plus the lookahead have arrived, and `step` emits them then. The
Euler steps of those frames need, per step and per guidance branch, the estimator's conv context and
attention keys/values of earlier frames: they live in the state. The initial noise is a fixed buffer
indexed by absolute mel frame, as in CosyVoice 2, so a frame starts from the same noise whether it is
synthesised in one call or in many. Chunked output equals offline up to float rounding (~1e-5): the
maths is identical, but matrix products over different lengths sum in different orders.

Latency: the first frames need `chunk_tokens + lookahead_tokens` tokens (28 = 1.12 s of tokens with
the paper's 25 + 3); `flush` (end of stream: the lookahead is zero padding) emits the rest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minmo.model.config import FlowMatchingConfig
from minmo.model.layers import CacheCursor, CausalConv1d, TransformerLayer, chunk_mask, trim_kv_cache
from minmo.model.state import StreamState

TOKEN_RATE_HZ = 25
SIGMA_MIN = 1e-6  # the optimal-transport path ends at N(x1, sigma_min^2)
NOISE_SEED = 0
TIME_SCALE = 1000.0  # t in [0, 1] is scaled before the sinusoidal embedding (as in Matcha-TTS)
ESTIMATOR_CONV_KERNEL = 3
UNCOND_PROB = 0.2  # training: drop every condition with this probability (for classifier-free guidance)
PROMPT_PROB = 0.5  # training: give a mel prompt prefix with this probability
PROMPT_MAX_FRACTION = 0.3  # training: the prompt prefix covers at most this fraction of the frames


@dataclass
class FlowMatchingState(StreamState):
    """Per-stream state of `FlowMatching`.

    speaker: (B, spk_embed_dim) speaker embedding. prompt_mel: (B, mel_bins, P) condition for the first
    P frames (the prompt tokens' mel; P may be 0). pending: (B, n) tokens received but not yet turned
    into mel. tokens_done: tokens already turned into mel, including the prompt tokens. caches: conv
    contexts and attention keys/values in call order (encoder, then the estimator once per Euler step
    with both guidance branches in the batch); empty at stream start.
    """

    speaker: torch.Tensor
    prompt_mel: torch.Tensor
    pending: torch.Tensor
    tokens_done: int
    caches: list[torch.Tensor]


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of values (N,) (positions or scaled times) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device) / max(half - 1, 1))
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def chunk_attention(
    layer: TransformerLayer, x: torch.Tensor, start: int, chunk: int, left_chunks: int, cursor: CacheCursor
) -> torch.Tensor:
    """A Transformer layer over x (B, T, C) at absolute positions start.., keys/values of earlier positions
    from the cursor; keeps the keys/values a later chunk may attend to."""
    keys, values = cursor.take(), cursor.take()
    cached = 0 if keys is None else keys.shape[2]
    length = x.shape[1]
    query_positions = torch.arange(start, start + length, device=x.device)
    key_positions = torch.arange(start - cached, start + length, device=x.device)
    mask = chunk_mask(query_positions, key_positions, chunk, left_chunks)
    x, (keys, values) = layer(x, mask, None if keys is None else (keys, values))
    keys, values = trim_kv_cache(keys, values, chunk, left_chunks)
    cursor.put(keys)
    cursor.put(values)
    return x


class PreLookahead(nn.Module):
    """CosyVoice 2's pre-lookahead layer: a conv that sees `lookahead` future tokens, then a causal conv,
    with a residual; the only place the flow model looks ahead of a chunk."""

    def __init__(self, dim: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.ahead = nn.Conv1d(dim, dim, lookahead + 1)
        self.causal = CausalConv1d(dim, dim, 3)

    def forward(self, x: torch.Tensor, cursor: CacheCursor) -> torch.Tensor:
        """x: (B, C, n + lookahead) -> (B, C, n)."""
        h = F.leaky_relu(self.ahead(x))
        h = cursor.conv(self.causal, h)
        return h + x[:, :, : h.shape[2]]


class TokenEncoder(nn.Module):
    """Speech tokens -> mu (B, mel_bins, 2n): the mel-rate condition of the flow."""

    def __init__(self, cfg: FlowMatchingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.speech_vocab, cfg.dim)
        self.pre_lookahead = PreLookahead(cfg.dim, cfg.lookahead_tokens)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.dim, cfg.encoder_heads, cfg.encoder_ffn_dim) for _ in range(cfg.encoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.upsample = CausalConv1d(cfg.dim, cfg.dim, 2 * cfg.token_mel_ratio + 1)
        self.project = nn.Linear(cfg.dim, cfg.mel_bins)

    def forward(self, window: torch.Tensor, start: int, count: int, cursor: CacheCursor) -> torch.Tensor:
        """window: (B, W) tokens from absolute position `start`: the `count` to encode and their lookahead
        (fewer at the end of the stream, where the missing lookahead is zeros). Returns (B, M, count*ratio)."""
        x = self.embed(window).transpose(1, 2)  # (B, C, W)
        x = F.pad(x, (0, count + self.cfg.lookahead_tokens - x.shape[2]))
        x = self.pre_lookahead(x, cursor).transpose(1, 2)  # (B, n, C)
        x = x + sinusoidal_embedding(torch.arange(start, start + count, device=x.device), self.cfg.dim)
        for layer in self.layers:
            x = chunk_attention(layer, x, start, self.cfg.chunk_tokens, self.cfg.left_chunks, cursor)
        x = self.norm(x).transpose(1, 2).repeat_interleave(self.cfg.token_mel_ratio, dim=2)  # (B, C, 2n)
        x = cursor.conv(self.upsample, x)
        return self.project(x.transpose(1, 2)).transpose(1, 2)  # (B, M, 2n)


class EstimatorBlock(nn.Module):
    """Causal ResNet block (conv, LayerNorm over channels, Mish, time shift) + chunk-masked attention."""

    def __init__(self, channels: int, heads: int, chunk: int, left_chunks: int) -> None:
        super().__init__()
        self.chunk = chunk
        self.left_chunks = left_chunks
        self.conv1 = CausalConv1d(channels, channels, ESTIMATOR_CONV_KERNEL)
        self.norm1 = nn.LayerNorm(channels)
        self.time = nn.Linear(channels, channels)
        self.conv2 = CausalConv1d(channels, channels, ESTIMATOR_CONV_KERNEL)
        self.norm2 = nn.LayerNorm(channels)
        self.attention = TransformerLayer(channels, heads, 4 * channels)

    def forward(self, h: torch.Tensor, time: torch.Tensor, start: int, cursor: CacheCursor) -> torch.Tensor:
        """h: (B, T, C); time: (B, C)."""
        r = cursor.conv(self.conv1, h.transpose(1, 2)).transpose(1, 2)
        r = F.mish(self.norm1(r)) + self.time(time)[:, None, :]
        r = cursor.conv(self.conv2, r.transpose(1, 2)).transpose(1, 2)
        h = h + F.mish(self.norm2(r))
        return chunk_attention(self.attention, h, start, self.chunk, self.left_chunks, cursor)


class Estimator(nn.Module):
    """The velocity field v(x_t, t | mu, speaker, prompt cond): causal over mel frames."""

    def __init__(self, cfg: FlowMatchingConfig) -> None:
        super().__init__()
        channels = cfg.decoder_channels
        chunk = cfg.chunk_tokens * cfg.token_mel_ratio
        self.input = nn.Linear(4 * cfg.mel_bins, channels)  # x_t, mu, speaker, cond
        self.time_mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels))
        self.blocks = nn.ModuleList(
            EstimatorBlock(channels, cfg.decoder_heads, chunk, cfg.left_chunks) for _ in range(cfg.decoder_blocks)
        )
        self.norm = nn.LayerNorm(channels)
        self.output = nn.Linear(channels, cfg.mel_bins)

    def forward(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        speaker: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        start: int,
        cursor: CacheCursor,
    ) -> torch.Tensor:
        """x, mu, cond: (B, M, T) from absolute frame `start`; speaker: (B, M); t: (B,) in [0, 1]. -> (B, M, T)."""
        length = x.shape[2]
        inputs = torch.cat([x, mu, speaker[:, :, None].expand(-1, -1, length), cond], dim=1)
        h = self.input(inputs.transpose(1, 2))  # (B, T, C)
        time = self.time_mlp(sinusoidal_embedding(t * TIME_SCALE, h.shape[2]))  # (B, C)
        for block in self.blocks:
            h = block(h, time, start, cursor)
        return self.output(self.norm(h)).transpose(1, 2)


class FlowMatching(nn.Module):
    """Speech tokens -> mel, offline (`forward`) or streaming (`init_state` / `step` / `flush`)."""

    def __init__(self, cfg: FlowMatchingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frame_rate = TOKEN_RATE_HZ * cfg.token_mel_ratio
        self.encoder = TokenEncoder(cfg)
        self.estimator = Estimator(cfg)
        self.speaker_affine = nn.Linear(cfg.spk_embed_dim, cfg.mel_bins)
        self.default_speaker = nn.Parameter(torch.zeros(cfg.spk_embed_dim))
        generator = torch.Generator(device="cpu").manual_seed(NOISE_SEED)
        noise = torch.randn(cfg.mel_bins, cfg.max_mel_frames, generator=generator, device="cpu")
        self.register_buffer("noise", noise, persistent=False)  # (M, max_mel_frames)
        t_span = 1 - torch.cos(torch.linspace(0, 1, cfg.n_timesteps + 1, device="cpu") * math.pi / 2)
        self.register_buffer("t_span", t_span, persistent=False)  # (n_timesteps + 1,)

    def init_state(
        self,
        batch: int = 1,
        speaker: torch.Tensor | None = None,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
    ) -> FlowMatchingState:
        """A fresh stream. speaker: (B, spk_embed_dim), default the learned one. A voice prompt is its
        tokens (B, Np) with their mel (B, M, Np*ratio): they condition the stream and are not emitted."""
        device, dtype = self.default_speaker.device, self.default_speaker.dtype
        if speaker is None:
            speaker = self.default_speaker.detach().expand(batch, -1).clone()
        if prompt_tokens is None:
            prompt_tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)
        if prompt_mel is None:
            prompt_mel = torch.zeros(batch, self.cfg.mel_bins, 0, dtype=dtype, device=device)
        assert prompt_mel.shape[2] == prompt_tokens.shape[1] * self.cfg.token_mel_ratio, (
            f"prompt mel has {prompt_mel.shape[2]} frames for {prompt_tokens.shape[1]} prompt tokens"
        )
        return FlowMatchingState(speaker, prompt_mel, prompt_tokens.long(), 0, [])

    def step(self, tokens: torch.Tensor, state: FlowMatchingState) -> tuple[torch.Tensor, FlowMatchingState]:
        """tokens: (B, n), any n >= 0. Returns the mel frames (B, M, F) that became final, and the new state."""
        return self._advance(tokens, state, final=False)

    def flush(self, state: FlowMatchingState) -> tuple[torch.Tensor, FlowMatchingState]:
        """End of stream: the remaining frames (the missing lookahead is zero padding)."""
        return self._advance(state.pending[:, :0], state, final=True)

    def forward(
        self,
        tokens: torch.Tensor,
        speaker: torch.Tensor | None = None,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Offline: tokens (B, N) -> mel (B, M, N*ratio), in one pass with no cache."""
        state = self.init_state(tokens.shape[0], speaker, prompt_tokens, prompt_mel)
        mel, _ = self._advance(tokens, state, final=True)
        return mel

    def training_loss(
        self,
        tokens: torch.Tensor,
        mel: torch.Tensor,
        speaker: torch.Tensor | None = None,
        mel_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conditional flow-matching loss (optimal-transport path, cosine time schedule, condition dropout
        for guidance, random mel-prompt prefix). tokens: (B, N); mel: (B, M, N*ratio); mel_mask: (B, T)."""
        batch, bins, length = mel.shape
        assert length == tokens.shape[1] * self.cfg.token_mel_ratio, f"{length} mel frames for {tokens.shape[1]} tokens"
        mu = self.encoder(tokens, 0, tokens.shape[1], CacheCursor([]))
        keep = (torch.rand(batch, device=mel.device) >= UNCOND_PROB).to(mel.dtype)  # (B,)
        speaker = self.default_speaker.expand(batch, -1) if speaker is None else speaker
        speaker = self.speaker_affine(F.normalize(speaker, dim=1)) * keep[:, None]
        cond = self._random_prompt(mel) * keep[:, None, None]
        t = 1 - torch.cos(torch.rand(batch, device=mel.device) * math.pi / 2)  # (B,)
        noise = torch.randn_like(mel)
        x_t = (1 - (1 - SIGMA_MIN) * t[:, None, None]) * noise + t[:, None, None] * mel
        target = mel - (1 - SIGMA_MIN) * noise
        velocity = self.estimator(x_t, mu * keep[:, None, None], speaker, cond, t, 0, CacheCursor([]))
        mel_mask = torch.ones(batch, length, device=mel.device) if mel_mask is None else mel_mask.to(mel.dtype)
        return ((velocity - target).square() * mel_mask[:, None, :]).sum() / (mel_mask.sum() * bins)

    def _advance(
        self, tokens: torch.Tensor, state: FlowMatchingState, final: bool
    ) -> tuple[torch.Tensor, FlowMatchingState]:
        """Encode and synthesise every token whose chunk and lookahead are complete (all of them if final)."""
        cfg = self.cfg
        pending = torch.cat([state.pending, tokens.long()], dim=1)
        total = state.tokens_done + pending.shape[1]
        ready = total if final else max(total - cfg.lookahead_tokens, 0) // cfg.chunk_tokens * cfg.chunk_tokens
        count = ready - state.tokens_done
        if count <= 0:
            nothing = state.prompt_mel.new_zeros(pending.shape[0], cfg.mel_bins, 0)
            return nothing, dataclasses.replace(state, pending=pending)
        cursor = CacheCursor(state.caches)
        window = pending[:, : count + cfg.lookahead_tokens]
        mu = self.encoder(window, state.tokens_done, count, cursor)  # (B, M, 2n)
        start = state.tokens_done * cfg.token_mel_ratio
        mel = self._solve(mu, state, start, cursor)
        skip = min(max(state.prompt_mel.shape[2] - start, 0), mel.shape[2])
        new_state = FlowMatchingState(state.speaker, state.prompt_mel, pending[:, count:], ready, cursor.new)
        return mel[:, :, skip:], new_state

    def _solve(self, mu: torch.Tensor, state: FlowMatchingState, start: int, cursor: CacheCursor) -> torch.Tensor:
        """Euler steps from the fixed noise at frames start.. to mel, with classifier-free guidance
        (conditional and unconditional branches in one batch)."""
        batch, bins, length = mu.shape
        assert start + length <= self.cfg.max_mel_frames, f"stream longer than {self.cfg.max_mel_frames} mel frames"
        x = self.noise[:, start : start + length].to(mu.dtype).expand(batch, -1, -1)  # (B, M, T)
        speaker = self.speaker_affine(F.normalize(state.speaker, dim=1))  # (B, M)
        cond = mu.new_zeros(batch, bins, length)
        prompt = state.prompt_mel[:, :, start : start + length]
        cond[:, :, : prompt.shape[2]] = prompt
        mu_in = torch.cat([mu, torch.zeros_like(mu)])
        speaker_in = torch.cat([speaker, torch.zeros_like(speaker)])
        cond_in = torch.cat([cond, torch.zeros_like(cond)])
        rate = self.cfg.cfg_rate
        for step in range(self.cfg.n_timesteps):
            t = self.t_span[step].to(mu.dtype).expand(2 * batch)
            velocity = self.estimator(torch.cat([x, x]), mu_in, speaker_in, cond_in, t, start, cursor)
            v_cond, v_uncond = velocity.chunk(2)
            x = x + (self.t_span[step + 1] - self.t_span[step]) * ((1 + rate) * v_cond - rate * v_uncond)
        return x

    def _random_prompt(self, mel: torch.Tensor) -> torch.Tensor:
        """Training condition: for about half of the examples a mel prefix (up to 30 %), zeros elsewhere."""
        batch, _, length = mel.shape
        lengths = (torch.rand(batch, device=mel.device) * PROMPT_MAX_FRACTION * length).long()
        lengths = lengths * (torch.rand(batch, device=mel.device) < PROMPT_PROB)
        inside = torch.arange(length, device=mel.device)[None, :] < lengths[:, None]  # (B, T)
        return mel * inside[:, None, :]
