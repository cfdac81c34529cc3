"""The `minmo` command: one entry point for the model tools, the services and the whole stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="MinMo: full-duplex speech-text LLM and its serving stack.", no_args_is_help=True)
model_app = typer.Typer(help="Inspect and run the model in-process.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("params")
def model_params(config: str = typer.Option("minmo-8b", help="preset (minmo-8b, tiny, nano) or JSON file")) -> None:
    """Print {module: parameter_count} as JSON, counted on the meta device (no weights are allocated)."""
    from minmo.model.build import count_parameters
    from minmo.model.config import load_config

    typer.echo(json.dumps(count_parameters(load_config(config)), indent=2))


@app.command("chat")
def chat(
    server: Annotated[str, typer.Option(help="the Conversation service, HOST:PORT")],
    wav: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="spoken input (WAV)")] = None,
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="save the assistant's speech (16-bit WAV)")] = None,
    realtime: Annotated[bool, typer.Option(help="stream the file at real-time pace, like a microphone")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print only a JSON result at the end")] = False,
    system_prompt: Annotated[str, typer.Option(help="system prompt for the assistant")] = "",
    voice_instruction: Annotated[str, typer.Option(help='how to speak, e.g. "Speak with a tone of sadness"')] = "",
    text: Annotated[str | None, typer.Option(help="a typed user message, instead of --wav")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the session to start and for the reply")] = 30.0,
) -> None:
    """Talk to a running MinMo server: send a WAV file (or typed text), show the reply, save its speech."""
    from minmo.client.command import ChatOptions, chat_command

    options = ChatOptions(server, wav, text, out, realtime, as_json, system_prompt, voice_instruction, timeout)
    raise typer.Exit(chat_command(options))


SERVICE_NAMES = ("duplex", "encoder", "llm", "voicelm", "vocoder")


@app.command("serve")
def serve(
    service: Annotated[str, typer.Argument(help="one of: " + ", ".join(SERVICE_NAMES))],
    port: Annotated[int | None, typer.Option(help="port to listen on (default: the service's own)")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind, e.g. 0.0.0.0 in a container")] = None,
    config: Annotated[str | None, typer.Option(help="model preset (tiny, nano, minmo-8b) or JSON file")] = None,
    encoder: Annotated[str | None, typer.Option(help="duplex: encoder address(es)")] = None,
    llm: Annotated[str | None, typer.Option(help="duplex: llm address(es)")] = None,
    voicelm: Annotated[str | None, typer.Option(help="duplex: voicelm address(es)")] = None,
    vocoder: Annotated[str | None, typer.Option(help="duplex: vocoder address(es)")] = None,
    redis_url: Annotated[str | None, typer.Option(help="duplex: Redis URL (default: embedded Redis)")] = None,
) -> None:
    """Run one service. Flags override the environment variables the service reads (MINMO_*)."""
    import importlib
    import os

    if service not in SERVICE_NAMES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICE_NAMES)}")
    overrides = {
        "MINMO_PORT": port, "MINMO_HOST": host, "MINMO_CONFIG": config, "MINMO_ENCODER_ADDR": encoder,
        "MINMO_LLM_ADDR": llm, "MINMO_VOICELM_ADDR": voicelm, "MINMO_VOCODER_ADDR": vocoder, "REDIS_URL": redis_url,
    }
    os.environ.update({name: str(value) for name, value in overrides.items() if value is not None})
    importlib.import_module(f"minmo.services.{service}.main").main()


@app.command("up")
def up(
    config: Annotated[str, typer.Option(help="model preset (tiny, nano, minmo-8b) or JSON file")] = "tiny",
    port: Annotated[int, typer.Option(help="port of the public Conversation API; services use the next four")] = 50051,
    runtime: Annotated[str, typer.Option(help="model runtime: local (PyTorch in each service) or triton")] = "local",
    triton_grpc_port: Annotated[int, typer.Option(help="Triton's gRPC port (started here unless one answers)")] = 8001,
) -> None:
    """Run the whole stack: embedded Redis (unless REDIS_URL is set) and the five services. Ctrl-C stops it."""
    from minmo.serving.up import run_up

    if runtime not in ("local", "triton"):
        raise typer.BadParameter(f"--runtime must be local or triton, got {runtime!r}")
    raise typer.Exit(run_up(config, port, runtime, triton_grpc_port))


bench_app = typer.Typer(help="Benchmarks that print numbers.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("turn")
def bench_turn(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    runs: Annotated[int, typer.Option(min=1, help="measured turns per side (after one warm-up turn)")] = 5,
) -> None:
    """End of speech -> first audio: in-process pipeline vs the five services, and each hop's overhead."""
    from minmo.bench.report import print_turn_bench
    from minmo.bench.turn import run_bench

    print_turn_bench(run_bench(config, runs), config)


@bench_app.command("runtime")
def bench_runtime(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    calls: Annotated[int, typer.Option(min=1, help="encoder chunk calls per runtime")] = 100,
    turns: Annotated[int, typer.Option(min=1, help="measured turns per runtime (after one warm-up turn)")] = 3,
) -> None:
    """In-process runtime vs Triton: per-call overhead, batch sizes under load, end of speech -> first audio."""
    from minmo.bench.report import print_runtime_bench
    from minmo.bench.runtime import run_runtime_bench

    print_runtime_bench(run_runtime_bench(config, calls, turns), config)


triton_app = typer.Typer(help="Serve the models through NVIDIA Triton.", no_args_is_help=True)
app.add_typer(triton_app, name="triton")


@triton_app.command("export")
def triton_export(
    out: Annotated[Path, typer.Option(file_okay=False, help="directory to write the model repository into")],
    config: Annotated[str, typer.Option(help="model preset (tiny, nano, minmo-8b) or JSON file")] = "tiny",
    kind: Annotated[str, typer.Option(help="instance kind: cpu or gpu")] = "cpu",
    instances: Annotated[int, typer.Option(min=1, help="instances per model (per GPU with --kind gpu)")] = 1,
    checkpoint: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help="trained weights")] = None,
) -> None:
    """Write a Triton model repository: config.pbtxt + python-backend model.py per runtime model."""
    from minmo.model.config import load_config
    from minmo.triton.repository import ExportOptions, export_repository

    options = ExportOptions(kind=kind, instances=instances, checkpoint=checkpoint)
    for model_dir in export_repository(load_config(config), out, options):
        typer.echo(model_dir)


@triton_app.command("serve")
def triton_serve(
    repo: Annotated[Path, typer.Option(exists=True, file_okay=False, help="model repository (minmo triton export)")],
    grpc_port: Annotated[int, typer.Option(help="gRPC port")] = 8001,
    host: Annotated[str, typer.Option(help="address to bind")] = "0.0.0.0",
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus metrics port (default: off)")] = None,
) -> None:
    """Run the tritonserver of the nvidia-pytriton wheel on a repository until Ctrl-C or SIGTERM."""
    import signal

    from minmo.triton.server import LocalTritonServer

    server = LocalTritonServer(repo, grpc_port, host=host, metrics_port=metrics_port)
    server.start()
    typer.echo(f"triton serving {repo} on {server.url} (gRPC)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C, below
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _add_recipe_commands() -> None:
    """`minmo data`, `minmo train`, `minmo eval` (the training recipe, minmo.train)."""
    from minmo.train.cli import data_app, eval_app, train_app

    app.add_typer(data_app, name="data")
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")


_add_recipe_commands()

if __name__ == "__main__":
    app()
