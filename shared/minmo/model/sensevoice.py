"""SenseVoiceSmall's encoder as a voice encoder choice (`VoiceEncoderConfig.kind = "sensevoice"`), weight-compatible
with funasr's `SenseVoiceEncoderSmall` (`minmo convert --from sensevoice` maps its `model.pt` and `am.mvn`).

Input: LFR fbank features (80 bins, 7 frames stacked every 6, so 560 values per 60 ms; `Fbank` with lfr_m 7 /
lfr_n 6 makes them), normalised by the model's CMVN (shift, then scale, from `am.mvn`; buffers here), scaled by
sqrt(dim), plus sinusoidal positions 1, 2, ... Then `encoders0` (one SAN-M layer 560 -> 512, no residual),
`num_layers - 1` SAN-M layers [49], LayerNorm, `tp_layers` more [20], LayerNorm. A SAN-M layer is pre-norm
attention over a fused q/k/v projection plus an FSMN memory on the values (a depthwise conv over time with
`fsmn_kernel` [11] taps, centred: 5 frames each side), then a ReLU feed-forward.

Streaming: SenseVoice attends over the whole utterance and every FSMN looks 5 frames ahead, so no chunking is
exact. `step` emits `chunk_frames` frames at a time once `right_context` frames after them have arrived,
encoding a window that starts `left_chunks` chunks earlier; the window is encoded as an utterance of its own
(at its absolute positions). The distance from offline shrinks as the contexts grow (tests/model/
test_sensevoice.py prints it); with contexts covering the utterance it is the offline result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minmo.model.config import VoiceEncoderConfig
from minmo.model.state import StreamState


@dataclass
class SenseVoiceState(StreamState):
    """feats: (B, n, input_dim) LFR frames from absolute frame `first` on (left context, then not yet emitted);
    emitted: frames returned so far."""

    feats: torch.Tensor
    first: int
    emitted: int


def sensevoice_positions(start: int, length: int, dim: int, device: torch.device) -> torch.Tensor:
    """funasr's sinusoidal encoding of positions start+1 .. start+length: (length, dim), sines then cosines."""
    positions = torch.arange(start + 1, start + length + 1, device=device, dtype=torch.float32)
    inverse = torch.exp(torch.arange(dim // 2, device=device).float() * -(math.log(10000.0) / (dim / 2 - 1)))
    angles = positions[:, None] * inverse[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SANMLayer(nn.Module):
    """Pre-norm SAN-M layer: attention + FSMN memory on the values (residual when widths match), then FFN."""

    def __init__(self, in_dim: int, dim: int, heads: int, ffn_dim: int, kernel: int) -> None:
        super().__init__()
        self.heads = heads
        self.residual = in_dim == dim
        self.attention_norm = nn.LayerNorm(in_dim)
        self.qkv = nn.Linear(in_dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.fsmn = nn.Conv1d(dim, dim, kernel, groups=dim, bias=False)
        self.left, self.right = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, in_dim) -> (B, T, dim)."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).chunk(3, dim=2)
        memory = self.fsmn(F.pad(v.transpose(1, 2), (self.left, self.right))).transpose(1, 2) + v

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, -1).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        attended = attended.transpose(1, 2).reshape(batch, length, -1)
        h = self.out(attended) + memory
        x = x + h if self.residual else h
        return x + self.ffn_out(F.relu(self.ffn_in(self.ffn_norm(x))))


class SenseVoiceEncoder(nn.Module):
    """LFR features (B, T, 560) -> (B, T, dim); offline (`forward`) or windowed streaming (`step` / `flush`)."""

    def __init__(self, cfg: VoiceEncoderConfig) -> None:
        super().__init__()
        assert cfg.left_chunks >= 0, "SenseVoice streaming re-encodes a bounded window: left_chunks must be >= 0"
        self.cfg = cfg
        self.register_buffer("cmvn_shift", torch.zeros(cfg.input_dim))
        self.register_buffer("cmvn_scale", torch.ones(cfg.input_dim))
        layer = (cfg.num_heads, cfg.ffn_dim, cfg.fsmn_kernel)
        self.first_layer = SANMLayer(cfg.input_dim, cfg.dim, *layer)
        self.layers = nn.ModuleList(SANMLayer(cfg.dim, cfg.dim, *layer) for _ in range(cfg.num_layers - 1))
        self.norm = nn.LayerNorm(cfg.dim)
        self.tp_layers = nn.ModuleList(SANMLayer(cfg.dim, cfg.dim, *layer) for _ in range(cfg.tp_layers))
        self.tp_norm = nn.LayerNorm(cfg.dim)

    def forward(self, feats: torch.Tensor, start: int = 0) -> torch.Tensor:
        """feats: (B, T, input_dim) at absolute frames start.. (positions start+1..) -> (B, T, dim)."""
        x = (feats + self.cmvn_shift) * self.cmvn_scale * math.sqrt(self.cfg.dim)
        x = x + sensevoice_positions(start, x.shape[1], x.shape[2], x.device).to(x.dtype)
        x = self.first_layer(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        for layer in self.tp_layers:
            x = layer(x)
        return self.tp_norm(x)

    def init_state(self, batch: int = 1) -> SenseVoiceState:
        return SenseVoiceState(self.cmvn_shift.new_zeros(batch, 0, self.cfg.input_dim), 0, 0)

    def step(self, feats: torch.Tensor, state: SenseVoiceState) -> tuple[torch.Tensor, SenseVoiceState]:
        """Feed LFR frames (B, T, input_dim); returns the frames of every chunk whose right context arrived."""
        return self._advance(feats, state, final=False)

    def flush(self, state: SenseVoiceState) -> tuple[torch.Tensor, SenseVoiceState]:
        """End of stream: the frames still held back; returns a fresh state."""
        out, _ = self._advance(state.feats[:, :0], state, final=True)
        return out, self.init_state(state.feats.shape[0])

    def _advance(
        self, feats: torch.Tensor, state: SenseVoiceState, final: bool
    ) -> tuple[torch.Tensor, SenseVoiceState]:
        cfg = self.cfg
        window = torch.cat([state.feats, feats], dim=1)
        received = state.first + window.shape[1]
        ready = received if final else (received - cfg.right_context) // cfg.chunk_frames * cfg.chunk_frames
        if ready <= state.emitted:
            return window.new_zeros(window.shape[0], 0, cfg.dim), SenseVoiceState(window, state.first, state.emitted)
        encoded = self.forward(window, state.first)[:, state.emitted - state.first : ready - state.first]
        first = max(state.first, ready - cfg.left_chunks * cfg.chunk_frames)
        return encoded, SenseVoiceState(window[:, first - state.first :], first, ready)


def parse_am_mvn(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """funasr's `am.mvn` (Kaldi nnet1 text: <AddShift> then <Rescale>, each with a `[ ... ]` vector) -> shift, scale."""
    vectors: dict[str, torch.Tensor] = {}
    current = None
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ("<AddShift>", "<Rescale>"):
            current = words[0]
        elif current and words and words[0] == "<LearnRateCoef>":
            values = line[line.index("[") + 1 : line.index("]")].split()
            vectors[current] = torch.tensor([float(v) for v in values])
            current = None
    if set(vectors) != {"<AddShift>", "<Rescale>"}:
        raise ValueError("am.mvn must hold an <AddShift> and a <Rescale> vector")
    return vectors["<AddShift>"], vectors["<Rescale>"]
