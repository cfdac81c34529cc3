"""Print benchmark results as tables (rich) that a person can read and paste into a note."""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.table import Table

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
