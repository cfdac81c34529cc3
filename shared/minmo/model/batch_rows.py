"""Chunked streaming steps of many independent streams as one forward (the encoder's and the input projector's).

A chunked module (`VoiceEncoder`, `InputProjector`) keeps per stream a few pending input frames, attention caches
of up to `left_chunks` chunks and an absolute position. Streams of different sessions sit at different positions,
so their caches differ in length until they are full. For a batched step the caches are left-padded with zeros to
the longest one and each row gets its own chunk mask over its own key positions, with the padding masked out (its
attention weights are exactly 0), so row b computes what an unbatched step on stream b computes, within float
tolerance. The new chunk must have the same length in every row of one forward; rows are grouped by how many frames
they have ready (mid-stream that is one whole chunk for every row, so the groups are few).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from minmo.model.layers import chunk_mask

S = TypeVar("S")  # a module's stream state: `pending` (1, P, C) frames and whatever its `advance_rows` needs
Advance = Callable[[torch.Tensor, list[Any]], list[tuple[torch.Tensor, Any]]]


def step_rows(
    inputs: Sequence[torch.Tensor], states: Sequence[S], group: int, out_dim: int, advance_rows: Advance
) -> list[tuple[torch.Tensor, S]]:
    """`step` of a chunked module for independent streams (each state a batch of one): row b's pending frames and
    inputs[b] (1, T_b, C), cut to whole groups of `group` frames; the rows with the same count of ready frames run
    as one `advance_rows(frames (B, T, C), states)`; a row with none ready returns (1, 0, out_dim)."""
    results: list[tuple[torch.Tensor, S] | None] = [None] * len(states)
    by_length: dict[int, list[tuple[int, torch.Tensor, S]]] = {}
    for row, (frames, state) in enumerate(zip(inputs, states, strict=True)):
        assert state.pending.shape[0] == 1, "step_rows takes one stream per state"
        pending = torch.cat([state.pending, frames], dim=1)
        ready = pending.shape[1] // group * group
        kept = dataclasses.replace(state, pending=pending[:, ready:])
        if ready == 0:
            results[row] = (pending.new_zeros(1, 0, out_dim), kept)
        else:
            by_length.setdefault(ready, []).append((row, pending[:, :ready], kept))
    for rows in by_length.values():
        outputs = advance_rows(torch.cat([frames for _, frames, _ in rows]), [state for _, _, state in rows])
        for (row, _, _), output in zip(rows, outputs, strict=True):
            results[row] = output
    return results


def rows_of(module: Any) -> Callable[[list[torch.Tensor], list[Any]], list[tuple[torch.Tensor, Any]]]:
    """The module's `step_rows`, or its `step` applied row by row (a module that cannot batch streams)."""
    if hasattr(module, "step_rows"):
        return module.step_rows
    return lambda inputs, states: [module.step(x, state) for x, state in zip(inputs, states, strict=True)]


def stack_kv(caches: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Per-row caches (1, H, S_b, Dh) left-padded with zeros to the longest and stacked: (B, H, S, Dh), and each
    row's padding."""
    longest = max(cache.shape[2] for cache in caches)
    pads = [longest - cache.shape[2] for cache in caches]
    padded = [F.pad(cache, (0, 0, pad, 0)) if pad else cache for cache, pad in zip(caches, pads, strict=True)]
    return torch.cat(padded), pads


def unstack_kv(cache: torch.Tensor, pads: Sequence[int]) -> list[torch.Tensor]:
    """The rows of a stacked cache (B, H, pad + S, Dh) with their left padding cut off again."""
    return [cache[row : row + 1, :, pad:] for row, pad in enumerate(pads)]


def rows_chunk_mask(
    positions: Sequence[int],
    cached: Sequence[int],
    length: int,
    chunk_size: int,
    left_chunks: int,
    device: torch.device,
) -> torch.Tensor:
    """Bool (B, 1, length, S + length) chunk masks: row b's `length` new frames start at absolute position
    positions[b] and follow cached[b] cached keys, left-padded to the longest cache S (padding: False)."""
    longest = max(cached)
    masks = []
    for position, count in zip(positions, cached, strict=True):
        keys = torch.arange(position - count, position + length, device=device)
        mask = chunk_mask(keys[count:], keys, chunk_size, left_chunks)  # (length, count + length)
        masks.append(F.pad(mask, (longest - count, 0), value=False))
    return torch.stack(masks)[:, None]

