"""Print benchmark results as tables (rich) that a person can read and paste into a note."""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.table import Table

from minmo.bench.batch import BatchLevel
from minmo.bench.decode import DecodeLevel
from minmo.bench.flow import FlowBench
from minmo.bench.runtime import CONCURRENT_CHUNKS, RuntimeBench
from minmo.bench.state import HopState
from minmo.bench.turn import BenchResult


def _p(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]


def print_turn_bench(result: BenchResult, config: str) -> None:
    console = Console()
    table = Table(title=f"end of speech -> first audio, config {config} (ms)")
    for column in ("path", "runs", "p50", "p90", "min"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for name, values in (("in-process pipeline", result.in_process_ms), ("five services", result.services_ms)):
        table.add_row(name, str(len(values)), f"{_p(values, 0.5):.1f}", f"{_p(values, 0.9):.1f}", f"{min(values):.1f}")
    console.print(table)
    console.print(f"services / in-process (p50): [bold]{result.ratio:.2f}x[/bold]")
    hops = Table(title="per hop, as duplex saw it (ms, p50)")
    for column in ("hop", "compute", "network + queue"):
        hops.add_column(column)
    for hop, values in result.hops.items():
        hops.add_row(hop, f"{statistics.median(values['compute']):.1f}", f"{statistics.median(values['network']):.1f}")
    console.print(hops)
    if result.log_path is not None:
        console.print(f"service logs: {result.log_path}", style="dim")


def print_first_chunk_bench(results: dict[int, BenchResult], config: str) -> None:
    table = Table(title=f"end of speech -> first audio by token2wav's first chunk, config {config} (ms)")
    for column in ("first chunk (tokens)", "in-process p50", "in-process p90", "services p50", "services p90", "ratio"):
        table.add_column(column, justify="right")
    for tokens, result in results.items():
        in_process, services = result.in_process_ms, result.services_ms
        table.add_row(
            str(tokens), f"{_p(in_process, 0.5):.1f}", f"{_p(in_process, 0.9):.1f}", f"{_p(services, 0.5):.1f}",
            f"{_p(services, 0.9):.1f}", f"{result.ratio:.2f}x",
        )  # fmt: skip
    Console().print(table)


def print_runtime_bench(result: RuntimeBench, config: str) -> None:
    console = Console()
    table = Table(title=f"in-process runtime vs Triton, config {config} (ms)")
    for column in ("measure", "local p50", "local p90", "triton p50", "triton p90", "triton / local (p50)"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    rows = (
        ("encoder chunk call (0.32 s)", result.local_call_ms, result.triton_call_ms),
        ("end of speech -> first audio", result.local_first_audio_ms, result.triton_first_audio_ms),
    )
    for name, local, triton in rows:
        ratio = _p(triton, 0.5) / _p(local, 0.5)
        table.add_row(
            name, f"{_p(local, 0.5):.2f}", f"{_p(local, 0.9):.2f}", f"{_p(triton, 0.5):.2f}", f"{_p(triton, 0.9):.2f}",
            f"{ratio:.2f}x",
        )
    console.print(table)
    overhead = _p(result.triton_call_ms, 0.5) - _p(result.local_call_ms, 0.5)
    console.print(f"Triton per-call overhead (p50 difference): [bold]{overhead:.2f} ms[/bold]")
    executions = ", ".join(f"{size} x{count}" for size, count in sorted(result.batch_sizes.items()))
    console.print(f"encoder batch sizes Triton executed under {CONCURRENT_CHUNKS} concurrent chunks: {executions}")



def print_batch_bench(levels: list[BatchLevel], config: str, tokens: int, model: str = "llm") -> None:
    if model == "llm":
        title = f"llm decode throughput, config {config}, {tokens} tokens per session (tokens/s, summed)"
    else:
        title = f"{model} throughput, config {config}, {tokens} chunks per session (chunks/s, summed)"
    table = Table(title=title)
    for column in ("sessions", "unbatched", "batched", "batched / unbatched", "mean batch"):
        table.add_column(column, justify="right")
    for level in levels:
        table.add_row(
            str(level.sessions), f"{level.unbatched_tokens_per_s:.1f}", f"{level.batched_tokens_per_s:.1f}",
            f"{level.gain:.2f}x", f"{level.mean_batch:.2f}",
        )  # fmt: skip
    Console().print(table)


def print_decode_bench(levels: list[DecodeLevel], config: str, tokens: int, placement: str) -> None:
    table = Table(title=f"llm decode, one session, config {config} on {placement}, {tokens} tokens (tokens/s, median)")
    for column in ("context", "concatenating", "in place", "in place / concatenating"):
        table.add_column(column, justify="right")
    for level in levels:
        table.add_row(
            str(level.context), f"{level.concatenating_tokens_per_s:.1f}", f"{level.in_place_tokens_per_s:.1f}",
            f"{level.gain:.2f}x",
        )  # fmt: skip
    Console().print(table)


def print_flow_bench(bench: FlowBench, config: str, placement: str) -> None:
    console = Console()
    table = Table(title=f"token2wav's flow per chunk by its place in the turn, config {config} on {placement} (ms)")
    for column in ("chunk", "turn so far (s)", "cached", "recomputing", "recomputing / cached", "cache (MB)"):
        table.add_column(column, justify="right")
    for chunk in bench.chunks:
        table.add_row(
            str(chunk.index), f"{chunk.reply_s:.1f}", f"{chunk.cached_ms:.1f}", f"{chunk.recomputed_ms:.1f}",
            f"{chunk.recomputed_ms / chunk.cached_ms:.2f}x", f"{chunk.cache_mb:.1f}",
        )  # fmt: skip
    console.print(table)
    cached, recomputed = bench.total_ms(cached=True), bench.total_ms(cached=False)
    ratio = recomputed / cached
    console.print(f"whole turn: cached {cached:.0f} ms, recomputing {recomputed:.0f} ms ([bold]{ratio:.2f}x[/bold])")
    console.print(f"largest mel difference between the paths: {bench.max_difference:.1e}")


def print_state_bench(hops: list[HopState], config: str) -> None:
    console = Console(width=max(Console().width, 110))
    table = Table(title=f"per call of each hop, config {config}: state in every call (before) vs kept in the replica")
    columns = ("hop", "at", "bytes/call before", "now", "state ms/call before", "now", "state kept now")
    for column in columns:
        table.add_column(column, justify="left" if column == "hop" else "right")
    for hop in hops:
        table.add_row(
            hop.hop, f"{hop.seconds:.0f} s", _size(hop.before_bytes), _size(hop.chunk_bytes), f"{hop.blob_ms:.1f}",
            "0", _size(hop.kept_bytes),
        )
    console.print(table)
    console.print(
        "before: the state blob (torch.save) travelled in the request and back in the response and was written and "
        "read once per call; now a call carries its chunk in and its output out (encoder: a 160 ms chunk; vocoder: "
        "15 tokens), and the replica keeps the state in place, not copied (the encoder's bounded by its left "
        "context)",
        style="dim",
    )


def _size(count: int) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
