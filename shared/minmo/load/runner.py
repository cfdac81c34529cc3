"""Load levels, sweeps and the capacity search behind `minmo load`.

A level ramps its users up (starts spread over `ramp_up_s`), holds them for their turns, and ramps down as each
finishes its last turn; the whole level is bounded by a deadline, after which unfinished turns count as
DEADLINE_EXCEEDED. Levels of a sweep run one after another with a pause, so one level's tail does not load the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minmo.audio.synthetic import utterance
from minmo.client.wav import FALLBACK_INPUT_RATE, load_wav
from minmo.load.stats import Latencies, LevelResult
from minmo.load.user import (
    CLIENT_TIMEOUT,
    SAMPLE_RATE,
    Scenario,
    SessionRecord,
    SimulatedUser,
    TurnRecord,
    Utterance,
)

SYNTHETIC_UTTERANCES = 4
SETTLE_S = 2.0  # pause between levels
LEVEL_MARGIN_S = 30.0  # on top of turns x turn timeout: session start, ramp, end of session


@dataclass(frozen=True)
class LoadPlan:
    server: str
    scenario: Scenario = field(default_factory=Scenario)
    ramp_up_s: float = 2.0  # the last user of a level starts this long after the first
    settle_s: float = SETTLE_S


def load_utterances(paths: list[Path]) -> list[Utterance]:
    """The user's speech: WAV files (a directory means every *.wav in it), else synthetic speech-like turns."""
    files = sorted(f for p in paths for f in (sorted(p.glob("*.wav")) if p.is_dir() else [p]))
    if not paths:
        return [Utterance.from_samples(utterance(seed=seed, lead_s=0.3)) for seed in range(SYNTHETIC_UTTERANCES)]
    if not files:
        raise ValueError(f"no WAV files in {', '.join(map(str, paths))}")
    utterances = []
    for path in files:
        audio = load_wav(path)
        if audio.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{path}: {audio.sample_rate} Hz; the load generator sends {FALLBACK_INPUT_RATE} Hz")
        utterances.append(Utterance.from_samples(np.asarray(audio.samples, dtype=np.float32)))
    return utterances


async def run_level(plan: LoadPlan, sessions: int, utterances: list[Utterance]) -> LevelResult:
    """`sessions` users at once against `plan.server`; returns what they felt."""
    scenario = plan.scenario
    users = [SimulatedUser(plan.server, scenario, utterances, index) for index in range(sessions)]
    spacing = plan.ramp_up_s / max(1, sessions - 1) if sessions > 1 else 0.0

    async def one(index: int) -> None:
        await asyncio.sleep(index * spacing)
        await users[index].run()

    deadline_s = plan.ramp_up_s + scenario.turns * scenario.max_reply_s + scenario.session_timeout_s
    started = time.monotonic()
    tasks = [asyncio.create_task(one(index)) for index in range(sessions)]
    _, pending = await asyncio.wait(tasks, timeout=deadline_s + LEVEL_MARGIN_S)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    duration_s = time.monotonic() - started
    for user in users:
        _count_unfinished(user.record, scenario)
    return LevelResult.from_sessions(sessions, [user.record for user in users], duration_s)


def _count_unfinished(record: SessionRecord, scenario: Scenario) -> None:
    """Turns a user never got to count as failed: with the session's refusal code, or (cut off by the level's
    deadline) as timed out."""
    code = record.refused or CLIENT_TIMEOUT
    for turn in record.turns:
        if not turn.ok and not turn.failure:
            turn.failure = code
    for index in range(len(record.turns), scenario.turns):
        record.turns.append(TurnRecord(index=index, typed=False, barge_in=False, failure=code))


async def sweep(
    plan: LoadPlan, levels: list[int], utterances: list[Utterance], progress: Callable[[LevelResult], None]
) -> list[LevelResult]:
    results = []
    for index, sessions in enumerate(levels):
        if index:
            await asyncio.sleep(plan.settle_s)
        result = await run_level(plan, sessions, utterances)
        progress(result)
        results.append(result)
    return results


SLO_METRICS = ("client", "server")


def meets_slo(result: LevelResult, slo_ms: float, metric: str = "client") -> bool:
    """Every session admitted, every turn answered, and p95 end of speech -> first audio within the SLO: as the
    user felt it (`client`: from the last speech sample, so it includes the server's endpointing silence), or as
    the server reported it (`server`: from duplex's end-of-speech decision)."""
    p95 = _latencies(result, metric).percentile(0.95)
    clean = not result.turns_failed and not result.sessions_refused
    return clean and p95 is not None and p95 <= slo_ms


@dataclass
class CapacitySearch:
    """The search's state. With `max_growth`, a level must also keep its p95 within that factor of the 1-session
    p95 (the unloaded baseline, the search's first level): the capacity is then a count at which admitted sessions
    keep their latency, which is what admission at capacity promises."""

    slo_ms: float
    metric: str = "client"
    max_growth: float | None = None
    capacity: int = 0  # the largest session count that met the SLO (0: not even one session)
    levels: list[LevelResult] = field(default_factory=list)

    @property
    def baseline_p95_ms(self) -> float | None:
        one = next((result for result in self.levels if result.sessions == 1), None)
        return None if one is None else _latencies(one, self.metric).percentile(0.95)

    def limit_ms(self) -> float:
        """The p95 a level must meet: the SLO, or less when `max_growth` x the baseline is lower."""
        baseline = self.baseline_p95_ms
        if self.max_growth is None or baseline is None:
            return self.slo_ms
        return min(self.slo_ms, self.max_growth * baseline)

    def to_json(self) -> dict:
        levels = [result.to_json() for result in self.levels]
        report = {"slo_ms": self.slo_ms, "slo_metric": self.metric, "capacity_sessions": self.capacity}
        if self.max_growth is not None:
            report |= {"max_growth": self.max_growth, "baseline_p95_ms": self.baseline_p95_ms}
        return report | {"limit_ms": self.limit_ms(), "levels": levels}


def _latencies(result: LevelResult, metric: str) -> Latencies:
    return result.first_audio if metric == "client" else result.server_first_audio


async def find_capacity(
    plan: LoadPlan,
    slo_ms: float,
    max_sessions: int,
    utterances: list[Utterance],
    progress: Callable[[LevelResult], None],
    metric: str = "client",
    max_growth: float | None = None,
) -> CapacitySearch:
    """Double the session count until a level misses the SLO (or `max_sessions`), then bisect between the last
    level that met it and the first that did not. At most ~2·log2(max_sessions) levels. `max_growth`: see
    `CapacitySearch`."""
    search = CapacitySearch(slo_ms, metric, max_growth)

    async def meets(sessions: int) -> bool:
        if search.levels:
            await asyncio.sleep(plan.settle_s)
        result = await run_level(plan, sessions, utterances)
        progress(result)
        search.levels.append(result)
        return meets_slo(result, search.limit_ms(), metric)

    good, bad = 0, None
    sessions = 1
    while sessions <= max_sessions:
        if not await meets(sessions):
            bad = sessions
            break
        good = sessions
        sessions *= 2
    if bad is None:
        bad = min(sessions, max_sessions + 1)
    while bad - good > 1:
        middle = (good + bad) // 2
        if await meets(middle):
            good = middle
        else:
            bad = middle
    search.capacity = good
    search.levels.sort(key=lambda result: result.sessions)
    return search
