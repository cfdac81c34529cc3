"""Neutral building blocks shared by the paper's components: attention with an explicit KV cache,
chunk masks, a pre-norm Transformer layer and a causal convolution with an explicit cache.

Every block takes its cache as an argument and returns the new one; none stores per-stream state.
Passing `cache=None` means "start of stream" (zero left context), which is what the offline forward
pass uses — so chunked calls that thread the cache through give the same result as one offline call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def chunk_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, chunk_size: int, left_chunks: int = -1
) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where a query may attend to a key.

    A query sees every key in its own chunk and in earlier chunks (at most `left_chunks` earlier ones
    when that is not -1): the mask of chunk-wise streaming, identical in the offline pass.
    """
    query_chunk = torch.div(query_positions, chunk_size, rounding_mode="floor")[:, None]
    key_chunk = torch.div(key_positions, chunk_size, rounding_mode="floor")[None, :]
    allowed = key_chunk <= query_chunk
    if left_chunks >= 0:
        allowed &= key_chunk >= query_chunk - left_chunks
    return allowed


def causal_mask(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """Boolean (Tq, Tk) mask for plain token-by-token causal attention."""
    return chunk_mask(query_positions, key_positions, chunk_size=1)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention whose keys/values for earlier positions come in as `cache`."""

    def __init__(self, dim: int, num_heads: int, bias: bool = True) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, T, C); mask: (T, S_cached + T) bool; cache: keys, values each (B, H, S_cached, Dh)."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
        attended = attended.transpose(1, 2).reshape(batch, length, -1)
        return self.out(attended), (k, v)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, new_cache = self.attn(self.attn_norm(x), mask, cache)
        x = x + attended
        return x + self.ffn(self.ffn_norm(x)), new_cache


class CausalConv1d(nn.Module):
    """Conv1d that only looks left; the last `context` input frames of a chunk are the next chunk's cache."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.context = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, T); cache: (B, C, context) or None (zeros). Returns y (B, C_out, T) and the new cache."""
        if cache is None:
            cache = x.new_zeros(x.shape[0], x.shape[1], self.context)
        padded = torch.cat([cache, x], dim=2)
        new_cache = padded[:, :, padded.shape[2] - self.context :]
        return self.conv(padded), new_cache


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Repeat the last frame of x (B, T, C) until T is a multiple of `multiple`.

    Frame-stacking downsamplers use it for the final partial group at the end of a stream: repeating
    the last real frame keeps the padding in the feature's own range, unlike zeros.
    """
    missing = -x.shape[1] % multiple
    if missing == 0:
        return x
    return torch.cat([x, x[:, -1:].expand(-1, missing, -1)], dim=1)


def trim_kv_cache(
    keys: torch.Tensor, values: torch.Tensor, chunk_size: int, left_chunks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the last `left_chunks` chunks of keys/values (B, H, S, Dh): all a later chunk may attend to.

    Valid when S ends on a chunk boundary; `left_chunks == -1` (unlimited context) keeps everything.
    """
    if left_chunks < 0:
        return keys, values
    start = max(keys.shape[2] - left_chunks * chunk_size, 0)
    return keys[:, :, start:], values[:, :, start:]


class CacheCursor:
    """Threads a flat list of per-block streaming caches through one forward pass, in call order.

    Deep streaming stacks (a vocoder, an ODE solver that runs its estimator once per step) have many
    caches; a module reads its cache with `take()` and hands the new one to `put()`, and the caller
    keeps `new` as the next chunk's list. An empty list means start of stream: every `take()` is None.
    """

    def __init__(self, caches: list[torch.Tensor]) -> None:
        self._caches = caches
        self._index = 0
        self.new: list[torch.Tensor] = []

    def take(self) -> torch.Tensor | None:
        if not self._caches:
            return None
        assert self._index < len(self._caches), f"cache list has only {len(self._caches)} entries"
        cache = self._caches[self._index]
        self._index += 1
        return cache

    def put(self, cache: torch.Tensor) -> None:
        self.new.append(cache)

    def conv(self, conv: CausalConv1d, x: torch.Tensor) -> torch.Tensor:
        """Run a causal conv on x (B, C, T) with the next cache, keeping its new cache."""
        y, cache = conv(x, self.take())
        self.put(cache)
        return y
