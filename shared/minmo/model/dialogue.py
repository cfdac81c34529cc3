"""The LLM side of a conversation with audio in the context: chat-format pieces, KV cache edits, generation.

MinMo's context is a chat transcript in which a user turn may hold projected speech embeddings instead of
text. Audio arrives chunk by chunk, so a user turn cannot be rendered by the chat template in one go: the
template is cut into pieces (`ChatFormat`) — system block, whole text turns, the user-turn prefix and
suffix, the generation prompt and the assistant's end of turn — and the pieces are fed around the audio.
Concatenated, they give exactly the ids the tokenizer's own chat template gives for the same messages.

`Dialogue` is stateless (state in, state out) so one set of weights serves every session, the llm
service and the in-process pipeline alike, and a `DialogueState` can be serialised. Two context edits
serve full duplex:
- a response can be dropped (cancelled, or barged in on): the KV cache is cropped back to where it began,
  and the caller appends what the user actually heard;
- while the user is speaking (a user turn open), a text turn is inserted before that open turn and the
  open turn is re-run after it, so the turn being spoken stays last. This is what barge-in needs: the
  user's speech that interrupted a finished response is already in the context when duplex drops the
  response and appends the heard text, and the heard text must come before it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch

from minmo.model.batch_step import batched_decoder_step
from minmo.model.duplex_predictor import DuplexPredictor, DuplexPredictorState
from minmo.model.llm import LLM, LLMState, decoder_step, next_token
from minmo.model.state import StreamState
from minmo.model.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

ROLES = ("system", "user", "assistant")
# Stand-in message contents, cut out of rendered templates; no real conversation contains them.
_PLACEHOLDER = "\u2063MINMO-CONTENT\u2063"
_OTHER_PLACEHOLDER = "\u2063MINMO-EARLIER\u2063"
# ByteTokenizer markup: its two structural ids as private-use characters, so its template renders to text.
_BYTE_BOS = "\ue000"
_BYTE_EOS = "\ue001"
LOOP_UNIT_TOKENS = 3  # a transcript ending in a unit of at least this many tokens said twice is a loop (looped_tail)


class _TextTemplate(Protocol):
    """A chat template rendered as text (markup), and the encoder that turns markup into ids."""

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str: ...

    def encode_markup(self, markup: str) -> list[int]: ...


class _ByteTemplate:
    """`ByteTokenizer.chat_prompt` as text: BOS role newline content EOS per message."""

    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        text = "".join(f"{_BYTE_BOS}{m['role']}\n{m['content']}{_BYTE_EOS}" for m in messages)
        return text + (f"{_BYTE_BOS}assistant\n" if add_generation_prompt else "")

    def encode_markup(self, markup: str) -> list[int]:
        specials = {_BYTE_BOS: ByteTokenizer.BOS, _BYTE_EOS: ByteTokenizer.EOS}
        ids: list[int] = []
        for char in markup:
            ids += [specials[char]] if char in specials else self.tokenizer.encode(char)
        return ids


class _HFTemplate:
    """The Jinja chat template shipped with HF weights; special tokens in the markup encode to their ids."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_markup(self, markup: str) -> list[int]:
        return self.tokenizer.encode(markup)


def _template_for(tokenizer: Tokenizer) -> _TextTemplate:
    if isinstance(tokenizer, ByteTokenizer):
        return _ByteTemplate(tokenizer)
    if isinstance(tokenizer, HFTokenizer):
        return _HFTemplate(tokenizer)
    raise TypeError(f"no chat template known for {type(tokenizer).__name__}")


@dataclass(frozen=True)
class ChatFormat:
    """Token ids of the chat template's pieces; a message = prefix[role] + encode(content) + suffix[role]."""

    tokenizer: Tokenizer
    preamble: list[int]  # what the template puts first when there is no system message (may be empty)
    prefix: dict[str, list[int]]  # role -> ids before a message's content
    suffix: dict[str, list[int]]  # role -> ids after a message's content
    assistant_prefix: list[int]  # the generation prompt: opens the assistant's turn
    assistant_end: list[int]  # closes the assistant's turn after a response

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> ChatFormat:
        """Cut the tokenizer's chat template around placeholder contents (works for any template that renders
        a conversation as the concatenation of its messages, e.g. ChatML and Llama 3)."""
        template = _template_for(tokenizer)
        # Each role after the messages that may precede it, so templates that special-case the first message
        # (or enforce alternation) render it as they would mid-conversation.
        earlier = {
            "system": [],
            "user": [{"role": "system", "content": _OTHER_PLACEHOLDER}],
            "assistant": [
                {"role": "system", "content": _OTHER_PLACEHOLDER},
                {"role": "user", "content": _OTHER_PLACEHOLDER},
            ],
        }
        heads, tails = {}, {}
        for role in ROLES:
            before = template.render(earlier[role], False) if earlier[role] else ""
            rendered = template.render([*earlier[role], {"role": role, "content": _PLACEHOLDER}], False)
            assert rendered.startswith(before), f"the chat template re-renders earlier messages when adding {role}"
            heads[role], tails[role] = _split(rendered[len(before) :], f"a {role} message")
        user_only = [{"role": "user", "content": _PLACEHOLDER}]
        first_head, _ = _split(template.render(user_only, False), "a lone user message")
        assert first_head.endswith(heads["user"]), "a first user message is rendered unlike later ones"
        generation = template.render(user_only, True)[len(template.render(user_only, False)) :]
        assert generation == heads["assistant"], "the generation prompt differs from an assistant message's start"
        encode = template.encode_markup
        return cls(
            tokenizer=tokenizer,
            preamble=encode(first_head[: len(first_head) - len(heads["user"])]),
            prefix={role: encode(head) for role, head in heads.items()},
            suffix={role: encode(tail) for role, tail in tails.items()},
            assistant_prefix=encode(generation),
            assistant_end=encode(tails["assistant"]),
        )

    @property
    def user_prefix(self) -> list[int]:
        return self.prefix["user"]

    @property
    def user_suffix(self) -> list[int]:
        return self.suffix["user"]

    def system_block(self, system_prompt: str) -> list[int]:
        """The context's start: a system message, or the template's own preamble when the prompt is empty."""
        return self.text_turn("system", system_prompt) if system_prompt else list(self.preamble)

    def text_turn(self, role: str, text: str) -> list[int]:
        """A complete message of `role` ("system", "user" or "assistant")."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: expected one of {ROLES}")
        return [*self.prefix[role], *self.tokenizer.encode(text), *self.suffix[role]]


def _split(rendered: str, what: str) -> tuple[str, str]:
    head, found, tail = rendered.partition(_PLACEHOLDER)
    assert found, f"the chat template dropped the content of {what}"
    return head, tail


def looped_tail(ids: list[int], shortest: int = LOOP_UNIT_TOKENS) -> int:
    """The length of a unit of at least `shortest` tokens that `ids` ends with twice in a row (0: none).

    Greedy decoding of a small speech-text LLM can fall into a loop it never leaves ("what is it that is it that
    is it that ..."), as Whisper's decoder does; speech itself seldom says a phrase of several tokens twice in a
    row. `transcribe` stops at the second copy and drops it.
    """
    for unit in range(shortest, len(ids) // 2 + 1):
        if ids[-unit:] == ids[-2 * unit : -unit]:
            return unit
    return 0


# The instruction of the paper's speech-to-text task, placed inside the user's spoken turn.
TRANSCRIBE_INSTRUCTION = "Transcribe the speech above, word for word."


@dataclass
class DialogueState(StreamState):
    """One conversation's context. Positions count LLM inputs (tokens and audio frames) from the start."""

    llm: LLMState
    predictor: DuplexPredictorState
    system_end: int = 0  # positions of the system block, kept by `rebuild`
    user_turn_start: int = -1  # position where the open user turn begins; -1: no user turn open
    user_turn_inputs: list[torch.Tensor] = field(default_factory=list)  # its inputs (1, T, D) each, to re-run
    response_start: int = -1  # position before the droppable response's assistant prefix; -1: none
    response_end: int = -1  # position after the finished response; -1 while it is being generated
    pending_token: int = -1  # chosen but not yet fed to the LLM (fed by the next generate_step / finish)
    # the context as it was when the last spoken user turn ended (set by begin_response), until `transcribe` reads it
    spoken_turn: DialogueState | None = None

    @property
    def position(self) -> int:
        return self.llm.position

    @property
    def user_turn_open(self) -> bool:
        return self.user_turn_start >= 0

    @property
    def generating(self) -> bool:
        return self.response_start >= 0 and self.response_end < 0

    @property
    def can_drop_response(self) -> bool:
        """A response is being generated, or the last one finished and only an open user turn follows it."""
        return self.response_start >= 0


@dataclass
class TokenStep:
    """One generated token with what the output projector reads for it."""

    token_id: int
    hidden: torch.Tensor  # (1, D) LLM last hidden state at the position that emitted the token
    token_embedding: torch.Tensor  # (1, D) LLM input embedding of the token
    is_end: bool  # an end-of-turn token: not part of the response text


class Dialogue:
    """LLM + duplex predictor + chat format; every method takes a state and returns the new one."""

    def __init__(self, llm: LLM, predictor: DuplexPredictor, tokenizer: Tokenizer) -> None:
        self.llm = llm
        self.predictor = predictor
        self.tokenizer = tokenizer
        self.format = ChatFormat.from_tokenizer(tokenizer)
        self._eos = frozenset(tokenizer.eos_token_ids)

    @property
    def hidden_size(self) -> int:
        return self.llm.hidden_size

    def start(self, system_prompt: str = "", history: list[tuple[str, str]] | None = None) -> DialogueState:
        """A context from a system prompt and earlier (role, text) turns, oldest first."""
        return run_slices(self.start_slices(system_prompt, history))

    def start_slices(
        self, system_prompt: str = "", history: list[tuple[str, str]] | None = None, slice_positions: int = 0
    ) -> Slices[DialogueState]:
        """`start`, prefilled `slice_positions` at a time (0: at once); see `_feed_slices`."""
        ids = self.format.system_block(system_prompt)
        state = DialogueState(llm=self.llm.init_state(), predictor=self.predictor.init_state(), system_end=len(ids))
        return (yield from self._feed_slices(state, self._embed(ids + self._history_ids(history)), slice_positions))

    def rebuild_slices(
        self, state: DialogueState, history: list[tuple[str, str]], slice_positions: int = 0
    ) -> Slices[DialogueState]:
        """The context `start` would build from this conversation's system prompt and `history`, reusing the system
        block's KV entries (it is the context's prefix, so they do not change): trimming old turns away costs the
        kept turns' prefill, not the system prompt's again."""
        self._require_idle(state, "rebuild the context")
        kept = DialogueState(
            llm=_crop(state.llm, state.system_end), predictor=self.predictor.init_state(), system_end=state.system_end
        )
        return (yield from self._feed_slices(kept, self._embed(self._history_ids(history)), slice_positions))

    def _history_ids(self, history: list[tuple[str, str]] | None) -> list[int]:
        return [token for role, text in history or [] for token in self.format.text_turn(role, text)]

    def append_text_turn(self, state: DialogueState, role: str, text: str) -> DialogueState:
        """Append a complete text turn; while a user turn is open, it goes before that turn (see module doc)."""
        return run_slices(self.append_text_turn_slices(state, role, text))

    def append_text_turn_slices(
        self, state: DialogueState, role: str, text: str, slice_positions: int = 0
    ) -> Slices[DialogueState]:
        """`append_text_turn`, the text prefilled `slice_positions` at a time (0: at once); see `_feed_slices`."""
        self._require_idle(state, "append a text turn")
        inputs = self._embed(self.format.text_turn(role, text))
        if not state.user_turn_open:
            fed = yield from self._feed_slices(state, inputs, slice_positions)
            return dataclasses.replace(fed, response_start=-1, response_end=-1)
        before = dataclasses.replace(state, llm=_crop(state.llm, state.user_turn_start))
        before = yield from self._feed_slices(before, inputs, slice_positions)
        return self._replay_user_turn(dataclasses.replace(before, response_start=-1, response_end=-1), state)

    @torch.no_grad()
    def append_audio(self, state: DialogueState, embeddings: torch.Tensor) -> tuple[torch.Tensor, DialogueState]:
        """One chunk of user audio embeddings (1, T, D) -> duplex class probabilities (4,) and the new state.

        Opens a user turn first if none is open. The predictor reads the LLM's hidden states of the audio only, of
        this user turn only: a new turn starts it afresh, as the simulated turns of its training data do (stage 4).
        """
        opening = not state.user_turn_open
        hidden, state = self.listen(state, embeddings)
        predictor_state = self.predictor.init_state() if opening else state.predictor
        probs, predictor_state = self.predictor.step(hidden, predictor_state)
        return probs[0], dataclasses.replace(state, predictor=predictor_state)

    @torch.no_grad()
    def listen(self, state: DialogueState, embeddings: torch.Tensor) -> tuple[torch.Tensor, DialogueState]:
        """`append_audio` without the predictor: the LLM's last hidden states at the audio's positions (1, T, D),
        what the predictor reads (and what its training data records), and the new state."""
        self._require_idle(state, "append audio")
        assert embeddings.dim() == 3 and embeddings.shape[0] == 1 and embeddings.shape[1] > 0, (
            f"audio embeddings must be (1, T>0, D), got {tuple(embeddings.shape)}"
        )
        length = embeddings.shape[1]
        opening = self._embed([] if state.user_turn_open else self.format.user_prefix)
        inputs = torch.cat([opening, embeddings.to(opening)], dim=1)  # (1, P + T, D) on the LLM's device and dtype
        # the decoder alone: listening reads no logits, and the LM head over the vocabulary at every audio position
        # was 13% of the prefill (SmolLM2's 49,152 x 576)
        hidden, llm_state = decoder_step(self.llm.model.get_decoder(), inputs, state.llm)
        return hidden[:, -length:], dataclasses.replace(
            state,
            llm=llm_state,
            user_turn_start=state.user_turn_start if state.user_turn_open else state.position,
            user_turn_inputs=[*state.user_turn_inputs, inputs],
        )

    def begin_response(
        self, state: DialogueState, instruction: str = "", prefix: list[int] | None = None
    ) -> DialogueState:
        """Close the open user turn (with the voice `instruction` inside it, e.g. "Speak with a tone of
        sadness") and open the assistant's turn. With no user turn open, only the assistant turn is opened.

        `prefix`: token ids the reply already has (failover: what a lost replica generated); they are fed after the
        opening, so the next `generate_step` continues the reply as the lost replica would have."""
        self._require_idle(state, "begin a response")
        spoken_turn = dataclasses.replace(state, spoken_turn=None) if state.user_turn_open else state.spoken_turn
        closing = [*self.tokenizer.encode(instruction), *self.format.user_suffix] if state.user_turn_open else []
        opening = self.format.assistant_prefix
        reply = [*opening, *(prefix or [])]
        state = self._feed(state, self._embed(closing + reply[:-1]))
        return dataclasses.replace(
            state,
            user_turn_start=-1,
            user_turn_inputs=[],
            response_start=state.position - len(reply) + 1,
            response_end=-1,
            pending_token=reply[-1],
            spoken_turn=spoken_turn,
        )

    @torch.no_grad()
    def generate_step(
        self, state: DialogueState, temperature: float = 0.0, top_k: int = 0
    ) -> tuple[TokenStep, DialogueState]:
        """Feed the previous token, choose the next one (greedy at temperature 0)."""
        assert state.generating and state.pending_token >= 0, "generate_step needs begin_response first"
        output, llm_state = self.llm.step(self._embed([state.pending_token]), state.llm)
        token = next_token(output.logits[:, -1], temperature, top_k)  # (1,)
        token_id = int(token.item())
        is_end = token_id in self._eos
        step = TokenStep(
            token_id=token_id,
            hidden=output.hidden[:, -1],
            token_embedding=self.llm.embed(token[:, None])[:, 0],
            is_end=is_end,
        )
        return step, dataclasses.replace(state, llm=llm_state, pending_token=-1 if is_end else token_id)

    @torch.no_grad()
    def generate_steps(self, requests: list[tuple[DialogueState, float, int]]) -> list[tuple[TokenStep, DialogueState]]:
        """`generate_step` for independent conversations, (state, temperature, top_k) each, as one batched forward
        over their KV caches (`batched_decoder_step`); each result equals its unbatched step within float tolerance."""
        if len(requests) == 1:
            return [self.generate_step(*requests[0])]
        states = [state for state, _, _ in requests]
        assert all(state.generating and state.pending_token >= 0 for state in states), "needs begin_response first"
        inputs = self._embed_rows([state.pending_token for state in states])  # (B, 1, D)
        hidden, llm_states = batched_decoder_step(self.llm.model.get_decoder(), inputs, [s.llm for s in states])
        logits = self.llm.model.get_output_embeddings()(hidden)  # (B, 1, V)
        results = []
        for row, (state, temperature, top_k) in enumerate(requests):
            token = next_token(logits[row : row + 1, -1], temperature, top_k)  # (1,)
            token_id = int(token.item())
            is_end = token_id in self._eos
            step = TokenStep(
                token_id=token_id,
                hidden=hidden[row : row + 1, -1],
                token_embedding=self.llm.embed(token[:, None])[:, 0],
                is_end=is_end,
            )
            new_state = dataclasses.replace(state, llm=llm_states[row], pending_token=-1 if is_end else token_id)
            results.append((step, new_state))
        return results

    def finish_response(self, state: DialogueState) -> DialogueState:
        """Close the assistant's turn (its last token and the end of turn); the response stays droppable
        until something other than the next user turn's audio is appended."""
        assert state.generating, "finish_response needs a response being generated"
        pending = [state.pending_token] if state.pending_token >= 0 else []
        state = self._feed(state, self._embed(pending + self.format.assistant_end))
        return dataclasses.replace(state, response_end=state.position, pending_token=-1)

    @torch.no_grad()
    def transcribe(self, state: DialogueState, max_tokens: int) -> tuple[list[int], DialogueState]:
        """Token ids of what the last spoken user turn said (the paper's speech-to-text task, greedy).

        Runs on the snapshot `begin_response` kept, so it can wait until the reply is out; the transcript never
        enters the conversation's context. Returns ([], state) when there is no spoken turn to transcribe.
        """
        if state.spoken_turn is None:
            return [], state
        forked = self.begin_response(state.spoken_turn, TRANSCRIBE_INSTRUCTION)
        ids: list[int] = []
        for _ in range(max_tokens):
            step, forked = self.generate_step(forked)
            if step.is_end:
                break
            ids.append(step.token_id)
            if repeat := looped_tail(ids):
                del ids[-repeat:]
                break
        return ids, dataclasses.replace(state, spoken_turn=None)

    def drop_response(self, state: DialogueState) -> DialogueState:
        """Remove the current or last response from the context as if it never happened (the open user turn
        that followed it, if any, is re-run after the cut)."""
        if not state.can_drop_response:
            raise ValueError("no response to drop: none was begun, or other turns were appended after it")
        cut = dataclasses.replace(
            state, llm=_crop(state.llm, state.response_start), response_start=-1, response_end=-1, pending_token=-1
        )
        return self._replay_user_turn(cut, state) if state.user_turn_open else cut

    def _replay_user_turn(self, state: DialogueState, source: DialogueState) -> DialogueState:
        """Re-run `source`'s open user turn after `state`'s context (its KV entries depend on what precedes it)."""
        start = state.position
        state = self._feed(state, torch.cat(source.user_turn_inputs, dim=1))
        return dataclasses.replace(state, user_turn_start=start, user_turn_inputs=source.user_turn_inputs)

    @torch.no_grad()
    def _feed(self, state: DialogueState, inputs: torch.Tensor) -> DialogueState:
        """Run the LLM's decoder over inputs (1, T, D) for their KV entries (no logits: nothing reads them); T may
        be 0."""
        if inputs.shape[1] == 0:
            return state
        _, llm_state = decoder_step(self.llm.model.get_decoder(), inputs, state.llm)
        return dataclasses.replace(state, llm=llm_state)

    def _feed_slices(self, state: DialogueState, inputs: torch.Tensor, slice_positions: int) -> Slices[DialogueState]:
        """`_feed` in slices of `slice_positions` positions (0: one slice), yielding between them.

        A long prompt is one long computation; in slices, whoever drives the generator (`LocalRuntime`) runs each
        slice as its own task, so other sessions' steps run in between, and can stop between slices (a cancel).
        Causal attention over the KV cache makes the result equal to one-shot prefill within float tolerance.
        """
        size = slice_positions if slice_positions > 0 else max(1, inputs.shape[1])
        for begin in range(0, inputs.shape[1], size):
            if begin:
                yield
            state = self._feed(state, inputs[:, begin : begin + size])
        return state

    @torch.no_grad()
    def _embed(self, ids: list[int]) -> torch.Tensor:
        device = self.llm.model.get_input_embeddings().weight.device
        return self.llm.embed(torch.tensor([ids], dtype=torch.long, device=device))  # (1, T, D)

    @torch.no_grad()
    def _embed_rows(self, ids: list[int]) -> torch.Tensor:
        device = self.llm.model.get_input_embeddings().weight.device
        return self.llm.embed(torch.tensor(ids, dtype=torch.long, device=device)[:, None])  # (B, 1, D)

    @staticmethod
    def _require_idle(state: DialogueState, action: str) -> None:
        if state.generating:
            raise ValueError(f"cannot {action} while a response is being generated: finish or drop it first")


T = TypeVar("T")
Slices = Generator[None, None, T]  # yields between slices of work, returns the result


def run_slices(slices: Slices[T]) -> T:
    """Run every slice at once; the result."""
    while True:
        try:
            next(slices)
        except StopIteration as done:
            return done.value


def _crop(state: LLMState, position: int) -> LLMState:
    """The KV cache cut back to its first `position` entries: views of the same buffers, behind their frontier, so
    the next append copies them into new buffers (copy on write) instead of overwriting what other states view.
    Serialising a state copies only what it views."""
    assert 0 <= position <= state.position, f"cannot crop a context of {state.position} to {position}"
    return dataclasses.replace(
        state,
        keys=[keys[:, :, :position] for keys in state.keys],
        values=[values[:, :, :position] for values in state.values],
        position=position,
    )
