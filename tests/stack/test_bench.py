"""`minmo bench turn` measures both paths in one run and prints their ratio (numbers, not assertions on speed)."""

from typer.testing import CliRunner

from minmo.bench.turn import run_bench
from minmo.cli import app


def test_turn_bench_measures_both_paths_and_every_hop(capfd):
    result = run_bench("tiny", runs=1)
    terminal = capfd.readouterr()
    assert '"level"' not in terminal.out + terminal.err, "the services' JSON logs go to a file, not the terminal"
    assert '"logger"' in result.log_path.read_text()
    assert len(result.in_process_ms) == 1 and len(result.services_ms) == 1
    assert result.in_process_ms[0] > 0 and result.services_ms[0] > 0 and result.ratio > 0
    assert set(result.hops) == {"encoder", "llm", "voicelm", "vocoder"}


def test_bench_command_is_wired():
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "turn" in result.output and "runtime" in result.output


def test_turn_bench_takes_other_first_chunk_lengths():
    result = CliRunner().invoke(app, ["bench", "turn", "--help"])
    assert result.exit_code == 0 and "--first-chunk-tokens" in result.output
