"""Stage 1 on `tiny` for a few steps: real TTS data, loss goes down, an interrupted run resumes to the same
weights, and two processes train together under torchrun (DDP on gloo)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.train.data import DataConfig, build, read_split
from minmo.train.stage1 import Phase, SpeechToText, Stage1Config, make_examples, train
from minmo.train.voices import TRAIN_VOICES


def _cfg(data: Path, out: Path, **changes) -> Stage1Config:
    base = Stage1Config(
        model="tiny", data=str(data), out=str(out), batch_size=4, warmup_steps=1, checkpoint_every=100, eval_items=4,
        bf16=False, max_target_tokens=16, threads=1,
        phases=(
            Phase("projector-ctc", 2, ("projector",), 3e-3, objective="ctc"),
            Phase("projector", 2, ("projector",), 3e-3),
            Phase("lora", 2, ("projector", "lora"), 3e-3),
        ),
    )
    return dataclasses.replace(base, **changes)


def test_data_shards_hold_features_and_targets(data: Path, data_config: DataConfig):
    train_set = list(read_split(data, "train"))
    assert len(train_set) == 12 and {u.item.task for u in train_set} <= {"asr", "qa"}
    assert all(u.mel.shape[1] == 80 and u.mel.shape[0] > 50 for u in train_set), "80-bin log-mel, > 0.5 s"
    eval_set = list(read_split(data, "eval"))
    assert len(eval_set) == 4 and all(u.audio is not None and u.audio.numel() > 8000 for u in eval_set)
    assert not {u.item.voice for u in eval_set} & {v.id for v in TRAIN_VOICES}, "eval voices are held out"
    rebuilt = build(data_config)
    assert [u.item for u in read_split(rebuilt, "train")] == [u.item for u in train_set], "a rebuild resumes"


def _loss(model: SpeechToText, data: Path) -> float:
    examples = make_examples(model, list(read_split(data, "train")), 16)
    with torch.no_grad():
        return model(examples, bf16=False).item()


def test_loss_goes_down(data: Path, tmp_path: Path):
    cfg = _cfg(data, tmp_path / "run", phases=(Phase("projector", 8, ("projector",), 3e-3),))
    before = _loss(SpeechToText(load_config("tiny")), data)
    train(cfg)
    trained = SpeechToText(load_config("tiny"))
    exported = load_file(str(tmp_path / "run" / "export" / "speech_encoder.safetensors"))
    assert exported and all(name.startswith("input_projector.") for name in exported), "only what was trained"
    trained.input_projector.load_state_dict({k.removeprefix("input_projector."): v for k, v in exported.items()})
    assert _loss(trained, data) < before - 0.05
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert len(progress["losses"]) == 8 and progress["evals"][0]["heldout_loss"] > 0


def test_interrupted_run_resumes_to_the_same_weights(data: Path, tmp_path: Path):
    train(_cfg(data, tmp_path / "straight"))
    train(_cfg(data, tmp_path / "resumed", stop_after_steps=2))
    stopped = json.loads((tmp_path / "resumed" / "checkpoint" / "progress.json").read_text())
    assert (stopped["phase"], stopped["step"]) == (1, 0), "the ctc phase is complete"
    train(_cfg(data, tmp_path / "resumed", stop_after_steps=3))  # stops inside the second phase
    train(_cfg(data, tmp_path / "resumed"))
    straight = load_file(str(tmp_path / "straight" / "checkpoint" / "trainable.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoint" / "trainable.safetensors"))
    assert straight.keys() == resumed.keys() and any("lora_" in name for name in straight)
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)
    export = tmp_path / "resumed" / "export"
    assert (export / "llm_lora.safetensors").is_file()
    tiny = load_config("tiny")
    base = build_component(tiny, "llm").model.model.layers[0].self_attn.q_proj.weight
    merged = build_component(tiny, "llm", checkpoint=export).model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(base, merged), "the trained LoRA adapters are folded into the served LLM"


def test_a_new_run_starts_from_an_exported_one(data: Path, tmp_path: Path):
    first = _cfg(data, tmp_path / "first", phases=(Phase("projector", 2, ("projector",), 3e-3),
                                                   Phase("lora", 2, ("projector", "lora"), 3e-3)))
    train(first)
    exported = load_file(str(tmp_path / "first" / "export" / "speech_encoder.safetensors"))
    no_steps = _cfg(data, tmp_path / "second", init=str(tmp_path / "first" / "export"),
                    phases=(Phase("lora", 0, ("projector", "lora"), 3e-3),))
    train(no_steps)
    continued = load_file(str(tmp_path / "second" / "checkpoint" / "trainable.safetensors"))
    for name, tensor in exported.items():
        torch.testing.assert_close(continued[name], tensor, atol=0, rtol=0, msg=name)
    first_lora = load_file(str(tmp_path / "first" / "export" / "llm_lora.safetensors"))
    assert first_lora and all(torch.equal(continued[f"llm.model.{k}"], v) for k, v in first_lora.items())


def test_two_processes_with_torchrun_gloo(data: Path, tmp_path: Path):
    config = tmp_path / "ddp.toml"
    config.write_text(
        f'model = "tiny"\ndata = "{data}"\nout = "{tmp_path / "run"}"\nbatch_size = 2\nwarmup_steps = 1\n'
        "eval_items = 2\nbf16 = false\nthreads = 1\n"
        '[[phases]]\nname = "ctc"\nsteps = 1\ntrain = ["projector"]\nlr = 1e-3\nobjective = "ctc"\n'
        '[[phases]]\nname = "projector"\nsteps = 1\ntrain = ["projector"]\nlr = 1e-3\n'
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "minmo.cli", "train", "stage1", "--config", str(config)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert progress["phase"] == 2 and len(progress["losses"]) == 2
