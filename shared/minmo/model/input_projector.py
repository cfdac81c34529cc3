"""Input projector: encoder frames (25 Hz) -> LLM-width embeddings (12.5 Hz), paper §3.

A Conv1d with kernel = stride = `downsample` maps each non-overlapping pair of encoder frames to the
LLM width (no look-ahead, so it streams exactly); Transformer layers with chunk masks and KV caches then
mix context, and a final LayerNorm fixes the scale the LLM sees. The last odd frame of a stream is paired
with a copy of itself (hence ceil: 25 encoder frames -> 13 projector frames).

The chunk size is explicit: it must be the encoder's chunk seen at this rate, so that one encoder chunk
becomes exactly one projector chunk and nothing waits between the two.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from minmo.model.batch_rows import rows_chunk_mask, stack_kv, step_rows, unstack_kv
from minmo.model.config import InputProjectorConfig, VoiceEncoderConfig
from minmo.model.layers import TransformerLayer, chunk_mask, pad_to_multiple, trim_kv_cache
from minmo.model.state import StreamState


@dataclass
class InputProjectorState(StreamState):
    """Where a batch of streams stands between `InputProjector.step` calls."""

    pending: torch.Tensor  # (B, P, input_dim) encoder frames not yet in a complete chunk
    keys: list[torch.Tensor]  # per layer (B, H, S, Dh); S <= left_chunks * chunk_size when limited
    values: list[torch.Tensor]  # per layer (B, H, S, Dh)
    position: int  # projector frames emitted so far (absolute position of the next one)


class InputProjector(nn.Module):
    """Encoder frames (B, T, input_dim) -> (B, ceil(T / downsample), output_dim), in chunks of `chunk_size`."""

    def __init__(self, cfg: InputProjectorConfig, chunk_size: int, left_chunks: int = -1) -> None:
        """chunk_size: projector frames per attention chunk; left_chunks: chunks of left context (-1: all)."""
        super().__init__()
        assert chunk_size > 0, f"chunk_size must be positive, got {chunk_size}"
        self.cfg = cfg
        self.chunk_size = chunk_size
        self.left_chunks = left_chunks
        self.conv = nn.Conv1d(cfg.input_dim, cfg.output_dim, kernel_size=cfg.downsample, stride=cfg.downsample)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.output_dim, cfg.num_heads, cfg.ffn_dim) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.output_dim)

    @classmethod
    def for_encoder(cls, cfg: InputProjectorConfig, encoder: VoiceEncoderConfig) -> InputProjector:
        """A projector whose chunks are the encoder's chunks (`chunk_frames / downsample` frames each)."""
        assert encoder.chunk_frames % cfg.downsample == 0, (
            f"encoder chunk of {encoder.chunk_frames} frames does not split into {cfg.downsample}x groups"
        )
        return cls(cfg, encoder.chunk_frames // cfg.downsample, encoder.left_chunks)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Offline: the whole of frames (B, T, input_dim) at once, with the streaming chunk masks."""
        out, _ = self._advance(frames, self.init_state(frames.shape[0]))
        return out

    def init_state(self, batch: int = 1) -> InputProjectorState:
        param = self.conv.weight
        head_dim = self.cfg.output_dim // self.cfg.num_heads
        empty_kv = param.new_zeros(batch, self.cfg.num_heads, 0, head_dim)
        return InputProjectorState(
            pending=param.new_zeros(batch, 0, self.cfg.input_dim),
            keys=[empty_kv] * self.cfg.num_layers,
            values=[empty_kv] * self.cfg.num_layers,
            position=0,
        )

    def step(self, frames: torch.Tensor, state: InputProjectorState) -> tuple[torch.Tensor, InputProjectorState]:
        """Feed encoder frames (B, T, input_dim); returns the projector frames of every chunk now complete.

        A chunk's queries attend to the whole chunk, so a partial chunk (or an odd frame) waits in `pending`.
        """
        pending = torch.cat([state.pending, frames], dim=1)
        group = self.cfg.downsample * self.chunk_size
        ready = pending.shape[1] // group * group
        return self._advance(pending[:, :ready], dataclasses.replace(state, pending=pending[:, ready:]))

    def step_rows(
        self, frames: list[torch.Tensor], states: list[InputProjectorState]
    ) -> list[tuple[torch.Tensor, InputProjectorState]]:
        """`step` for independent streams (frames[b] (1, T_b, input_dim), each state a batch of one) as batched
        forwards: caches of different lengths left-padded and masked (`minmo.model.batch_rows`)."""
        group = self.cfg.downsample * self.chunk_size
        return step_rows(frames, states, group, self.cfg.output_dim, self._advance_rows)

    def flush(self, state: InputProjectorState) -> tuple[torch.Tensor, InputProjectorState]:
        """End of stream: project the pending frames as the offline pass does; returns a fresh state."""
        out, _ = self._advance(state.pending, dataclasses.replace(state, pending=state.pending[:, :0]))
        return out, self.init_state(state.pending.shape[0])

    def _advance(self, frames: torch.Tensor, state: InputProjectorState) -> tuple[torch.Tensor, InputProjectorState]:
        """Project frames (B, T, input_dim) that follow the state's caches; T is whole chunks, or the stream's end."""
        if frames.shape[1] == 0:
            return frames.new_zeros(frames.shape[0], 0, self.cfg.output_dim), state
        padded = pad_to_multiple(frames, self.cfg.downsample)
        x = self.conv(padded.transpose(1, 2)).transpose(1, 2)  # (B, N, output_dim)
        end = state.position + x.shape[1]
        key_positions = torch.arange(state.position - state.keys[0].shape[2], end, device=x.device)
        mask = chunk_mask(key_positions[-x.shape[1] :], key_positions, self.chunk_size, self.left_chunks)
        keys, values = [], []
        for layer, k, v in zip(self.layers, state.keys, state.values, strict=True):
            x, (k, v) = layer(x, mask, (k, v))
            k, v = trim_kv_cache(k, v, self.chunk_size, self.left_chunks)
            keys.append(k)
            values.append(v)
        return self.norm(x), dataclasses.replace(state, keys=keys, values=values, position=end)

    def _advance_rows(
        self, frames: torch.Tensor, states: list[InputProjectorState]
    ) -> list[tuple[torch.Tensor, InputProjectorState]]:
        """`_advance` for row b of frames (B, T, input_dim) following states[b]: its own chunk mask."""
        padded = pad_to_multiple(frames, self.cfg.downsample)
        x = self.conv(padded.transpose(1, 2)).transpose(1, 2)  # (B, N, output_dim)
        positions = [state.position for state in states]
        cached = [state.keys[0].shape[2] for state in states]
        mask = rows_chunk_mask(positions, cached, x.shape[1], self.chunk_size, self.left_chunks, x.device)
        rows: list[tuple[list, list]] = [([], []) for _ in states]
        for index, layer in enumerate(self.layers):
            k, pads = stack_kv([state.keys[index] for state in states])
            v, _ = stack_kv([state.values[index] for state in states])
            x, (k, v) = layer(x, mask, (k, v))
            for row, (k_row, v_row) in enumerate(zip(unstack_kv(k, pads), unstack_kv(v, pads), strict=True)):
                k_row, v_row = trim_kv_cache(k_row, v_row, self.chunk_size, self.left_chunks)
                rows[row][0].append(k_row)
                rows[row][1].append(v_row)
        x, length = self.norm(x), x.shape[1]
        return [
            (x[row : row + 1], dataclasses.replace(state, keys=keys, values=values, position=state.position + length))
            for row, (state, (keys, values)) in enumerate(zip(states, rows, strict=True))
        ]
