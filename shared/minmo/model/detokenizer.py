"""Incremental detokenisation: a response's text piece by piece as its tokens arrive, without decoding the whole
response again on every token.

A token's text can depend on the tokens around it (a multi-byte UTF-8 character split over byte-level tokens, a
tokenizer that drops or adds spaces at a token's start), so each new token is decoded inside a small window: the
tokens since the last emitted piece (`prefix`), which give it its context, plus the tokens not yet emitted. The new
piece is what the window's text adds to the prefix's text. While the window's text ends in a cut character
(U+FFFD), nothing is emitted and the window grows until the character is whole. The concatenated pieces equal
`tokenizer.decode` of all the tokens, except that a character still cut at the end is left out (tests compare both
for the byte tokenizer and SmolLM2's).
"""

from __future__ import annotations

from minmo.model.tokenizer import Tokenizer

REPLACEMENT_CHARACTER = "\ufffd"  # what decode gives for a multi-byte character cut short


class IncrementalDetokenizer:
    """Feed token ids one by one with `push`; each call returns the text they complete ("" while a character is
    cut). `text` is everything emitted so far. Work per token is the window's, not the response's, length."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.text = ""
        self._prefix_start = 0  # the window: token_ids[_prefix_start:], of which [_prefix_start:_read] was emitted
        self._read = 0

    def push(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        window = self.token_ids[self._prefix_start :]
        prefix_text = self.tokenizer.decode(window[: self._read - self._prefix_start])
        window_text = self.tokenizer.decode(window)
        if window_text.endswith(REPLACEMENT_CHARACTER) or len(window_text) <= len(prefix_text):
            return ""
        piece = window_text[len(prefix_text) :]
        self._prefix_start, self._read = self._read, len(self.token_ids)
        self.text += piece
        return piece
