"""Stage 4 on `tiny`: simulated turns as the LLM hears them, the predictor's loss goes down, an interrupted run
resumes to the same weights, the served step-by-step prediction equals training's offline pass, and `evaluate`
scores held-out voices."""

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.dialogue import Dialogue
from minmo.model.tokenizer import load_tokenizer
from minmo.train.data import DataConfig, voice_of
from minmo.train.duplex_data import CLASSES, KINDS, DuplexDataConfig, build, read_turns
from minmo.train.stage1 import Phase
from minmo.train.stage4 import Stage4Config, class_weights, evaluate, predict, train, turn_loss
from minmo.train.voices import TRAIN_VOICES, synthesize


@pytest.fixture(scope="module")
def duplex_data(data: Path, data_config: DataConfig, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("duplex")
    return build(DuplexDataConfig(model="tiny", answers=str(data / "answers.jsonl"), out=str(out), train_moments=8,
                                  eval_moments=8, shard_size=4, engines=data_config.engines))


def _cfg(data: Path, out: Path, **changes) -> Stage4Config:
    base = Stage4Config(model="tiny", data=str(data), out=str(out), batch_size=4, warmup_steps=1,
                        checkpoint_every=100, phases=(Phase("predictor", 12, ("predictor",), 1e-2),))
    return dataclasses.replace(base, **changes)


def test_simulated_turns_hold_the_llm_states_of_each_segment(duplex_data: Path):
    turns = list(read_turns(duplex_data, "train"))
    assert [t.moment.kind for t in turns] == [*KINDS, *KINDS]
    width = load_config("tiny").llm.hidden_size
    for turn in turns:
        assert len(turn.hidden) == len(turn.moment.segments) == len(turn.labels())
        assert all(h.dim() == 2 and h.shape[0] > 0 and h.shape[1] == width for h in turn.hidden)
    paused = next(t for t in turns if t.moment.kind == "paused")
    assert [CLASSES[i] for i in paused.labels()] == ["keep_listening", "respond"]
    barge_in = next(t for t in turns if t.moment.kind == "barge_in")
    assert barge_in.moment.history[-1][0] == "assistant", "a barge-in happens while the reply plays"
    held_out = list(read_turns(duplex_data, "eval"))
    assert len(held_out) == 8 and not {t.moment.voice for t in held_out} & {v.id for v in TRAIN_VOICES}


def test_hidden_states_are_what_the_served_llm_computes(duplex_data: Path):
    """The data's states equal `Dialogue.append_audio`'s LLM pass (a clean moment re-run by hand)."""
    turn = next(t for t in read_turns(duplex_data, "eval") if t.moment.kind == "complete")
    cfg = load_config("tiny")
    encoder = build_component(cfg, "speech_encoder")
    dialogue = Dialogue(build_component(cfg, "llm"), build_component(cfg, "duplex_predictor"), load_tokenizer(cfg.llm))
    audio = synthesize(voice_of(turn.moment.voice), turn.moment.segments[0])
    state = dialogue.start("", list(turn.moment.history))
    hidden, _ = dialogue.listen(state, encoder(torch.from_numpy(audio)))
    torch.testing.assert_close(turn.hidden[0].float(), hidden[0].float(), atol=2e-3, rtol=1e-2)


def test_loss_goes_down_and_served_prediction_equals_training(duplex_data: Path, tmp_path: Path):
    turns = list(read_turns(duplex_data, "train"))
    weights = class_weights(turns)
    assert weights[CLASSES.index("respond")] < weights[CLASSES.index("backchannel")], "respond is twice as common"
    untrained = build_component(load_config("tiny"), "duplex_predictor")
    before = turn_loss(untrained, turns, weights).item()
    run = train(_cfg(duplex_data, tmp_path / "run"))
    trained = build_component(load_config("tiny"), "duplex_predictor", checkpoint=str(run / "export"))
    assert turn_loss(trained, turns, weights).item() < before - 0.1
    for turn in turns:
        served = torch.stack(predict(trained, turn))
        ends = torch.tensor([len(s) for s in turn.hidden]).cumsum(0) - 1
        offline = trained(torch.cat([s.float() for s in turn.hidden])[None])[0, ends].softmax(-1)
        torch.testing.assert_close(served, offline, atol=1e-5, rtol=1e-4)
    assert (run / "loss.png").stat().st_size > 1000


def test_interrupted_run_resumes_to_the_same_weights(duplex_data: Path, tmp_path: Path):
    train(_cfg(duplex_data, tmp_path / "straight"))
    train(_cfg(duplex_data, tmp_path / "resumed", stop_after_steps=5))
    train(_cfg(duplex_data, tmp_path / "resumed"))
    straight = load_file(str(tmp_path / "straight" / "export" / "duplex_predictor.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "export" / "duplex_predictor.safetensors"))
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_evaluate_scores_every_decision(duplex_data: Path, tmp_path: Path):
    report = evaluate("tiny", None, str(duplex_data), 8, tmp_path / "duplex.json")
    assert report["segments"] == 10, "8 turns, two of them paused (two segments each)"
    assert set(report["classes"]) == set(CLASSES)
    assert report["turn_taking"]["support"] == 4 and report["barge_in"]["support"] == 2
    assert 0.0 <= report["backchannel_interrupts"] <= 1.0
    assert (tmp_path / "duplex.json").is_file()
