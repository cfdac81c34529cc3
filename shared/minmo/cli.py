"""The `minmo` command: one entry point for the model tools, the services and the whole stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="MinMo: full-duplex speech-text LLM and its serving stack.", no_args_is_help=True)
model_app = typer.Typer(
    help="Inspect the model: a config as JSON, parameters per paper module.", no_args_is_help=True
)
app.add_typer(model_app, name="model")


@model_app.command("params")
def model_params(config: str = typer.Option("minmo-8b", help="preset (minmo-8b, tiny, nano) or JSON file")) -> None:
    """Print {module: parameter_count} as JSON, counted on the meta device (no weights are allocated)."""
    from minmo.model.build import count_parameters
    from minmo.model.config import load_config

    typer.echo(json.dumps(count_parameters(load_config(config)), indent=2))


@model_app.command("config")
def model_config(config: str = typer.Option("tiny", help="preset (minmo-8b, tiny, nano) or JSON file")) -> None:
    """Print a config as JSON: save it, edit it, and pass the file to --config (minmo up, serve, bench)."""
    from minmo.model.config import load_config

    try:
        typer.echo(load_config(config).to_json())
    except ValueError as error:
        typer.secho(f"error: {error}", err=True, fg="red")
        raise typer.Exit(1) from None


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
    mic: Annotated[bool, typer.Option("--mic", help="talk live: microphone in, speaker out, until Ctrl-C")] = False,
    tls_ca: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="CA certificate (PEM): connect over TLS")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="MINMO_API_KEY", help="API key for the server")] = None,
    voice_prompt: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="a 3-30 s WAV of the voice the assistant should mimic"),
    ] = None,
) -> None:
    """Talk to a running MinMo server: live (--mic), a WAV file, or typed text; show the reply, save its speech."""
    from minmo.client.command import ChatOptions, chat_command

    options = ChatOptions(
        server, wav, text, out, realtime, as_json, system_prompt, voice_instruction, timeout, mic, tls_ca, api_key,
        voice_prompt,
    )
    raise typer.Exit(chat_command(options))


@app.command("web")
def web(
    server: Annotated[str, typer.Option(help="the Conversation service, HOST:PORT")] = "127.0.0.1:50051",
    port: Annotated[int, typer.Option(help="port of the web page")] = 8080,
    host: Annotated[str, typer.Option(help="address to bind (the microphone needs localhost or https)")] = "127.0.0.1",
) -> None:
    """Talk to MinMo in a browser: serves a page (microphone in, speech out, barge-in) and its WebSocket bridge."""
    from minmo.serving.up import port_is_free
    from minmo.web.bridge import WebSettings, run_web

    if not port_is_free(port, host):
        message = f"error: port {port} is in use: stop what listens there or choose another with --port"
        typer.secho(message, err=True, fg="red")
        raise typer.Exit(1)
    typer.echo(f"MinMo web page: http://{host}:{port}/  (talking to {server}; Ctrl-C stops it)")
    raise typer.Exit(run_web(WebSettings(server=server, host=host, port=port)))


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

    from minmo.serving.settings import SettingsError

    if service not in SERVICE_NAMES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICE_NAMES)}")
    overrides = {
        "MINMO_PORT": port, "MINMO_HOST": host, "MINMO_CONFIG": config, "MINMO_ENCODER_ADDR": encoder,
        "MINMO_LLM_ADDR": llm, "MINMO_VOICELM_ADDR": voicelm, "MINMO_VOCODER_ADDR": vocoder, "REDIS_URL": redis_url,
    }
    os.environ.update({name: str(value) for name, value in overrides.items() if value is not None})
    try:
        importlib.import_module(f"minmo.services.{service}.main").main()
    except (OSError, SettingsError) as error:  # a port in use, a malformed MINMO_* variable: one line, not a traceback
        typer.secho(f"error: {service} did not start: {error}", err=True, fg="red")
        raise typer.Exit(1) from None


@app.command("convert")
def convert(
    source: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="the downloaded checkpoint directory")],
    kind: Annotated[str, typer.Option("--from", help="what SOURCE holds: cosyvoice2 | sensevoice | hf (Qwen2.5)")],
    out: Annotated[Path, typer.Option(file_okay=False, help="directory for our <component>.safetensors files")],
    config: Annotated[str, typer.Option(help="model preset or JSON file the weights must fit")] = "minmo-8b",
) -> None:
    """Convert public weights (CosyVoice 2, SenseVoiceSmall, a Qwen2.5 directory) into MinMo's checkpoint layout,
    checking every name and shape."""
    from minmo.model.config import load_config
    from minmo.model.convert import convert_directory

    try:
        written = convert_directory(kind, source, out, load_config(config))
    except (ValueError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from error
    for path in written:
        typer.echo(path)


@app.command("up")
def up(
    config: Annotated[str, typer.Option(help="model preset (nano, tiny, minmo-8b) or JSON file")] = "nano",
    port: Annotated[int, typer.Option(help="port of the public Conversation API; services use the next four")] = 50051,
    runtime: Annotated[str, typer.Option(help="model runtime: local (PyTorch in each service) or triton")] = "local",
    triton_grpc_port: Annotated[int, typer.Option(help="Triton's gRPC port (started here unless one answers)")] = 8001,
    tls: Annotated[bool, typer.Option(help="TLS at the front door and mTLS between services (throwaway CA)")] = False,
    checkpoint: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="weights directory (minmo convert, training)")
    ] = None,
) -> None:
    """Run the whole stack: embedded Redis (unless REDIS_URL is set) and the five services. Ctrl-C stops it."""
    from minmo.serving.up import run_up

    if runtime not in ("local", "triton"):
        raise typer.BadParameter(f"--runtime must be local or triton, got {runtime!r}")
    raise typer.Exit(run_up(config, port, runtime, triton_grpc_port, tls, str(checkpoint) if checkpoint else None))


@app.command("api-key")
def api_key(
    name: Annotated[str, typer.Argument(help="who the key is for (a word, no spaces)")],
    sessions: Annotated[int, typer.Option(min=0, help="sessions the key may hold open per duplex replica")] = 4,
) -> None:
    """Make a new API key: prints the key (give it to the client, once) and the line to add to MINMO_API_KEYS_FILE
    (which stores only the key's SHA-256)."""
    from minmo.serving.auth import key_digest, new_key

    if not name or any(char.isspace() or char == "#" for char in name):
        raise typer.BadParameter("the name must be one word without '#'")
    key = new_key()
    typer.echo(f"key:  {key}")
    typer.echo(f"line: {name} {key_digest(key)} {sessions}")


@app.command("fuzz")
def fuzz(
    inputs: Annotated[int, typer.Option(min=5, help="fuzzed calls, spread over every RPC")] = 10_000,
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    probe_turns: Annotated[int, typer.Option(min=2, help="turns of the probe session before the fuzzing")] = 10,
    seed: Annotated[int, typer.Option(help="0: the same inputs every run; another value: another sample")] = 0,
    oversized_turns: Annotated[int, typer.Option(min=0, help="then: turns of the largest accepted inputs")] = 10,
) -> None:
    """Fuzz every RPC of a stack of separate processes; print inputs, process deaths, UNKNOWN/INTERNAL count and a
    concurrent session's p95 first audio while fuzzed vs unloaded (needs the dev extras: hypothesis)."""
    from rich.console import Console

    from minmo.reliability.runs import print_fuzz, run_fuzz

    figures = run_fuzz(inputs, config, probe_turns, seed, oversized_turns)
    print_fuzz(figures, Console())
    raise typer.Exit(1 if figures.deaths or figures.forbidden else 0)


@app.command("faults")
def faults(
    sessions: Annotated[int, typer.Option(min=1, help="concurrent sessions taking turns")] = 10,
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
) -> None:
    """kill -9 one replica of each model service (two each) under concurrent sessions (each listening to its replies
    in real time), then Redis (AOF); print sessions lost, turns failed per kill, each session's wait for audio after
    each kill (p50/max), recovery time, session keys kept, history entries lost and unanswered history turns."""
    from rich.console import Console

    from minmo.reliability.runs import print_faults, run_faults

    print_faults(run_faults(sessions, config), Console())


bench_app = typer.Typer(help="Benchmarks that print numbers.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("turn")
def bench_turn(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    runs: Annotated[int, typer.Option(min=1, help="measured turns per side (after one warm-up turn)")] = 5,
    first_chunk_tokens: Annotated[
        list[int] | None,
        typer.Option(min=1, help="also measure both sides with token2wav's first chunk this long (repeatable)"),
    ] = None,
) -> None:
    """End of speech -> first audio: in-process pipeline vs the five services, and each hop's overhead; with
    --first-chunk-tokens, the same again for each other first-chunk length (e.g. 25, the chunk before MinMo's 15)."""
    from minmo.bench.report import print_first_chunk_bench, print_turn_bench
    from minmo.bench.turn import run_bench, run_first_chunk_bench

    print_turn_bench(run_bench(config, runs), config)
    if first_chunk_tokens:
        print_first_chunk_bench(run_first_chunk_bench(config, runs, first_chunk_tokens), config)


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


@bench_app.command("state")
def bench_state(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "minmo-8b",
    seconds: Annotated[float, typer.Option(min=1, help="seconds into the utterance / reply when measured")] = 10.0,
) -> None:
    """Encoder and vocoder hops: bytes per call and state handling, state in every call (before) vs kept (now)."""
    from minmo.bench.report import print_state_bench
    from minmo.bench.state import run_state_bench

    print_state_bench(run_state_bench(config, seconds), config)


@app.command("load")
def load(
    server: Annotated[str, typer.Option(help="the Conversation service, HOST:PORT")],
    sessions: Annotated[str, typer.Option(help="concurrent sessions per level, comma-separated")] = "1,2,4,8",
    turns: Annotated[int, typer.Option(min=1, help="turns each simulated user holds")] = 3,
    as_json: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="write the levels as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(dir_okay=False, help="write a PNG of percentiles vs sessions")] = None,
    csv: Annotated[Path | None, typer.Option(help="Locust-compatible CSV prefix (PREFIX_<n>_stats.csv, ...)")] = None,
    wav: Annotated[list[Path] | None, typer.Option(exists=True, help="speech WAVs or folders (else synthetic)")] = None,
    find_capacity: Annotated[bool, typer.Option(help="search the most sessions whose p95 meets --slo-ms")] = False,
    slo_ms: Annotated[float, typer.Option(help="p95 end of speech -> first audio SLO for --find-capacity")] = 1000.0,
    max_sessions: Annotated[int, typer.Option(min=1, help="--find-capacity stops here")] = 64,
    max_growth: Annotated[float, typer.Option(min=0, help="--find-capacity: a level's p95 must also stay within this "
                                              "factor of the 1-session p95 (admitted sessions keep their latency); "
                                              "0: the SLO alone")] = 0.0,
    slo_metric: Annotated[str, typer.Option(help="client: from the user's last speech sample; server: from duplex's "
                                            "end-of-speech decision (its LatencyReport)")] = "client",
    barge_in_share: Annotated[float, typer.Option(min=0, max=1, help="share of turns that barge in")] = 0.25,
    typed_share: Annotated[float, typer.Option(min=0, max=1, help="share of turns that are typed")] = 0.2,
    ramp_up_s: Annotated[float, typer.Option(min=0, help="the last user of a level starts this much later")] = 2.0,
    turn_timeout_s: Annotated[float, typer.Option(min=1, help="a reply not finished by then fails")] = 60.0,
    seed: Annotated[int, typer.Option(help="seeds each user's choices (typed, barge-in, which utterance)")] = 0,
    label: Annotated[str, typer.Option(help="what was measured (machine, config), kept in the JSON and plot")] = "",
) -> None:
    """Real full-duplex sessions at real-time pace, level by level: first audio, underruns, barge-in, errors."""
    from minmo.load.command import LoadOptions, load_command, parse_levels
    from minmo.load.runner import LoadPlan
    from minmo.load.user import Scenario

    scenario = Scenario(
        turns=turns, barge_in_share=barge_in_share, typed_share=typed_share, turn_timeout_s=turn_timeout_s, seed=seed
    )
    try:
        levels = parse_levels(sessions)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    if slo_metric not in ("client", "server"):
        raise typer.BadParameter(f"--slo-metric must be client or server, got {slo_metric!r}")
    options = LoadOptions(
        plan=LoadPlan(server, scenario, ramp_up_s),
        levels=levels,
        wavs=list(wav or []),
        json_path=as_json,
        plot_path=plot,
        csv_prefix=csv,
        find_capacity=find_capacity,
        slo_ms=slo_ms,
        slo_metric=slo_metric,
        max_growth=max_growth or None,
        max_sessions=max_sessions,
        label=label,
    )
    raise typer.Exit(load_command(options))


@bench_app.command("batch")
def bench_batch(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    sessions: Annotated[str, typer.Option(help="concurrent sessions per level, comma-separated")] = "1,4,8",
    tokens: Annotated[int, typer.Option(min=1, help="tokens each session generates per level")] = 32,
    max_size: Annotated[int, typer.Option(min=2, help="MINMO_BATCH_MAX_SIZE of the batched runs")] = 8,
    window_ms: Annotated[float, typer.Option(min=0, help="MINMO_BATCH_WINDOW_MS of the batched runs")] = 2.0,
    repeats: Annotated[int, typer.Option(min=1, help="runs per level and mode (the median is reported)")] = 3,
    model: Annotated[str, typer.Option(help="llm (decode tokens/s), encoder or token2wav (chunks/s)")] = "llm",
) -> None:
    """A model's throughput summed over sessions with the batching worker off and on, in process: the llm's decode
    tokens/s, or the encoder's / token2wav's chunks/s (--tokens: chunks per session)."""
    from minmo.bench.batch import run_batch_bench
    from minmo.bench.report import print_batch_bench
    from minmo.load.command import parse_levels
    from minmo.runtime.batching import BatchSettings

    batching = BatchSettings(max_size, window_ms)
    levels = run_batch_bench(config, parse_levels(sessions), tokens, batching, repeats, model)
    print_batch_bench(levels, config, tokens, model)


@bench_app.command("decode")
def bench_decode(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    contexts: Annotated[str, typer.Option(help="context lengths (positions) to decode after, comma-separated")] = (
        "64,1024"
    ),
    tokens: Annotated[int, typer.Option(min=1, help="decode steps timed per run")] = 64,
    repeats: Annotated[int, typer.Option(min=1, help="runs per context and path (the median is reported)")] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (as MINMO_DEVICE)")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto (as MINMO_DTYPE)")] = "auto",
) -> None:
    """One session's LLM decode tokens/s: the in-place KV cache vs concatenating it per token, in one run."""
    from minmo.bench.decode import run_decode_bench
    from minmo.bench.report import print_decode_bench
    from minmo.load.command import parse_levels
    from minmo.model.placement import Placement, PlacementError

    try:
        placement = Placement(device, dtype)
    except PlacementError as error:
        raise typer.BadParameter(str(error)) from None
    levels = run_decode_bench(config, parse_levels(contexts), tokens, repeats, placement)
    print_decode_bench(levels, config, tokens, f"{device} {dtype}")


@bench_app.command("flow")
def bench_flow(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "nano",
    chunks: Annotated[int, typer.Option(min=2, help="chunks of the turn (the first + lookahead, then 25 tokens)")] = 20,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (as MINMO_DEVICE)")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto (as MINMO_DTYPE)")] = "auto",
) -> None:
    """token2wav's flow per chunk by its place in the turn: with its cache vs recomputing the turn so far (CosyVoice
    2's way), in one run."""
    from minmo.bench.flow import run_flow_bench
    from minmo.bench.report import print_flow_bench
    from minmo.model.placement import Placement, PlacementError

    try:
        placement = Placement(device, dtype)
    except PlacementError as error:
        raise typer.BadParameter(str(error)) from None
    print_flow_bench(run_flow_bench(config, chunks, placement), config, f"{device} {dtype}")


@bench_app.command("first-audio")
def bench_first_audio(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    sessions: Annotated[str, typer.Option(help="concurrent sessions per level, comma-separated")] = "1,8",
    runs: Annotated[int, typer.Option(min=1, help="responses per session and level")] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (as MINMO_DEVICE)")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto (as MINMO_DTYPE)")] = "auto",
    as_json: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="also write the numbers here")] = None,
) -> None:
    """Decision to respond -> first audio (llm -> voice LM -> token2wav in process), p50/p95 per session count."""
    import json

    from rich.console import Console
    from rich.table import Table

    from minmo.bench.first_audio import levels_as_json, run_first_audio_bench
    from minmo.load.command import parse_levels
    from minmo.model.placement import Placement, PlacementError

    try:
        placement = Placement(device, dtype)
    except PlacementError as error:
        raise typer.BadParameter(str(error)) from None
    levels = run_first_audio_bench(config, parse_levels(sessions), runs, placement)
    table = Table(title=f"decision -> first audio, config {config} on {device} {dtype} (ms)")
    for column in ("sessions", "responses", "p50", "p95"):
        table.add_column(column, justify="right")
    for level in levels:
        table.add_row(
            str(level.sessions), str(len(level.first_audio_ms)), f"{level.percentile(0.5):.1f}",
            f"{level.percentile(0.95):.1f}",
        )  # fmt: skip
    Console().print(table)
    if as_json is not None:
        as_json.write_text(json.dumps(levels_as_json(levels, config, placement), indent=2))


@bench_app.command("prefill")
def bench_prefill(
    config: Annotated[str, typer.Option(help="model preset or JSON file")] = "tiny",
    rounds: Annotated[int, typer.Option(min=1, help="rounds; each runs every mode in turn")] = 4,
    turns: Annotated[int, typer.Option(min=2, help="probe turns per mode and round")] = 10,
    tokens: Annotated[int, typer.Option(min=1, help="tokens of each probe reply")] = 24,
    chars: Annotated[int, typer.Option(min=1, help="characters of the heavy session's prompts")] = 1000,
    slice_tokens: Annotated[int, typer.Option(min=1, help="MINMO_PREFILL_TOKENS of the sliced mode")] = 128,
) -> None:
    """A session's turn time beside one sending the largest inputs: long prefills at once vs in slices, in process."""
    from rich.console import Console

    from minmo.bench.prefill import print_prefill_bench, run_prefill_bench

    modes = run_prefill_bench(config, rounds, turns, tokens, chars, slice_tokens)
    print_prefill_bench(modes, Console(), chars, slice_tokens)


triton_app = typer.Typer(help="Serve the models through NVIDIA Triton.", no_args_is_help=True)
app.add_typer(triton_app, name="triton")


@triton_app.command("export")
def triton_export(
    out: Annotated[Path, typer.Option(file_okay=False, help="directory to write the model repository into")],
    config: Annotated[str, typer.Option(help="model preset (tiny, nano, minmo-8b) or JSON file")] = "tiny",
    kind: Annotated[str, typer.Option(help="instance kind: cpu or gpu")] = "cpu",
    instances: Annotated[int, typer.Option(min=1, help="instances per model (per GPU with --kind gpu)")] = 1,
    checkpoint: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help="trained weights")] = None,
    dtype: Annotated[str, typer.Option(help="the models' float type: float32, bfloat16, float16 or auto")] = "auto",
) -> None:
    """Write a Triton model repository: config.pbtxt + python-backend model.py per runtime model. With --kind gpu
    each instance builds its model on the GPU Triton gives it, in --dtype."""
    from minmo.model.config import load_config
    from minmo.triton.repository import ExportOptions, export_repository

    options = ExportOptions(kind=kind, instances=instances, checkpoint=checkpoint, dtype=dtype)
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


@app.command("health")
def health(
    server: Annotated[str, typer.Option(help="the service to ask, HOST:PORT")],
    service: Annotated[str, typer.Option(help='gRPC service name to ask about ("": the whole server)')] = "",
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 5.0,
    tls_ca: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="CA certificate (PEM)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="client certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="client key (PEM)")] = None,
    tls_server_name: Annotated[str | None, typer.Option(help="name the server certificate must carry")] = None,
) -> None:
    """Ask a service's grpc.health.v1; exit 0 when it is SERVING (the chart's probe when TLS is on)."""
    from minmo.client.health import HealthQuery, check_health

    status = check_health(HealthQuery(server, service, timeout, tls_ca, tls_cert, tls_key, tls_server_name))
    typer.echo(status)
    raise typer.Exit(0 if status == "SERVING" else 1)


k8s_app = typer.Typer(help="Kubernetes: the Helm chart and running releases.", no_args_is_help=True)
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("schema")
def k8s_schema(
    chart: Annotated[Path, typer.Option(exists=True, file_okay=False, help="chart directory")] = Path(
        "deploy/helm/minmo"
    ),
) -> None:
    """Regenerate the chart's values.schema.json from its commented values.yaml."""
    from minmo.k8s.schema import write_schema

    typer.echo(write_schema(chart))


@k8s_app.command("check")
def k8s_check(
    release: Annotated[str, typer.Option(help="Helm release name")],
    namespace: Annotated[str, typer.Option(help="namespace of the release")] = "default",
    context: Annotated[str | None, typer.Option(help="kubeconfig context (default: the current one)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Ready replicas, ready endpoints and autoscaler state of each component; exit 1 when something is off."""
    from minmo.k8s.check import fetch_report
    from minmo.k8s.console import api_client, print_report

    report = fetch_report(release, namespace, api_client(context))
    if as_json:
        typer.echo(report.to_json())
    else:
        print_report(report)
    raise typer.Exit(0 if report.healthy else 1)


def _add_recipe_commands() -> None:
    """`minmo data`, `minmo train`, `minmo eval` (the training recipe, minmo.train)."""
    from minmo.train.cli import data_app, eval_app, train_app

    app.add_typer(data_app, name="data")
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")


_add_recipe_commands()

if __name__ == "__main__":
    app()
