"""Incremental detokenisation gives the text a full decode gives, piece by piece, for the byte tokenizer (tiny) and
an HF byte-level BPE tokenizer (nano's SmolLM2), multi-byte characters split across tokens included."""

from __future__ import annotations

import pytest

from minmo.model.config import load_config
from minmo.model.detokenizer import REPLACEMENT_CHARACTER, IncrementalDetokenizer
from minmo.model.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

TEXTS = [
    "Hello there, how are you today?",
    "né 🇫🇷 — naïve café, 日本語のテキスト, emoji 🎉👍🏽 and Ω≈ç√∫.",
    "  leading spaces,\ttabs\nand new lines  ",
    "🎉",
]


@pytest.fixture(scope="module", params=["bytes", "smollm2"])
def tokenizer(request) -> Tokenizer:
    return ByteTokenizer() if request.param == "bytes" else load_tokenizer(load_config("nano").llm)


def _pieces(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    return [detokenizer.push(token_id) for token_id in ids]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_add_up_to_the_full_decode(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    pieces = _pieces(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT_CHARACTER not in piece for piece in pieces)


def test_characters_split_across_tokens_come_out_whole(tokenizer: Tokenizer) -> None:
    """The test texts really split characters over tokens: some token alone decodes to a cut character."""
    ids = tokenizer.encode(TEXTS[1])
    assert any(tokenizer.decode([token_id]).endswith(REPLACEMENT_CHARACTER) for token_id in ids)
    pieces = _pieces(tokenizer, ids)
    assert "" in pieces and "".join(pieces) == TEXTS[1]


def test_end_of_turn_tokens_add_nothing(tokenizer: Tokenizer) -> None:
    ids = [*tokenizer.encode("ok "), tokenizer.eos_token_ids[0], *tokenizer.encode("fine")]
    assert "".join(_pieces(tokenizer, ids)) == tokenizer.decode(ids)


def test_a_character_still_cut_at_the_end_is_held_back() -> None:
    tokenizer = ByteTokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer)
    for token_id in tokenizer.encode("ok é")[:-1]:  # the last byte of "é" never arrives
        detokenizer.push(token_id)
    assert detokenizer.text == "ok "


def test_the_work_per_token_stays_small() -> None:
    """Each push decodes only the window since the last emitted piece, not the whole response."""
    decoded: list[int] = []

    class Counting(ByteTokenizer):
        def decode(self, ids: list[int]) -> str:
            decoded.append(len(ids))
            return super().decode(ids)

    tokenizer = Counting()
    detokenizer = IncrementalDetokenizer(tokenizer)
    for token_id in tokenizer.encode("word " * 400):
        detokenizer.push(token_id)
    assert max(decoded) <= 2 and detokenizer.text == "word " * 400
