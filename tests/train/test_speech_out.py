"""The speech-out side of the recipe on `tiny`, a few steps each: the speech tokenizer, the spoken-reply data,
stage 2 (output projector + voice-token LM + flow). Loss goes down, an interrupted run resumes to the same
weights, the exported weights load into the served components, and both trainers run as two processes under
torchrun (DDP on gloo)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.interleave import VoiceSchedule
from minmo.model.speech_tokenizer import SpeechTokenizer, character_ids
from minmo.train import texts
from minmo.train.data import read_split
from minmo.train.recipe import assemble
from minmo.train.speech_out_data import SpeechOutDataConfig, build, read_replies, reply_pairs
from minmo.train.stage1 import Phase
from minmo.train.stage2 import SpeechOut, Stage2Config, export_weights, usable, voice_lm_loss
from minmo.train.stage2 import train as train_stage2
from minmo.train.tokenizer import EncoderFrames, TokenizerTrainConfig, load_tokenizer_from
from minmo.train.tokenizer import train as train_tokenizer

from .conftest import ROOT, tokenizer_config


def _ctc_loss(tokenizer: SpeechTokenizer, data: Path) -> float:
    frames_of = EncoderFrames("tiny")
    utterances = list(read_split(data, "train"))[:8]
    frames = torch.nn.utils.rnn.pad_sequence([frames_of(u) for u in utterances], batch_first=True)
    lengths = torch.tensor([frames_of(u).shape[0] for u in utterances])
    with torch.no_grad():
        return tokenizer.ctc_loss(frames, lengths, [character_ids(u.item.text) for u in utterances]).item()


def test_fsq_codes_cover_the_codebook_and_round_trip():
    cfg = TokenizerTrainConfig.from_toml(ROOT / "configs/train/tiny-tokenizer.toml").tokenizer
    tokenizer = SpeechTokenizer(cfg).eval()
    assert cfg.codebook_size == 6561 == load_config("tiny").voice_token_lm.speech_vocab
    values = torch.tensor([[-1.0] * 8, [1.0] * 8, [0.0] * 8])
    assert tokenizer.codes(values).tolist() == [0, 6560, 3280]
    codes = tokenizer.encode(torch.randn(2, 30, cfg.input_dim))
    assert codes.shape == (2, 30) and int(codes.min()) >= 0 and int(codes.max()) < 6561


def test_tokenizer_loss_goes_down_and_resumes(data: Path, tokenizer_run: Path, tmp_path: Path):
    cfg = tokenizer_config(data, tmp_path)
    before = _ctc_loss(SpeechTokenizer(cfg.tokenizer), data)
    trained = load_tokenizer_from(tokenizer_run / "export")
    assert _ctc_loss(trained, data) < before - 0.1
    assert (tokenizer_run / "loss.png").stat().st_size > 1000
    train_tokenizer(dataclasses.replace(cfg, stop_after_steps=3))
    assert load_tokenizer_from(tmp_path / "export").state_dict()  # exported at the stop
    train_tokenizer(cfg)  # resumes at step 3
    resumed = load_tokenizer_from(tmp_path / "export").state_dict()
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(resumed[name], value, msg=f"{name} differs after resuming")


def test_spoken_replies_hold_tokens_mel_and_llm_states(data: Path, speech_data: Path, model_json: str):
    replies = read_replies(speech_data)
    assert 0 < len(replies) <= 6 and {(r.prompt, r.reply) for r in replies} <= set(reply_pairs(data))
    cfg = load_config(model_json)
    for reply in replies:
        assert reply.tokens.shape[0] > 10 and int(reply.tokens.max()) < 6561, "25 Hz tokens of a spoken sentence"
        assert reply.mel.shape == (80, 2 * reply.tokens.shape[0]), "two 50 Hz mel frames per token"
        assert reply.hidden.shape == reply.embed.shape == (len(reply.reply.encode()), cfg.llm.hidden_size)
    assert all(usable(r, VoiceSchedule.from_config(cfg.voice_token_lm)) for r in replies)


def test_generated_replies_resume_and_keep_held_out_topics_apart(data: Path, tokenizer_run: Path, model_json: str,
                                                                 tmp_path: Path):
    heldout, train = texts.reply_prompts("heldout"), texts.reply_prompts("train")
    templates = len(texts.REPLY_TEMPLATES)
    assert heldout and not set(heldout) & set(train)
    assert len(heldout) % templates == 0 and len(heldout) + len(train) == len(texts.REPLY_TOPICS) * templates, (
        "every topic is wholly held out or wholly trained"
    )
    cfg = SpeechOutDataConfig(model=model_json, data=str(data), tokenizer=str(tokenizer_run / "export"),
                              out=str(tmp_path), shard_size=2, max_reply_tokens=200, generated=2, split="heldout",
                              max_generated_tokens=12)
    build(cfg)
    written = [json.loads(line) for line in (tmp_path / "generated-heldout.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in written] == heldout[:2]
    build(dataclasses.replace(cfg, generated=3))  # resumes: only the third request is answered
    more = [json.loads(line) for line in (tmp_path / "generated-heldout.jsonl").read_text().splitlines()]
    assert more[:2] == written and [row["prompt"] for row in more] == heldout[:3]
    spoken = {(r.prompt, r.reply) for r in read_replies(tmp_path)}
    assert spoken <= {(row["prompt"], row["answer"]) for row in more}, "held-out data holds generated replies only"


def _stage2_cfg(speech_data: Path, out: Path, model_json: str) -> Stage2Config:
    cfg = Stage2Config.from_toml(ROOT / "configs/train/tiny-stage2.toml")
    return dataclasses.replace(cfg, model=model_json, data=str(speech_data), out=str(out), threads=1)


def _stage2_losses(model: SpeechOut, speech_data: Path) -> tuple[float, float]:
    import random

    replies = read_replies(speech_data)[:4]
    with torch.no_grad():
        torch.manual_seed(0)
        return model.lm_loss(replies).item(), model.flow_loss(replies, 20, random.Random(0)).item()


def test_stage2_loss_goes_down_resumes_and_exports(speech_data: Path, tmp_path: Path, model_json: str):
    cfg = _stage2_cfg(speech_data, tmp_path / "run", model_json)
    model_cfg = load_config(model_json)
    cfg = dataclasses.replace(cfg, phases=(*cfg.phases, Phase("more", 6, ("projector", "voice_lm", "flow"), 3e-3)))
    fresh = SpeechOut(model_cfg)
    before = _stage2_losses(fresh, speech_data)
    train_stage2(cfg)
    export = tmp_path / "run" / "export"
    trained = SpeechOut(model_cfg)
    trained.output_projector = build_component(model_cfg, "output_projector", export)
    trained.voice_token_lm = build_component(model_cfg, "voice_token_lm", export)
    trained.flow = build_component(model_cfg, "token2wav", export).flow
    after = _stage2_losses(trained, speech_data)
    assert after[0] < before[0] - 0.05, f"voice LM loss {before[0]:.3f} -> {after[0]:.3f}"
    assert voice_lm_loss(model_json, export, speech_data, limit=4) == pytest.approx(after[0], rel=1e-4)
    assert after[1] < before[1], f"flow loss {before[1]:.3f} -> {after[1]:.3f}"
    assert set(load_file(str(export / "token2wav.safetensors"))) == {f"flow.{k}" for k in fresh.flow.state_dict()}
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000

    resumed = dataclasses.replace(cfg, out=str(tmp_path / "resumed"), stop_after_steps=5)
    train_stage2(resumed)  # stops inside the second phase
    train_stage2(dataclasses.replace(resumed, stop_after_steps=0))
    first = load_file(str(tmp_path / "run" / "checkpoint" / "weights.safetensors"))
    second = load_file(str(tmp_path / "resumed" / "checkpoint" / "weights.safetensors"))
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, msg=f"{name} differs after resuming")


def test_runs_export_what_they_trained_and_separate_parts_go_together(speech_data: Path, tmp_path: Path,
                                                                       model_json: str):
    """No seeded random weights in an export: a voice-LM run and a flow run (e.g. one per core) each export their
    own parts, and `minmo train checkpoint` puts them together into a complete speech-out folder."""
    cfg = _stage2_cfg(speech_data, tmp_path / "voice", model_json)
    voice = dataclasses.replace(cfg, phases=(Phase("voice-lm", 2, ("projector", "voice_lm"), 3e-3),))
    flow = dataclasses.replace(cfg, out=str(tmp_path / "flow"), phases=(Phase("flow", 2, ("flow",), 3e-3),))
    for run in (voice, flow):
        train_stage2(run)
    exported = {run: sorted(p.stem for p in (tmp_path / run / "export").glob("*.safetensors"))
                for run in ("voice", "flow")}
    assert exported == {"voice": ["output_projector", "voice_token_lm"], "flow": ["token2wav"]}
    assemble(tmp_path / "speech-out", [tmp_path / "voice" / "export", tmp_path / "flow" / "export"])
    together = SpeechOut(load_config(model_json))
    assert together.load_exported(tmp_path / "speech-out") == {"output_projector", "voice_token_lm", "token2wav"}
    with pytest.raises(FileNotFoundError, match=r"init folder .* does not exist"):
        train_stage2(dataclasses.replace(flow, out=str(tmp_path / "typo"), init=str(tmp_path / "no-such-export")))


def test_held_out_replies_pick_the_exported_step_and_input_dropout_trains_only(speech_data: Path, tmp_path: Path,
                                                                              model_json: str):
    cfg = dataclasses.replace(_stage2_cfg(speech_data, tmp_path / "run", model_json), heldout_data=str(speech_data),
                              heldout_limit=4, lm_input_dropout=0.2,
                              phases=(Phase("voice-lm", 6, ("projector", "voice_lm"), 3e-3),))
    train_stage2(cfg)
    measured = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())["validation"]
    assert [step for step, _ in measured] == [2, 4, 6]
    best = min(value for _, value in measured)
    exported = voice_lm_loss(model_json, tmp_path / "run" / "export", speech_data, limit=4)
    assert exported == pytest.approx(best, rel=1e-2), "export/ holds the step with the lowest held-out loss"
    model = SpeechOut(load_config(model_json))
    replies = read_replies(speech_data)[:2]
    assert model.eval().lm_loss(replies, 0.5).item() == model.lm_loss(replies).item(), "no dropout in eval mode"
    torch.manual_seed(0)
    assert model.train().lm_loss(replies, 0.5).item() != model.eval().lm_loss(replies).item()


def _torchrun(config: Path, stage: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "minmo.cli", "train", stage, "--config", str(config)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    return result


def test_tokenizer_trains_with_two_processes_under_torchrun(data: Path, tmp_path: Path):
    config = tmp_path / "tokenizer.toml"
    tiny = (ROOT / "configs/train/tiny-tokenizer.toml").read_text()
    config.write_text(tiny.replace('data = "data/tiny"', f'data = "{data}"')
                      .replace('out = "runs/tiny-tokenizer"', f'out = "{tmp_path / "run"}"')
                      .replace("steps = 6", "steps = 2"))
    _torchrun(config, "tokenizer")
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert progress["phase"] == 1 and len(progress["losses"]) == 2
    assert load_tokenizer_from(tmp_path / "run" / "export").state_dict()
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["utterances"] > 0


def test_stage2_flow_phase_from_exported_weights_with_two_processes(speech_data: Path, tmp_path: Path,
                                                                     model_json: str):
    """A flow-only run (prior loss on) that starts from exported weights, under torchrun: the flow trains, the
    voice LM and projector it did not train are exported exactly as they came in."""
    model_cfg = load_config(model_json)
    torch.manual_seed(1)
    start = SpeechOut(model_cfg)
    export_weights(start, tmp_path / "start", "a fresh model")
    config = tmp_path / "stage2.toml"
    config.write_text(
        f'model = "{model_json}"\ndata = "{speech_data}"\nout = "{tmp_path / "run"}"\ninit = "{tmp_path / "start"}"\n'
        "batch_size = 2\nflow_crop_tokens = 20\nflow_prior_weight = 1.0\nwarmup_steps = 1\ncheckpoint_every = 1\n"
        'threads = 1\n[[phases]]\nname = "flow"\nsteps = 2\ntrain = ["flow"]\nlr = 3e-3\n'
    )
    _torchrun(config, "stage2")
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert progress["phase"] == 1 and len(progress["losses"]) == 2
    for name in ("output_projector", "voice_token_lm", "token2wav"):
        before = load_file(str(tmp_path / "start" / f"{name}.safetensors"))
        after = load_file(str(tmp_path / "run" / "export" / f"{name}.safetensors"))
        same = all(torch.equal(before[key], after[key]) for key in before)
        assert same == (name != "token2wav"), f"{name}: trained {not same}"
