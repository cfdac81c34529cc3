"""The LLM model the runtime serves: one sequence per session stream, the `DialogueState` kept where it runs.

The KV cache is too big to travel with every request, so this model is stateful (Triton's sequence batcher
in decoupled mode; `LocalRuntime` in process): a sequence is started with `OP_START` and every later
request names an `op` on it. Text travels as UTF-8 bytes in uint8 tensors, so the model owns the tokenizer
and callers need none.

Tensor contract (every request has `op` int64 (1,) or (); every response has `position` int64 (1,): the
context length after the request, in LLM positions):
- OP_START (sequence start): `system_prompt` uint8 (N,); optional `history_roles` int64 (H,) of ROLE_*,
  `history_lengths` int64 (H,) bytes per turn, `history_text` uint8 (sum of lengths,) -> `position`.
- OP_APPEND_TEXT_TURN: `role` int64 (1,) ROLE_*, `text` uint8 (N,) -> `position`.
- OP_REBUILD: optional `history_*` as in OP_START -> `position`: the context OP_START would build from the
  sequence's system prompt and this history, reusing the system prompt's KV entries (dropping old turns).
- These three take an optional `prefill_tokens` int64 (1,): prefill the text in slices of that many positions (0 or
  absent: at once). `execute_slices` yields between slices, so `LocalRuntime` runs each slice as its own compute task
  (other sessions' steps interleave) and a cancel stops the request after the slice that is running, the sequence's
  state unchanged. The result equals the one-shot prefill within float tolerance.
- OP_APPEND_AUDIO: `embeddings` float32 (T>0, D) -> `probs` float32 (4,) (the predictor's classes), `position`.
- OP_BEGIN_RESPONSE: optional `instruction` uint8 (N,), optional `prefix_ids` int64 (P,) (token ids the reply
  already has: a response continued after failover; OP_GENERATE then goes on after them) -> `position`.
- OP_GENERATE (`execute_stream`): `max_tokens` int64 (1,) >= 1, optional `temperature` float32 (1,), `top_k`
  int64 (1,) -> one response per token: `token_id` int64 (1,), `hidden` float32 (1, D), `token_embedding`
  float32 (1, D), `is_end` bool (1,) (an end-of-turn token: not text), `finished` bool (1,) (the last
  response: the turn is closed and kept in the context), `position`. A stream closed early leaves the
  response open; drop it with OP_DROP_RESPONSE.
- OP_DROP_RESPONSE: -> `dropped` bool (1,) (false when there was no droppable response), `position`.
- OP_TRANSCRIBE: `max_tokens` int64 (1,) -> `transcript` uint8 (N,): what the last spoken user turn said (empty when
  there is none left to transcribe), read from the snapshot taken when its response began; `position`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from minmo.model.build import build_component
from minmo.model.config import MinMoConfig
from minmo.model.dialogue import Dialogue, DialogueState, Slices, TokenStep, run_slices
from minmo.model.placement import CPU_FLOAT32, Placement, to_host
from minmo.model.tokenizer import load_tokenizer
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap
from minmo.runtime.batching import BatchSettings, StepBatcher
from minmo.runtime.models import require

OP_START = 0
OP_APPEND_TEXT_TURN = 1
OP_APPEND_AUDIO = 2
OP_BEGIN_RESPONSE = 3
OP_GENERATE = 4
OP_DROP_RESPONSE = 5
OP_TRANSCRIBE = 6
OP_REBUILD = 7

# The values of minmo.v1.Role, so services pass proto roles straight through.
ROLE_USER = 1
ROLE_ASSISTANT = 2
ROLE_SYSTEM = 3
ROLE_NAMES = {ROLE_USER: "user", ROLE_ASSISTANT: "assistant", ROLE_SYSTEM: "system"}

_EMPTY_TEXT = torch.zeros(0, dtype=torch.uint8)


def text_tensor(text: str) -> torch.Tensor:
    """UTF-8 text as a uint8 (N,) tensor, the way this model takes text."""
    return _bytes_tensor(text.encode("utf-8"))


def history_tensors(history: list[tuple[int, str]]) -> TensorMap:
    """(ROLE_*, text) turns as the `history_*` inputs of OP_START."""
    encoded = [text.encode("utf-8") for _, text in history]
    return {
        "history_roles": torch.tensor([role for role, _ in history], dtype=torch.int64),
        "history_lengths": torch.tensor([len(data) for data in encoded], dtype=torch.int64),
        "history_text": _bytes_tensor(b"".join(encoded)),
    }


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else _EMPTY_TEXT.clone()


class LlmModel(RuntimeModel):
    """The LLM + duplex predictor behind the op contract above; state: one `DialogueState` per sequence."""

    name = "llm"
    stateful = True

    def __init__(self, dialogue: Dialogue) -> None:
        self.dialogue = dialogue
        self.batcher: StepBatcher | None = None  # set by a batching runtime: decode steps of sessions run together

    @property
    def vocab_size(self) -> int:
        return self.dialogue.llm.model.get_input_embeddings().num_embeddings

    def attach_batcher(self, settings: BatchSettings, on_batch: Callable[[int], None] | None = None) -> StepBatcher:
        """Run OP_GENERATE's decode steps of concurrent sequences as batched forwards from now on."""
        self.batcher = StepBatcher(self.name, self.dialogue.generate_steps, settings, on_batch)
        return self.batcher

    @classmethod
    def from_config(
        cls, cfg: MinMoConfig, checkpoint: str | None = None, placement: Placement = CPU_FLOAT32
    ) -> LlmModel:
        llm = build_component(cfg, "llm", checkpoint, placement=placement)
        predictor = build_component(cfg, "duplex_predictor", checkpoint, placement=placement)
        return cls(Dialogue(llm, predictor, load_tokenizer(cfg.llm)))

    def execute(self, inputs: TensorMap, state: DialogueState | None) -> tuple[TensorMap, DialogueState]:
        return run_slices(self.execute_slices(inputs, state))

    def execute_slices(self, inputs: TensorMap, state: DialogueState | None) -> Slices[tuple[TensorMap, DialogueState]]:
        """`execute` as a generator that yields between prefill slices (`prefill_tokens`; see the module doc)."""
        op = _op(inputs)
        slice_positions = _prefill_tokens(inputs)
        if op == OP_START:
            return self._respond((yield from self._start(inputs, slice_positions)))
        state = self._require_state(state, op)
        try:
            if op == OP_REBUILD:
                rebuilt = self.dialogue.rebuild_slices(state, _history(inputs), slice_positions)
                return self._respond((yield from rebuilt))
            if op == OP_APPEND_TEXT_TURN:
                role = _role(require(inputs, "role", torch.int64, 1))
                turn = self.dialogue.append_text_turn_slices(state, role, _text(inputs, "text"), slice_positions)
                return self._respond((yield from turn))
            if op == OP_APPEND_AUDIO:
                probs, state = self.dialogue.append_audio(state, self._embeddings(inputs)[None])
                return self._respond(state, probs=to_host(probs))
            if op == OP_BEGIN_RESPONSE:
                instruction, prefix = _text(inputs, "instruction", required=False), _prefix_ids(inputs, self.vocab_size)
                return self._respond(self.dialogue.begin_response(state, instruction, prefix))
            if op == OP_TRANSCRIBE:
                ids, state = self.dialogue.transcribe(state, _max_tokens(inputs))
                return self._respond(state, transcript=text_tensor(self.dialogue.tokenizer.decode(ids)))
            if op == OP_DROP_RESPONSE:
                dropped = state.can_drop_response
                state = self.dialogue.drop_response(state) if dropped else state
                return self._respond(state, dropped=torch.tensor([dropped]))
        except ValueError as error:  # a request out of order for this conversation (e.g. audio mid-response)
            raise InvalidInput(str(error)) from error
        raise InvalidInput(f"op {op} is not a single-response op (OP_GENERATE streams: use execute_stream)")

    def execute_stream(
        self, inputs: TensorMap, state: DialogueState | None
    ) -> Iterator[tuple[TensorMap, DialogueState]]:
        if _op(inputs) != OP_GENERATE:
            yield self.execute(inputs, state)
            return
        state = self._require_state(state, OP_GENERATE)
        if not state.generating:
            raise InvalidInput("OP_GENERATE needs OP_BEGIN_RESPONSE first")
        max_tokens = _max_tokens(inputs)
        temperature = float(inputs["temperature"][0]) if "temperature" in inputs else 0.0
        top_k = int(inputs["top_k"][0]) if "top_k" in inputs else 0
        with self.batcher.session() if self.batcher is not None else contextlib.nullcontext():
            for count in range(1, max_tokens + 1):
                step, state = self._generate_step(state, temperature, top_k)
                finished = step.is_end or count == max_tokens
                if finished:
                    state = self.dialogue.finish_response(state)
                outputs = {
                    "token_id": torch.tensor([step.token_id]),
                    "hidden": to_host(step.hidden),
                    "token_embedding": to_host(step.token_embedding),
                    "is_end": torch.tensor([step.is_end]),
                    "finished": torch.tensor([finished]),
                }
                yield self._respond(state, **outputs)
                if finished:
                    return

    def _generate_step(self, state: DialogueState, temperature: float, top_k: int) -> tuple[TokenStep, DialogueState]:
        if self.batcher is None:
            return self.dialogue.generate_step(state, temperature, top_k)
        return self.batcher((state, temperature, top_k))

    def _start(self, inputs: TensorMap, slice_positions: int) -> Slices[DialogueState]:
        system_prompt = _text(inputs, "system_prompt", required=False)
        return (yield from self.dialogue.start_slices(system_prompt, _history(inputs), slice_positions))

    def _embeddings(self, inputs: TensorMap) -> torch.Tensor:
        embeddings = require(inputs, "embeddings", torch.float32, 2)
        if embeddings.shape[0] == 0 or embeddings.shape[1] != self.dialogue.hidden_size:
            raise InvalidInput(f"embeddings must be (T>0, {self.dialogue.hidden_size}), got {tuple(embeddings.shape)}")
        return embeddings

    @staticmethod
    def _require_state(state: DialogueState | None, op: int) -> DialogueState:
        if state is None:
            raise InvalidInput(f"op {op} on a sequence that was not started with OP_START")
        return state

    @staticmethod
    def _respond(state: DialogueState, **outputs: torch.Tensor) -> tuple[TensorMap, DialogueState]:
        return {**outputs, "position": torch.tensor([state.position])}, state


def _op(inputs: TensorMap) -> int:
    op = inputs.get("op")
    if op is None or op.dtype != torch.int64 or op.numel() != 1:
        raise InvalidInput("input 'op' must be one int64 (OP_START, OP_APPEND_AUDIO, ...)")
    return int(op.item())


def _max_tokens(inputs: TensorMap) -> int:
    max_tokens = int(require(inputs, "max_tokens", torch.int64, 1)[0])
    if max_tokens < 1:
        raise InvalidInput(f"max_tokens must be at least 1, got {max_tokens}")
    return max_tokens


def _history(inputs: TensorMap) -> list[tuple[str, str]]:
    """The (role, text) turns of the `history_*` inputs."""
    roles = inputs.get("history_roles", torch.zeros(0, dtype=torch.int64))
    lengths = inputs.get("history_lengths", torch.zeros(0, dtype=torch.int64))
    data = bytes(inputs.get("history_text", _EMPTY_TEXT).numpy())
    if roles.shape != lengths.shape or roles.dim() != 1 or int(lengths.sum()) != len(data):
        raise InvalidInput(
            f"history_roles {tuple(roles.shape)} and history_lengths {tuple(lengths.shape)} must be (H,), and "
            f"the lengths must add up to the {len(data)} bytes of history_text"
        )
    history, offset = [], 0
    for role, length in zip(roles.tolist(), lengths.tolist(), strict=True):
        history.append((_role(torch.tensor([role])), _decode(data[offset : offset + length], "history_text")))
        offset += length
    return history


def _prefix_ids(inputs: TensorMap, vocab_size: int) -> list[int]:
    if "prefix_ids" not in inputs:
        return []
    ids = require(inputs, "prefix_ids", torch.int64, 1).tolist()
    if any(not 0 <= token < vocab_size for token in ids):
        raise InvalidInput(f"prefix_ids must be token ids of this model's vocabulary (0 to {vocab_size - 1})")
    return ids


def _prefill_tokens(inputs: TensorMap) -> int:
    if "prefill_tokens" not in inputs:
        return 0
    prefill_tokens = int(require(inputs, "prefill_tokens", torch.int64, 1)[0])
    if prefill_tokens < 0:
        raise InvalidInput(f"prefill_tokens must be >= 0 (0: at once), got {prefill_tokens}")
    return prefill_tokens


def _role(role: torch.Tensor) -> str:
    value = int(role.flatten()[0]) if role.numel() == 1 else -1
    if value not in ROLE_NAMES:
        raise InvalidInput(f"role must be one of {sorted(ROLE_NAMES)} (user, assistant, system), got {role.tolist()}")
    return ROLE_NAMES[value]


def _text(inputs: TensorMap, name: str, required: bool = True) -> str:
    if name not in inputs and not required:
        return ""
    return _decode(bytes(require(inputs, name, torch.uint8, 1).numpy()), name)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"input {name!r} is not valid UTF-8: {error}") from error
