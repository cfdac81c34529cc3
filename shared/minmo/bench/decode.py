"""`minmo bench decode`: one session's LLM decode tokens/s with the in-place KV cache vs concatenating the cache into
new tensors on every token (the path before it), in the same run, at several context lengths.

Each repeat prefills a context of `context` positions once, then times `tokens` one-token decode steps from it
on each path, the paths interleaved so a busy spell on a shared machine hits both; the median is reported. The
steps are `decoder_step` + the LM head, what `Dialogue.generate_step` runs per token.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.llm import LLM, LLMState, decoder_step
from minmo.model.placement import Placement


@dataclass
class DecodeLevel:
    context: int
    concatenating_tokens_per_s: float
    in_place_tokens_per_s: float

    @property
    def gain(self) -> float:
        return self.in_place_tokens_per_s / self.concatenating_tokens_per_s


@torch.inference_mode()
def _prefill(llm: LLM, context: int) -> LLMState:
    ids = torch.randint(0, llm.vocab_size, (1, context), generator=torch.Generator().manual_seed(context))
    _, state = decoder_step(llm.model.get_decoder(), llm.embed(ids.to(llm.model.device)), llm.init_state())
    return state


@torch.inference_mode()
def _tokens_per_s(llm: LLM, state: LLMState, tokens: int, in_place: bool) -> float:
    decoder, head = llm.model.get_decoder(), llm.model.get_output_embeddings()
    token = torch.zeros(1, 1, dtype=torch.long, device=llm.model.device)
    _synchronize(llm)
    started = time.perf_counter()
    for _ in range(tokens):
        hidden, state = decoder_step(decoder, llm.embed(token), state, in_place)
        token = head(hidden[:, -1]).argmax(-1, keepdim=True)  # (1, 1)
    token.item()  # waits for the device
    return tokens / (time.perf_counter() - started)


def _synchronize(llm: LLM) -> None:
    if llm.model.device.type == "cuda":
        torch.cuda.synchronize(llm.model.device)


def run_decode_bench(
    config: str, contexts: list[int], tokens: int, repeats: int = 3, placement: Placement | None = None
) -> list[DecodeLevel]:
    llm = build_component(load_config(config), "llm", placement=placement or Placement())
    warm = _prefill(llm, 8)
    for in_place in (False, True):
        _tokens_per_s(llm, warm, 4, in_place)
    levels = []
    for context in contexts:
        state = _prefill(llm, context)
        old, new = [], []
        for _ in range(repeats):
            old.append(_tokens_per_s(llm, state, tokens, in_place=False))
            new.append(_tokens_per_s(llm, state, tokens, in_place=True))
        levels.append(DecodeLevel(context, statistics.median(old), statistics.median(new)))
    return levels
