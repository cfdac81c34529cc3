"""GGUF weights converted once: a transformers folder (safetensors, config, tokenizer) kept in the cache.

transformers reads a GGUF file by parsing every metadata field in Python and de-quantising every tensor: for
SmolLM2-135M (nano's LLM, 98 MB of Q4_1) that is 30-50 s on 2 CPU cores, paid by every process that loads the
LLM or its tokenizer, at every start. The first load reads the file as before and also writes what it read into
the cache: the model as float32 safetensors (exactly the de-quantised weights, so the model is the same) with its
config, the tokenizer as its own files; every later load reads those in a second or two.

The folder is named by the GGUF file's name and a digest of its content, so a new file is converted again. It lies
under `MINMO_CACHE_DIR` (default ~/.cache/minmo). Writing it is atomic (a partial folder renamed into place), so
processes starting together never read half a conversion; where the cache cannot be written (a read-only home in a
container), the GGUF file is simply read at every start, as before.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
DONE_MARKER = "converted"  # written last: a folder without it is not a finished conversion


def cache_dir() -> Path:
    """Where minmo keeps what it derives from installed files (`MINMO_CACHE_DIR`, default ~/.cache/minmo)."""
    return Path(os.environ.get("MINMO_CACHE_DIR") or Path.home() / ".cache" / "minmo")


def converted_folder(gguf: Path, part: str) -> Path | None:
    """The finished conversion of this GGUF file's `part` ("model" or "tokenizer") in the cache, or None."""
    folder = _folder(gguf, part)
    return folder if (folder / DONE_MARKER).is_file() else None


def load_model(gguf: Path, dtype: torch.dtype, **options) -> PreTrainedModel:
    """The causal LM in `gguf` (`options` go to `from_pretrained`): from its converted folder, or read from the file
    and converted for next time."""
    if (folder := converted_folder(gguf, "model")) is not None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **options)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **options)
    _write(gguf, "model", lambda folder: _save_model(model, folder))
    return model.to(dtype)


def load_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    """The tokenizer in `gguf`: from its converted folder, or read from the file and converted for next time."""
    if (folder := converted_folder(gguf, "tokenizer")) is not None:
        return AutoTokenizer.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _write(gguf, "tokenizer", tokenizer.save_pretrained)
    return tokenizer


def _folder(gguf: Path, part: str) -> Path:
    return cache_dir() / "gguf" / f"{gguf.stem}-{_digest(gguf)}" / part


@functools.cache
def _digest(gguf: Path) -> str:
    """The file's content, in short (a fraction of a second for 100 MB): a copied or reinstalled file with new
    timestamps still finds its conversion, a changed one never does."""
    digest = hashlib.sha256()
    with gguf.open("rb") as source:
        while chunk := source.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _save_model(model: PreTrainedModel, folder: Path) -> None:
    """A model read from GGUF refuses `save_pretrained`: its config (no longer marked quantised: the weights are
    de-quantised, plain float32 from here on) and its weights, which `from_pretrained` reads back."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _write(gguf: Path, part: str, save: Callable[[Path], object]) -> None:
    """`save(folder)` into a partial folder, renamed into place once complete; a cache that cannot be written is
    logged and skipped."""
    folder = _folder(gguf, part)
    partial = folder.with_name(f"{part}.partial-{os.getpid()}")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save(partial)
        (partial / DONE_MARKER).write_text(f"{gguf}\n")
        partial.rename(folder)
        log.info("converted %s's %s into %s: later loads read it from there", gguf.name, part, folder)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        if converted_folder(gguf, part) is None:  # not another process's finished conversion either
            log.warning("cannot cache %s's %s (%s): it is read from the file at every start", gguf, part, error)
