"""`minmo convert --from hf`: a Hugging Face Qwen2 directory is checked (sizes, chat template) and linked as
`<checkpoint>/llm`, where an `hf` LLM with no path is built from; mismatches are refused with what differs.

The directory is a tiny random Qwen2 with a word-level tokenizer carrying Qwen2.5's ChatML template (the
template MinMo's dialogue prompts are rendered with), made in the test: no model hub here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.convert import convert_directory

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _hf_directory(path: Path, chat_template: str | None) -> Path:
    cfg = load_config("tiny")
    build_component(cfg, "llm").model.save_pretrained(path)
    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "hello": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="<|im_end|>")
    fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


def test_qwen_directory_is_checked_linked_and_loaded(tmp_path: Path) -> None:
    source = _hf_directory(tmp_path / "qwen", CHATML)
    cfg = load_config("tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, source="hf", path=""))
    written = convert_directory("hf", source, tmp_path / "out", cfg)
    assert written == [tmp_path / "out" / "llm"] and written[0].resolve() == source.resolve()
    llm = build_component(cfg, "llm", checkpoint=tmp_path / "out")
    reference = build_component(load_config("tiny"), "llm")
    theirs = reference.model.state_dict()
    for name, ours in llm.model.state_dict().items():
        assert torch.equal(ours, theirs[name]), name


def test_missing_chat_template_is_refused(tmp_path: Path) -> None:
    source = _hf_directory(tmp_path / "base", None)
    with pytest.raises(ValueError, match="no chat template"):
        convert_directory("hf", source, tmp_path / "out", load_config("tiny"))


def test_other_sizes_are_refused(tmp_path: Path) -> None:
    source = _hf_directory(tmp_path / "qwen", CHATML)
    with pytest.raises(ValueError, match=r"hidden_size.*3584"):
        convert_directory("hf", source, tmp_path / "out", load_config("minmo-public"))
