"""Dialogue: chat-format pieces equal the chat template, context edits equal a context built without them.

Tolerance 1e-5 absolute in float32 where the same context is built in different chunks (only the summation
order inside matmul / SDPA kernels differs); exact equality where the same computation runs twice.
"""

from __future__ import annotations

import pytest
import torch

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.dialogue import (
    TRANSCRIBE_INSTRUCTION,
    ChatFormat,
    Dialogue,
    DialogueState,
    TokenStep,
    looped_tail,
)
from minmo.model.tokenizer import ByteTokenizer, load_tokenizer

ATOL = 1e-5
STEPS = 6
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there, ça va?"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]


@pytest.fixture(scope="module")
def dialogue() -> Dialogue:
    cfg = load_config("tiny")
    return Dialogue(build_component(cfg, "llm"), build_component(cfg, "duplex_predictor"), load_tokenizer(cfg.llm))


def _audio(dialogue: Dialogue, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, dialogue.hidden_size, generator=generator)  # (1, T, D)


def _generate(dialogue: Dialogue, state: DialogueState, steps: int = STEPS) -> tuple[list[TokenStep], DialogueState]:
    tokens = []
    for _ in range(steps):
        token, state = dialogue.generate_step(state)
        tokens.append(token)
    return tokens, state


def _assert_same_response(first: list[TokenStep], second: list[TokenStep], atol: float = ATOL) -> None:
    assert [t.token_id for t in first] == [t.token_id for t in second]
    hidden, expected = torch.cat([t.hidden for t in first]), torch.cat([t.hidden for t in second])
    torch.testing.assert_close(hidden, expected, atol=atol, rtol=0)


def _assert_same_context(first: DialogueState, second: DialogueState) -> None:
    assert first.position == second.position
    for a, b in zip(first.llm.keys + first.llm.values, second.llm.keys + second.llm.values, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _pieces(chat: ChatFormat, messages: list[dict]) -> list[int]:
    """The prompt as the service builds it: system block, text turns, then the last user turn opened, filled
    and closed piece by piece (as around audio), then the generation prompt."""
    *earlier, last = messages
    ids = chat.system_block(earlier[0]["content"] if earlier[0]["role"] == "system" else "")
    for message in earlier[1:] if earlier[0]["role"] == "system" else earlier:
        ids += chat.text_turn(message["role"], message["content"])
    encoded = chat.tokenizer.encode(last["content"])
    return ids + chat.user_prefix + encoded + chat.user_suffix + chat.assistant_prefix


@pytest.mark.parametrize("messages", [MESSAGES, MESSAGES[1:]])
def test_byte_format_pieces_concatenate_to_the_chat_prompt(messages: list[dict]) -> None:
    tokenizer = ByteTokenizer()
    chat = ChatFormat.from_tokenizer(tokenizer)
    assert _pieces(chat, messages) == tokenizer.chat_prompt(messages)
    assert chat.assistant_end == [ByteTokenizer.EOS]


def test_audio_gives_one_prediction_per_chunk_and_deterministic_generation(dialogue: Dialogue) -> None:
    runs = []
    for _ in range(2):
        state = dialogue.start("Be brief.", [("user", "hi"), ("assistant", "hello")])
        signals = []
        for seed, frames in enumerate((3, 1, 4)):
            probs, state = dialogue.append_audio(state, _audio(dialogue, frames, seed))
            signals.append(probs)
        assert state.user_turn_open
        tokens, state = _generate(dialogue, dialogue.begin_response(state, "Speak with a tone of sadness"))
        runs.append((torch.stack(signals), tokens))
    (signals, first), (signals_again, second) = runs
    assert signals.shape == (3, 4)
    torch.testing.assert_close(signals.sum(-1), torch.ones(3))
    assert torch.equal(signals, signals_again)
    _assert_same_response(first, second, atol=0)
    assert all(t.hidden.shape == t.token_embedding.shape == (1, dialogue.hidden_size) for t in first)


def test_start_with_history_equals_appending_the_turns(dialogue: Dialogue) -> None:
    history = [("user", "Hi there, ça va?"), ("assistant", "Hello."), ("user", "What is 2+2?")]
    at_once = dialogue.start("Be brief.", history)
    one_by_one = dialogue.start("Be brief.")
    for role, text in history:
        one_by_one = dialogue.append_text_turn(one_by_one, role, text)
    _assert_same_context(at_once, one_by_one)
    first, _ = _generate(dialogue, dialogue.begin_response(at_once))
    second, _ = _generate(dialogue, dialogue.begin_response(one_by_one))
    _assert_same_response(first, second)


def test_a_reply_continued_after_its_prefix_equals_the_uninterrupted_reply(dialogue: Dialogue) -> None:
    """Failover: a new replica fed the user turn's audio and the tokens a lost one generated continues the reply as
    the lost one would have (greedy), with the same hidden states for the voice-token LM, and drops it the same."""
    before = dialogue.start("Be brief.", [("user", "Hi there.")])
    _, spoken = dialogue.append_audio(before, _audio(dialogue, 4, seed=3))
    whole, uninterrupted = _generate(dialogue, dialogue.begin_response(spoken, "Speak slowly."), steps=2 * STEPS)
    prefix = [step.token_id for step in whole[:STEPS]]
    continued = dialogue.begin_response(spoken, "Speak slowly.", prefix)
    rest, generating = _generate(dialogue, continued)
    _assert_same_response(rest, whole[STEPS:])
    _assert_same_context(generating, uninterrupted)
    _assert_same_context(dialogue.drop_response(generating), dialogue.drop_response(uninterrupted))


def test_drop_response_restores_the_context_before_it(dialogue: Dialogue) -> None:
    before = dialogue.start("Be brief.", [("user", "Tell me a story.")])
    _, generating = _generate(dialogue, dialogue.begin_response(before))
    dropped = dialogue.drop_response(generating)
    _assert_same_context(dropped, before)
    assert not dropped.can_drop_response and dropped.pending_token == -1
    finished = dialogue.finish_response(generating)
    _assert_same_context(dialogue.drop_response(finished), before)


def test_barge_in_on_a_finished_response_leaves_only_the_heard_text(dialogue: Dialogue) -> None:
    """Duplex's barge-in: the user's speech that interrupted the response is already in the context when the
    response is dropped and the heard text appended; the result equals a context that only had the heard text."""
    question, interruption = _audio(dialogue, 4, seed=1), _audio(dialogue, 3, seed=2)
    _, state = dialogue.append_audio(dialogue.start("Be brief."), question)
    _, state = _generate(dialogue, dialogue.begin_response(state))
    state = dialogue.finish_response(state)
    _, state = dialogue.append_audio(state, interruption)
    state = dialogue.append_text_turn(dialogue.drop_response(state), "assistant", "Once upon")
    barged_in, _ = _generate(dialogue, dialogue.begin_response(state))

    _, clean = dialogue.append_audio(dialogue.start("Be brief."), question)
    clean = dialogue.drop_response(dialogue.begin_response(clean))  # closes the user turn, no response
    clean = dialogue.append_text_turn(clean, "assistant", "Once upon")
    _, clean = dialogue.append_audio(clean, interruption)
    expected, _ = _generate(dialogue, dialogue.begin_response(clean))
    _assert_same_context(state, clean)
    _assert_same_response(barged_in, expected)


def test_a_response_followed_by_a_text_turn_cannot_be_dropped(dialogue: Dialogue) -> None:
    state = dialogue.begin_response(dialogue.start("Be brief.", [("user", "hi")]))
    with pytest.raises(ValueError, match="generated"):
        dialogue.append_text_turn(state, "user", "too early")
    state = dialogue.append_text_turn(dialogue.finish_response(state), "user", "next")
    with pytest.raises(ValueError, match="no response to drop"):
        dialogue.drop_response(state)


def test_transcribing_the_spoken_turn_after_the_reply_leaves_the_context_alone(dialogue: Dialogue) -> None:
    _, spoken = dialogue.append_audio(dialogue.start("be brief"), _audio(dialogue, 6, seed=7))
    _, replied = _generate(dialogue, dialogue.begin_response(spoken))
    finished = dialogue.finish_response(replied)
    ids, after = dialogue.transcribe(finished, max_tokens=8)
    asr = dialogue.begin_response(spoken, TRANSCRIBE_INSTRUCTION)  # the ASR prompt on the spoken turn itself
    expected: list[int] = []
    while len(expected) < 8:
        step, asr = dialogue.generate_step(asr)
        if step.is_end:
            break
        expected.append(step.token_id)
        if repeat := looped_tail(expected):  # the random model may loop: the transcript stops at the loop
            del expected[-repeat:]
            break
    assert ids == expected
    assert after.spoken_turn is None and dialogue.transcribe(after, max_tokens=8)[0] == []
    _assert_same_context(after, finished)


def test_a_transcript_stops_at_a_loop_and_keeps_a_short_repeat() -> None:
    what_is_it_that = [5, 6, 7, 8]
    assert looped_tail([*what_is_it_that, 6, 7, 8]) == 3, "' is it that' twice in a row: a loop"
    assert looped_tail([1, 2, 3, 4, 1, 2, 3, 4]) == 4
    assert looped_tail([1, 2, 3, 4, 1, 2, 3]) == 0, "not yet twice"
    assert looped_tail([9, 9]) == 0 and looped_tail([4, 9, 9, 9, 9]) == 0, "'very very' is speech, not a loop"
    assert looped_tail([]) == 0


def test_state_bytes_round_trip(dialogue: Dialogue) -> None:
    _, state = dialogue.append_audio(dialogue.start("Be brief."), _audio(dialogue, 3, seed=3))
    restored = DialogueState.from_bytes(state.to_bytes())
    assert restored.user_turn_open and len(restored.user_turn_inputs) == 1
    first, generating = _generate(dialogue, dialogue.begin_response(state))
    second, _ = _generate(dialogue, dialogue.begin_response(restored))
    _assert_same_response(first, second, atol=0)
    mid = DialogueState.from_bytes(generating.to_bytes())
    assert mid.generating and mid.pending_token == generating.pending_token
    _assert_same_response(_generate(dialogue, generating, 2)[0], _generate(dialogue, mid, 2)[0], atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("messages", [MESSAGES, MESSAGES[1:]])
def test_nano_format_pieces_reproduce_the_smollm2_chat_template(messages: list[dict]) -> None:
    """Without a system message SmolLM2's template adds its own default one: the preamble."""
    tokenizer = load_tokenizer(load_config("nano").llm)
    chat = ChatFormat.from_tokenizer(tokenizer)
    assert _pieces(chat, messages) == tokenizer.chat_prompt(messages)
    assert "SmolLM" in tokenizer.decode(chat.preamble)
    assert chat.assistant_end[0] in tokenizer.eos_token_ids
