"""The token2wav chunk model the runtime serves: speech tokens in, 24 kHz PCM out, state passed through.

Stateless like the encoder chunk: the stream's flow-matching and HiFT caches travel as the `state`
tensor, so any replica or Triton instance vocodes any turn, and one set of weights serves every turn.
"""

from __future__ import annotations

import torch

from minmo.model.placement import module_placement, to_host
from minmo.model.token2wav import Token2Wav, Token2WavState
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap
from minmo.runtime.models import flag, require, state_from_tensor, state_to_tensor


class Token2WavModel(RuntimeModel):
    """Stateless chunk model: `tokens` int64 (N,) ids in [0, speech_vocab), `state` uint8 (empty = start of a
    turn), `flush` bool (1,) -> `pcm` float32 (S,) at 24 kHz (S a multiple of 960), `state` uint8 (empty after
    a flush: the turn is over, and an empty state starts the next one)."""

    name = "token2wav"

    def __init__(self, token2wav: Token2Wav) -> None:
        self.token2wav = token2wav.eval()
        self.speech_vocab = token2wav.flow.cfg.speech_vocab
        self.device, _ = module_placement(token2wav)

    def execute(self, inputs: TensorMap, state: None = None) -> tuple[TensorMap, None]:
        tokens = self._tokens(inputs)
        blob = inputs.get("state")
        if blob is not None and blob.numel():
            stream = state_from_tensor(Token2WavState, blob, self.device)
        else:
            stream = self.token2wav.init_state()
        pcm, stream = self.token2wav.step(tokens[None].to(self.device), stream)  # (1, S)
        if not flag(inputs, "flush"):
            return {"pcm": to_host(pcm[0]), "state": state_to_tensor(stream)}, None
        tail, _ = self.token2wav.flush(stream)
        pcm = to_host(torch.cat([pcm, tail], dim=1)[0])
        return {"pcm": pcm, "state": torch.zeros(0, dtype=torch.uint8)}, None

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

