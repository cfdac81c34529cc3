"""The token2wav chunk model the runtime serves: speech tokens in, 24 kHz PCM out, one response turn per sequence.

Stateful like the voice-token LM: the turn's flow-matching and HiFT caches stay in the runtime (or Triton
instance) that computes them, keyed by the sequence; a request carries only its new tokens, so the payload is
O(chunk) however long the turn grows. One set of weights serves every turn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minmo.model.placement import module_placement, to_host
from minmo.model.token2wav import Token2Wav, Token2WavState
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap
from minmo.runtime.batching import BatchSettings, StepBatcher
from minmo.runtime.models import BatchResult, execute_batch, flag, require

Token2WavStep = tuple[torch.Tensor, Token2WavState, bool]  # tokens (1, n), the turn's state, flush

MAX_PROMPT_TOKENS = 750  # 30 s of prompt at 25 tokens/s (voice_prompt.PROMPT_MAX_S)


class Token2WavModel(RuntimeModel):
    """Stateful per sequence (= one response turn): `tokens` int64 (N,) ids in [0, speech_vocab), `flush` bool (1,)
    -> `pcm` float32 (S,) at 24 kHz (S a multiple of 960). A flush gives the rest of the turn's audio; a request
    after it starts a new turn from a fresh state (callers end the sequence with the flush).

    At the start of a turn, optionally the voice to speak in (CosyVoice 2 zero-shot, see `voice_prompt.py`):
    `speaker` float32 (spk_embed_dim,) x-vector, `prompt_tokens` int64 (P,) the prompt's speech tokens (at most
    MAX_PROMPT_TOKENS) with `prompt_mel` float32 (mel_bins, P * token_mel_ratio), its log-mel. The sequence's
    state carries the conditioning after its first request, so it is sent once per turn. Also at the start, a
    failover's `resume_samples` int64 (1,): the turn's audio before that sample is not returned (the listener has
    it; `Token2Wav.init_state`), though the tokens are still sent from the first.

    Batching across sessions: with a batcher (`attach_batcher`), `execute` hands its chunk's step to it, and the
    steps of concurrent turns run as batched forwards (`Token2Wav.step_rows`); `execute_batch` does the same for
    the requests of one Triton `execute`. A flush (once per turn) runs right after the batched step, on the batcher's
    thread too: the compute of waiting turns stays on one thread instead of spreading over the threads that wait."""

    batches_execute = True  # with a batcher, `execute` submits its step to it

    name = "token2wav"
    stateful = True

    def __init__(self, token2wav: Token2Wav) -> None:
        self.token2wav = token2wav.eval()
        self.speech_vocab = token2wav.flow.cfg.speech_vocab
        self.device, self.flow_dtype = module_placement(token2wav.flow)
        self.batcher: StepBatcher | None = None

    def attach_batcher(self, settings: BatchSettings, on_batch: Callable[[int], None] | None = None) -> StepBatcher:
        """Run the chunk steps of concurrent turns as batched forwards from now on."""
        self.batcher = StepBatcher(self.name, self.step_rows, settings, on_batch)
        return self.batcher

    def step_rows(self, requests: list[Token2WavStep]) -> list[tuple[torch.Tensor, Token2WavState | None]]:
        """(tokens (1, n), state, flush) of independent turns -> (pcm (1, S), state; None after a flush) of each: the
        chunk steps as batched forwards, then each flush on its own stream."""
        stepped = self.token2wav.step_rows([tokens for tokens, _, _ in requests], [state for _, state, _ in requests])
        return [
            self._flush(pcm, stream) if flush else (pcm, stream)
            for (pcm, stream), (_, _, flush) in zip(stepped, requests, strict=True)
        ]

    def execute(self, inputs: TensorMap, state: Token2WavState | None) -> tuple[TensorMap, Token2WavState | None]:
        tokens, stream, flush = request = self._prepare(inputs, state)
        if self.batcher is None:
            pcm, stream = self.token2wav.step(tokens, stream)
            pcm, stream = self._flush(pcm, stream) if flush else (pcm, stream)
        else:
            with self.batcher.session():
                pcm, stream = self.batcher(request)
        return self._finish(pcm, stream)

    def execute_batch(self, requests: list[tuple[TensorMap, Token2WavState | None]]) -> list[BatchResult]:
        """`execute` for the requests of independent sequences at once; a bad request gets its error, the others
        their outputs and states."""
        return execute_batch(requests, self._prepare, self.step_rows, self._finish)

    def _prepare(self, inputs: TensorMap, state: Token2WavState | None) -> Token2WavStep:
        tokens = self._tokens(inputs)[None].to(self.device)  # (1, N)
        stream = self.token2wav.init_state(**self._voice(inputs), **self._resume(inputs)) if state is None else state
        return tokens, stream, flag(inputs, "flush")

    def _flush(self, pcm: torch.Tensor, stream: Token2WavState) -> tuple[torch.Tensor, None]:
        """The turn's rest after its last step's pcm; the turn is over (no state)."""
        tail, _ = self.token2wav.flush(stream)
        return torch.cat([pcm, tail], dim=1), None

    @staticmethod
    def _finish(pcm: torch.Tensor, stream: Token2WavState | None) -> tuple[TensorMap, Token2WavState | None]:
        return {"pcm": to_host(pcm[0])}, stream

    def _voice(self, inputs: TensorMap) -> dict[str, torch.Tensor]:
        """The turn's speaker and voice prompt as `Token2Wav.init_state` arguments (batch of one), each checked."""
        cfg = self.token2wav.flow.cfg
        voice = {}
        if "speaker" in inputs:
            speaker = require(inputs, "speaker", torch.float32, 1)
            if speaker.shape != (cfg.spk_embed_dim,) or not torch.isfinite(speaker).all():
                raise InvalidInput(
                    f"input 'speaker' must be {cfg.spk_embed_dim} finite floats, got {tuple(speaker.shape)}"
                )
            voice["speaker"] = speaker[None].to(self.device, self.flow_dtype)
        if "prompt_tokens" in inputs or "prompt_mel" in inputs:
            prompt_tokens = self._ids(inputs, "prompt_tokens")
            if prompt_tokens.numel() > MAX_PROMPT_TOKENS:
                raise InvalidInput(f"{prompt_tokens.numel()} prompt tokens exceed {MAX_PROMPT_TOKENS} (30 s)")
            prompt_mel = require(inputs, "prompt_mel", torch.float32, 2)
            frames = prompt_tokens.numel() * cfg.token_mel_ratio
            if prompt_mel.shape != (cfg.mel_bins, frames) or not torch.isfinite(prompt_mel).all():
                raise InvalidInput(
                    f"input 'prompt_mel' must be ({cfg.mel_bins}, {frames}) finite floats for "
                    f"{prompt_tokens.numel()} prompt tokens, got {tuple(prompt_mel.shape)}"
                )
            voice["prompt_tokens"] = prompt_tokens[None].to(self.device)
            voice["prompt_mel"] = prompt_mel[None].to(self.device, self.flow_dtype)
        return voice

    @staticmethod
    def _resume(inputs: TensorMap) -> dict[str, int]:
        """The turn's `resume_samples` as an `init_state` argument, checked; none when absent."""
        if "resume_samples" not in inputs:
            return {}
        resume = require(inputs, "resume_samples", torch.int64, 1)
        if resume.shape != (1,) or resume.item() < 0:
            raise InvalidInput(f"input 'resume_samples' must be one sample index >= 0, got {resume.tolist()}")
        return {"resume_samples": int(resume.item())}

    def _tokens(self, inputs: TensorMap) -> torch.Tensor:
        """The `tokens` input, with every id checked: an out-of-range id would index past the embedding."""
        return self._ids(inputs, "tokens")

    def _ids(self, inputs: TensorMap, name: str) -> torch.Tensor:
        tokens = require(inputs, name, torch.int64, 1)
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.speech_vocab):
            bad = tokens[(tokens < 0) | (tokens >= self.speech_vocab)]
            raise InvalidInput(
                f"speech token ids must be in [0, {self.speech_vocab}), got {bad[0].item()} "
                f"({bad.numel()} of {tokens.numel()} ids out of range)"
            )
        return tokens
