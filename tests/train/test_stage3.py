"""Stage 3 (speech→speech) on `tiny`: its data holds the LLM's states after a *spoken* question exactly as a served
spoken turn computes them, it reuses stage 2's spoken replies and speaks the ones missing, and the trainer moves
the output projector and voice-token LM only (the flow is carried over from stage 2), from stage 2's export."""

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.dialogue import Dialogue
from minmo.model.interleave import VoiceSchedule
from minmo.model.tokenizer import load_tokenizer
from minmo.train.speech_out_data import read_replies, write_shard
from minmo.train.speech_to_speech_data import SpeechToSpeechDataConfig, SpokenTurns, build, spoken_questions
from minmo.train.stage1 import Phase
from minmo.train.stage2 import SpeechOut, Stage2Config, usable_replies
from minmo.train.stage2 import train as train_stage2
from minmo.train.stage3 import train as train_stage3

from .conftest import ROOT


@pytest.fixture(scope="module")
def s2s_data(data: Path, speech_data: Path, tokenizer_run: Path, model_json: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s2s")
    return build(SpeechToSpeechDataConfig(model=model_json, data=str(data), speech=str(speech_data),
                                          tokenizer=str(tokenizer_run / "export"), out=str(out), limit=3,
                                          shard_size=2, max_reply_tokens=200))


def test_spoken_turns_hold_the_served_states_after_the_spoken_question(data: Path, s2s_data: Path, model_json: str):
    questions = spoken_questions(data, limit=3)
    turns = read_replies(s2s_data)
    assert len(turns) == len(questions) > 0, "every spoken question with a reply is a row"
    cfg = load_config(model_json)
    speech_encoder = build_component(cfg, "speech_encoder")
    dialogue = Dialogue(build_component(cfg, "llm"), build_component(cfg, "duplex_predictor"), load_tokenizer(cfg.llm))
    for question, turn in zip(questions, turns, strict=True):
        assert (turn.prompt, turn.reply) == (question.item.text, question.item.target)
        assert turn.mel.shape == (80, 2 * turn.tokens.shape[0]) and turn.tokens.shape[0] > 0
        # served: the question's audio through the encoder, the user turn closed, then the reply step by step
        with torch.no_grad():
            embeddings = speech_encoder.input_projector(speech_encoder.voice_encoder(question.mel.float()[None]))
        _, state = dialogue.listen(dialogue.start(""), embeddings)
        state = dialogue.begin_response(state)
        reply_ids = dialogue.tokenizer.encode(turn.reply)
        for position, token in enumerate(reply_ids):
            step, state = dialogue.generate_step(state)
            torch.testing.assert_close(turn.hidden[position].float(), step.hidden[0], atol=2e-2, rtol=1e-2)
            state = dataclasses.replace(state, pending_token=token)  # teacher forced, as the row
        typed = dialogue.begin_response(dialogue.append_text_turn(dialogue.start(""), "user", turn.prompt))
        step, _ = dialogue.generate_step(typed)
        assert not torch.allclose(turn.hidden[0].float(), step.hidden[0], atol=1e-2), "spoken ≠ typed states"


def test_replies_stage_two_spoke_are_reused_and_missing_ones_spoken(data: Path, speech_data: Path, s2s_data: Path,
                                                                    tokenizer_run: Path, model_json: str,
                                                                    tmp_path: Path):
    spoken = {reply.reply: reply for reply in read_replies(speech_data)}
    turn = read_replies(s2s_data)[0]
    # a question whose reply stage 2 spoke: that reply's tokens, not a new take
    question = spoken_questions(data, limit=1)[0]
    as_stage2 = dataclasses.replace(question, item=dataclasses.replace(question.item, target=next(iter(spoken))))
    turns = SpokenTurns(SpeechToSpeechDataConfig(model=model_json, speech=str(speech_data),
                                                 tokenizer=str(tokenizer_run / "export"), out=str(tmp_path)))
    row = turns(as_stage2, max_reply_tokens=200)
    assert torch.equal(row["tokens"].long(), spoken[as_stage2.item.target].tokens)
    again = turns(as_stage2, max_reply_tokens=200)  # two questions with one reply, in one shard
    write_shard(tmp_path, 0, [{"id": f"q{n}", "prompt": "", "reply": ""} for n in range(2)],
                {f"q{n}.{name}": value for n, tensors in enumerate((row, again)) for name, value in tensors.items()})
    assert turn.reply not in spoken, "the tiny data's QA replies are not among stage 2's six"
    assert turn.tokens.shape[0] > 0, "so it was spoken by the builder itself"


def test_stage3_trains_the_voice_decoder_from_stage2_and_keeps_the_flow(speech_data: Path, s2s_data: Path,
                                                                        model_json: str, tmp_path: Path):
    stage2 = Stage2Config.from_toml(ROOT / "configs/train/tiny-stage2.toml")
    stage2 = dataclasses.replace(stage2, model=model_json, data=str(speech_data), out=str(tmp_path / "s2"), threads=1)
    train_stage2(stage2)
    cfg = Stage2Config.from_toml(ROOT / "configs/train/tiny-stage3.toml")
    assert cfg.also_data == ("data/tiny-speech",)
    cfg = dataclasses.replace(cfg, model=model_json, data=str(s2s_data), also_data=(str(speech_data),),
                              out=str(tmp_path / "s3"), init=str(tmp_path / "s2" / "export"), threads=1)
    model_cfg = load_config(model_json)
    schedule = VoiceSchedule.from_config(model_cfg.voice_token_lm)
    turns = usable_replies(s2s_data, schedule)  # what the trainer learns from
    start = SpeechOut(model_cfg)
    start.load_exported(tmp_path / "s2" / "export")
    with torch.no_grad():
        before = start.lm_loss(turns).item()
    train_stage3(cfg)
    trained = SpeechOut(model_cfg)
    trained.load_exported(tmp_path / "s3" / "export")
    with torch.no_grad():
        after = trained.lm_loss(turns).item()
    assert after < before - 0.05, f"voice LM loss on spoken turns {before:.3f} -> {after:.3f}"
    flows = [load_file(str(tmp_path / run / "export" / "token2wav.safetensors")) for run in ("s2", "s3")]
    assert flows[0].keys() == flows[1].keys() and all(torch.equal(flows[0][k], flows[1][k]) for k in flows[0])
    assert (tmp_path / "s3" / "loss.png").stat().st_size > 1000

    with pytest.raises(ValueError, match="not \\['flow'\\]"):
        train_stage3(dataclasses.replace(cfg, phases=(Phase("flow", 2, ("flow",), 1e-3),)))
    with pytest.raises(ValueError, match="init"):
        train_stage3(dataclasses.replace(cfg, init=""))
