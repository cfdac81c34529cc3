"""Text tokenizers behind one small protocol: a byte tokenizer for the `tiny` preset, and HF tokenizers.

The `tiny` preset must run with no files at all, so it tokenises UTF-8 bytes (vocab 260). Real LLMs use
the tokenizer that ships with their weights (a local HF directory, or the vocabulary inside a GGUF file).
Both render chat prompts the same way the rest of the system needs them: messages in, prompt ids out,
ending with the assistant's generation prompt.
"""

from __future__ import annotations

from typing import Protocol

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from minmo.model import gguf_cache
from minmo.model.config import LLMConfig
from minmo.model.llm import resolve_path

# Tokens that end an assistant turn or a document in the chat templates we load (ChatML, Llama 3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")


class Tokenizer(Protocol):
    """What the model and services need from a tokenizer."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation (end of turn / end of text)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Render messages ({"role", "content"}) with the chat template, ending with the generation prompt."""
        ...


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus four specials; a ChatML-like template with BOS/EOS as start/end of a message."""

    BYTES = 256
    BOS = 256  # start of a message
    EOS = 257  # end of turn
    PAD = 258
    END_OF_TEXT = 259  # end of a document
    vocab_size = 260

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self.EOS, self.END_OF_TEXT)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text; specials are dropped and a cut multi-byte character becomes U+FFFD."""
        return bytes(i for i in ids if i < self.BYTES).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        ids: list[int] = []
        for message in messages:
            ids += [self.BOS, *self.encode(f"{message['role']}\n{message['content']}"), self.EOS]
        return [*ids, self.BOS, *self.encode("assistant\n")]


class HFTokenizer:
    """A transformers tokenizer (with its chat template) behind the `Tokenizer` protocol."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        special = set(tokenizer.all_special_tokens)
        ends = {tokenizer.convert_tokens_to_ids(token) for token in END_OF_TURN_TOKENS if token in special}
        if tokenizer.eos_token_id is not None:
            ends.add(tokenizer.eos_token_id)
        assert ends, "the tokenizer defines no end-of-turn token"
        self._eos_token_ids = tuple(sorted(ends))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_token_ids

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])


def load_tokenizer(cfg: LLMConfig) -> Tokenizer:
    """The tokenizer the LLM config names: bytes, or the one stored with the weights (GGUF or HF directory)."""
    if cfg.tokenizer == "bytes":
        return ByteTokenizer()
    if cfg.tokenizer != "hf":
        raise ValueError(f"unknown tokenizer {cfg.tokenizer!r}: expected bytes or hf")
    path = resolve_path(cfg.path)
    if cfg.source == "gguf":
        return HFTokenizer(gguf_cache.load_tokenizer(path))
    return HFTokenizer(AutoTokenizer.from_pretrained(path))
