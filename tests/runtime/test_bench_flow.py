"""`minmo bench flow` streams the same turn with the flow's cache and recomputing, chunk by chunk: both paths give
the same mel, the cache grows with the turn, and the command prints the table and the whole turn's ratio."""

from typer.testing import CliRunner

from minmo.bench.flow import run_flow_bench
from minmo.cli import app


def test_flow_bench_times_both_paths_on_the_same_turn() -> None:
    bench = run_flow_bench("tiny", chunks=3)
    assert [chunk.index for chunk in bench.chunks] == [1, 2, 3]
    assert [chunk.reply_s for chunk in bench.chunks] == [0.6, 1.6, 2.6]  # 15 tokens, then 25 a chunk, at 25 Hz
    assert all(chunk.cached_ms > 0 and chunk.recomputed_ms > 0 for chunk in bench.chunks)
    sizes = [chunk.cache_mb for chunk in bench.chunks]
    assert 0 < sizes[0] < sizes[1] < sizes[2]
    assert bench.max_difference < 1e-4


def test_flow_bench_command_prints_the_chunks_and_the_ratio() -> None:
    result = CliRunner().invoke(app, ["bench", "flow", "--config", "tiny", "--chunks", "2"])
    assert result.exit_code == 0, result.output
    assert "recomputing" in result.output and "whole turn: cached" in result.output
