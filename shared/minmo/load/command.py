"""The `minmo load` command: run the levels, print a table, write JSON, Locust CSV and a plot."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from minmo.load.plot import plot_levels
from minmo.load.runner import LoadPlan, find_capacity, load_utterances, sweep
from minmo.load.stats import LevelResult


@dataclass(frozen=True)
class LoadOptions:
    plan: LoadPlan
    levels: list[int]
    wavs: list[Path]
    json_path: Path | None = None
    plot_path: Path | None = None
    csv_prefix: Path | None = None
    find_capacity: bool = False
    slo_ms: float = 1000.0
    slo_metric: str = "client"
    max_growth: float | None = None  # --find-capacity: p95 within this factor of the 1-session p95 too
    max_sessions: int = 64
    label: str = ""  # what was measured (machine, config), written into the JSON and the plot's title


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise ValueError(f"--sessions must be a comma-separated list of counts >= 1, got {text!r}")
    return levels


def load_command(options: LoadOptions) -> int:
    console = Console()
    utterances = load_utterances(options.wavs)

    def progress(result: LevelResult) -> None:
        summary = result.to_json()
        console.print(
            f"{result.sessions:>3} sessions: {result.turns_ok} turns ok, failed {summary['turns_failed']}, "
            f"first audio {summary['first_audio_ms']}, barge-in stop {summary['barge_in_stop_ms']}"
        )

    report: dict = {"server": options.plan.server, "label": options.label, "scenario": _scenario(options.plan)}
    if options.find_capacity:
        search = asyncio.run(
            find_capacity(
                options.plan,
                options.slo_ms,
                options.max_sessions,
                utterances,
                progress,
                options.slo_metric,
                options.max_growth,
            )
        )
        results = search.levels
        report |= search.to_json()
        what = f"p95 first audio ({options.slo_metric}) <= {options.slo_ms:g} ms"
        if options.max_growth is not None:
            what += f" and <= {options.max_growth:g}x its 1-session p95 ({search.limit_ms():.0f} ms)"
        console.print(f"capacity at {what}: [bold]{search.capacity}[/] sessions")
    else:
        results = asyncio.run(sweep(options.plan, options.levels, utterances, progress))
        report["levels"] = [result.to_json() for result in results]
    console.print(_table(results))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2) + "\n")
    if options.csv_prefix is not None:
        for result in results:
            result.write_locust_csv(options.csv_prefix.with_name(f"{options.csv_prefix.name}_{result.sessions}"))
    if options.plot_path is not None:
        title = f"minmo load {options.label}".strip()
        plot_levels(results, options.plot_path, title, options.slo_ms if options.find_capacity else None)
    failed = all(not result.turns_ok for result in results)
    return 1 if failed else 0


def _scenario(plan: LoadPlan) -> dict:
    scenario = plan.scenario
    return {
        "turns": scenario.turns,
        "barge_in_share": scenario.barge_in_share,
        "typed_share": scenario.typed_share,
        "ramp_up_s": plan.ramp_up_s,
        "turn_timeout_s": scenario.turn_timeout_s,
        "stall_timeout_s": scenario.stall_timeout_s,
        "max_reply_s": scenario.max_reply_s,
    }


def _table(results: list[LevelResult]) -> Table:
    table = Table(title="end of speech -> first audio (ms), as the user feels it")
    for column in ("sessions", "turns ok", "failed", "p50", "p95", "p99", "underrun ms/min", "barge-in p50/p95"):
        table.add_column(column, justify="right")
    for result in results:
        data = result.to_json()
        first, barge = data["first_audio_ms"], data["barge_in_stop_ms"]
        failed = ", ".join(f"{code} {count}" for code, count in data["turns_failed"].items()) or "0"
        table.add_row(
            str(result.sessions), str(result.turns_ok), failed, str(first["p50"]), str(first["p95"]),
            str(first["p99"]), str(data["underrun_ms_per_min"]), f"{barge['p50']}/{barge['p95']}",
        )  # fmt: skip
    return table
