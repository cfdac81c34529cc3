"""`minmo bench flow`: token2wav's flow per chunk by its place in the turn, with the stream's `FlowCache` (a chunk
computes only its own frames) vs recomputing the turn so far at every chunk (CosyVoice 2's way, what a stream does
once its cache outgrows `stream_cache_mb`), in the same run.

Two streams of the same random tokens advance chunk by chunk, the paths interleaved so a busy spell on a shared
machine hits both; each chunk is `chunk_tokens` tokens (the first waits for its lookahead, as served). The config's
flow weights are used (nano's trained ones); the mel of both paths is compared at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from minmo.model.build import build_component
from minmo.model.config import SPEECH_TOKEN_RATE_HZ, load_config
from minmo.model.flow_matching import FlowMatching, FlowMatchingState
from minmo.model.placement import Placement


@dataclass
class FlowChunk:
    index: int
    reply_s: float  # audio of the turn up to this chunk's end
    cached_ms: float
    recomputed_ms: float
    cache_mb: float  # the stream's cache after this chunk (0 once dropped)


@dataclass
class FlowBench:
    chunks: list[FlowChunk]
    max_difference: float  # largest |mel difference| between the two paths over the whole turn

    def total_ms(self, cached: bool) -> float:
        return sum(chunk.cached_ms if cached else chunk.recomputed_ms for chunk in self.chunks)


@torch.inference_mode()
def _timed_step(
    flow: FlowMatching, tokens: torch.Tensor, state: FlowMatchingState
) -> tuple[torch.Tensor, FlowMatchingState, float]:
    """One streaming step: its mel, the new state and its wall time (ms)."""
    started = time.perf_counter()
    mel, state = flow.step(tokens, state)
    mel.sum().item()  # waits for the device
    return mel, state, 1000 * (time.perf_counter() - started)


def run_flow_bench(config: str, chunks: int, placement: Placement | None = None) -> FlowBench:
    cfg = load_config(config)
    flow = build_component(cfg, "token2wav", placement=placement or Placement()).flow
    step = cfg.flow.chunk_tokens
    total = cfg.flow.first_chunk_tokens + cfg.flow.lookahead_tokens + step * (chunks - 1)
    device = flow.embedding.weight.device
    tokens = torch.randint(0, cfg.flow.speech_vocab, (1, total), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    cached = flow.init_state()
    recomputing = flow.init_state()
    recomputing.cache = None
    _timed_step(flow, tokens[:, :step], flow.init_state())  # warm-up
    results, mels, start = [], ([], []), 0
    for index in range(chunks):
        end = cfg.flow.first_chunk_tokens + cfg.flow.lookahead_tokens if index == 0 else start + step
        mel, cached, cached_ms = _timed_step(flow, tokens[:, start:end], cached)
        mels[0].append(mel)
        mel, recomputing, recomputed_ms = _timed_step(flow, tokens[:, start:end], recomputing)
        mels[1].append(mel)
        cache_mb = cached.cache.nbytes() / 2**20 if cached.cache is not None else 0.0
        results.append(FlowChunk(index + 1, cached.emitted / SPEECH_TOKEN_RATE_HZ, cached_ms, recomputed_ms, cache_mb))
        start = end
    difference = (torch.cat(mels[0], dim=2) - torch.cat(mels[1], dim=2)).abs().max().item()
    return FlowBench(results, difference)
