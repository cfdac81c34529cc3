"""`minmo fuzz` and `minmo faults`: the big reliability runs, against a stack of separate processes, printing figures.

fuzz: a probe session's first-audio p95 unloaded, then `inputs` hypothesis calls spread over every RPC (from a
process of its own at the lowest priority, as remote clients) while the probe keeps taking turns -> inputs, process
deaths, UNKNOWN/INTERNAL count, probe p95 loaded / unloaded; then the probe beside a second session of ordinary
inputs and beside one of the largest accepted inputs (`oversized_turns`).

faults: `sessions` concurrent sessions (spoken and typed turns, each reply listened to in real time before the
next turn, as a person does) on two replicas of every model service; one replica of each component is killed with
SIGKILL in turn (then restarted), then Redis (AOF, fsync always) -> sessions lost, turns failed per kill, each
session's wait for audio after each kill (p50, max; `_waited_after`) beside the same wait at moments without a kill
(`BASELINE_BEFORE_S` before each kill: what the load alone costs), the same wait on the turns the kill hit (their
LatencyReport lists the component among its `failovers`), the longest silence heard within
`BASELINE_BEFORE_S` on replies playing at a kill and at those moments (a speaker that ran dry; pacing keeps audio
ahead of playback, which covers a short failover), the longest wait for
a completed turn after each kill, session records lost across the Redis kill, history entries lost (a turn the
client saw end without both of its entries) and unmatched (a user turn without an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import grpc
import redis.asyncio
from rich.console import Console
from rich.table import Table

from minmo.audio.synthetic import utterance
from minmo.duplex.limits import InputLimits
from minmo.reliability.fuzz import RPCS, FuzzTally, fuzz_rpc
from minmo.reliability.harness import ProbeSession, ProcessStack, TurnOutcome, p95, process_stack
from minmo.serving.stack import MODEL_SERVICES
from minmo.session.store import Role, SessionStore
from minmo.v1 import conversation_pb2

EndReason = conversation_pb2.TurnEvent.EndReason
ANSWERED = (EndReason.COMPLETED, EndReason.MAX_TOKENS)  # a reply sent in full, up to the length cap or not
PROBE_TEXT = "how is the weather today?"
SETTLE_S = 8.0  # turns run this long before each kill
RAMP_S = 10.0  # sessions start spread over this long, as users arrive (not all speaking at the same instant)
OBSERVE_S = 10.0  # and this long after it, before the replica restarts
FUZZER_NICE = 19  # the fuzzer process runs at the lowest priority: its own CPU is a remote client's, not ours
SETTLE_AFTER_FUZZ_S = 30.0  # before the probe beside other sessions: replies the fuzzed calls started finish
BASELINE_BEFORE_S = 4.0  # waits are also measured this long before each kill (no-kill baseline); silences this long
NAN = float("nan")


@dataclass
class FuzzFigures:
    inputs: int
    deaths: list[str]
    forbidden: list[str]
    unloaded_p95_ms: float
    loaded_p95_ms: float
    codes: dict[str, dict[str, int]]
    oversized_p95_ms: float | None = None  # the probe's p95 while another session sends the largest inputs
    ordinary_p95_ms: float | None = None  # and while it sends ordinary inputs, as many turns

    @property
    def ratio(self) -> float:
        return self.loaded_p95_ms / self.unloaded_p95_ms


async def _probe_turns(address: str, until: threading.Event | None, turns: int) -> list[float]:
    probe = ProbeSession(address)
    await probe.open()
    first_audio = []
    try:
        await probe.turn(PROBE_TEXT)  # warm-up, not measured: a fresh stack's first turns pay for lazy set-up
        while (until is None and len(first_audio) < turns) or (until is not None and not until.is_set()):
            result = await probe.turn(PROBE_TEXT)
            if result.first_audio_ms is not None:
                first_audio.append(result.first_audio_ms)
    finally:
        await probe.close()
    return first_audio


async def _probe_beside(address: str, turns: int, text: str, system_prompt: str = "") -> list[float]:
    """The probe's first audio while another session sends `text` (with `system_prompt`), turn after turn."""
    other = ProbeSession(address, system_prompt=system_prompt)
    await other.open()
    done = threading.Event()

    async def send() -> None:
        try:
            for _ in range(turns):
                await other.turn(text)
        finally:
            done.set()
            await other.close()

    sender = asyncio.create_task(send())
    first_audio = await _probe_turns(address, done, 0)
    await sender
    return first_audio


async def _probe_beside_ordinary_and_oversized(address: str, turns: int) -> tuple[list[float], list[float]]:
    """The probe's first audio beside a session that sends ordinary inputs, then beside one that sends the largest
    accepted inputs (system prompt and text at their limits), the same number of turns: the second over the first
    is the largest inputs' own cost, the second over unloaded that and the second session's."""
    limits = InputLimits()
    ordinary = await _probe_beside(address, turns, PROBE_TEXT)
    largest = await _probe_beside(address, turns, "x" * limits.max_text_chars, "p" * limits.max_system_prompt_chars)
    return ordinary, largest


def _fuzz_all(addresses: dict[str, str], inputs: int, random_seed: int, results: multiprocessing.Queue) -> None:
    """The fuzzer's process: every RPC in turn, at the lowest CPU priority; puts its FuzzTally on `results`. Its own
    work (hypothesis drawing inputs, in Python) is a remote client's, not the stack's: in the probe's process it
    would hold the probe's GIL, and at normal priority take the stack's CPU, and the probe would measure that."""
    os.nice(FUZZER_NICE)
    channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
    tally = FuzzTally()
    try:
        for rpc in RPCS:
            fuzz_rpc(channels.__getitem__, rpc, max(1, inputs // len(RPCS)), tally, random_seed)
    finally:
        results.put(tally)
        for channel in channels.values():
            channel.close()


def _fuzz_beside_probe(stack: ProcessStack, inputs: int, random_seed: int) -> tuple[FuzzTally, list[float]]:
    """Fuzz from another process while the probe takes turns; the tally and the probe's first audio meanwhile."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds grpc state
    results = context.Queue()
    addresses = {name: items[0].address for name, items in stack.replicas.items()}
    fuzzer = context.Process(target=_fuzz_all, args=(addresses, inputs, random_seed, results), name="fuzzer")
    fuzzer.start()
    done = threading.Event()
    tally: list[FuzzTally] = []

    def collect() -> None:
        try:
            tally.append(results.get())  # before join: a child exits only once its queue is drained
            fuzzer.join()
        finally:
            done.set()

    collector = threading.Thread(target=collect, name="fuzz-results")
    collector.start()
    loaded = asyncio.run(_probe_turns(stack.duplex, done, 0))
    collector.join()
    if not tally:
        raise RuntimeError(f"the fuzzer process exited with code {fuzzer.exitcode} without its results")
    return tally[0], loaded


def run_fuzz(
    inputs: int, config: str = "tiny", probe_turns: int = 10, random_seed: int = 0, oversized_turns: int = 0
) -> FuzzFigures:
    with process_stack(config) as stack:
        unloaded = asyncio.run(_probe_turns(stack.duplex, None, probe_turns))
        tally, loaded = _fuzz_beside_probe(stack, inputs, random_seed)
        beside_ordinary, beside_oversized = [], []
        if oversized_turns:
            time.sleep(SETTLE_AFTER_FUZZ_S)  # the fuzzed calls' replies (a valid call gets a real one) finish
            beside = _probe_beside_ordinary_and_oversized(stack.duplex, oversized_turns)
            beside_ordinary, beside_oversized = asyncio.run(beside)
        return FuzzFigures(
            inputs=tally.inputs,
            deaths=stack.deaths(),
            forbidden=tally.forbidden,
            unloaded_p95_ms=p95(unloaded),
            loaded_p95_ms=p95(loaded),
            codes={method: dict(counter) for method, counter in tally.codes.items()},
            oversized_p95_ms=p95(beside_oversized) if beside_oversized else None,
            ordinary_p95_ms=p95(beside_ordinary) if beside_ordinary else None,
        )


def print_fuzz(figures: FuzzFigures, console: Console) -> None:
    table = Table(title="minmo fuzz")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("inputs (calls)", str(figures.inputs))
    table.add_row("process deaths", str(len(figures.deaths)))
    table.add_row("UNKNOWN/INTERNAL", str(len(figures.forbidden)))
    table.add_row("probe p95 first audio unloaded (ms)", f"{figures.unloaded_p95_ms:.0f}")
    table.add_row("probe p95 first audio while fuzzed (ms)", f"{figures.loaded_p95_ms:.0f}")
    table.add_row("ratio", f"{figures.ratio:.2f}x")
    if figures.ordinary_p95_ms is not None:
        table.add_row("probe p95 beside a session of ordinary inputs (ms)", f"{figures.ordinary_p95_ms:.0f}")
    if figures.oversized_p95_ms is not None:
        table.add_row("probe p95 beside a session of the largest inputs (ms)", f"{figures.oversized_p95_ms:.0f}")
        table.add_row("  ratio to unloaded", f"{figures.oversized_p95_ms / figures.unloaded_p95_ms:.2f}x")
    if figures.oversized_p95_ms is not None and figures.ordinary_p95_ms is not None:
        ratio = figures.oversized_p95_ms / figures.ordinary_p95_ms
        table.add_row("  ratio to ordinary inputs (the largest inputs' own cost)", f"{ratio:.2f}x")
    console.print(table)
    for method, codes in sorted(figures.codes.items()):
        console.print(f"{method}: " + ", ".join(f"{code} {count}" for code, count in sorted(codes.items())))
    for line in figures.forbidden[:20]:
        console.print(line, style="red", markup=False)


@dataclass
class FaultFigures:
    sessions: int
    sessions_lost: int
    turns: int
    failed_by_kill: dict[str, int] = field(default_factory=dict)
    recovery_s: dict[str, float] = field(default_factory=dict)  # kill -> the longest wait for a completed turn
    first_audio_s: dict[str, tuple[float, float]] = field(default_factory=dict)  # kill -> (p50, max) over sessions
    failed_over: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # kill -> (turns, p50, max wait)
    baseline_wait_s: tuple[float, float] = (NAN, NAN)  # the same wait at moments without a kill: (p50, max)
    silence_s: dict[str, tuple[float, int]] = field(default_factory=dict)  # kill -> (max silence heard, replies)
    baseline_silence_s: tuple[float, int] = (NAN, 0)  # the same at moments without a kill
    lost_reasons: list[str] = field(default_factory=list)
    records_before: int = 0
    records_after: int = 0
    unanswered_user_turns: int = 0
    history_entries_lost: int = 0
    deaths: list[str] = field(default_factory=list)

    @property
    def turns_failed(self) -> int:
        return sum(self.failed_by_kill.values())


async def _session_loop(probe: ProbeSession, stop: asyncio.Event, index: int, sessions: int) -> None:
    speech = utterance(seed=index)
    turn = 0
    await asyncio.sleep(RAMP_S * index / sessions)
    while not stop.is_set():
        try:
            if turn % 2:
                await probe.spoken_turn(speech)
            else:
                await probe.turn(f"{PROBE_TEXT} ({index}.{turn})")
        except (grpc.aio.AioRpcError, ConnectionError, TimeoutError) as error:
            probe.lost = repr(error)[:400]
            return
        turn += 1


def _p50_max(values: list[float]) -> tuple[float, float]:
    return (statistics.median(values), max(values)) if values else (NAN, NAN)


def _silence_after(turns: list[TurnOutcome], killed_at: float) -> tuple[float, int]:
    """The longest silence heard within BASELINE_BEFORE_S of a kill on a reply that was playing at it, and how many
    replies were playing (their first audio before the kill, their playback's end after)."""
    playing = [turn for turn in turns if turn.audio_at and turn.audio_at[0] < killed_at < turn.playback_end]
    heard = (turn.silence_heard(killed_at, killed_at + BASELINE_BEFORE_S) for turn in playing)
    return max(heard, default=0.0), len(playing)


def _failed_over_waits(turns: list[TurnOutcome], component: str, killed_at: float) -> tuple[int, float, float]:
    """The turns the kill hit (their LatencyReport says `component` failed over) and their wait for audio after the
    kill (`TurnOutcome.waited_after`): (turns, p50, max)."""
    hit = [turn for turn in turns if component in turn.failovers]
    waits = [waited for turn in hit if (waited := turn.waited_after(killed_at)) is not None]
    return (len(hit), *_p50_max(waits))


def _waited_after(probe: ProbeSession, killed_at: float) -> float | None:
    """The session's wait for audio after a kill: on the reply in flight, the gap from the kill to its next chunk; on
    a reply asked for later, from the end of the user's turn to its first chunk (the first reply with audio after
    the kill counts)."""
    for turn in probe.turns:
        if turn.ended_at >= killed_at and (waited := turn.waited_after(killed_at)) is not None:
            return waited
    return None


async def _faults(stack: ProcessStack, sessions: int) -> FaultFigures:
    probes = [ProbeSession(stack.duplex, listen=True) for _ in range(sessions)]
    for probe in probes:
        await probe.open()
    stop = asyncio.Event()
    loops = [asyncio.create_task(_session_loop(probe, stop, index, sessions)) for index, probe in enumerate(probes)]
    figures = FaultFigures(sessions=sessions, sessions_lost=0, turns=0)
    kills: dict[str, float] = {}
    await asyncio.sleep(RAMP_S)
    for component in MODEL_SERVICES:
        await asyncio.sleep(SETTLE_S)
        kills[component] = time.monotonic()
        stack.kill(component, 0)
        await asyncio.sleep(OBSERVE_S)
        await asyncio.to_thread(stack.restart, component, 0)
    await asyncio.sleep(SETTLE_S)
    stop.set()
    await asyncio.gather(*loops, return_exceptions=True)
    ends = [*sorted(kills.values()), float("inf")]
    turns = [turn for probe in probes for turn in probe.turns]
    for component, killed_at in kills.items():
        next_kill = ends[ends.index(killed_at) + 1]
        window = [turn for turn in turns if killed_at <= turn.ended_at < next_kill]
        figures.failed_by_kill[component] = sum(turn.outcome == EndReason.FAILED for turn in window)
        waits = []
        for probe in probes:  # the first turn each session completed after the kill
            completed = [
                t.ended_at for t in probe.turns if t.ended_at >= killed_at and t.outcome in ANSWERED
            ]
            if completed:
                waits.append(completed[0] - killed_at)
        figures.recovery_s[component] = max(waits, default=float("nan"))
        delays = [delay for probe in probes if (delay := _waited_after(probe, killed_at)) is not None]
        figures.first_audio_s[component] = _p50_max(delays)
        figures.failed_over[component] = _failed_over_waits(window, component, killed_at)
        figures.silence_s[component] = _silence_after(turns, killed_at)
    calm = [moment - BASELINE_BEFORE_S for moment in kills.values()]
    calm_silences = [_silence_after(turns, moment) for moment in calm]
    figures.baseline_silence_s = (max(s for s, _ in calm_silences), sum(n for _, n in calm_silences))
    figures.baseline_wait_s = _p50_max(
        [delay for moment in calm for probe in probes if (delay := _waited_after(probe, moment)) is not None]
    )
    figures.lost_reasons = [probe.lost for probe in probes if probe.lost is not None]
    figures.turns = sum(len(probe.turns) for probe in probes)
    figures.sessions_lost = sum(probe.lost is not None for probe in probes)
    figures.records_before = len(stack.redis.session_keys())
    stack.redis.kill()
    stack.redis.start()
    figures.records_after = len(stack.redis.session_keys())
    client = redis.asyncio.Redis.from_url(stack.redis.url, decode_responses=True)
    store = SessionStore(client, ttl_s=3600)
    for probe in probes:
        history = await store.history(probe.session_id)
        roles = [turn.role for turn in history]
        figures.history_entries_lost += max(0, 2 * len(probe.turns) - len(roles))  # a user and an assistant entry
        figures.unanswered_user_turns += sum(
            role == Role.USER and (index + 1 == len(roles) or roles[index + 1] != Role.ASSISTANT)
            for index, role in enumerate(roles)
        )
    await client.aclose()
    for probe in probes:
        with contextlib.suppress(Exception):
            await probe.close()
    figures.deaths = stack.deaths()
    return figures


def run_faults(sessions: int = 10, config: str = "tiny") -> FaultFigures:
    with process_stack(config, replicas=2) as stack:
        return asyncio.run(_faults(stack, sessions))


def print_faults(figures: FaultFigures, console: Console) -> None:
    table = Table(title=f"minmo faults ({figures.sessions} sessions, 2 replicas per model service)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("sessions lost", str(figures.sessions_lost))
    table.add_row("turns taken", str(figures.turns))
    table.add_row("turns failed (all kills)", str(figures.turns_failed))
    for component, failed in figures.failed_by_kill.items():
        table.add_row(f"kill -9 {component}: turns failed", str(failed))
        p50, longest = figures.first_audio_s[component]
        first_audio = f"{p50:.2f} / {longest:.2f}"
        table.add_row(f"kill -9 {component}: wait for audio after the kill, p50 / max over sessions (s)", first_audio)
        hit, p50, longest = figures.failed_over[component]
        label = f"kill -9 {component}: the {hit} turns that failed over: wait for audio after the kill, p50 / max (s)"
        table.add_row(label, f"{p50:.2f} / {longest:.2f}")
        silence, playing = figures.silence_s[component]
        heard = f"kill -9 {component}: longest silence within {BASELINE_BEFORE_S:.0f} s, {playing} replies playing (s)"
        table.add_row(heard, f"{silence:.2f}")
        wait = f"{figures.recovery_s[component]:.1f}"
        table.add_row(f"kill -9 {component}: longest wait for a session's next completed turn (s)", wait)
    calm = f"{figures.baseline_wait_s[0]:.2f} / {figures.baseline_wait_s[1]:.2f}"
    table.add_row(f"no kill ({BASELINE_BEFORE_S:.0f} s before each): wait for audio, p50 / max over sessions (s)", calm)
    silence, playing = figures.baseline_silence_s
    heard = f"no kill: longest silence within {BASELINE_BEFORE_S:.0f} s, {playing} replies playing (s)"
    table.add_row(heard, f"{silence:.2f}")
    records = f"{figures.records_before} / {figures.records_after}"
    table.add_row("redis kill -9 (AOF): session keys before / after", records)
    table.add_row("history: entries lost", str(figures.history_entries_lost))
    table.add_row("history: user turns without an answer", str(figures.unanswered_user_turns))
    table.add_row("unexpected process deaths", str(len(figures.deaths)))
    console.print(table)
    for reason in figures.lost_reasons:
        console.print(f"session lost: {reason}", style="red", markup=False)
