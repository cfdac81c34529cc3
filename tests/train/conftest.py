"""Shared data for the recipe's tests, built once per session: a small real TTS data set for `tiny`, a speech
tokenizer trained on it, and the assistant's spoken replies (stage 2's data) for a 1:1-interleave `tiny`."""

import dataclasses
from pathlib import Path

import pytest

from minmo.model.config import load_config
from minmo.train.data import DataConfig, build
from minmo.train.speech_out_data import SpeechOutDataConfig
from minmo.train.speech_out_data import build as build_speech_out
from minmo.train.tokenizer import TokenizerTrainConfig
from minmo.train.tokenizer import train as train_tokenizer
from minmo.train.voices import TRAIN_VOICES, available

ROOT = Path(__file__).resolve().parents[2]

# the fast engines when this machine has them (apt), else piper (a pip dependency)
ENGINES = ("espeak", "flite") if any(v.engine == "espeak" and available(v) for v in TRAIN_VOICES) else ("piper",)


@pytest.fixture(scope="session")
def data_config(tmp_path_factory) -> DataConfig:
    """12 training and 4 held-out-voice utterances for `tiny`."""
    out = tmp_path_factory.mktemp("data")
    return DataConfig(model="tiny", out=str(out), train_items=12, eval_items=4, eval_seen_items=0, shard_size=6,
                      max_answer_tokens=4, engines=ENGINES)


@pytest.fixture(scope="session")
def data(data_config: DataConfig) -> Path:
    return build(data_config)




def tokenizer_config(data: Path, out: Path, **changes) -> TokenizerTrainConfig:
    cfg = TokenizerTrainConfig.from_toml(ROOT / "configs/train/tiny-tokenizer.toml")
    cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, dropout=0.0))
    return dataclasses.replace(cfg, data=str(data), out=str(out), threads=1, **changes)


@pytest.fixture(scope="session")
def tokenizer_run(data: Path, tmp_path_factory) -> Path:
    return train_tokenizer(tokenizer_config(data, tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="session")
def model_json(tmp_path_factory) -> str:
    """tiny with a 1:1 interleave: its byte tokenizer has a text token per character, faster than 5:15 speaks."""
    tiny = load_config("tiny")
    path = tmp_path_factory.mktemp("config") / "tiny-1to1.json"
    voice = dataclasses.replace(tiny.voice_token_lm, text_block=1, speech_block=1)
    path.write_text(dataclasses.replace(tiny, voice_token_lm=voice).to_json())
    return str(path)


@pytest.fixture(scope="session")
def speech_data(data: Path, tokenizer_run: Path, model_json: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speech")
    cfg = SpeechOutDataConfig(model=model_json, data=str(data), tokenizer=str(tokenizer_run / "export"), out=str(out),
                              limit=6, shard_size=4, max_reply_tokens=200)
    return build_speech_out(cfg)
