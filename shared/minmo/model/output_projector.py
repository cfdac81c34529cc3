"""Output projector (paper §3.3): one linear layer from the LLM side to the voice-token LM's width.

Its input is the LLM's last hidden state concatenated, on the feature axis, with the LLM's embedding of
the text token emitted at that position: the hidden state carries context and prosody cues, the token
embedding pins down what was actually said. The outputs are the "semantic vectors" the voice-token LM
reads, 5 of them before every 15 speech tokens. It is position-wise, so it needs no streaming state.
"""

from __future__ import annotations

import torch
from torch import nn

from minmo.model.config import OutputProjectorConfig


class OutputProjector(nn.Module):
    """concat(LLM hidden (B, T, D), token embedding (B, T, D)) -> semantic vectors (B, T, output_dim)."""

    def __init__(self, cfg: OutputProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(2 * cfg.llm_dim, cfg.output_dim)

    def forward(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        assert hidden.shape == token_embedding.shape, f"{tuple(hidden.shape)} != {tuple(token_embedding.shape)}"
        assert hidden.shape[-1] == self.cfg.llm_dim, f"feature size {hidden.shape[-1]}, expected {self.cfg.llm_dim}"
        return self.proj(torch.cat([hidden, token_embedding], dim=-1))  # (B, T, output_dim)
