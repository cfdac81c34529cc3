"""`minmo train recipe`: the whole recipe from one file, step after step (configs/train/nano-recipe.toml).

A recipe is the list of `minmo` command lines that make a checkpoint, in order: the data builders, the four stages,
the evaluations between them, and `train checkpoint`, which puts the trained files of the run folders together.
Every step resumes what is already on disk (data builders keep written shards, trainers resume their run folder and
a finished run only re-exports), so running a recipe again continues an interrupted one; `from_step` skips steps
known to be done. Each step is its own process, so one step's memory is gone before the next starts; `train ...`
steps run under torchrun with `processes` processes (DDP, gloo on CPU, NCCL on GPUs) when it is above 1.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    steps: tuple[str, ...]  # `minmo` command lines without the program name, e.g. "train stage1 --config FILE"
    processes: int = 1  # torchrun processes for the `train ...` steps (1: a plain process)

    @classmethod
    def from_toml(cls, path: str | Path) -> Recipe:
        raw = tomllib.loads(Path(path).read_text())
        recipe = cls(steps=tuple(raw.pop("steps", ())), **raw)
        if not recipe.steps:
            raise ValueError(f"{path}: a recipe needs a `steps` list of minmo command lines")
        if recipe.processes < 1:
            raise ValueError(f"{path}: processes must be at least 1, got {recipe.processes}")
        return recipe


def command_line(step: str, processes: int) -> list[str]:
    """The argv that runs one step: `python -m minmo.cli ...`, or under torchrun for a training step."""
    words = shlex.split(step)
    if words and words[0] == "train" and words[1:2] != ["checkpoint"] and processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                "-m", "minmo.cli", *words]
    return [sys.executable, "-m", "minmo.cli", *words]


def check(recipe: Recipe) -> None:
    """Raise ValueError naming the first step that is not a `minmo` command or gives it an option it does not have:
    a typo in the last step is found before the hours of the first ones, not after."""
    import typer.main

    from minmo.cli import app

    root = typer.main.get_command(app)
    for number, step in enumerate(recipe.steps, start=1):
        words, command, path = shlex.split(step), root, []
        while hasattr(command, "commands"):  # a group: the next word names its subcommand
            name = words.pop(0) if words else ""
            command = command.commands.get(name)
            path.append(name)
            if command is None:
                raise ValueError(f"step {number} ({step!r}): `minmo {' '.join(path)}` is not a command")
        known = {option for param in command.params for option in (*param.opts, *param.secondary_opts)}
        unknown = [word for word in words if word.startswith("--") and word.split("=")[0] not in known]
        if unknown:
            raise ValueError(f"step {number} ({step!r}): `minmo {' '.join(path)}` has no option {unknown[0]}")


def run(recipe: Recipe, from_step: int = 1, echo=print) -> None:
    """Run the steps from `from_step` (1-based) on, after checking every step's command line; raises `StepFailed`
    at the first step that fails."""
    if not 1 <= from_step <= len(recipe.steps):
        raise ValueError(f"from_step must be within 1..{len(recipe.steps)}, got {from_step}")
    check(recipe)
    for number, step in enumerate(recipe.steps, start=1):
        if number < from_step:
            echo(f"[{number}/{len(recipe.steps)}] skipped: {step}")
            continue
        echo(f"[{number}/{len(recipe.steps)}] minmo {step}")
        started = time.monotonic()
        env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        result = subprocess.run(command_line(step, recipe.processes), env=env)
        if result.returncode != 0:
            raise StepFailed(number, step, result.returncode)
        echo(f"[{number}/{len(recipe.steps)}] done in {time.monotonic() - started:.0f} s")


class StepFailed(RuntimeError):
    def __init__(self, number: int, step: str, returncode: int) -> None:
        super().__init__(f"step {number} failed (exit status {returncode}): minmo {step}; fix it and rerun with "
                         f"--from-step {number} (every step resumes what it had written)")
        self.number = number


def assemble(out: str | Path, sources: list[str | Path], only: set[str] | None = None) -> list[Path]:
    """Copy the weights (`*.safetensors` and the speech tokenizer's `*.json`) of `sources`, in order, into `out`: a
    later source's file replaces an earlier one's of the same name (e.g. stage 3's voice LM over stage 2's). `only`:
    just the files of these parts (file stems, e.g. {"token2wav"}). Returns the files of `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for source in map(Path, sources):
        if source.resolve() == out.resolve():
            raise ValueError(f"{source} is the checkpoint folder itself: name the exports to copy into it")
        files = sorted(file for file in [*source.glob("*.safetensors"), *source.glob("*.json")]
                       if only is None or file.stem in only)
        if not files:
            wanted = f" of {sorted(only)}" if only else ""
            raise FileNotFoundError(f"{source} holds no exported weights{wanted} (*.safetensors): did its step run?")
        for file in files:
            shutil.copy2(file, out / file.name)
    return sorted(out.iterdir())
