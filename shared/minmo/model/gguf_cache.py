"""GGUF weights converted once: a transformers folder (safetensors, config, tokenizer) kept in the cache.

transformers reads a GGUF file by parsing every metadata field in Python and de-quantising every tensor: for
SmolLM2-135M (nano's LLM, 98 MB of Q4_1) that is 30-50 s on 2 CPU cores, paid by every process that loads the
LLM or its tokenizer, at every start. The first load of the model reads the file as before and also writes what it
read into a folder of float32 safetensors (exactly the de-quantised weights, so the model is the same) with the
config and the tokenizer's files; every later load, of the model or of the tokenizer alone, reads that folder in a
second or two.

The folder is named by the GGUF file's name, size and modification time, so a new file is converted again. It lies
under `MINMO_CACHE_DIR` (default ~/.cache/minmo). Writing it is atomic (a partial folder renamed into place), so
processes starting together never read half a conversion; where the cache cannot be written (a read-only home in a
container), the GGUF file is simply read at every start, as before.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
DONE_MARKER = "converted"  # written last: a folder without it is not a finished conversion


def cache_dir() -> Path:
    """Where minmo keeps what it derives from installed files (`MINMO_CACHE_DIR`, default ~/.cache/minmo)."""
    return Path(os.environ.get("MINMO_CACHE_DIR") or Path.home() / ".cache" / "minmo")


def converted_folder(gguf: Path) -> Path | None:
    """The finished conversion of this GGUF file in the cache, or None."""
    stat = gguf.stat()
    folder = cache_dir() / "gguf" / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    return folder if (folder / DONE_MARKER).is_file() else None


def load_model(gguf: Path, dtype: torch.dtype, **options) -> PreTrainedModel:
    """The causal LM in `gguf` (`options` go to `from_pretrained`): from its converted folder, or read from the file
    and converted for next time."""
    if (folder := converted_folder(gguf)) is not None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **options)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **options)
    _convert(gguf, model)
    return model.to(dtype)


def load_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    """The tokenizer in `gguf`: from its converted folder when there is one (the model's first load makes it)."""
    if (folder := converted_folder(gguf)) is not None:
        return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _convert(gguf: Path, model: PreTrainedModel) -> None:
    """Write `model` (float32, just read from `gguf`) and the file's tokenizer into the cache, atomically."""
    stat = gguf.stat()
    folder = cache_dir() / "gguf" / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):  # the weights are de-quantised: plain float32 from here on
            del config.quantization_config
        config.save_pretrained(partial)  # a model read from GGUF refuses save_pretrained: its parts, then
        save_model(model, str(partial / "model.safetensors"), metadata={"format": "pt"})
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(partial)
        (partial / DONE_MARKER).write_text(f"{gguf}\n")
        partial.rename(folder)
        log.info("converted %s into %s: later loads read the converted weights", gguf.name, folder)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        if converted_folder(gguf) is None:  # not another process's finished conversion either
            log.warning("cannot cache the converted %s (%s): it is read from the file at every start", gguf, error)
