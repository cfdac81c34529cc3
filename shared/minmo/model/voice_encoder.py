"""Voice encoder: a SAN-M encoder (SenseVoice / Paraformer style) with chunked streaming.

fbank frames (B, T, input_dim) at 100 Hz -> encoder frames (B, ceil(T / downsample), dim) at 25 Hz.

- Downsampling stacks `downsample` consecutive frames and projects them linearly: non-overlapping
  groups, so streaming needs no look-ahead. The last partial group of a stream repeats its last frame
  (hence ceil: 1 s of audio = 98 fbank frames -> 25 encoder frames, with the final 20 ms kept).
- Sinusoidal absolute positions, computed from the position counter carried in the state.
- Each SAN-M layer is pre-norm self-attention whose value path also feeds an FSMN memory (a depthwise
  convolution over time) added to the attention output, then a feed-forward block. The FSMN is causal
  (left taps only), so it streams with a small cache.
- Attention uses chunk masks (`chunk_frames` encoder frames per chunk, `left_chunks` of left context) in
  the offline pass too, so streaming chunk by chunk gives the offline result.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from minmo.model.batch_rows import rows_chunk_mask, stack_kv, step_rows, unstack_kv
from minmo.model.config import VoiceEncoderConfig
from minmo.model.layers import (
    CausalConv1d,
    FeedForward,
    MultiHeadAttention,
    chunk_mask,
    pad_to_multiple,
    trim_kv_cache,
)
from minmo.model.state import StreamState

POSITION_BASE = 10000.0  # wavelength base of the sinusoidal positions (Vaswani et al.)


@dataclass
class VoiceEncoderState(StreamState):
    """Where a batch of streams stands between `VoiceEncoder.step` calls."""

    pending: torch.Tensor  # (B, P, input_dim) fbank frames not yet in a complete chunk
    keys: list[torch.Tensor]  # per layer (B, H, S, Dh); S <= left_chunks * chunk_frames when limited
    values: list[torch.Tensor]  # per layer (B, H, S, Dh)
    fsmn: list[torch.Tensor]  # per layer (B, dim, fsmn_kernel - 1) value frames the FSMN still sees
    position: int  # encoder frames emitted so far (absolute position of the next one)


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encodings (T, dim) of absolute positions (T,): sin on even channels, cos on odd."""
    frequencies = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) * (-math.log(POSITION_BASE) / dim)
    )
    angles = positions.float()[:, None] * frequencies[None, :]  # (T, dim / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]


class SANMAttention(nn.Module):
    """Multi-head self-attention plus an FSMN memory on its values: attn(x) + fsmn(v) + v.

    The memory gives each frame a learned view of its recent past that does not depend on attention
    weights — the SAN-M idea. The values are those of `MultiHeadAttention`: the last T entries of the
    value cache it returns are this call's value projections.
    """

    def __init__(self, dim: int, num_heads: int, fsmn_kernel: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads)
        self.fsmn = CausalConv1d(dim, dim, fsmn_kernel, groups=dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        fsmn_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """x: (B, T, C); returns (B, T, C), the new (keys, values) and the new FSMN cache."""
        batch, length, dim = x.shape
        attended, (keys, values) = self.attn(x, mask, kv_cache)
        new_values = values[:, :, values.shape[2] - length :].transpose(1, 2).reshape(batch, length, dim)
        memory, fsmn_cache = self.fsmn(new_values.transpose(1, 2), fsmn_cache)  # (B, C, T)
        return attended + memory.transpose(1, 2) + new_values, (keys, values), fsmn_cache


class SANMLayer(nn.Module):
    """Pre-norm SAN-M layer: x + sanm(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: VoiceEncoderConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = SANMAttention(cfg.dim, cfg.num_heads, cfg.fsmn_kernel)
        self.ffn_norm = nn.LayerNorm(cfg.dim)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        fsmn_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        attended, kv_cache, fsmn_cache = self.attn(self.attn_norm(x), mask, kv_cache, fsmn_cache)
        x = x + attended
        return x + self.ffn(self.ffn_norm(x)), kv_cache, fsmn_cache


class VoiceEncoder(nn.Module):
    """fbank (B, T, input_dim) -> (B, ceil(T / downsample), dim); streams in chunks of `chunk_frames` outputs."""

    def __init__(self, cfg: VoiceEncoderConfig) -> None:
        super().__init__()
        assert cfg.dim % 2 == 0, f"sinusoidal positions need an even dim, got {cfg.dim}"
        self.cfg = cfg
        self.input = nn.Linear(cfg.downsample * cfg.input_dim, cfg.dim)
        self.layers = nn.ModuleList(SANMLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Offline: the whole of feats (B, T, input_dim) at once, with the streaming chunk masks."""
        out, _ = self._advance(feats, self.init_state(feats.shape[0]))
        return out

    def init_state(self, batch: int = 1) -> VoiceEncoderState:
        param = self.input.weight
        head_dim = self.cfg.dim // self.cfg.num_heads
        empty_kv = param.new_zeros(batch, self.cfg.num_heads, 0, head_dim)
        return VoiceEncoderState(
            pending=param.new_zeros(batch, 0, self.cfg.input_dim),
            keys=[empty_kv] * self.cfg.num_layers,
            values=[empty_kv] * self.cfg.num_layers,
            fsmn=[param.new_zeros(batch, self.cfg.dim, self.cfg.fsmn_kernel - 1)] * self.cfg.num_layers,
            position=0,
        )

    def step(self, feats: torch.Tensor, state: VoiceEncoderState) -> tuple[torch.Tensor, VoiceEncoderState]:
        """Feed fbank frames (B, T, input_dim); returns the encoder frames of every chunk now complete.

        A chunk's queries attend to the whole chunk, so a partial chunk waits in `pending`.
        """
        pending = torch.cat([state.pending, feats], dim=1)
        group = self.cfg.downsample * self.cfg.chunk_frames
        ready = pending.shape[1] // group * group
        return self._advance(pending[:, :ready], dataclasses.replace(state, pending=pending[:, ready:]))

    def step_rows(
        self, feats: list[torch.Tensor], states: list[VoiceEncoderState]
    ) -> list[tuple[torch.Tensor, VoiceEncoderState]]:
        """`step` for independent streams (feats[b] (1, T_b, input_dim), each state a batch of one) as batched
        forwards: caches of different lengths left-padded and masked (`minmo.model.batch_rows`)."""
        group = self.cfg.downsample * self.cfg.chunk_frames
        return step_rows(feats, states, group, self.cfg.dim, self._advance_rows)

    def flush(self, state: VoiceEncoderState) -> tuple[torch.Tensor, VoiceEncoderState]:
        """End of stream: encode the pending partial chunk as the offline pass does; returns a fresh state."""
        out, _ = self._advance(state.pending, dataclasses.replace(state, pending=state.pending[:, :0]))
        return out, self.init_state(state.pending.shape[0])

    def _advance(self, feats: torch.Tensor, state: VoiceEncoderState) -> tuple[torch.Tensor, VoiceEncoderState]:
        """Encode feats (B, T, input_dim) that follow the state's caches; T is whole chunks, or the stream's end."""
        if feats.shape[1] == 0:
            return feats.new_zeros(feats.shape[0], 0, self.cfg.dim), state
        x = self._embed(feats, [state.position])  # (B, N, dim)
        end = state.position + x.shape[1]
        key_positions = torch.arange(state.position - state.keys[0].shape[2], end, device=x.device)
        mask = chunk_mask(key_positions[-x.shape[1] :], key_positions, self.cfg.chunk_frames, self.cfg.left_chunks)
        keys, values, fsmn = [], [], []
        for layer, k, v, memory in zip(self.layers, state.keys, state.values, state.fsmn, strict=True):
            x, (k, v), memory = layer(x, mask, (k, v), memory)
            k, v = trim_kv_cache(k, v, self.cfg.chunk_frames, self.cfg.left_chunks)
            keys.append(k)
            values.append(v)
            fsmn.append(memory)
        new_state = dataclasses.replace(state, keys=keys, values=values, fsmn=fsmn, position=end)
        return self.norm(x), new_state

    def _advance_rows(
        self, feats: torch.Tensor, states: list[VoiceEncoderState]
    ) -> list[tuple[torch.Tensor, VoiceEncoderState]]:
        """`_advance` for row b of feats (B, T, input_dim) following states[b]: its own positions and chunk mask."""
        x = self._embed(feats, [state.position for state in states])
        cached = [state.keys[0].shape[2] for state in states]
        mask = rows_chunk_mask(
            [state.position for state in states], cached, x.shape[1], self.cfg.chunk_frames, self.cfg.left_chunks,
            x.device,
        )  # fmt: skip
        rows: list[tuple[list, list, list]] = [([], [], []) for _ in states]
        for index, layer in enumerate(self.layers):
            k, pads = stack_kv([state.keys[index] for state in states])
            v, _ = stack_kv([state.values[index] for state in states])
            memory = torch.cat([state.fsmn[index] for state in states])
            x, (k, v), memory = layer(x, mask, (k, v), memory)
            for row, (k_row, v_row) in enumerate(zip(unstack_kv(k, pads), unstack_kv(v, pads), strict=True)):
                k_row, v_row = trim_kv_cache(k_row, v_row, self.cfg.chunk_frames, self.cfg.left_chunks)
                rows[row][0].append(k_row)
                rows[row][1].append(v_row)
                rows[row][2].append(memory[row : row + 1])
        x = self.norm(x)
        return [
            (
                x[row : row + 1],
                dataclasses.replace(state, keys=keys, values=values, fsmn=fsmn, position=state.position + x.shape[1]),
            )
            for row, (state, (keys, values, fsmn)) in enumerate(zip(states, rows, strict=True))
        ]

    def _embed(self, feats: torch.Tensor, first_positions: list[int]) -> torch.Tensor:
        """Stack `downsample` frames, project, add absolute positions: (B, T, input_dim) -> (B, ceil(T/ds), dim);
        row b starts at first_positions[b] (one entry: every row)."""
        batch, _, input_dim = feats.shape
        stacked = pad_to_multiple(feats, self.cfg.downsample).reshape(batch, -1, self.cfg.downsample * input_dim)
        x = self.input(stacked)
        table = torch.stack([
            sinusoidal_positions(torch.arange(first, first + x.shape[1], device=x.device), self.cfg.dim)
            for first in first_positions
        ])  # fmt: skip
        return x + table.to(x.dtype)
