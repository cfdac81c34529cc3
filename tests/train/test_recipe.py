"""`minmo train recipe`: a recipe's steps run in order as their own processes (training steps under torchrun), a
typo is found before anything runs, a failing step stops the recipe and says how to resume, `from_step` skips
steps, and `train checkpoint` puts the exports together."""

import subprocess
import sys
from pathlib import Path

import pytest

from minmo.train.recipe import Recipe, StepFailed, assemble, check, command_line, run

from .conftest import ROOT


def test_the_shipped_recipes_name_real_commands_and_options():
    recipe = Recipe.from_toml(ROOT / "configs/train/nano-recipe.toml")
    check(recipe)
    stages = [step.split()[1] for step in recipe.steps if step.startswith("train ")]
    assert stages.index("stage1") < stages.index("stage2") < stages.index("stage3") < stages.index("stage4")
    for config in (word for step in recipe.steps for word in step.split() if word.endswith(".toml")):
        assert (ROOT / config).is_file(), f"{config} named by the recipe does not exist"
    with pytest.raises(ValueError, match=r"step 2 .*`minmo train stage9` is not a command"):
        check(Recipe(steps=("data build --out x", "train stage9 --config y")))
    with pytest.raises(ValueError, match=r"step 1 .*has no option --outt"):
        check(Recipe(steps=("data build --outt x",)))


def test_training_steps_run_under_torchrun_with_several_processes():
    assert command_line("train stage2 --config a.toml", 2)[1:5] == ["-m", "torch.distributed.run", "--standalone",
                                                                    "--nproc-per-node"]
    assert command_line("train stage2 --config a.toml", 1)[1:] == ["-m", "minmo.cli", "train", "stage2", "--config",
                                                                   "a.toml"]
    assert command_line("data build --out 'a b'", 2)[1:] == ["-m", "minmo.cli", "data", "build", "--out", "a b"]
    assert command_line("train checkpoint a --out b", 2)[1:3] == ["-m", "minmo.cli"], "copying is not training"


def test_a_tiny_recipe_runs_resumes_and_stops_at_a_failing_step(tmp_path: Path):
    steps = (
        f"data build --model tiny --out {tmp_path}/data --train-items 4 --eval-items 2 --eval-seen-items 0 "
        "--shard-size 4 --max-answer-tokens 4",
        f"train tokenizer --config {ROOT}/configs/train/tiny-tokenizer.toml --data {tmp_path}/data "
        f"--out {tmp_path}/tokenizer",
        f"train checkpoint {tmp_path}/tokenizer/export --out {tmp_path}/checkpoint",
    )
    lines: list[str] = []
    run(Recipe(steps=steps, processes=2), echo=lines.append)
    assert [line.split("]")[0] for line in lines if "done in" in line] == ["[1/3", "[2/3", "[3/3"]
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["speech_tokenizer.json",
                                                                           "speech_tokenizer.safetensors"]
    lines.clear()
    run(Recipe(steps=steps, processes=2), from_step=3, echo=lines.append)
    assert lines[:2] == [f"[1/3] skipped: {steps[0]}", f"[2/3] skipped: {steps[1]}"]

    broken = Recipe(steps=(*steps[:1], f"train checkpoint {tmp_path}/data/missing-export --out {tmp_path}/x"))
    with pytest.raises(StepFailed, match=r"step 2 failed .*--from-step 2") as failed:
        run(broken, from_step=2, echo=lines.append)
    assert failed.value.number == 2

    result = subprocess.run([sys.executable, "-m", "minmo.cli", "train", "recipe", "--config", str(_toml(
        tmp_path / "typo.toml", ["data build --out x --tran-items 3"]))], capture_output=True, text=True)
    assert result.returncode == 2 and "has no option --tran-items" in result.stderr


def test_a_checkpoint_takes_the_later_export_of_a_file(tmp_path: Path):
    for name, content in (("stage2", b"old"), ("stage3", b"new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "voice_token_lm.safetensors").write_bytes(content)
    (tmp_path / "stage2" / "token2wav.safetensors").write_bytes(b"flow")
    files = assemble(tmp_path / "out", [tmp_path / "stage2", tmp_path / "stage3"])
    assert [f.name for f in files] == ["token2wav.safetensors", "voice_token_lm.safetensors"]
    assert (tmp_path / "out" / "voice_token_lm.safetensors").read_bytes() == b"new"
    only = assemble(tmp_path / "flow-only", [tmp_path / "stage2"], only={"token2wav"})
    assert [f.name for f in only] == ["token2wav.safetensors"]
    with pytest.raises(FileNotFoundError, match="holds no exported weights of \\['lora'\\]"):
        assemble(tmp_path / "none", [tmp_path / "stage2"], only={"lora"})
    with pytest.raises(ValueError, match="the checkpoint folder itself"):
        assemble(tmp_path / "out", [tmp_path / "out"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no exported weights"):
        assemble(tmp_path / "out", [tmp_path / "empty"])


def _toml(path: Path, steps: list[str]) -> Path:
    path.write_text("steps = [" + ", ".join(f'"{step}"' for step in steps) + "]\n")
    return path
