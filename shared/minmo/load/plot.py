"""A PNG of first-audio percentiles against concurrent sessions (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from minmo.load.stats import LevelResult

PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def plot_levels(results: list[LevelResult], path: Path, title: str, slo_ms: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    sessions = [result.sessions for result in results]
    for label, fraction in PERCENTILES:
        values = [result.first_audio.percentile(fraction) for result in results]
        points = [(s, v) for s, v in zip(sessions, values, strict=True) if v is not None]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=f"first audio {label}")
    barge = [(r.sessions, r.barge_in_stop.percentile(0.95)) for r in results if r.barge_in_stop.count]
    if barge:
        axes.plot(*zip(*barge, strict=True), marker="s", linestyle="--", label="barge-in stop p95")
    if slo_ms is not None:
        axes.axhline(slo_ms, color="grey", linestyle=":", label=f"SLO {slo_ms:g} ms")
    axes.set_xscale("log", base=2)
    axes.set_xticks(sessions, [str(s) for s in sessions])
    axes.set_xlabel("concurrent sessions")
    axes.set_ylabel("ms (end of speech → first audio)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
