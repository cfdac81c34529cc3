"""The 5:15 schedule: exact block counts, END_OF_SPEECH only after the text, chunking-invariant output equal
to one offline pass over the interleaved stream, and the text-position -> audio-time mapping for barge-in."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import torch

from minmo.model.config import load_config
from minmo.model.interleave import (
    IGNORE_INDEX,
    RasSampler,
    Sampler,
    ScheduleState,
    TailParts,
    VoiceSchedule,
    greedy_sampler,
    init_schedule_state,
    seconds_of,
    speech_tokens_at,
    synthesize_step,
    teacher_forcing_inputs,
)
from minmo.model.voice_token_lm import VoiceTokenLM

ATOL = 1e-4  # float32, chunked vs full pass: kernel summation order only (see test_llm.py)


class ScriptedSampler:
    """Greedy, but says END_OF_SPEECH on the `eos_after + 1`-th call where it is allowed; records every call."""

    def __init__(self, eos_id: int, eos_after: int) -> None:
        self.eos_id, self.eos_after = eos_id, eos_after
        self.calls: list[torch.Tensor] = []
        self.unmasked_calls = 0

    def __call__(self, logits: torch.Tensor, recent: Sequence[int]) -> int:
        self.calls.append(logits.clone())
        if torch.isinf(logits[self.eos_id]):
            return int(logits.argmax())
        self.unmasked_calls += 1
        return self.eos_id if self.unmasked_calls > self.eos_after else int(logits.argmax())


@pytest.fixture(scope="module")
def voice_lm() -> VoiceTokenLM:
    torch.manual_seed(0)
    return VoiceTokenLM(load_config("tiny").voice_token_lm).eval()


def _semantic(voice_lm: VoiceTokenLM, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, length, voice_lm.cfg.dim, generator=torch.Generator().manual_seed(seed))  # (1, N, dim)


@torch.no_grad()
def _run(
    voice_lm: VoiceTokenLM, semantic: torch.Tensor, chunks: list[int], sampler: Sampler = greedy_sampler
) -> tuple[list[list[int]], ScheduleState]:
    """Feed `semantic` in chunks (the last call also says the text is finished); tokens per call."""
    state, emitted, start = init_schedule_state(voice_lm), [], 0
    for index, size in enumerate(chunks):
        tokens, state = synthesize_step(
            voice_lm, semantic[:, start : start + size], index == len(chunks) - 1, state, sampler
        )
        emitted.append(tokens)
        start += size
    return emitted, state


def test_twelve_positions_give_two_blocks_of_fifteen_then_tail_until_eos(voice_lm: VoiceTokenLM) -> None:
    sampler = ScriptedSampler(voice_lm.end_of_speech_id, eos_after=7)
    emitted, state = _run(voice_lm, _semantic(voice_lm, 12), [1] * 12 + [0], sampler)
    assert [len(tokens) for tokens in emitted] == [0, 0, 0, 0, 15, 0, 0, 0, 0, 15, 0, 0, 7]
    assert all(torch.isinf(logits[voice_lm.end_of_speech_id]) for logits in sampler.calls[:30]), "EOS before text end"
    assert state.finished and state.speech_tokens == 37 and state.text_positions == 12
    assert all(0 <= token < voice_lm.cfg.speech_vocab for tokens in emitted for token in tokens)


def test_short_text_speaks_only_after_turn_of_speech(voice_lm: VoiceTokenLM) -> None:
    sampler = ScriptedSampler(voice_lm.end_of_speech_id, eos_after=9)
    emitted, _ = _run(voice_lm, _semantic(voice_lm, 3), [2, 1, 0], sampler)
    assert [len(tokens) for tokens in emitted] == [0, 0, 9]


def test_long_text_blocks_do_not_depend_on_chunking(voice_lm: VoiceTokenLM) -> None:
    semantic = _semantic(voice_lm, 23)
    one_call, _ = _run(voice_lm, semantic, [23], ScriptedSampler(voice_lm.end_of_speech_id, eos_after=4))
    emitted, state = _run(voice_lm, semantic, [7, 1, 9, 6, 0], ScriptedSampler(voice_lm.end_of_speech_id, eos_after=4))
    assert [len(tokens) for tokens in emitted] == [15, 0, 30, 15, 4]
    assert list(itertools.chain.from_iterable(emitted)) == one_call[0]
    assert state.speech_tokens == 4 * 15 + 4


def test_model_that_wants_to_stop_still_fills_every_block(voice_lm: VoiceTokenLM) -> None:
    """END_OF_SPEECH is masked until TURN_OF_SPEECH, so a block is never cut short."""
    emitted, state = _run(voice_lm, _semantic(voice_lm, 10), [10], ScriptedSampler(voice_lm.end_of_speech_id, 0))
    assert len(emitted[0]) == 30 and state.finished


@pytest.mark.parametrize("length", [0, 3, 12])
def test_safety_bound_when_end_of_speech_never_comes(voice_lm: VoiceTokenLM, length: int) -> None:
    never_stop = ScriptedSampler(voice_lm.end_of_speech_id, eos_after=10**9)
    emitted, state = _run(voice_lm, _semantic(voice_lm, length), [length], never_stop)
    assert len(emitted[0]) == state.speech_tokens == VoiceSchedule().max_speech_tokens(length) == max(15, 20 * length)


@torch.no_grad()
def test_streamed_synthesis_equals_one_offline_pass(voice_lm: VoiceTokenLM) -> None:
    """Every logit the driver sampled from equals the offline pass over the whole interleaved stream."""
    semantic = _semantic(voice_lm, 12)
    sampler = ScriptedSampler(voice_lm.end_of_speech_id, eos_after=5)
    emitted, _ = _run(voice_lm, semantic, [3, 5, 4, 0], sampler)
    tokens = list(itertools.chain.from_iterable(emitted))
    inputs, targets = teacher_forcing_inputs(voice_lm, semantic, tokens)
    assert inputs.shape[1] == 1 + 12 + len(tokens) + 1  # SOS, vectors, speech tokens, TURN_OF_SPEECH
    logits, _ = voice_lm.step(inputs, voice_lm.init_state())
    predicting = (targets[0] != IGNORE_INDEX).nonzero().squeeze(-1)
    offline = logits[0, predicting]  # (len(tokens) + 1, V)
    streamed = torch.stack(sampler.calls)
    eos = voice_lm.end_of_speech_id
    torch.testing.assert_close(streamed[:, :eos], offline[:, :eos], atol=ATOL, rtol=0)
    torch.testing.assert_close(streamed[30:, eos], offline[30:, eos], atol=ATOL, rtol=0)
    assert targets[0, predicting].tolist() == [*tokens, eos]


@torch.no_grad()
def test_state_roundtrip_mid_turn(voice_lm: VoiceTokenLM) -> None:
    semantic = _semantic(voice_lm, 9)
    _, state = synthesize_step(voice_lm, semantic[:, :6], False, init_schedule_state(voice_lm))
    restored = ScheduleState.from_bytes(state.to_bytes())
    expected, _ = synthesize_step(voice_lm, semantic[:, 6:], False, state)
    actual, after = synthesize_step(voice_lm, semantic[:, 6:], False, restored)
    assert actual == expected and after.fed_in_block == 4 and after.recent_tokens == state.recent_tokens[-10:]


def test_text_position_to_speech_time_mapping() -> None:
    schedule = VoiceSchedule()
    assert schedule.speech_span(0, 12) == range(0, 3)
    assert schedule.speech_span(4, 12) == range(12, 15)
    assert schedule.speech_span(5, 12) == range(15, 18)
    assert schedule.speech_span(10, 12) == range(30, 33)  # tail at the blocks' rate until the total is known
    assert schedule.speech_span(11, 12, total_speech_tokens=37) == range(33, 37)
    played = (0, 2, 3, 15, 30, 36, 37)
    assert [schedule.text_positions_heard(count, 12, 37) for count in played] == [0, 0, 1, 5, 10, 11, 12]
    assert schedule.text_positions_heard(speech_tokens_at(1.2), 12, 37) == 10  # 1.2 s = 30 tokens = 2 blocks
    assert speech_tokens_at(1.0) == 25 and seconds_of(15) == pytest.approx(0.6)


def test_ras_sampler_breaks_repetition() -> None:
    logits = torch.tensor([10.0, 0.0, 0.0, 0.0])
    sampler = RasSampler(top_k=1, generator=torch.Generator().manual_seed(0))
    assert sampler(logits, recent=[]) == 0
    mild = torch.tensor([1.0, 0.0, 0.0, 0.0])
    repeated = RasSampler(top_k=1, generator=torch.Generator().manual_seed(0))
    assert {repeated(mild, recent=[0]) for _ in range(40)} == {0, 1, 2, 3}  # top token repeated: full draw


@torch.no_grad()
@pytest.mark.parametrize("part", [1, 7, 50])
@pytest.mark.parametrize("eos_after", [None, 20])
def test_a_tail_spoken_in_parts_equals_the_tail_spoken_at_once(voice_lm: VoiceTokenLM, part, eos_after) -> None:
    """`max_tail_tokens` splits the tail across calls (the voicelm service's bounded calls after TextEnd) without
    changing one token, whether the tail ends on END_OF_SPEECH or on the safety bound."""
    semantic = _semantic(voice_lm, 7)

    def sampler() -> Sampler:
        return greedy_sampler if eos_after is None else ScriptedSampler(voice_lm.end_of_speech_id, eos_after)

    _, before_tail = synthesize_step(voice_lm, semantic, False, init_schedule_state(voice_lm))
    at_once, whole = synthesize_step(voice_lm, semantic[:, :0], True, before_tail, sampler())
    parts, state, scripted = [], before_tail, sampler()
    while not state.finished:
        tokens, state = synthesize_step(voice_lm, semantic[:, :0], True, state, scripted, max_tail_tokens=part)
        assert len(tokens) <= part
        parts.append(tokens)
    assert [token for tokens in parts for token in tokens] == at_once
    assert state.speech_tokens == whole.speech_tokens and len(parts) >= len(at_once) // part


@pytest.mark.parametrize("cut", [7, 15, 44, 61], ids=["in-block", "a-block", "mid-tail", "late-tail"])
def test_forced_tokens_replay_in_runs_and_the_turn_goes_on_as_unbroken(voice_lm: VoiceTokenLM, cut: int) -> None:
    """A failover's replay: the tokens a lost stream sent are fed a run per forward, not a decode step each, and the
    seeded sampler still draws for them, so the tokens after them are the lost stream's."""
    semantic = _semantic(voice_lm, 12)

    def sampler() -> RasSampler:
        return RasSampler(generator=torch.Generator().manual_seed(5))

    with torch.no_grad():
        whole, _ = synthesize_step(voice_lm, semantic, True, init_schedule_state(voice_lm), sampler())
        assert len(whole) > cut + 5
        forwards = []
        step = voice_lm.step
        voice_lm.step = lambda inputs, state: (forwards.append(inputs.shape[1]), step(inputs, state))[1]
        try:
            replayed, _ = synthesize_step(
                voice_lm, semantic, True, init_schedule_state(voice_lm), sampler(), forced=whole[:cut]
            )
        finally:
            del voice_lm.step
    assert replayed == whole
    after = len(whole) - cut  # decode steps after the replay, one per token
    assert len(forwards) <= after + 6, forwards  # the replay: a few forwards (per block, the tail), not `cut`


def test_tail_parts_end_where_token2wavs_chunks_are_ready():
    """A part ends at the first audio's tokens, then at each later chunk's end plus its lookahead."""
    tail = TailParts(first_audio=15, chunk=25)
    made, ends = 0, []
    for _ in range(4):
        made += tail.next_part(made)
        ends.append(made)
    assert ends == [15, 40, 65, 90]
    assert tail.next_part(30) == 10  # the text's blocks left a chunk half made: the part completes it
    cfg = load_config("nano")
    assert TailParts.from_config(cfg) == TailParts(12 + 3, 15)
