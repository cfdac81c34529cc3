"""Chunk-aware causal flow matching, weight-compatible with CosyVoice 2's `CausalMaskedDiffWithXvec`:
speech tokens (25 Hz) -> 80-bin mel (50 Hz).

Layout (the published CosyVoice2-0.5B sizes in brackets; `minmo convert --from cosyvoice2` maps its
`flow.pt` onto these modules):
- token embedding [6561 x 512] -> `TokenEncoder` (CosyVoice 2's UpsampleConformerEncoder): linear +
  LayerNorm + sqrt(d) scale, a pre-lookahead layer (a conv seeing `lookahead_tokens` [3] future tokens,
  then a causal conv), `encoder_layers` [6] Conformer layers (relative-position attention, no conv
  module), nearest 2x upsampling + causal conv, linear + LayerNorm again, `up_layers` [4] Conformer
  layers at mel rate, LayerNorm -> linear to `mu` (80 per frame).
- `Estimator` (CosyVoice 2's CausalConditionalDecoder): a one-level U-Net over mel frames with
  `decoder_channels` [256]: a down block, `decoder_mid_blocks` [12] mid blocks and an up block (with
  the down block's output as skip), each a causal ResNet block (causal conv, LayerNorm, Mish, time
  shift) followed by `decoder_blocks` [4] Transformer blocks (8 heads of 64); input is x_t, mu, the
  speaker (192 -> 80 by `speaker_affine`) and the prompt mel, stacked to 320 channels.
- 10 Euler steps on the cosine schedule with classifier-free guidance (0.7); the initial noise is a fixed
  buffer indexed by absolute mel frame (torch seed 0, as CosyVoice 2's `rand_noise`), times `noise_scale`
  (1.0 in CosyVoice 2; Matcha-TTS's temperature, which `nano` lowers).

Attention is block-causal: positions are grouped in chunks and a position sees its own chunk and every
earlier one (CosyVoice 2's static chunk masks, unlimited left context). The chunks are the voice prompt
(one chunk), then `first_chunk_tokens` [15, as MinMo feeds token2wav], then `chunk_tokens` [25] each;
the mel-rate layers use the same chunks at twice the length. With no prompt and `first_chunk_tokens ==
chunk_tokens` these are exactly CosyVoice 2's `streaming=True` masks; `forward(streaming=False)` is
one chunk, its offline full attention.

Streaming (`init_state` / `step` / `flush`) is exact: every operation looks only left, except the
pre-lookahead conv and attention inside a chunk, so a chunk's mel frames are final once its tokens and the
`lookahead_tokens` after it have arrived, and the frames before it never change. CosyVoice 2 streams by
recomputing the encoder and every Euler step over all tokens so far at each chunk, so a chunk costs more the
longer the turn (quadratic over a reply: in `tiny` the 20th chunk took 13x the first). Here a stream keeps a
`FlowCache` instead: each attention layer's keys and values and each causal convolution's last inputs, for the
encoder and for each Euler step, so a chunk computes only its own frames and costs the same wherever it falls.
The cache grows with the turn (per mel frame: keys and values of every estimator attention layer, for each Euler
step, for the conditioned and unconditioned rows: ~80 KB at `nano`'s widths, 4.6 MB at CosyVoice 2's); past
`stream_cache_mb` it is dropped and the stream recomputes as CosyVoice 2 does. Many chunks ready at once (a
failover's vocoder is sent the whole turn again) run as passes of at most `MAX_PASS_TOKENS` through the cache, so
no pass attends from the whole turn. Chunked output equals offline up to float rounding (~1e-6): products over
different lengths sum in different orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minmo.model.config import SPEECH_TOKEN_RATE_HZ, FlowMatchingConfig
from minmo.model.state import StreamState

SIGMA_MIN = 1e-6  # the optimal-transport path ends at N(x1, sigma_min^2)
NOISE_SEED = 0
TIME_SCALE = 1000.0  # t in [0, 1] is scaled before the sinusoidal embedding (as in Matcha-TTS)
CONFORMER_NORM_EPS = 1e-12  # the Conformer layers' LayerNorms (ESPnet's value)
INPUT_NORM_EPS = 1e-5
ESTIMATOR_CONV_KERNEL = 3
ESTIMATOR_TIME_MULT = 4  # time embedding width = 4 x decoder channels
ESTIMATOR_FFN_MULT = 4
UNCOND_PROB = 0.2  # training: drop every condition with this probability (for classifier-free guidance)
PROMPT_PROB = 0.5  # training: give a mel prompt prefix with this probability
PROMPT_MAX_FRACTION = 0.3  # training: the prompt prefix covers at most this fraction of the frames
MAX_PASS_TOKENS = 250  # a cached pass covers at most this many tokens (10 s): its attention is this many x the turn


@dataclass
class FlowCache(StreamState):
    """What a stream's earlier chunks left for the next one to attend to and convolve over, so that it computes
    only its own frames: for every attention layer its keys and values (all positions so far), for every causal
    convolution its last inputs, in the order the layers run. `estimator` holds one such list per Euler step (its
    rows are the conditioned and the unconditioned stream, as `_solve` batches them). `tokens`: the token positions
    computed, prompt included."""

    tokens: int
    encoder: list[torch.Tensor]
    estimator: list[list[torch.Tensor]]

    def nbytes(self) -> int:
        tensors = [*self.encoder, *(entry for step in self.estimator for entry in step)]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@dataclass
class FlowMatchingState(StreamState):
    """Per-stream state of `FlowMatching`.

    speaker: (B, spk_embed_dim) speaker embedding. prompt_mel: (B, mel_bins, Np*ratio) mel of the voice
    prompt. tokens: (B, Np + n) the prompt tokens and every token received so far. emitted: tokens whose
    mel frames were returned (not counting the prompt). cache: the layers' context for the next chunk (None:
    the stream recomputes every chunk from its tokens, as CosyVoice 2 does; also once the cache outgrew
    `stream_cache_mb`).
    """

    speaker: torch.Tensor
    prompt_mel: torch.Tensor
    tokens: torch.Tensor
    prompt_tokens: int
    emitted: int
    cache: FlowCache | None = None


class LayerContext:
    """Walks a `FlowCache` list during one forward over a chunk: each cached layer, in the order the layers run,
    takes its entry from the earlier chunks (none on a stream's first) and leaves its updated entry in `entries`."""

    def __init__(self, past: list[torch.Tensor]) -> None:
        self.past = past
        self.entries: list[torch.Tensor] = []

    def _earlier(self) -> torch.Tensor | None:
        index = len(self.entries)
        return self.past[index] if index < len(self.past) else None

    def extend(self, new: torch.Tensor, dim: int) -> torch.Tensor:
        """Keys or values: the earlier positions' along `dim`, then the new ones."""
        earlier = self._earlier()
        every = new if earlier is None else torch.cat([earlier, new], dim=dim)
        self.entries.append(every)
        return every

    def left_context(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """A causal convolution's input (B, C, T) with the `width` inputs before it in front (zeros on the first
        chunk, as the offline pass pads)."""
        earlier = self._earlier()
        if earlier is None:
            earlier = x.new_zeros(x.shape[0], x.shape[1], width)
        padded = torch.cat([earlier, x], dim=2)
        self.entries.append(padded[:, :, -width:].clone())  # a copy: a view would keep the whole chunk alive
        return padded


def causal_pad(x: torch.Tensor, width: int, context: LayerContext | None) -> torch.Tensor:
    """x (B, C, T) with `width` frames in front: zeros offline, the earlier chunks' inputs when streaming."""
    return F.pad(x, (width, 0)) if context is None else context.left_context(x, width)


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of values (N,) (scaled times) -> (N, dim): sines then cosines."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=values.device).float() * -(math.log(10000.0) / (half - 1)))
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def relative_position_encoding(offsets: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoids of signed relative offsets (R,) -> (R, dim), sin on even and cos on odd channels."""
    inverse = torch.exp(torch.arange(0, dim, 2, device=offsets.device).float() * -(math.log(10000.0) / dim))
    angles = offsets.float()[:, None] * inverse[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=2).flatten(1)


def block_mask(blocks: torch.Tensor, earlier: int = 0) -> torch.Tensor:
    """Boolean (T, T) mask from each position's chunk index (T,): a query sees its chunk and earlier ones. Chunk
    indices per stream (B, T) give one mask per stream, (B, 1, T, T) (the same for every head). `earlier`
    positions of cached chunks before them (all in earlier chunks) add as many columns in front, all seen."""
    mask = blocks[..., None, :] <= blocks[..., :, None]
    mask = mask if blocks.dim() == 1 else mask[:, None]
    return F.pad(mask, (earlier, 0), value=True) if earlier else mask


class RelativePositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (ESPnet's `rel_pos_espnet`):
    score(i, j) = ((q_i + u)·k_j + (q_i + v)·p(i - j)) / sqrt(d), p a projected sinusoid of i - j."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.position = nn.Linear(dim, dim, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.position_bias = nn.Parameter(torch.zeros(heads, self.head_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: LayerContext | None = None) -> torch.Tensor:
        """x: (B, T, C); mask: (T, S) bool over the S = E + T keys, the E earlier ones in `context` first.
        -> (B, T, C)."""
        batch, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], -1, self.heads, self.head_dim)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if context is not None:
            k, v = context.extend(k, dim=1), context.extend(v, dim=1)
        k, v, keys = k.transpose(1, 2), v.transpose(1, 2), k.shape[1]
        offsets = torch.arange(keys - 1, -length, -1, device=x.device)  # i - j from S-1 down to -(T-1)
        p = heads(self.position(relative_position_encoding(offsets, dim).to(x.dtype))[None]).transpose(1, 2)
        content = (q + self.content_bias).transpose(1, 2) @ k.transpose(2, 3)  # (B, H, T, S)
        by_offset = ((q + self.position_bias).transpose(1, 2) @ p.transpose(2, 3)).contiguous()  # (B, H, T, S+T-1)
        # element (i, j) of the (T, S) result is by_offset[i, T-1 - i + j]: a strided view, no copy
        s0, s1, s2, s3 = by_offset.stride()
        position = by_offset.as_strided(
            (batch, self.heads, length, keys), (s0, s1, s2 - s3, s3), by_offset.storage_offset() + (length - 1) * s3
        )
        scores = (content + position) / math.sqrt(self.head_dim)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, length, dim))


class ConformerLayer(nn.Module):
    """Pre-norm relative-position attention + SiLU feed-forward (CosyVoice 2's Conformer layer with
    neither macaron feed-forward nor conv module)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=CONFORMER_NORM_EPS)
        self.attention = RelativePositionAttention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=CONFORMER_NORM_EPS)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: LayerContext | None = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), mask, context)
        return x + self.ffn_out(F.silu(self.ffn_in(self.ffn_norm(x))))


class InputLayer(nn.Module):
    """Linear + LayerNorm, scaled by sqrt(dim) (the relative-position encoding's input scale)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=INPUT_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x)) * math.sqrt(x.shape[-1])


class PreLookahead(nn.Module):
    """A conv that sees `lookahead` future tokens, then a causal conv, with a residual: the only place the
    flow model looks ahead of a chunk."""

    CAUSAL_KERNEL = 3

    def __init__(self, dim: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.ahead = nn.Conv1d(dim, dim, lookahead + 1)
        self.causal = nn.Conv1d(dim, dim, self.CAUSAL_KERNEL)

    def forward(self, x: torch.Tensor, count: int, context: LayerContext | None = None) -> torch.Tensor:
        """x: (B, W, C) with W >= count, the first `count` positions and the lookahead after them (zeros where
        W falls short). -> (B, count, C)."""
        window = x[:, : count + self.lookahead].transpose(1, 2)
        h = F.pad(window, (0, count + self.lookahead - window.shape[2]))
        h = F.leaky_relu(self.ahead(h))
        h = self.causal(causal_pad(h, self.CAUSAL_KERNEL - 1, context))
        return h.transpose(1, 2) + x[:, :count]


class TokenEncoder(nn.Module):
    """Token embeddings -> mu (B, mel_bins, count*ratio): CosyVoice 2's UpsampleConformerEncoder + projection."""

    def __init__(self, cfg: FlowMatchingConfig) -> None:
        super().__init__()
        self.ratio = cfg.token_mel_ratio
        self.input = InputLayer(cfg.dim)
        self.pre_lookahead = PreLookahead(cfg.dim, cfg.lookahead_tokens)
        self.layers = nn.ModuleList(
            ConformerLayer(cfg.dim, cfg.encoder_heads, cfg.encoder_ffn_dim) for _ in range(cfg.encoder_layers)
        )
        self.upsample = nn.Conv1d(cfg.dim, cfg.dim, 2 * cfg.token_mel_ratio + 1)
        self.up_input = InputLayer(cfg.dim)
        self.up_layers = nn.ModuleList(
            ConformerLayer(cfg.dim, cfg.encoder_heads, cfg.encoder_ffn_dim) for _ in range(cfg.up_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=INPUT_NORM_EPS)
        self.project = nn.Linear(cfg.dim, cfg.mel_bins)

    def forward(
        self,
        embedded: torch.Tensor,
        count: int,
        blocks: torch.Tensor,
        context: LayerContext | None = None,
        earlier: int = 0,
    ) -> torch.Tensor:
        """embedded: (B, W, C) token embeddings, W >= count (the rest is lookahead); blocks: (count,) chunk
        index per token, or (B, count) per stream. With `context` the tokens follow the `earlier` tokens of
        the chunks it holds. -> (B, mel_bins, count*ratio)."""
        x = self.pre_lookahead(self.input(embedded), count, context)
        mask = block_mask(blocks, earlier)
        for layer in self.layers:
            x = layer(x, mask, context)
        x = x.transpose(1, 2).repeat_interleave(self.ratio, dim=2)  # (B, C, count*ratio)
        x = self.upsample(causal_pad(x, 2 * self.ratio, context)).transpose(1, 2)
        x = self.up_input(x)
        mask = block_mask(blocks.repeat_interleave(self.ratio, dim=-1), earlier * self.ratio)
        for layer in self.up_layers:
            x = layer(x, mask, context)
        return self.project(self.norm(x)).transpose(1, 2)


class CausalConvNorm(nn.Module):
    """Causal conv (kernel 3) + LayerNorm over channels + Mish, on (B, C, T)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, ESTIMATOR_CONV_KERNEL)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor, context: LayerContext | None = None) -> torch.Tensor:
        x = self.conv(causal_pad(x, ESTIMATOR_CONV_KERNEL - 1, context))
        return F.mish(self.norm(x.transpose(1, 2)).transpose(1, 2))


class ResnetBlock(nn.Module):
    """Two causal conv blocks with the time embedding added in between, plus a 1x1 residual."""

    def __init__(self, in_channels: int, channels: int, time_dim: int) -> None:
        super().__init__()
        self.block1 = CausalConvNorm(in_channels, channels)
        self.time = nn.Linear(time_dim, channels)
        self.block2 = CausalConvNorm(channels, channels)
        self.skip = nn.Conv1d(in_channels, channels, 1)

    def forward(self, x: torch.Tensor, time: torch.Tensor, context: LayerContext | None = None) -> torch.Tensor:
        """x: (B, C_in, T); time: (B, time_dim)."""
        h = self.block1(x, context) + self.time(F.mish(time))[:, :, None]
        return self.block2(h, context) + self.skip(x)


class TransformerBlock(nn.Module):
    """Pre-norm attention (bias-free q/k/v, `heads` x `head_dim`) + GELU feed-forward, on (B, T, C)."""

    def __init__(self, channels: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.attention_norm = nn.LayerNorm(channels)
        self.query = nn.Linear(channels, inner, bias=False)
        self.key = nn.Linear(channels, inner, bias=False)
        self.value = nn.Linear(channels, inner, bias=False)
        self.out = nn.Linear(inner, channels)
        self.ffn_norm = nn.LayerNorm(channels)
        self.ffn_in = nn.Linear(channels, ESTIMATOR_FFN_MULT * channels)
        self.ffn_out = nn.Linear(ESTIMATOR_FFN_MULT * channels, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: LayerContext | None = None) -> torch.Tensor:
        """x: (B, T, C); mask: (T, S) over the S keys, the earlier chunks' (in `context`) first."""
        batch, length, _ = x.shape
        h = self.attention_norm(x)
        q, k, v = (
            proj(h).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        if context is not None:
            k, v = context.extend(k, dim=2), context.extend(v, dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, -1))
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


class UNetBlock(nn.Module):
    """A ResNet block and Transformer blocks; down and up blocks also own a closing causal conv (`close`), which
    the estimator applies after taking the down block's output as the skip connection."""

    def __init__(self, cfg: FlowMatchingConfig, in_channels: int, time_dim: int, closing_conv: bool) -> None:
        super().__init__()
        channels = cfg.decoder_channels
        self.resnet = ResnetBlock(in_channels, channels, time_dim)
        self.transformers = nn.ModuleList(
            TransformerBlock(channels, cfg.decoder_heads, cfg.decoder_head_dim) for _ in range(cfg.decoder_blocks)
        )
        self.conv = nn.Conv1d(channels, channels, ESTIMATOR_CONV_KERNEL) if closing_conv else None

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, mask: torch.Tensor, context: LayerContext | None = None
    ) -> torch.Tensor:
        """x: (B, C_in, T) -> (B, C, T)."""
        h = self.resnet(x, time, context).transpose(1, 2)
        for block in self.transformers:
            h = block(h, mask, context)
        return h.transpose(1, 2)

    def close(self, h: torch.Tensor, context: LayerContext | None = None) -> torch.Tensor:
        return self.conv(causal_pad(h, ESTIMATOR_CONV_KERNEL - 1, context))


class Estimator(nn.Module):
    """The velocity field v(x_t, t | mu, speaker, prompt mel): a causal one-level U-Net over mel frames."""

    def __init__(self, cfg: FlowMatchingConfig) -> None:
        super().__init__()
        inputs = 4 * cfg.mel_bins  # x_t, mu, speaker, prompt mel
        channels = cfg.decoder_channels
        time_dim = ESTIMATOR_TIME_MULT * channels
        self.time_mlp = nn.Sequential(nn.Linear(inputs, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.down = UNetBlock(cfg, inputs, time_dim, closing_conv=True)
        self.mid = nn.ModuleList(UNetBlock(cfg, channels, time_dim, False) for _ in range(cfg.decoder_mid_blocks))
        self.up = UNetBlock(cfg, 2 * channels, time_dim, closing_conv=True)
        self.final = CausalConvNorm(channels, channels)
        self.output = nn.Conv1d(channels, cfg.mel_bins, 1)

    def forward(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        speaker: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor,
        context: LayerContext | None = None,
    ) -> torch.Tensor:
        """x, mu, cond: (B, M, T); speaker: (B, M); t: (B,) in [0, 1]; mask: (T, S) bool over the S keys (the
        earlier chunks' in `context` first; S = T offline). -> (B, M, T)."""
        inputs = torch.cat([x, mu, speaker[:, :, None].expand(-1, -1, x.shape[2]), cond], dim=1)
        time = self.time_mlp(sinusoidal_embedding(t * TIME_SCALE, inputs.shape[1]).to(x.dtype))
        skip = self.down(inputs, time, mask, context)
        h = self.down.close(skip, context)
        for block in self.mid:
            h = block(h, time, mask, context)
        h = self.up.close(self.up(torch.cat([h, skip], dim=1), time, mask, context), context)
        return self.output(self.final(h, context))


class FlowMatching(nn.Module):
    """Speech tokens -> mel, offline (`forward`) or streaming (`init_state` / `step` / `flush`)."""

    def __init__(self, cfg: FlowMatchingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frame_rate = SPEECH_TOKEN_RATE_HZ * cfg.token_mel_ratio
        self.embedding = nn.Embedding(cfg.speech_vocab, cfg.dim)
        self.speaker_affine = nn.Linear(cfg.spk_embed_dim, cfg.mel_bins)
        self.encoder = TokenEncoder(cfg)
        self.estimator = Estimator(cfg)
        generator = torch.Generator(device="cpu").manual_seed(NOISE_SEED)
        noise = torch.randn(cfg.mel_bins, cfg.max_mel_frames, generator=generator, device="cpu")
        self.register_buffer("noise", noise, persistent=False)  # (M, max_mel_frames)
        t_span = 1 - torch.cos(torch.linspace(0, 1, cfg.n_timesteps + 1, device="cpu") * 0.5 * math.pi)
        self.register_buffer("t_span", t_span, persistent=False)  # (n_timesteps + 1,)

    def chunk_ends(self, prompt_tokens: int, total: int) -> list[int]:
        """Ends of the attention chunks (absolute token positions) over `total` tokens, prompt included."""
        cfg = self.cfg
        ends = [prompt_tokens] if prompt_tokens else []
        end = prompt_tokens + cfg.first_chunk_tokens
        while end < total:
            ends.append(end)
            end += cfg.chunk_tokens
        ends.append(total)
        return ends

    def init_state(
        self,
        batch: int = 1,
        speaker: torch.Tensor | None = None,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
    ) -> FlowMatchingState:
        """A fresh stream. speaker: (B, spk_embed_dim) x-vector, default zeros (no speaker). A voice prompt is
        its tokens (B, Np) with their mel (B, M, Np*ratio): they condition the stream and are not emitted."""
        device, dtype = self.speaker_affine.weight.device, self.speaker_affine.weight.dtype
        if speaker is None:
            speaker = torch.zeros(batch, self.cfg.spk_embed_dim, device=device, dtype=dtype)
        if prompt_tokens is None:
            prompt_tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)
        if prompt_mel is None:
            prompt_mel = torch.zeros(batch, self.cfg.mel_bins, 0, dtype=dtype, device=device)
        assert prompt_mel.shape[2] == prompt_tokens.shape[1] * self.cfg.token_mel_ratio, (
            f"prompt mel has {prompt_mel.shape[2]} frames for {prompt_tokens.shape[1]} prompt tokens"
        )
        cache = FlowCache(0, [], [[] for _ in range(self.cfg.n_timesteps)]) if self.cfg.stream_cache_mb > 0 else None
        return FlowMatchingState(speaker, prompt_mel, prompt_tokens.long(), prompt_tokens.shape[1], 0, cache)

    def step(self, tokens: torch.Tensor, state: FlowMatchingState) -> tuple[torch.Tensor, FlowMatchingState]:
        """tokens: (B, n), any n >= 0. Returns the mel frames (B, M, F) that became final, and the new state."""
        return self._advance(tokens, state, final=False)

    def flush(self, state: FlowMatchingState) -> tuple[torch.Tensor, FlowMatchingState]:
        """End of stream: the remaining frames (the missing lookahead is zero padding)."""
        return self._advance(state.tokens[:, :0], state, final=True)

    def forward(
        self,
        tokens: torch.Tensor,
        speaker: torch.Tensor | None = None,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
        streaming: bool = True,
    ) -> torch.Tensor:
        """Offline: tokens (B, N) -> mel (B, M, N*ratio). streaming=False attends over the whole utterance
        (CosyVoice 2's offline mode) instead of chunk by chunk."""
        state = self.init_state(tokens.shape[0], speaker, prompt_tokens, prompt_mel)
        state.tokens = torch.cat([state.tokens, tokens.long()], dim=1)
        total = state.tokens.shape[1]
        blocks = self._blocks(state.prompt_tokens, total) if streaming else torch.zeros(total, dtype=torch.long)
        mel = self._synthesise(state, total, blocks.to(tokens.device))
        return mel[:, :, state.prompt_tokens * self.cfg.token_mel_ratio :]

    def training_loss(
        self,
        tokens: torch.Tensor,
        mel: torch.Tensor,
        speaker: torch.Tensor | None = None,
        mel_mask: torch.Tensor | None = None,
        prior_weight: float = 0.0,
    ) -> torch.Tensor:
        """Conditional flow-matching loss (optimal-transport path, cosine time schedule, condition dropout
        for guidance, random mel-prompt prefix), with the streaming chunk masks. tokens: (B, N);
        mel: (B, M, N*ratio); speaker: (B, spk_embed_dim); mel_mask: (B, T).

        prior_weight > 0 adds Matcha-TTS's prior loss, the mean squared error of the token encoder's `mu` to the
        target mel, times the weight: CosyVoice 2 trains `mu` only through the estimator, which a small flow on a
        CPU budget learns slowly; asking `mu` to be the mel itself gives the encoder a direct signal (the
        architecture and inference are unchanged)."""
        batch, bins, length = mel.shape
        assert length == tokens.shape[1] * self.cfg.token_mel_ratio, f"{length} mel frames for {tokens.shape[1]} tokens"
        blocks = self._blocks(0, tokens.shape[1]).to(mel.device)
        mu = self.encoder(self.embedding(tokens), tokens.shape[1], blocks)
        keep = (torch.rand(batch, device=mel.device) >= UNCOND_PROB).to(mel.dtype)  # (B,)
        if speaker is None:
            speaker = torch.zeros(batch, self.cfg.spk_embed_dim, device=mel.device, dtype=mel.dtype)
        speaker = self.speaker_affine(F.normalize(speaker, dim=1)) * keep[:, None]
        cond = self._random_prompt(mel) * keep[:, None, None]
        t = 1 - torch.cos(torch.rand(batch, device=mel.device) * 0.5 * math.pi)  # (B,)
        noise = torch.randn_like(mel)
        x_t = (1 - (1 - SIGMA_MIN) * t[:, None, None]) * noise + t[:, None, None] * mel
        target = mel - (1 - SIGMA_MIN) * noise
        mask = block_mask(blocks.repeat_interleave(self.cfg.token_mel_ratio))
        velocity = self.estimator(x_t, mu * keep[:, None, None], speaker, cond, t, mask)
        mel_mask = torch.ones(batch, length, device=mel.device) if mel_mask is None else mel_mask.to(mel.dtype)
        loss = ((velocity - target).square() * mel_mask[:, None, :]).sum() / (mel_mask.sum() * bins)
        if prior_weight:
            loss = loss + prior_weight * ((mu - mel).square() * mel_mask[:, None, :]).sum() / (mel_mask.sum() * bins)
        return loss

    def _blocks(self, prompt_tokens: int, total: int) -> torch.Tensor:
        """Chunk index of each of `total` token positions."""
        device = self.embedding.weight.device
        ends = torch.tensor(self.chunk_ends(prompt_tokens, total), device=device)
        return torch.bucketize(torch.arange(total, device=device), ends, right=True)

    def step_rows(
        self, tokens: list[torch.Tensor], states: list[FlowMatchingState]
    ) -> list[tuple[torch.Tensor, FlowMatchingState]]:
        """`step` for independent streams (tokens[b] (1, n_b), each state a batch of one): the streams with a chunk
        ready synthesise as one batch (`_synthesise_rows`)."""
        results: list[tuple[torch.Tensor, FlowMatchingState] | None] = [None] * len(states)
        todo = []
        for row, (new, state) in enumerate(zip(tokens, states, strict=True)):
            assert state.tokens.shape[0] == 1, "step_rows takes one stream per state"
            new_state, ready, done = self._plan(new, state, final=False)
            if ready <= done:
                results[row] = (state.prompt_mel.new_zeros(1, self.cfg.mel_bins, 0), new_state)
            elif state.cache is not None:  # a cached chunk costs its own frames only: row by row, no padding
                results[row] = self._advance(new, state, final=False)
            else:
                todo.append((row, new_state, ready, done))
        if todo:
            mels = self._synthesise_rows([state for _, state, _, _ in todo], [ready for _, _, ready, _ in todo])
            for (row, state, ready, done), mel in zip(todo, mels, strict=True):
                state.emitted = ready - state.prompt_tokens
                results[row] = (mel[:, :, done * self.cfg.token_mel_ratio :], state)
        return results

    def _plan(
        self, tokens: torch.Tensor, state: FlowMatchingState, final: bool
    ) -> tuple[FlowMatchingState, int, int]:
        """The state with the new tokens, the token count whose chunks are ready (all if final), the count done."""
        cfg = self.cfg
        all_tokens = torch.cat([state.tokens, tokens.long().to(state.tokens.device)], dim=1)
        total = all_tokens.shape[1]
        ends = self.chunk_ends(state.prompt_tokens, total)
        ready = total if final else max([end for end in ends if end + cfg.lookahead_tokens <= total], default=0)
        new_state = FlowMatchingState(
            state.speaker, state.prompt_mel, all_tokens, state.prompt_tokens, state.emitted, state.cache
        )
        return new_state, ready, state.prompt_tokens + state.emitted

    def _advance(
        self, tokens: torch.Tensor, state: FlowMatchingState, final: bool
    ) -> tuple[torch.Tensor, FlowMatchingState]:
        """Synthesise every chunk whose tokens and lookahead have arrived (all of them if final)."""
        new_state, ready, done = self._plan(tokens, state, final)
        if ready <= done:
            return state.prompt_mel.new_zeros(new_state.tokens.shape[0], self.cfg.mel_bins, 0), new_state
        blocks = self._blocks(state.prompt_tokens, ready).to(new_state.tokens.device)
        ratio, pieces = self.cfg.token_mel_ratio, []
        for end in self._pass_ends(new_state, ready):  # many chunks at once (a failover's rebuild): a few per pass
            first = new_state.cache.tokens  # the prompt's positions too, on a stream's first chunk
            mel, new_state.cache = self._synthesise_cached(new_state, end, blocks[first:end])
            pieces.append(mel[:, :, max(done - first, 0) * ratio :])
            if new_state.cache is None:  # outgrown: the rest as CosyVoice 2 does, from every token
                done = end
                break
        if new_state.cache is None and done < ready:
            pieces.append(self._synthesise(new_state, ready, blocks)[:, :, done * ratio :])
        new_state.emitted = ready - state.prompt_tokens
        return torch.cat(pieces, dim=2), new_state

    def _pass_ends(self, state: FlowMatchingState, ready: int) -> list[int]:
        """Where the cached passes up to `ready` end: chunk ends at most `MAX_PASS_TOKENS` apart (one chunk at least),
        so a pass attends from at most that many positions, however many chunks are ready at once; none without a
        cache."""
        if state.cache is None:
            return []
        ends, start = [], state.cache.tokens  # `start`: where the last pass in `ends` begins
        for end in self.chunk_ends(state.prompt_tokens, ready):
            if end <= state.cache.tokens:
                continue
            if ends and end - start <= MAX_PASS_TOKENS:
                ends[-1] = end  # the chunk joins the last pass
            else:
                start = ends[-1] if ends else start
                ends.append(end)
        return ends

    def _synthesise(self, state: FlowMatchingState, count: int, blocks: torch.Tensor) -> torch.Tensor:
        """Mel (B, M, count*ratio) of the first `count` tokens of the state (prompt included), the tokens after
        them as lookahead; blocks: (count,) chunk index per token."""
        window = state.tokens[:, : count + self.cfg.lookahead_tokens]
        mu = self.encoder(self.embedding(window), count, blocks)  # (B, M, T)
        cond = F.pad(state.prompt_mel.to(mu.dtype), (0, mu.shape[2] - state.prompt_mel.shape[2]))
        return self._solve(mu, state.speaker, cond, block_mask(blocks.repeat_interleave(self.cfg.token_mel_ratio)))

    def _synthesise_cached(
        self, state: FlowMatchingState, count: int, blocks: torch.Tensor
    ) -> tuple[torch.Tensor, FlowCache | None]:
        """Mel (B, M, (count - cache.tokens)*ratio) of the state's tokens from where its cache ends up to `count`,
        attending to and convolving over the cached chunks; blocks: their chunk indices. Returns the cache that
        ends at `count`, or None when that outgrew `stream_cache_mb` (the stream then recomputes)."""
        cfg, cache = self.cfg, state.cache
        first, ratio = cache.tokens, cfg.token_mel_ratio
        window = state.tokens[:, first : count + cfg.lookahead_tokens]
        encoder = LayerContext(cache.encoder)
        mu = self.encoder(self.embedding(window), count - first, blocks, encoder, first)  # (B, M, T)
        frames = slice(first * ratio, count * ratio)
        cond = F.pad(state.prompt_mel.to(mu.dtype), (0, max(frames.stop - state.prompt_mel.shape[2], 0)))[:, :, frames]
        steps = [LayerContext(past) for past in cache.estimator]
        mask = block_mask(blocks.repeat_interleave(ratio), frames.start)
        mel = self._solve(mu, state.speaker, cond, mask, frames.start, steps)
        grown = FlowCache(count, encoder.entries, [step.entries for step in steps])
        return mel, grown if grown.nbytes() <= cfg.stream_cache_mb * 2**20 else None

    def _synthesise_rows(self, states: list[FlowMatchingState], counts: list[int]) -> list[torch.Tensor]:
        """`_synthesise` of the first counts[b] tokens of each stream (not at its end: its lookahead tokens have
        arrived), as one batch: right-padded to the longest, by pad + mask rather than grouping by length, since
        streams at different points of their turns never share a length.

        Every layer is causal or chunk-masked except the pre-lookahead conv, which sees only a row's own lookahead
        tokens before its padding; the padding's chunk index is past every real chunk, so no real position attends
        to it, and causal convolutions never look right: the real frames come out as the row's own unbatched ones,
        within float tolerance. Returns mel (1, M, counts[b]*ratio) per stream."""
        cfg = self.cfg
        longest = max(counts)
        width = longest + cfg.lookahead_tokens
        windows = torch.cat([F.pad(state.tokens[:, : count + cfg.lookahead_tokens], (0, longest - count))
                             for state, count in zip(states, counts, strict=True)])  # fmt: skip
        device = windows.device
        blocks = torch.stack([
            F.pad(self._blocks(state.prompt_tokens, count).to(device), (0, longest - count), value=longest + 1)
            for state, count in zip(states, counts, strict=True)
        ])  # fmt: skip  # (B, longest): the padding in a chunk after every real one
        assert windows.shape[1] == width, "a row without its lookahead tokens (a flush) cannot be batched"
        mu = self.encoder(self.embedding(windows), longest, blocks)  # (B, M, longest*ratio)
        frames = mu.shape[2]
        cond = torch.cat([F.pad(state.prompt_mel.to(mu.dtype), (0, frames - state.prompt_mel.shape[2]))
                          for state in states])  # fmt: skip
        speaker = torch.cat([state.speaker for state in states])
        mel = self._solve(mu, speaker, cond, block_mask(blocks.repeat_interleave(cfg.token_mel_ratio, dim=-1)))
        return [mel[row : row + 1, :, : count * cfg.token_mel_ratio] for row, count in enumerate(counts)]

    def _solve(
        self,
        mu: torch.Tensor,
        speaker: torch.Tensor,
        cond: torch.Tensor,
        mask: torch.Tensor,
        first_frame: int = 0,
        steps: list[LayerContext] | None = None,
    ) -> torch.Tensor:
        """The Euler steps from the fixed noise: mu, cond (B, M, T); speaker (B, spk_embed_dim); mask (T, T) or
        (B, 1, T, T). Streaming with a cache, the frames start at `first_frame` and each Euler step attends to
        the earlier chunks through its own `steps` context (mask (T, first_frame + T)). -> mel (B, M, T)."""
        cfg = self.cfg
        batch, _, frames = mu.shape
        last = first_frame + frames
        assert last <= cfg.max_mel_frames, f"{last} mel frames exceed the noise buffer ({cfg.max_mel_frames})"
        speaker = self.speaker_affine(F.normalize(speaker.to(mu.dtype), dim=1))
        x = (cfg.noise_scale * self.noise[:, first_frame:last]).to(mu.dtype).expand(batch, -1, -1)
        # classifier-free guidance: the conditioned and the unconditioned velocity in one batch
        mu2, speaker2, cond2 = (torch.cat([c, torch.zeros_like(c)]) for c in (mu, speaker, cond))
        mask2 = mask if mask.dim() == 2 else torch.cat([mask, mask])
        t_span = self.t_span.to(mu.dtype)
        for step in range(cfg.n_timesteps):
            t = t_span[step].expand(2 * batch)
            context = steps[step] if steps is not None else None
            velocity = self.estimator(torch.cat([x, x]), mu2, speaker2, cond2, t, mask2, context)
            conditioned, unconditioned = velocity.split(batch)
            guided = (1 + cfg.cfg_rate) * conditioned - cfg.cfg_rate * unconditioned
            x = x + (t_span[step + 1] - t_span[step]) * guided
        return x

    def _random_prompt(self, mel: torch.Tensor) -> torch.Tensor:
        """Training condition: for about half of the examples a mel prefix (up to 30 %), zeros elsewhere."""
        batch, _, length = mel.shape
        lengths = (torch.rand(batch, device=mel.device) * PROMPT_MAX_FRACTION * length).long()
        lengths = lengths * (torch.rand(batch, device=mel.device) < PROMPT_PROB)
        inside = torch.arange(length, device=mel.device)[None, :] < lengths[:, None]  # (B, T)
        return mel * inside[:, None, :]
