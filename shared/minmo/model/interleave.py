"""The 5:15 text-speech interleave (paper §3.3): when the voice-token LM speaks, and which text it has spoken.

Semantic vectors (output-projector outputs, one per LLM text position) arrive while the LLM is still
writing. The voice-token LM reads them as they come; after every 5 it writes exactly 15 speech tokens
(25 Hz, so 0.6 s of audio per block). When the LLM's text ends, the leftover (< 5) vectors and
TURN_OF_SPEECH follow, and the LM writes tokens until END_OF_SPEECH or a safety bound proportional to
the text length. END_OF_SPEECH is masked out before the text is finished, so a block is never cut short.

One input stream, in order: SOS, v0..v4, s0..s14, v5..v9, s15..s29, ..., v_rest, TURN_OF_SPEECH, s..., where
each speech token is predicted at the position before it and fed back on the next step. The driver
(`synthesize_step`) feeds vectors as soon as they arrive, so the prefill work is spread over the LLM's
decoding; `teacher_forcing_inputs` builds the same stream offline (for training and for tests).

The schedule also maps text positions to speech-token spans, which barge-in needs: the user heard
`speech_tokens_played / 25` seconds of audio, so `text_positions_heard` says how much of the text was spoken.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from minmo.model.config import SPEECH_TOKEN_RATE_HZ, MinMoConfig, VoiceTokenLMConfig
from minmo.model.state import StreamState
from minmo.model.voice_token_lm import VoiceLMState, VoiceTokenLM

MAX_TOKENS_PER_TEXT_POSITION = 20  # safety bound on the speech length, as CosyVoice 2's max_token_text_ratio
RECENT_WINDOW = 10  # speech tokens remembered for repetition-aware sampling
IGNORE_INDEX = -100  # target at positions that predict nothing (torch cross_entropy's default ignore_index)
NO_TOKEN = -1


def speech_tokens_at(seconds: float) -> int:
    """Speech tokens that cover `seconds` of audio (whole tokens only)."""
    return math.floor(seconds * SPEECH_TOKEN_RATE_HZ)


def seconds_of(speech_tokens: int) -> float:
    return speech_tokens / SPEECH_TOKEN_RATE_HZ


@dataclass(frozen=True)
class VoiceSchedule:
    """Block sizes of the interleave and the text-position -> speech-token mapping they imply."""

    text_block: int = 5
    speech_block: int = 15
    max_tokens_per_position: int = MAX_TOKENS_PER_TEXT_POSITION

    @classmethod
    def from_config(cls, cfg: VoiceTokenLMConfig) -> VoiceSchedule:
        return cls(text_block=cfg.text_block, speech_block=cfg.speech_block)

    def full_blocks(self, text_length: int) -> int:
        """Blocks of `text_block` vectors that each get exactly `speech_block` tokens."""
        return text_length // self.text_block

    def positions_for_tokens(self, speech_tokens: int) -> int:
        """Text positions whose whole blocks give at least `speech_tokens` speech tokens before the text ends."""
        return math.ceil(speech_tokens / self.speech_block) * self.text_block

    def max_speech_tokens(self, text_length: int) -> int:
        """Safety bound on the speech tokens of a whole turn, for a model that never says END_OF_SPEECH."""
        return max(self.speech_block, self.max_tokens_per_position * text_length)

    def speech_span(self, text_position: int, text_length: int, total_speech_tokens: int | None = None) -> range:
        """Speech-token indices that speak `text_position`.

        A full block's tokens are shared evenly among its 5 positions (3 each); the tail after
        TURN_OF_SPEECH is shared evenly among the leftover positions. Until the turn's total is known
        the tail is assumed to run at the blocks' rate.
        """
        assert 0 <= text_position < text_length, f"text position {text_position} outside 0..{text_length - 1}"
        block_start = self.full_blocks(text_length) * self.text_block
        if text_position < block_start:
            block, offset = divmod(text_position, self.text_block)
            return self._share(block * self.speech_block, self.speech_block, offset, self.text_block)
        leftover = text_length - block_start
        tail_start = self.full_blocks(text_length) * self.speech_block
        if total_speech_tokens is None:
            tail = leftover * self.speech_block // self.text_block
        else:
            tail = max(total_speech_tokens - tail_start, 0)
        return self._share(tail_start, tail, text_position - block_start, leftover)

    def text_positions_heard(
        self, speech_tokens_played: int, text_length: int, total_speech_tokens: int | None = None
    ) -> int:
        """How many leading text positions were fully spoken once `speech_tokens_played` tokens were played.

        Spans are consecutive, so the positions whose span ends by then are a prefix of the text.
        """
        spans = (self.speech_span(position, text_length, total_speech_tokens) for position in range(text_length))
        return sum(span.stop <= speech_tokens_played for span in spans)

    @staticmethod
    def _share(start: int, tokens: int, index: int, parts: int) -> range:
        """The `index`-th of `parts` near-equal consecutive slices of `tokens` tokens starting at `start`."""
        return range(start + index * tokens // parts, start + (index + 1) * tokens // parts)


@dataclass
class ScheduleState(StreamState):
    """Where one synthesis stream stands in the schedule, with the voice LM's cache."""

    voice: VoiceLMState
    pending_token: int  # sampled (or SOS) but not yet fed to the voice LM; NO_TOKEN if none
    fed_in_block: int  # semantic vectors fed since the last speech block
    text_positions: int  # semantic vectors received in total
    speech_tokens: int  # speech tokens emitted in total
    recent_tokens: list[int]  # the last RECENT_WINDOW speech tokens, for repetition-aware sampling
    finished: bool  # END_OF_SPEECH was sampled, or the safety bound was reached
    tail_started: bool = False  # TURN_OF_SPEECH was fed: the text ended and the tail is being spoken


@torch.no_grad()
def init_schedule_state(voice_lm: VoiceTokenLM, instruction: torch.Tensor | None = None) -> ScheduleState:
    """A new turn: nothing fed yet; SOS goes in with the first semantic vectors. With an instruction prefix
    (1, T, dim) from `VoiceTokenLM.embed_instruction`, SOS and the prefix are fed now (CosyVoice 2's instruct form)."""
    voice, pending = voice_lm.init_state(batch=1), voice_lm.sos_id
    if instruction is not None:
        sos = voice_lm.embed_speech(_ids(voice_lm, [voice_lm.sos_id]))
        _, voice = voice_lm.step(torch.cat([sos, instruction], dim=1), voice)
        pending = NO_TOKEN
    return ScheduleState(
        voice=voice,
        pending_token=pending,
        fed_in_block=0,
        text_positions=0,
        speech_tokens=0,
        recent_tokens=[],
        finished=False,
    )


class Sampler(Protocol):
    """Picks a speech token from logits (V,) given the recently emitted tokens."""

    def __call__(self, logits: torch.Tensor, recent: Sequence[int]) -> int: ...


class DecodeStep(Protocol):
    """One speech-token position (1, 1, dim) after a voice-LM cache -> logits (1, 1, V) and the new cache; by
    default `VoiceTokenLM.step`, or a batching runtime's step that runs it together with other sessions'."""

    def __call__(self, inputs_embeds: torch.Tensor, state: VoiceLMState) -> tuple[torch.Tensor, VoiceLMState]: ...


def greedy_sampler(logits: torch.Tensor, recent: Sequence[int]) -> int:
    """Deterministic argmax (tests, golden outputs)."""
    return int(logits.argmax())


@dataclass
class RasSampler:
    """CosyVoice 2's repetition-aware sampling: nucleus + top-k, but a token that already fills a `tau_r`
    share of the recent window is replaced by a draw from the full distribution, which breaks the loops
    that autoregressive speech LMs fall into."""

    top_p: float = 0.8
    top_k: int = 25  # 0: no top-k limit
    tau_r: float = 0.1
    generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor, recent: Sequence[int]) -> int:
        probs = logits.float().softmax(dim=-1)
        token = self._nucleus(probs)
        if list(recent[-RECENT_WINDOW:]).count(token) >= RECENT_WINDOW * self.tau_r:
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        return token

    def _nucleus(self, probs: torch.Tensor) -> int:
        # with top-k, only the k likeliest are ever kept: take them alone (a full sort and a draw over the whole
        # vocabulary cost ~0.4 ms a token on a CPU core; the distribution drawn from is the same)
        if 0 < self.top_k < probs.shape[-1]:
            sorted_probs, order = probs.topk(self.top_k)
        else:
            sorted_probs, order = probs.sort(descending=True)
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < self.top_p  # always keeps the top token
        choice = torch.multinomial(sorted_probs * keep, 1, generator=self.generator)
        return int(order[choice])


@torch.no_grad()
def synthesize_step(
    voice_lm: VoiceTokenLM,
    semantic: torch.Tensor,
    text_finished: bool,
    state: ScheduleState,
    sampler: Sampler = greedy_sampler,
    decode: DecodeStep | None = None,
    max_tail_tokens: int | None = None,
    forced: Sequence[int] = (),
) -> tuple[list[int], ScheduleState]:
    """Feed newly arrived semantic vectors (1, N, dim) and emit the speech tokens the schedule allows.

    `decode` runs the one-token steps between speech tokens (default: `voice_lm.step`). `forced`: the turn's
    first speech tokens, already known (a failover replays the tokens the lost stream sent): they are emitted in
    place of the sampler's draws (which are still drawn, so a seeded sampler goes on as the lost stream would), and
    a run of them goes into the voice LM as one forward instead of one decode step each.

    Every completed block of 5 vectors yields exactly 15 tokens; with `text_finished`, the leftover vectors
    and TURN_OF_SPEECH are fed and tokens follow until END_OF_SPEECH or the safety bound. `max_tail_tokens`
    splits that tail: a call emits at most that many and leaves the state unfinished, and the next calls (with
    `text_finished` and no new vectors) go on where it stopped. The result depends neither on how the vectors
    are chunked across calls nor on how the tail is split.
    """
    assert not state.finished, "this turn's speech is already finished"
    assert not state.tail_started or semantic.shape[1] == 0, "the text already ended: no more semantic vectors"
    assert semantic.shape[0] == 1 and semantic.shape[-1] == voice_lm.cfg.dim, f"semantic {tuple(semantic.shape)}"
    schedule = VoiceSchedule.from_config(voice_lm.cfg)
    tokens: list[int] = []
    offset = 0
    while offset < semantic.shape[1]:
        take = min(semantic.shape[1] - offset, schedule.text_block - state.fed_in_block)
        logits, state = _feed(voice_lm, semantic[:, offset : offset + take], state)
        offset += take
        state = dataclasses.replace(
            state, fed_in_block=state.fed_in_block + take, text_positions=state.text_positions + take
        )
        if state.fed_in_block == schedule.text_block:
            block, state = _generate(voice_lm, logits, state, sampler, schedule.speech_block, False, decode, forced)
            tokens += block
            state = dataclasses.replace(state, fed_in_block=0)
    if text_finished:
        if state.tail_started:  # a later part of the tail: its last token is still pending
            logits, state = _feed(voice_lm, None, state, decode)
        else:
            turn_of_speech = voice_lm.embed_speech(_ids(voice_lm, [voice_lm.turn_of_speech_id]))
            logits, state = _feed(voice_lm, turn_of_speech, state)
            state = dataclasses.replace(state, tail_started=True)
        budget = schedule.max_speech_tokens(state.text_positions) - state.speech_tokens
        limit = budget if max_tail_tokens is None else min(budget, max_tail_tokens)
        tail, state = _generate(voice_lm, logits, state, sampler, limit, True, decode, forced)
        tokens += tail
        state = dataclasses.replace(state, finished=len(tail) < limit or limit == budget)
    return tokens, state


def teacher_forcing_inputs(
    voice_lm: VoiceTokenLM,
    semantic: torch.Tensor,
    speech_tokens: Sequence[int],
    instruction: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole interleaved stream of one finished turn, offline: inputs (1, L, dim) and targets (1, L).

    `speech_tokens` is the turn's speech without END_OF_SPEECH (at least 15 per full block). targets[i] is the
    token to predict at position i (END_OF_SPEECH after the last one), IGNORE_INDEX where nothing is predicted.
    `instruction` (1, T, dim), from `VoiceTokenLM.embed_instruction`, follows SOS and predicts nothing.
    """
    schedule = VoiceSchedule.from_config(voice_lm.cfg)
    text_length = semantic.shape[1]
    blocks = schedule.full_blocks(text_length)
    block_tokens = blocks * schedule.speech_block
    assert len(speech_tokens) >= block_tokens, f"{len(speech_tokens)} speech tokens, the blocks need {block_tokens}"
    pieces = [voice_lm.embed_speech(_ids(voice_lm, [voice_lm.sos_id]))]
    targets = [IGNORE_INDEX]
    if instruction is not None:
        pieces.append(instruction)
        targets += [IGNORE_INDEX] * instruction.shape[1]
    for block in range(blocks):
        chunk = list(speech_tokens[block * schedule.speech_block : (block + 1) * schedule.speech_block])
        pieces += [semantic[:, block * schedule.text_block : (block + 1) * schedule.text_block]]
        pieces += [voice_lm.embed_speech(_ids(voice_lm, chunk))]
        targets += [IGNORE_INDEX] * (schedule.text_block - 1) + chunk + [IGNORE_INDEX]
    tail = list(speech_tokens[block_tokens:])
    pieces += [semantic[:, blocks * schedule.text_block :]]
    pieces += [voice_lm.embed_speech(_ids(voice_lm, [voice_lm.turn_of_speech_id, *tail]))]
    targets += [IGNORE_INDEX] * (text_length - blocks * schedule.text_block) + tail + [voice_lm.end_of_speech_id]
    inputs = torch.cat(pieces, dim=1)  # (1, L, dim)
    return inputs, torch.tensor([targets], device=inputs.device)


def _ids(voice_lm: VoiceTokenLM, ids: list[int]) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long, device=voice_lm.head.weight.device)  # (1, T)


def _feed(
    voice_lm: VoiceTokenLM, inputs: torch.Tensor | None, state: ScheduleState, decode: DecodeStep | None = None
) -> tuple[torch.Tensor, ScheduleState]:
    """Feed the pending token (if any) then `inputs` (1, T, dim); logits (V,) at the last position fed. A lone
    pending token (a decode step) goes through `decode` when given."""
    pieces = [] if inputs is None else [inputs]
    if state.pending_token != NO_TOKEN:
        pieces.insert(0, voice_lm.embed_speech(_ids(voice_lm, [state.pending_token])))
    assert pieces, "nothing to feed"
    step = decode if decode is not None and inputs is None else voice_lm.step
    logits, voice = step(torch.cat(pieces, dim=1), state.voice)
    return logits[0, -1], dataclasses.replace(state, voice=voice, pending_token=NO_TOKEN)


def _generate(
    voice_lm: VoiceTokenLM,
    logits: torch.Tensor,
    state: ScheduleState,
    sampler: Sampler,
    limit: int,
    allow_eos: bool,
    decode: DecodeStep | None = None,
    forced: Sequence[int] = (),
) -> tuple[list[int], ScheduleState]:
    """Up to `limit` speech tokens from `logits` (V,) on; END_OF_SPEECH (only if allowed) stops early. Tokens of
    the turn that `forced` already holds are taken from it (`synthesize_step`).

    The last token is left pending, not fed: it goes in with whatever the stream receives next.
    """
    tokens: list[int] = []
    queued = [logits]  # logits of the next tokens, computed ahead where the tokens before them are known
    while len(tokens) < limit:
        if not queued:
            known = list(forced[state.speech_tokens : state.speech_tokens + limit - len(tokens) - 1])
            queued, state = _feed_known(voice_lm, known, state, decode)
        logits = queued.pop(0)
        if not allow_eos:
            logits = logits.clone()
            logits[voice_lm.end_of_speech_id] = float("-inf")
        token = sampler(logits, state.recent_tokens)
        if state.speech_tokens < len(forced):
            token = forced[state.speech_tokens]
        if token == voice_lm.end_of_speech_id:
            break
        tokens.append(token)
        state = dataclasses.replace(
            state,
            pending_token=token if not queued else NO_TOKEN,  # a queued row's token was fed with the run
            speech_tokens=state.speech_tokens + 1,
            recent_tokens=[*state.recent_tokens, token][-RECENT_WINDOW:],
        )
    return tokens, state


def _feed_known(
    voice_lm: VoiceTokenLM, known: list[int], state: ScheduleState, decode: DecodeStep | None
) -> tuple[list[torch.Tensor], ScheduleState]:
    """Feed the pending token and the `known` tokens after it: the logits (V,) after each, in order. With no known
    token this is one decode step; with some, one forward over them all (a failover's replay)."""
    if not known:
        logits, state = _feed(voice_lm, None, state, decode)
        return [logits], state
    pending = voice_lm.embed_speech(_ids(voice_lm, [state.pending_token, *known]))
    logits, voice = voice_lm.step(pending, state.voice)
    return list(logits[0]), dataclasses.replace(state, voice=voice, pending_token=NO_TOKEN)


def first_audio_tokens(cfg: MinMoConfig) -> int:
    """Speech tokens that complete token2wav's first chunk (its tokens and their lookahead): the first audio."""
    return cfg.flow.first_chunk_tokens + cfg.flow.lookahead_tokens


@dataclass(frozen=True)
class TailParts:
    """Where the tail after the text's end is cut into calls (`synthesize_step`'s `max_tail_tokens`): at the points
    where token2wav's chunks have their tokens and lookahead. Each part then completes one chunk and no more, so the
    vocoder starts on a chunk as soon as the voice LM could have made it instead of waiting for a longer part: a
    short reply's first part is its first audio's tokens alone, the parts after it a chunk long (1 s of speech)."""

    first_audio: int  # speech tokens that complete token2wav's first chunk (`first_audio_tokens`)
    chunk: int  # speech tokens in each chunk after the first

    @classmethod
    def from_config(cls, cfg: MinMoConfig) -> TailParts:
        return cls(first_audio_tokens(cfg), cfg.flow.chunk_tokens)

    def next_part(self, made: int) -> int:
        """How many speech tokens the next part may make when `made` tokens of the turn exist."""
        if made < self.first_audio:
            return self.first_audio - made
        return self.chunk - (made - self.first_audio) % self.chunk


def first_audio_positions(cfg: MinMoConfig) -> int:
    """Text positions whose speech tokens complete token2wav's first chunk."""
    return VoiceSchedule.from_config(cfg.voice_token_lm).positions_for_tokens(first_audio_tokens(cfg))
