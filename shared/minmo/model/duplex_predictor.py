"""Full-duplex predictor (paper §3.4): one Transformer layer + a linear softmax over LLM hidden states.

The LLM consumes the user's audio embeddings chunk by chunk; its last-layer hidden states for each
chunk go through this head, which emits one prediction per input chunk: keep listening, respond
(take the turn), stop speaking (the user barged in) or backchannel. It reads the hidden states of all
earlier chunks through a causal KV cache, so predictions made chunk by chunk equal the offline pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minmo.model.config import DuplexPredictorConfig
from minmo.model.layers import TransformerLayer, causal_mask
from minmo.model.state import StreamState


@dataclass
class DuplexPredictorState(StreamState):
    keys: torch.Tensor | None = None  # (B, H, S, Dh) attention cache over earlier LLM positions
    values: torch.Tensor | None = None
    position: int = 0


class DuplexPredictor(nn.Module):
    def __init__(self, cfg: DuplexPredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_proj = nn.Linear(cfg.llm_dim, cfg.dim)
        self.layer = TransformerLayer(cfg.dim, cfg.num_heads, cfg.ffn_dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.classifier = nn.Linear(cfg.dim, len(cfg.classes))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.cfg.classes

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Offline: class logits at every LLM position. hidden: (B, T, llm_dim) -> (B, T, classes)."""
        logits, _ = self._run(hidden, self.init_state(hidden.shape[0]))
        return logits

    def init_state(self, batch: int = 1) -> DuplexPredictorState:
        return DuplexPredictorState()

    def step(self, hidden: torch.Tensor, state: DuplexPredictorState) -> tuple[torch.Tensor, DuplexPredictorState]:
        """One input chunk's LLM hidden states (B, T, llm_dim) -> class probabilities (B, classes).

        The prediction for the chunk is read at its last position, which has seen the whole chunk.
        """
        assert hidden.shape[1] > 0, "a chunk needs at least one LLM position"
        logits, state = self._run(hidden, state)
        return logits[:, -1].softmax(dim=-1), state

    def _run(self, hidden: torch.Tensor, state: DuplexPredictorState) -> tuple[torch.Tensor, DuplexPredictorState]:
        length = hidden.shape[1]
        queries = torch.arange(state.position, state.position + length, device=hidden.device)
        keys = torch.arange(0, state.position + length, device=hidden.device)
        cache = (state.keys, state.values) if state.keys is not None else None
        x, (new_keys, new_values) = self.layer(self.input_proj(hidden), causal_mask(queries, keys), cache)
        logits = self.classifier(self.norm(x))  # (B, T, classes)
        return logits, DuplexPredictorState(new_keys, new_values, state.position + length)
