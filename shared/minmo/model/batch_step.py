"""One decoder step for many independent sessions at once: KV caches of different lengths, left-padded + masked.

Each session's cache keeps its own length. For a batched step the caches are left-padded to the longest one and an
attention mask hides the padding, and every row gets its own position id, so row b computes exactly what an
unbatched step on session b computes (equal within float tolerance: the padding's attention weights are exactly 0).
Keys in a cache already carry their rotary positions, so left padding does not move them. Afterwards each session's
new key/value entry is appended to its own cache buffers in place (`append_kv`).

Works for any transformers base decoder driven through `decoder_step`'s conventions (the LLM, the voice-token LM).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional
from transformers.cache_utils import DynamicCache

from minmo.model.llm import S, append_kv


def batched_decoder_step(
    decoder: nn.Module, inputs_embeds: torch.Tensor, states: Sequence[S]
) -> tuple[torch.Tensor, list[S]]:
    """inputs_embeds (B, 1, D), one new position per state -> last hidden states (B, 1, D) and the B new states."""
    batch, length, _ = inputs_embeds.shape
    assert length == 1 and batch == len(states), f"need ({len(states)}, 1, D) inputs, got {tuple(inputs_embeds.shape)}"
    lengths = [state.position for state in states]
    longest = max(lengths)
    pads = [longest - n for n in lengths]
    cache = DynamicCache(config=decoder.config)
    for layer in range(len(states[0].keys)):
        keys = torch.cat([_left_pad(state.keys[layer], pad) for state, pad in zip(states, pads, strict=True)])
        values = torch.cat([_left_pad(state.values[layer], pad) for state, pad in zip(states, pads, strict=True)])
        cache.update(keys, values, layer)  # (B, kv_heads, longest, Dh)
    device = inputs_embeds.device
    mask = torch.ones(batch, longest + 1, dtype=torch.long, device=device)  # (B, longest + 1): 0 = padding
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    positions = torch.tensor(lengths, device=device)[:, None]  # (B, 1): each row continues its own context
    output = decoder(
        inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
    )
    new_states = [
        append_kv(
            state,
            [layer.keys[row : row + 1, :, -1:] for layer in cache.layers],
            [layer.values[row : row + 1, :, -1:] for layer in cache.layers],
        )
        for row, state in enumerate(states)
    ]
    return output.last_hidden_state, new_states


def _left_pad(cache: torch.Tensor, pad: int) -> torch.Tensor:
    """(1, kv_heads, S, Dh) -> (1, kv_heads, pad + S, Dh) with zeros in front."""
    return functional.pad(cache, (0, 0, pad, 0)) if pad else cache
