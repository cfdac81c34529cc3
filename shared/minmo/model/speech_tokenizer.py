"""Supervised semantic speech tokenizer (CosyVoice 2 §2.2): an FSQ bottleneck inside an ASR model.

The voice encoder's frames (nano: Whisper-base, 50 Hz, frozen) are pooled to 25 Hz, go through a few
Transformer layers, then through finite scalar quantisation: a linear map to 8 dimensions, tanh, and
rounding to 3 levels each, so every frame is one of 3^8 = 6561 codes (the speech vocabulary of the
voice-token LM and the flow). A weak decoder (one layer) and a character CTC head over the quantised
frames train the whole thing with an ASR loss: what survives the bottleneck is what was said, not who
said it or how, which is what makes the codes easy to predict from text and easy to voice in one
speaker's timbre. Rounding passes gradients straight through (the estimator of the FSQ paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

CHARACTERS = " abcdefghijklmnopqrstuvwxyz'0123456789"  # CTC classes 1..; 0 is the blank


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """Sizes of the tokenizer; `input_dim`/`pool` follow the voice encoder it sits on."""

    input_dim: int = 512  # voice-encoder width (Whisper-base: 512)
    pool: int = 2  # encoder frames per token (Whisper 50 Hz -> 25 Hz; SAN-M is at 25 Hz already: 1)
    dim: int = 256
    layers: int = 2  # before the bottleneck
    decoder_layers: int = 1  # after it: weak, so the codes must carry the content themselves
    heads: int = 4
    fsq_dims: int = 8
    fsq_levels: int = 3
    dropout: float = 0.1

    @property
    def codebook_size(self) -> int:
        return self.fsq_levels**self.fsq_dims


def character_ids(text: str) -> list[int]:
    """CTC targets of a transcript: lower-cased characters of CHARACTERS (1-based), single spaces."""
    kept = "".join(c for c in text.lower().replace("-", " ") if c in CHARACTERS)
    return [CHARACTERS.index(c) + 1 for c in " ".join(kept.split())]


def _layers(cfg: SpeechTokenizerConfig, count: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        cfg.dim, cfg.heads, 4 * cfg.dim, dropout=cfg.dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, count, enable_nested_tensor=False)


class SpeechTokenizer(nn.Module):
    """Encoder frames (B, T, input_dim) -> FSQ codes (B, T // pool) in [0, 3^8), and CTC logits for training."""

    def __init__(self, cfg: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input = nn.Linear(cfg.input_dim * cfg.pool, cfg.dim)
        self.encoder = _layers(cfg, cfg.layers)
        self.down = nn.Linear(cfg.dim, cfg.fsq_dims)
        self.up = nn.Linear(cfg.fsq_dims, cfg.dim)
        self.decoder = _layers(cfg, cfg.decoder_layers)
        self.ctc_head = nn.Linear(cfg.dim, len(CHARACTERS) + 1)
        self.register_buffer("place", cfg.fsq_levels ** torch.arange(cfg.fsq_dims), persistent=False)

    def lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens of utterances with `frames` encoder frames."""
        return frames // self.cfg.pool

    def quantise(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, input_dim), (B,) encoder frames per row -> FSQ values (B, T // pool, fsq_dims) in {-1, 0, 1}
        (3 levels), with straight-through gradients."""
        batch, time, dim = frames.shape
        tokens = time // self.cfg.pool
        x = self.input(frames[:, : tokens * self.cfg.pool].reshape(batch, tokens, dim * self.cfg.pool))
        padding = torch.arange(tokens, device=frames.device)[None, :] >= self.lengths(lengths)[:, None]
        h = self.encoder(x, src_key_padding_mask=padding)
        half = (self.cfg.fsq_levels - 1) / 2
        bounded = torch.tanh(self.down(h)) * half
        return bounded + (bounded.round() - bounded).detach()

    def codes(self, values: torch.Tensor) -> torch.Tensor:
        """FSQ values (..., fsq_dims) -> code ids (...)."""
        half = (self.cfg.fsq_levels - 1) / 2
        digits = (values.round() + half).long()
        return (digits * self.place).sum(dim=-1)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Speech tokens (B, T // pool) of encoder frames (B, T, input_dim)."""
        if lengths is None:
            lengths = torch.full((frames.shape[0],), frames.shape[1], device=frames.device)
        return self.codes(self.quantise(frames, lengths))

    def ctc_loss(self, frames: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Character CTC loss through the bottleneck, per target character (the training objective)."""
        values = self.quantise(frames, lengths)
        token_lengths = self.lengths(lengths)
        padding = torch.arange(values.shape[1], device=frames.device)[None, :] >= token_lengths[:, None]
        logits = self.ctc_head(self.decoder(self.up(values), src_key_padding_mask=padding))
        log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # (T, B, C)
        flat = torch.tensor([c for t in targets for c in t], dtype=torch.long)
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        return F.ctc_loss(log_probs, flat, token_lengths.cpu(), target_lengths, zero_infinity=True, reduction="sum") / (
            target_lengths.sum().clamp(min=1)
        )

    @torch.no_grad()
    def transcribe(self, frames: torch.Tensor) -> str:
        """Greedy CTC transcript of one utterance (1, T, input_dim): how much the codes say, for checks."""
        lengths = torch.tensor([frames.shape[1]])
        logits = self.ctc_head(self.decoder(self.up(self.quantise(frames, lengths))))[0]
        best = logits.argmax(dim=-1).tolist()
        chars = [CHARACTERS[c - 1] for i, c in enumerate(best) if c and (i == 0 or c != best[i - 1])]
        return "".join(chars).strip()
