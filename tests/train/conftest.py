"""Shared data for the recipe's tests: a small real TTS data set for `tiny`, built once per session."""

from pathlib import Path

import pytest

from minmo.train.data import DataConfig, build
from minmo.train.voices import TRAIN_VOICES, available

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


