"""`minmo load` against the real stack (five services in this process, real gRPC, real Redis): CI-sized levels."""

from __future__ import annotations

import asyncio
import csv
import json

from typer.testing import CliRunner

from minmo.cli import app
from minmo.load.runner import LoadPlan, load_utterances, run_level
from minmo.load.stats import LOCUST_STATS_HEADER
from minmo.load.user import Scenario


async def test_two_sessions_one_spoken_turn_each_are_measured_as_the_user_feels_them(full_stack, tmp_path):
    plan = LoadPlan(full_stack.address("duplex"), Scenario(turns=1, typed_share=0.0), ramp_up_s=0.2)
    result = await run_level(plan, 2, load_utterances([]))
    assert result.turns_ok == 2 and not result.turns_failed and not result.sessions_refused
    report = result.to_json()
    first = report["first_audio_ms"]
    assert 0 < first["p50"] <= first["p95"] <= first["p99"]
    assert report["server_first_audio_ms"]["p50"] > 0  # the server's own report came with every reply
    assert report["underrun_ms_per_min"] >= 0 and result.audio_ms > 0
    stats, failures = result.write_locust_csv(tmp_path / "level")
    with stats.open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == LOCUST_STATS_HEADER
    assert rows[1][1] == "first_audio" and rows[1][2] == "2" and rows[1][3] == "0"
    assert failures.read_text().startswith("Method,Name,Error,Occurrences")


async def test_a_barge_in_is_measured_from_speech_onset_to_the_reply_stopping(full_stack):
    scenario = Scenario(turns=2, typed_share=0.0, barge_in_share=1.0, barge_in_after_ms=200)
    result = await run_level(LoadPlan(full_stack.address("duplex"), scenario, ramp_up_s=0), 1, load_utterances([]))
    assert result.turns_ok == 2, result.to_json()
    assert result.barge_in_stop.count == 1
    assert 0 < result.barge_in_stop.percentile(0.5) < 5000


async def test_load_command_writes_json_plot_and_csv(full_stack, tmp_path):
    """A typed turn, counted from sending the text. The command runs its own event loop, so it runs in a thread
    while this loop serves the stack."""
    out, png = tmp_path / "load.json", tmp_path / "load.png"
    args = ["load", "--server", full_stack.address("duplex"), "--sessions", "1", "--turns", "1", "--typed-share", "1"]
    args += ["--json", str(out), "--plot", str(png), "--csv", str(tmp_path / "run"), "--ramp-up-s", "0"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    level = json.loads(out.read_text())["levels"][0]
    assert level["sessions"] == 1 and level["turns_ok"] == 1 and level["turns_failed"] == {}
    assert set(level["first_audio_ms"]) == {"p50", "p95", "p99"} and set(level["barge_in_stop_ms"]) == {"p50", "p95"}
    assert png.read_bytes().startswith(b"\x89PNG") and (tmp_path / "run_1_stats.csv").exists()
