"""`minmo data`, `minmo train` and `minmo eval`: the recipe's commands (registered in minmo.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Make training and evaluation data.", no_args_is_help=True)
train_app = typer.Typer(help="Train MinMo's stages (configs in files; torchrun for several processes).",
                        no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a model; prints a table and writes JSON.", no_args_is_help=True)


def _overridden(cfg, data: str | None, out: str | None):
    """A trainer's config with the command line's --data and --out where given."""
    import dataclasses

    given = {"data": data, "out": out}
    return dataclasses.replace(cfg, **{key: value for key, value in given.items() if value is not None})


@data_app.command("build")
def data_build(
    model: Annotated[str, typer.Option(help="model preset or JSON (its LLM answers, its encoder features)")] = "nano",
    out: Annotated[Path, typer.Option(file_okay=False, help="output folder (resumes what is there)")] = Path(
        "data/nano"
    ),
    train_items: Annotated[int, typer.Option(min=0, help="training utterances")] = 4000,
    eval_items: Annotated[int, typer.Option(min=0, help="held-out-voice utterances")] = 200,
    eval_seen_items: Annotated[int, typer.Option(min=0, help="training-voice utterances of held-out facts")] = 60,
    shard_size: Annotated[int, typer.Option(min=1, help="utterances per shard")] = 250,
    max_answer_tokens: Annotated[int, typer.Option(min=1, help="longest typed answer of the text LLM")] = 48,
    answer_limit: Annotated[int, typer.Option(help="answer only the first N prompts (-1: all)")] = -1,
    seed: Annotated[int, typer.Option(help="seed of the utterance plan")] = 0,
) -> None:
    """Answers from the text LLM, then TTS utterances with cached features, in shards (resumable)."""
    from minmo.train.data import DataConfig, build

    cfg = DataConfig(
        model=model, out=str(out), train_items=train_items, eval_items=eval_items, eval_seen_items=eval_seen_items,
        shard_size=shard_size, max_answer_tokens=max_answer_tokens, answer_limit=answer_limit, seed=seed,
    )
    typer.echo(f"data in {build(cfg)}")


@train_app.command("stage1")
def train_stage1(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="TOML file (configs/train/*.toml)")],
    data: Annotated[str | None, typer.Option(help="override the config's data folder")] = None,
    out: Annotated[str | None, typer.Option(help="override the config's run folder")] = None,
) -> None:
    """Speech→text alignment: projector, then projector + encoder, then LoRA; resumes a run folder.

    Several processes: `torchrun --nproc-per-node N -m minmo.cli train stage1 --config FILE`.
    """
    from minmo.train.stage1 import Stage1Config, train

    typer.echo(f"run folder {train(_overridden(Stage1Config.from_toml(config), data, out))}")


@eval_app.command("asr")
def eval_asr(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "nano",
    checkpoint: Annotated[
        str | None, typer.Option(help="trained weights folder (default: the preset's own; none: untrained)")
    ] = None,
    data: Annotated[str, typer.Option(help="data folder with an `eval` split (minmo data build)")] = "data/nano",
    limit: Annotated[int, typer.Option(min=1, help="evaluation utterances")] = 60,
    real: Annotated[bool, typer.Option(help="add real recorded speech (pocketsphinx-testdata)")] = True,
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="write the JSON report here")] = None,
) -> None:
    """WER of the model's transcripts of held-out voices (and real speech), with faster-whisper's beside it."""
    from minmo.train.evaluate import evaluate, print_report

    print_report(evaluate("asr", config, checkpoint, data, limit, real), out)


@eval_app.command("qa")
def eval_qa(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "nano",
    checkpoint: Annotated[
        str | None, typer.Option(help="trained weights folder (default: the preset's own; none: untrained)")
    ] = None,
    data: Annotated[str, typer.Option(help="data folder with an `eval` split (minmo data build)")] = "data/nano",
    limit: Annotated[int, typer.Option(min=1, help="spoken questions")] = 40,
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="write the JSON report here")] = None,
) -> None:
    """Spoken questions answered right, against the same questions typed to the same LLM."""
    from minmo.train.evaluate import evaluate, print_report

    print_report(evaluate("qa", config, checkpoint, data, limit, real=False), out)


@train_app.command("tokenizer")
def train_tokenizer(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="TOML file (configs/train/*.toml)")],
    data: Annotated[str | None, typer.Option(help="override the config's data folder")] = None,
    out: Annotated[str | None, typer.Option(help="override the config's run folder")] = None,
) -> None:
    """Supervised semantic speech tokenizer: FSQ (8 dims x 3 levels) inside a CTC ASR model; resumes a run folder."""
    from minmo.train.tokenizer import TokenizerTrainConfig, train

    typer.echo(f"run folder {train(_overridden(TokenizerTrainConfig.from_toml(config), data, out))}")


@data_app.command("speech-out")
def data_speech_out(
    model: Annotated[str, typer.Option(help="model preset or JSON (its LLM, encoder, vocoder)")] = "nano",
    data: Annotated[str, typer.Option(help="stage-1 data folder whose texts become spoken replies")] = "data/nano",
    tokenizer: Annotated[str, typer.Option(help="`minmo train tokenizer` export")] = "runs/nano-tokenizer/export",
    checkpoint: Annotated[str, typer.Option(help="the LLM as stage 1 left it, e.g. with LoRA (\"\": preset's)")] = "",
    out: Annotated[Path, typer.Option(file_okay=False, help="output folder (resumes what is there)")] = Path(
        "data/nano-speech"
    ),
    limit: Annotated[int, typer.Option(help="first N (prompt, reply) pairs only (-1: all)")] = -1,
    shard_size: Annotated[int, typer.Option(min=1, help="replies per shard")] = 100,
    generated: Annotated[int, typer.Option(help="also N replies the text LLM writes to open requests (-1: all)")] = 0,
    split: Annotated[str, typer.Option(help="train, or heldout: only generated replies on held-out topics")] = "train",
) -> None:
    """The assistant's replies spoken in its voice: speech tokens, mel, and the LLM states that say them."""
    from minmo.train.speech_out_data import SpeechOutDataConfig, build

    cfg = SpeechOutDataConfig(model=model, data=data, tokenizer=tokenizer, checkpoint=checkpoint, out=str(out),
                              limit=limit, shard_size=shard_size, generated=generated, split=split)
    typer.echo(f"data in {build(cfg)}")


@train_app.command("stage2")
def train_stage2(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="TOML file (configs/train/*.toml)")],
    data: Annotated[str | None, typer.Option(help="override the config's data folder")] = None,
    out: Annotated[str | None, typer.Option(help="override the config's run folder")] = None,
) -> None:
    """Text→speech: output projector, then + voice-token LM, and token2wav's flow; resumes a run folder."""
    from minmo.train.stage2 import Stage2Config, train

    typer.echo(f"run folder {train(_overridden(Stage2Config.from_toml(config), data, out))}")


@data_app.command("speech-to-speech")
def data_speech_to_speech(
    model: Annotated[str, typer.Option(help="model preset or JSON (its encoder, LLM, vocoder)")] = "nano",
    data: Annotated[str, typer.Option(help="stage-1 data folder: its spoken questions")] = "data/nano",
    speech: Annotated[str, typer.Option(help="stage-2 data folder: replies already spoken (\"\": none)")] = (
        "data/nano-speech"
    ),
    tokenizer: Annotated[str, typer.Option(help="`minmo train tokenizer` export (speaks what --speech lacks)")] = (
        "runs/nano-tokenizer/export"
    ),
    checkpoint: Annotated[str, typer.Option(help="trained speech encoder + LLM (\"\": the preset's own)")] = "",
    out: Annotated[Path, typer.Option(file_okay=False, help="output folder (resumes what is there)")] = Path(
        "data/nano-s2s"
    ),
    limit: Annotated[int, typer.Option(help="first N spoken questions only (-1: all)")] = -1,
    shard_size: Annotated[int, typer.Option(min=1, help="turns per shard")] = 200,
) -> None:
    """Stage 3's data: the LLM's states after each spoken question, with the reply's speech tokens and mel."""
    from minmo.train.speech_to_speech_data import SpeechToSpeechDataConfig, build

    cfg = SpeechToSpeechDataConfig(model=model, data=data, speech=speech, tokenizer=tokenizer, checkpoint=checkpoint,
                                   out=str(out), limit=limit, shard_size=shard_size)
    typer.echo(f"data in {build(cfg)}")


@train_app.command("stage3")
def train_stage3(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="TOML file (configs/train/*.toml)")],
    data: Annotated[str | None, typer.Option(help="override the config's data folder")] = None,
    out: Annotated[str | None, typer.Option(help="override the config's run folder")] = None,
) -> None:
    """Speech→speech: output projector + voice-token LM on spoken turns, from stage 2's export; resumes."""
    from minmo.train.stage2 import Stage2Config
    from minmo.train.stage3 import train

    typer.echo(f"run folder {train(_overridden(Stage2Config.from_toml(config), data, out))}")


@train_app.command("recipe")
def train_recipe(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="recipe TOML (configs/train/)")],
    from_step: Annotated[int, typer.Option(min=1, help="skip the steps before this one (1-based)")] = 1,
    dry_run: Annotated[bool, typer.Option(help="print the command lines only")] = False,
) -> None:
    """The whole recipe: its minmo commands in order (data, the four stages, evaluations); reruns resume."""
    import shlex

    from minmo.train.recipe import Recipe, StepFailed, check, command_line, run

    recipe = Recipe.from_toml(config)
    try:
        check(recipe)
    except ValueError as bad:
        typer.echo(f"{config}: {bad}", err=True)
        raise typer.Exit(2) from None
    if dry_run:
        for number, step in enumerate(recipe.steps, start=1):
            typer.echo(f"{number}. {shlex.join(command_line(step, recipe.processes))}")
        return
    try:
        run(recipe, from_step, echo=typer.echo)
    except StepFailed as failed:
        typer.echo(str(failed), err=True)
        raise typer.Exit(1) from None


@train_app.command("checkpoint")
def train_checkpoint(
    sources: Annotated[list[Path], typer.Argument(exists=True, file_okay=False, help="export folders, in order")],
    out: Annotated[Path, typer.Option(file_okay=False, help="the checkpoint folder to fill")],
    only: Annotated[list[str] | None, typer.Option(help="just these parts, e.g. token2wav (repeatable)")] = None,
) -> None:
    """One checkpoint folder from the stages' exports (a later folder's file replaces an earlier one's)."""
    from minmo.train.recipe import assemble

    for file in assemble(out, list(sources), set(only) if only else None):
        typer.echo(f"{file} ({file.stat().st_size / 1e6:.1f} MB)")


@eval_app.command("tts")
def eval_tts(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "nano",
    checkpoint: Annotated[
        str | None, typer.Option(help="trained weights folder (default: the preset's own; none: untrained)")
    ] = None,
    data: Annotated[str, typer.Option(help="data folder with an `eval` split (minmo data build)")] = "data/nano",
    speech_data: Annotated[
        str | None, typer.Option(help="stage-2 data (minmo data speech-out): also judge token2wav and the vocoder")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="spoken turns (and recorded replies)")] = 20,
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="write the JSON report here")] = None,
) -> None:
    """Whisper's transcript of our spoken replies against their text (WER), their DNSMOS OVRL, and the first-audio
    time."""
    from minmo.train.evaluate import evaluate_tts, print_report

    print_report(evaluate_tts(config, checkpoint, data, limit, speech_data), out)


@eval_app.command("voice-lm-loss")
def eval_voice_lm_loss(
    checkpoint: Annotated[str, typer.Option(help="stage-2 export folder (projector, voice LM, flow)")],
    speech_data: Annotated[str, typer.Option(help="spoken replies (minmo data speech-out), e.g. a held-out split")],
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "nano",
    limit: Annotated[int, typer.Option(min=1, help="first N usable replies")] = 60,
) -> None:
    """The voice-token LM's teacher-forced speech-token cross-entropy on spoken replies (nats per token)."""
    from minmo.train.stage2 import voice_lm_loss

    typer.echo(f"voice-LM cross-entropy {voice_lm_loss(config, checkpoint, speech_data, limit):.4f} nats/token")


@eval_app.command("voice")
def eval_voice(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "nano",
    checkpoint: Annotated[
        str | None, typer.Option(help="trained weights folder (default: the preset's own; none: untrained)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="typed questions (each spoken under every instruction)")] = 6,
    judge: Annotated[bool, typer.Option(help="words per second from faster-whisper's word timestamps")] = True,
    seed: Annotated[int, typer.Option(help="speech-token sampling seed of the first question (+1 per question)")] = 0,
    out: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="write the JSON report here")] = None,
) -> None:
    """Speaking rate and pitch of spoken replies with no voice instruction and with fast/slow/high/low ones."""
    from minmo.train.voice_eval import evaluate_voice, print_voice_report

    print_voice_report(evaluate_voice(config, checkpoint, limit, judge, seed), out)


@data_app.command("duplex")
def data_duplex(
    model: Annotated[str, typer.Option(help="model preset or JSON (its speech encoder and LLM)")] = "nano",
    checkpoint: Annotated[str | None, typer.Option(help="trained weights folder (default: the preset's own)")] = None,
    answers: Annotated[str, typer.Option(help="`minmo data build`'s answers.jsonl (the assistant's replies)")] = (
        "data/nano/answers.jsonl"
    ),
    out: Annotated[Path, typer.Option(file_okay=False, help="output folder (resumes what is there)")] = Path(
        "data/nano-duplex"
    ),
    train_moments: Annotated[int, typer.Option(min=0, help="simulated user turns for training")] = 9600,
    eval_moments: Annotated[int, typer.Option(min=0, help="simulated user turns on held-out voices")] = 480,
    shard_size: Annotated[int, typer.Option(min=1, help="turns per shard")] = 200,
) -> None:
    """Simulated turn-taking moments (complete, paused, backchannel, barge-in) as the LLM hears them (stage 4)."""
    from minmo.train.duplex_data import DuplexDataConfig, build

    cfg = DuplexDataConfig(model=model, checkpoint=checkpoint, answers=answers, out=str(out),
                           train_moments=train_moments, eval_moments=eval_moments, shard_size=shard_size)
    typer.echo(f"data in {build(cfg)}")


@train_app.command("stage4")
def train_stage4(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="TOML file (configs/train/*.toml)")],
    data: Annotated[str | None, typer.Option(help="override the config's data folder")] = None,
    out: Annotated[str | None, typer.Option(help="override the config's run folder")] = None,
) -> None:
    """Duplex: the full-duplex predictor alone, on `minmo data duplex`'s simulated turns; resumes a run folder."""
    from minmo.train.stage4 import Stage4Config, train

    typer.echo(f"run folder {train(_overridden(Stage4Config.from_toml(config), data, out))}")


@eval_app.command("duplex")
def eval_duplex(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "nano",
    checkpoint: Annotated[
        str | None, typer.Option(help="trained weights folder (default: the preset's own)")
    ] = None,
    data: Annotated[str, typer.Option(help="`minmo data duplex` folder with an `eval` split")] = "data/nano-duplex",
    limit: Annotated[int, typer.Option(min=1, help="simulated user turns")] = 240,
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="write the JSON report here")] = None,
) -> None:
    """Turn-taking and barge-in F1 of the duplex predictor, and how often a backchannel would interrupt."""
    from minmo.train.stage4 import evaluate

    evaluate(config, checkpoint, data, limit, out)


@eval_app.command("turn-taking")
def eval_turn_taking(
    target: Annotated[str, typer.Option(help="the stack's Conversation address (host:port)")] = "127.0.0.1:50051",
    trials: Annotated[int, typer.Option(min=2, help="spoken turns, each said in both modes (half paused)")] = 20,
    seed: Annotated[int, typer.Option(help="which voices, sentences and pauses")] = 0,
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="write the JSON report here")] = None,
) -> None:
    """How soon a running stack takes the turn after the user's speech ends, and how often it cuts in at a pause,
    with the VAD deciding and with the trained predictor deciding (`minmo up --config nano`, then this)."""
    import asyncio
    import json

    from minmo.load.turn_taking import evaluate, print_summary, summarise

    summary = summarise(asyncio.run(evaluate(target, trials, seed)))
    print_summary(summary)
    if out is not None:
        out.write_text(json.dumps(summary, indent=2))
