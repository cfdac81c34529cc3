"""The in-place KV cache: decode writes into preallocated buffers, gives what the concatenating path gives, and keeps
states values (a forked or cropped state never changes what another state views)."""

from __future__ import annotations

import pytest
import torch

from minmo.model.batch_step import batched_decoder_step
from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.llm import KV_BLOCK, LLM, LLMState, decoder_step

CFG = load_config("tiny")
TOKENS = 40
EXACT = 1e-6  # float32: the same keys and values in the same order; only the attention kernel's sums may reorder


@pytest.fixture(scope="module")
def llm() -> LLM:
    return build_component(CFG, "llm")


def _decode(llm: LLM, in_place: bool, tokens: int = TOKENS) -> tuple[list[torch.Tensor], LLMState]:
    """A prompt, then `tokens` greedy one-token steps; the hidden state of every step."""
    decoder = llm.model.get_decoder()
    with torch.no_grad():
        prompt = llm.embed(torch.tensor([list(b"hello there")]))
        hidden, state = decoder_step(decoder, prompt, llm.init_state(), in_place)
        outputs = [hidden[:, -1]]
        for _ in range(tokens):
            token = llm.model.get_output_embeddings()(outputs[-1]).argmax(-1)  # (1,)
            hidden, state = decoder_step(decoder, llm.embed(token[:, None]), state, in_place)
            outputs.append(hidden[:, -1])
    return outputs, state


def test_in_place_decode_equals_the_concatenating_path(llm: LLM) -> None:
    expected, old = _decode(llm, in_place=False)
    actual, new = _decode(llm, in_place=True)
    assert new.position == old.position == len(b"hello there") + TOKENS
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, atol=EXACT, rtol=0)
    for got, want in zip(new.keys + new.values, old.keys + old.values, strict=True):
        torch.testing.assert_close(got, want, atol=EXACT, rtol=0)


def test_decode_writes_into_one_buffer_instead_of_reallocating(llm: LLM) -> None:
    """Within a block every step writes into the same storage (the old path made new tensors on every token)."""
    _, state = _decode(llm, in_place=True, tokens=1)
    storage = state.keys[0].untyped_storage().data_ptr()
    assert state.position + TOKENS < KV_BLOCK
    decoder = llm.model.get_decoder()
    with torch.no_grad():
        for _ in range(TOKENS):
            _, state = decoder_step(decoder, llm.embed(torch.tensor([[65]])), state)
            assert state.keys[0].untyped_storage().data_ptr() == storage


def test_a_forked_state_copies_on_write_and_leaves_the_other_branch_alone(llm: LLM) -> None:
    decoder = llm.model.get_decoder()
    a, b = llm.embed(torch.tensor([[1]])), llm.embed(torch.tensor([[2]]))
    with torch.no_grad():
        _, root = decoder_step(decoder, llm.embed(torch.tensor([list(b"context")])), llm.init_state())
        _, first = decoder_step(decoder, a, root)  # root was at the frontier: written in place
        first_keys = [keys.clone() for keys in first.keys]
        hidden_b, second = decoder_step(decoder, b, root)  # root is behind the frontier now: copies first
        hidden_ref, reference = decoder_step(decoder, b, root, in_place=False)
    for keys, kept in zip(first.keys, first_keys, strict=True):
        assert torch.equal(keys, kept), "the second branch overwrote the first branch's cache"
    assert second.keys[0].untyped_storage().data_ptr() != first.keys[0].untyped_storage().data_ptr()
    torch.testing.assert_close(hidden_b, hidden_ref, atol=EXACT, rtol=0)
    for got, want in zip(second.keys, reference.keys, strict=True):
        torch.testing.assert_close(got, want, atol=EXACT, rtol=0)


def test_growing_past_a_block_keeps_every_entry(llm: LLM) -> None:
    expected, old = _decode(llm, in_place=False, tokens=KV_BLOCK + 8)
    actual, new = _decode(llm, in_place=True, tokens=KV_BLOCK + 8)
    torch.testing.assert_close(actual[-1], expected[-1], atol=EXACT, rtol=0)
    torch.testing.assert_close(new.values[-1], old.values[-1], atol=EXACT, rtol=0)


def test_batched_steps_append_in_place_and_equal_single_steps(llm: LLM) -> None:
    decoder = llm.model.get_decoder()
    with torch.inference_mode():  # as the runtime's workers run it
        states = [
            decoder_step(decoder, llm.embed(torch.tensor([list(prompt)])), llm.init_state())[1]
            for prompt in (b"a short one", b"a rather longer prompt here")
        ]
        storages = [state.keys[0].untyped_storage().data_ptr() for state in states]
        inputs = llm.embed(torch.tensor([[70], [71]]))  # (2, 1, D)
        rows = [inputs[row : row + 1] for row in range(len(states))]
        alone = [decoder_step(decoder, row, state, in_place=False) for row, state in zip(rows, states, strict=True)]
        hidden, batched = batched_decoder_step(decoder, inputs, states)
    for row, (single_hidden, single_state) in enumerate(alone):
        torch.testing.assert_close(hidden[row : row + 1], single_hidden, atol=1e-5, rtol=0)
        for got, want in zip(batched[row].keys, single_state.keys, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert batched[row].keys[0].untyped_storage().data_ptr() == storages[row]


def test_a_state_serialises_only_what_it_views(llm: LLM) -> None:
    _, state = _decode(llm, in_place=True, tokens=4)
    restored = LLMState.from_bytes(state.to_bytes())
    assert restored.keys[0].shape == state.keys[0].shape
    assert restored.keys[0].untyped_storage().nbytes() < state.keys[0].untyped_storage().nbytes()
    torch.testing.assert_close(restored.keys[0], state.keys[0])
