"""The token2wav chunk model the runtime serves: speech tokens in, 24 kHz PCM out, one response turn per sequence.

Stateful like the voice-token LM: the turn's flow-matching and HiFT caches stay in the runtime (or Triton
instance) that computes them, keyed by the sequence; a request carries only its new tokens, so the payload is
O(chunk) however long the turn grows. One set of weights serves every turn.
"""

from __future__ import annotations

import torch

from minmo.model.token2wav import Token2Wav, Token2WavState
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap
from minmo.runtime.models import flag, require


class Token2WavModel(RuntimeModel):
    """Stateful per sequence (= one response turn): `tokens` int64 (N,) ids in [0, speech_vocab), `flush` bool (1,)
    -> `pcm` float32 (S,) at 24 kHz (S a multiple of 960). A flush gives the rest of the turn's audio; a request
    after it starts a new turn from a fresh state (callers end the sequence with the flush)."""

    name = "token2wav"
    stateful = True

    def __init__(self, token2wav: Token2Wav) -> None:
        self.token2wav = token2wav.eval()
        self.speech_vocab = token2wav.flow.cfg.speech_vocab

    def execute(self, inputs: TensorMap, state: Token2WavState | None) -> tuple[TensorMap, Token2WavState | None]:
        tokens = self._tokens(inputs)
        stream = self.token2wav.init_state() if state is None else state
        pcm, stream = self.token2wav.step(tokens[None], stream)  # (1, S)
        if not flag(inputs, "flush"):
            return {"pcm": pcm[0]}, stream
        tail, _ = self.token2wav.flush(stream)
        return {"pcm": torch.cat([pcm, tail], dim=1)[0]}, None

    def _tokens(self, inputs: TensorMap) -> torch.Tensor:
        """The `tokens` input, with every id checked: an out-of-range id would index past the embedding."""
        tokens = require(inputs, "tokens", torch.int64, 1)
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.speech_vocab):
            bad = tokens[(tokens < 0) | (tokens >= self.speech_vocab)]
            raise InvalidInput(
                f"speech token ids must be in [0, {self.speech_vocab}), got {bad[0].item()} "
                f"({bad.numel()} of {tokens.numel()} ids out of range)"
            )
        return tokens
