"""The voice-token decoder the runtime serves: output projector + voice-token LM, one response turn per sequence.

Stateful like the LLM: the voice LM's KV cache grows with the turn, so it stays where it runs, keyed by the
sequence (Triton's sequence batcher in decoupled mode, or `LocalRuntime`'s dict). The state is a plain
`StreamState` — the 5:15 schedule, the turn's sampling settings and the sampler's RNG state as bytes — so
sampling is reproducible for a given seed however the text positions are chunked, and the state could be
exported like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from minmo.model.batch_step import batched_decoder_step
from minmo.model.build import build_component
from minmo.model.config import MAX_INSTRUCTION_CHARS, SPEECH_CODEBOOK_SIZE, MinMoConfig
from minmo.model.interleave import (
    RasSampler,
    Sampler,
    ScheduleState,
    greedy_sampler,
    init_schedule_state,
    synthesize_step,
)
from minmo.model.output_projector import OutputProjector
from minmo.model.placement import CPU_FLOAT32, Placement
from minmo.model.state import StreamState
from minmo.model.tokenizer import Tokenizer, load_tokenizer
from minmo.model.voice_token_lm import VoiceLMState, VoiceTokenLM
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap
from minmo.runtime.batching import BatchSettings, StepBatcher
from minmo.runtime.models import require

UINT64_RANGE = 1 << 64  # seeds travel as int64 bit patterns of the proto's uint64
DecodeRequest = tuple[torch.Tensor, VoiceLMState]  # a one-position step's input (1, 1, dim) or logits, and cache


@dataclass
class VoiceSynthesisState(StreamState):
    """One turn: where it stands in the schedule, how it samples, and the sampler's RNG state."""

    schedule: ScheduleState
    temperature: float  # 0: greedy
    top_p: float
    top_k: int  # 0: no top-k limit
    rng: torch.Tensor  # uint8 (torch.Generator.get_state()); empty when greedy
    prefix: list[int] = dataclasses.field(default_factory=list)  # speech tokens the turn already has (failover)


class VoiceLmModel(RuntimeModel):
    """Stateful per sequence (= one response turn).

    Inputs: `hidden` float32 (N, llm_dim) and `token_embedding` float32 (N, llm_dim), the LLM's last hidden
    states and input embeddings of N new text positions (N may be 0); `text_end` bool (1,): no more text.
    At sequence start also `temperature` float32 (1,) (0: greedy), `top_p` float32 (1,) in (0, 1],
    `top_k` int64 (1,) (0: no limit), `seed` int64 (1,) (the uint64 seed's bit pattern), and optionally
    `instruction` uint8 (N,): a UTF-8 voice instruction of at most MAX_INSTRUCTION_CHARS characters, tokenised with
    the LLM's tokenizer and fed after SOS as CosyVoice 2's instruct prefix (`VoiceTokenLM.embed_instruction`; a
    voice LM without an instruction table ignores it), and optionally `prefix_tokens` int64 (P,): the speech tokens
    the turn already has (failover: a lost replica produced them). They are read in place of the sampled tokens
    while the positions are fed again (the sampler still draws, so a seeded turn goes on as it would have), and are
    not output; later these inputs are ignored.
    With `text_end`, optionally `max_tail_tokens` int64 (1,): speak at most that many tokens of the tail in this call
    (0 or absent: all of it), not counting prefix tokens replayed in it (they are not output); `finished` stays
    false until the tail is spoken, and the next calls (`text_end`, no positions) go on. Bounded calls let a replica
    interleave other turns' steps with a long tail (they return to the runtime between parts) and let the first tail
    tokens go out before the rest are made.
    Outputs: `speech_tokens` int64 (K,): 15 per completed block of 5 positions, the rest after `text_end`;
    `finished` bool (1,): the turn's speech is complete (only after `text_end`).
    """

    name = "voice_lm"
    stateful = True
    batches_execute = True  # with a batcher, `execute` submits its decode steps to it

    def __init__(self, projector: OutputProjector, voice_lm: VoiceTokenLM, tokenizer: Tokenizer | None = None) -> None:
        assert tokenizer is not None or voice_lm.instruction_embedding is None, "an instruction table needs a tokenizer"
        self.projector = projector.eval()
        self.voice_lm = voice_lm.eval()
        self.tokenizer = tokenizer  # the LLM's: instruction text -> ids of the instruction table
        self.llm_dim = projector.cfg.llm_dim
        self.device = voice_lm.head.weight.device
        self.batcher: StepBatcher | None = None  # set by a batching runtime: decode steps of turns run together

    def attach_batcher(self, settings: BatchSettings, on_batch: Callable[[int], None] | None = None) -> StepBatcher:
        """Run the voice LM's one-token decode steps of concurrent turns as batched forwards from now on."""
        self.batcher = StepBatcher(self.name, self._decode_batch, settings, on_batch)
        return self.batcher

    def _decode_batch(self, requests: list[DecodeRequest]) -> list[DecodeRequest]:
        """One-position steps (inputs (1, 1, dim), cache) of independent turns as one forward; logits (1, 1, V) each."""
        if len(requests) == 1:
            return [self.voice_lm.step(*requests[0])]
        inputs = torch.cat([embeds for embeds, _ in requests])  # (B, 1, dim)
        hidden, states = batched_decoder_step(self.voice_lm.decoder, inputs, [state for _, state in requests])
        logits = self.voice_lm.head(hidden)  # (B, 1, V)
        return [(logits[row : row + 1], state) for row, state in enumerate(states)]

    def _decode(self, inputs_embeds: torch.Tensor, state: VoiceLMState) -> tuple[torch.Tensor, VoiceLMState]:
        return self.batcher((inputs_embeds, state))

    @classmethod
    def from_config(
        cls, cfg: MinMoConfig, checkpoint: str | None = None, placement: Placement = CPU_FLOAT32
    ) -> VoiceLmModel:
        """Both components built as every process builds them (same seeded weights, or the checkpoint's)."""
        voice_lm = build_component(cfg, "voice_token_lm", checkpoint, placement=placement)
        tokenizer = None
        if voice_lm.instruction_embedding is not None:
            llm = cfg.llm
            if llm.source == "hf" and not llm.path and checkpoint is not None:  # where build_component finds the LLM
                llm = dataclasses.replace(llm, path=str(Path(checkpoint) / "llm"))
            tokenizer = load_tokenizer(llm)
        return cls(build_component(cfg, "output_projector", checkpoint, placement=placement), voice_lm, tokenizer)

    def execute(self, inputs: TensorMap, state: VoiceSynthesisState | None) -> tuple[TensorMap, VoiceSynthesisState]:
        hidden, token_embedding = self._positions(inputs)
        text_end = bool(_scalar(inputs, "text_end", torch.bool))
        state = self._start(inputs) if state is None else state
        if state.schedule.finished:
            raise InvalidInput("this turn's speech is already finished; start a new sequence for the next turn")
        dtype = self.voice_lm.head.weight.dtype
        semantic = self.projector(
            hidden[None].to(self.device, dtype), token_embedding[None].to(self.device, dtype)
        )  # (1, N, dim)
        generator = self._generator(state)
        before = state.schedule.speech_tokens
        sampler = _sampler(state, generator)
        decode = self._decode if self.batcher is not None else None
        with self.batcher.session() if self.batcher is not None else contextlib.nullcontext():
            tokens, schedule = synthesize_step(
                self.voice_lm, semantic, text_end, state.schedule, sampler, decode,
                _max_tail_tokens(inputs, len(state.prefix) - before), forced=state.prefix,
            )  # fmt: skip
        rng = state.rng if generator is None else generator.get_state()
        outputs = {
            "speech_tokens": torch.tensor(tokens[max(0, len(state.prefix) - before) :], dtype=torch.int64),  # (K,)
            "finished": torch.tensor([schedule.finished]),  # (1,)
        }
        return outputs, dataclasses.replace(state, schedule=schedule, rng=rng)

    def _positions(self, inputs: TensorMap) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden` and `token_embedding`, both (N, llm_dim): the projector concatenates them position by position."""
        hidden = require(inputs, "hidden", torch.float32, 2)
        token_embedding = require(inputs, "token_embedding", torch.float32, 2)
        if hidden.shape[1] != self.llm_dim:
            raise InvalidInput(f"input 'hidden' must be (N, {self.llm_dim}), got {tuple(hidden.shape)}")
        if token_embedding.shape != hidden.shape:
            raise InvalidInput(
                f"input 'token_embedding' {tuple(token_embedding.shape)} must match 'hidden' {tuple(hidden.shape)}"
            )
        return hidden, token_embedding

    def _start(self, inputs: TensorMap) -> VoiceSynthesisState:
        """A new turn from the sampling settings; they are checked here, once, not on every step."""
        temperature = float(_scalar(inputs, "temperature", torch.float32))
        top_p = float(_scalar(inputs, "top_p", torch.float32))
        top_k = int(_scalar(inputs, "top_k", torch.int64))
        seed = int(_scalar(inputs, "seed", torch.int64))
        if not (math.isfinite(temperature) and temperature >= 0):
            raise InvalidInput(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise InvalidInput(f"top_k must be >= 0 (0: no limit), got {top_k}")
        rng = torch.zeros(0, dtype=torch.uint8)
        if temperature > 0:
            rng = torch.Generator(device=self.device).manual_seed(seed % UINT64_RANGE).get_state()
        schedule = init_schedule_state(self.voice_lm, self._instruction(inputs))
        prefix = self._prefix(inputs)
        return VoiceSynthesisState(schedule, temperature, top_p, top_k, rng, prefix)

    def _prefix(self, inputs: TensorMap) -> list[int]:
        if "prefix_tokens" not in inputs:
            return []
        ids = require(inputs, "prefix_tokens", torch.int64, 1).tolist()
        limit = self.voice_lm.cfg.max_positions
        if len(ids) > limit:
            raise InvalidInput(f"prefix_tokens has {len(ids)} tokens; a turn has at most {limit}")
        if any(not 0 <= token < SPEECH_CODEBOOK_SIZE for token in ids):
            raise InvalidInput(f"prefix_tokens must be speech token ids in [0, {SPEECH_CODEBOOK_SIZE})")
        return ids

    def _instruction(self, inputs: TensorMap) -> torch.Tensor | None:
        """The instruct prefix (1, T, dim) of the `instruction` input; None without one (or without a table)."""
        if "instruction" not in inputs or self.voice_lm.instruction_embedding is None:
            return None
        try:
            text = bytes(require(inputs, "instruction", torch.uint8, 1).numpy()).decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise InvalidInput(f"input 'instruction' is not valid UTF-8: {error}") from error
        if len(text) > MAX_INSTRUCTION_CHARS:
            raise InvalidInput(
                f"the voice instruction has {len(text)} characters; the limit is {MAX_INSTRUCTION_CHARS}"
            )
        if not text:
            return None
        ids = self.tokenizer.encode(text)
        vocab = self.voice_lm.cfg.instruction_vocab
        if any(not 0 <= i < vocab for i in ids):
            raise InvalidInput(f"the voice instruction tokenises to ids outside the instruction table's {vocab} rows")
        return self.voice_lm.embed_instruction(ids)

    def _generator(self, state: VoiceSynthesisState) -> torch.Generator | None:
        """The turn's generator, restored from its saved state (None when greedy: nothing to draw)."""
        if state.temperature == 0:
            return None
        generator = torch.Generator(device=self.device)
        generator.set_state(state.rng)
        return generator


def _sampler(state: VoiceSynthesisState, generator: torch.Generator | None) -> Sampler:
    """Greedy at temperature 0; otherwise repetition-aware sampling on temperature-scaled logits."""
    if generator is None:
        return greedy_sampler
    ras = RasSampler(top_p=state.top_p, top_k=state.top_k, generator=generator)
    temperature = state.temperature

    def tempered(logits: torch.Tensor, recent: Sequence[int]) -> int:
        return ras(logits / temperature, recent)

    return tempered


def _max_tail_tokens(inputs: TensorMap, replaying: int) -> int | None:
    """The call's tail bound, plus the `replaying` prefix tokens still to replay (one forward, nothing output)."""
    if "max_tail_tokens" not in inputs:
        return None
    limit = int(_scalar(inputs, "max_tail_tokens", torch.int64))
    if limit < 0:
        raise InvalidInput(f"max_tail_tokens must be >= 0 (0: the whole tail), got {limit}")
    return limit + max(replaying, 0) if limit else None


def _scalar(inputs: TensorMap, name: str, dtype: torch.dtype) -> bool | int | float:
    """The single value of a (1,) input, which must be present with this dtype."""
    tensor = require(inputs, name, dtype, 1)
    if tensor.numel() != 1:
        raise InvalidInput(f"input {name!r} must have shape (1,), got {tuple(tensor.shape)}")
    return tensor.item()
