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


async def test_two_spoken_sessions_are_measured_and_reported_as_json_locust_csv_and_a_plot(full_stack, tmp_path):
    """The command runs its own event loop, so it runs in a thread while this loop serves the stack."""
    out, png, prefix = tmp_path / "load.json", tmp_path / "load.png", tmp_path / "run"
    args = ["load", "--server", full_stack.address("duplex"), "--sessions", "2", "--turns", "1", "--typed-share", "0"]
    args += ["--json", str(out), "--plot", str(png), "--csv", str(prefix), "--ramp-up-s", "0.2"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    level = json.loads(out.read_text())["levels"][0]
    assert level["sessions"] == 2 and level["turns_ok"] == 2 and level["turns_failed"] == {}
    first = level["first_audio_ms"]
    assert 0 < first["p50"] <= first["p95"] <= first["p99"]
    assert level["server_first_audio_ms"]["p50"] > 0  # the server's own report came with every reply
    assert level["underrun_ms_per_min"] >= 0 and set(level["barge_in_stop_ms"]) == {"p50", "p95"}
    assert png.read_bytes().startswith(b"\x89PNG")
    with (tmp_path / "run_2_stats.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == LOCUST_STATS_HEADER
    assert rows[1][1] == "first_audio" and rows[1][2] == "2" and rows[1][3] == "0"
    assert (tmp_path / "run_2_failures.csv").read_text().startswith("Method,Name,Error,Occurrences")


async def test_a_barge_in_is_measured_from_speech_onset_to_the_reply_stopping(full_stack):
    scenario = Scenario(turns=2, typed_share=0.0, barge_in_share=1.0, barge_in_after_ms=200)
    result = await run_level(LoadPlan(full_stack.address("duplex"), scenario, ramp_up_s=0), 1, load_utterances([]))
    assert result.turns_ok == 2, result.to_json()
    assert result.barge_in_stop.count == 1
    assert 0 < result.barge_in_stop.percentile(0.5) < 5000


async def test_a_typed_turn_counts_from_sending_the_text(full_stack):
    scenario = Scenario(turns=1, typed_share=1.0)
    result = await run_level(LoadPlan(full_stack.address("duplex"), scenario, ramp_up_s=0), 1, load_utterances([]))
    assert result.turns_ok == 1 and result.first_audio.count == 1 and not result.turns_failed


async def test_a_failed_turn_is_listed_with_the_session_id_the_services_logged(full_stack):
    scenario = Scenario(turns=1, typed_share=1.0, turn_timeout_s=0.001)  # no reply can come in time
    result = await run_level(LoadPlan(full_stack.address("duplex"), scenario, ramp_up_s=0), 1, load_utterances([]))
    [failure] = result.to_json()["failures"]
    assert failure["code"] == "DEADLINE_EXCEEDED" and failure["typed"] and failure["turn"] == 0
    assert failure["session_id"], "the server's session id, to find the turn in the services' logs"
