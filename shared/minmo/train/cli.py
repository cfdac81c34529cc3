"""`minmo data`, `minmo train` and `minmo eval`: the recipe's commands (registered in minmo.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Make training and evaluation data.", no_args_is_help=True)
train_app = typer.Typer(help="Train MinMo's stages (configs in files; torchrun for several processes).",
                        no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a model; prints a table and writes JSON.", no_args_is_help=True)


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
    import dataclasses

    from minmo.train.stage1 import Stage1Config, train

    cfg = Stage1Config.from_toml(config)
    overrides = {key: value for key, value in (("data", data), ("out", out)) if value is not None}
    typer.echo(f"run folder {train(dataclasses.replace(cfg, **overrides))}")


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
