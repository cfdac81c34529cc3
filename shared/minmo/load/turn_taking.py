"""`minmo eval turn-taking`: how soon a running stack takes the user's turn, and whether it cuts in at a pause.

The same held-out speech is spoken to the stack twice, once with the VAD deciding turns (`SERVER_VAD`) and once with
the trained duplex predictor deciding (`PREDICTOR`), one session per trial at real-time pace (`Microphone`: 100 ms
chunks, noise between words, as a phone sends them). Sessions are `text_only`: speech out plays no part in taking
the turn, and a trial then costs seconds, not a reply's synthesis. Two kinds of trial, half each:
- finished: a held-out question, then the user waits. Measured: the end of its speech on the wire ->
  RESPONSE_STARTED (the turn is taken) and -> the reply's first text;
- paused: a sentence cut at a word boundary, a pause of `pause_s` (0.3-0.9 s: the hesitations people make), then
  the rest. A RESPONSE_STARTED before the rest has been said is a cut-in; the wait is measured from the rest's end.
The VAD needs its 500 ms silence to end a turn and cuts in at every longer pause; the predictor ends a segment
after 200 ms and answers or keeps listening (README "Behaviour a client can rely on"). Speakers are the training
recipe's held-out voices (`minmo.train.voices`), the sentences its held-out questions and requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table

from minmo.duplex.turn_policy import PATIENCE_MS
from minmo.load.stats import Latencies
from minmo.load.user import NOISE_LEVEL, SAMPLE_RATE, Microphone, TurnType, Utterance
from minmo.train import texts
from minmo.train.duplex_data import cut_at_pause
from minmo.train.voices import HELD_OUT_VOICES, available, synthesize
from minmo.v1 import common_pb2, conversation_pb2, conversation_pb2_grpc

MODES = ("SERVER_VAD", "PREDICTOR")
KINDS = ("finished", "paused")
PAUSE_RANGE_S = (0.3, 0.9)
AFTER_CUT_IN_S = PATIENCE_MS / 1000 + 1.0  # a reply to the user's whole turn comes by then, if it comes at all


@dataclass(frozen=True)
class Trial:
    """One spoken user turn: `segments` said by `voice`, with `pause_s` of silence between them."""

    kind: str
    voice: str
    segments: tuple[str, ...]
    pause_s: float = 0.0


@dataclass
class TrialResult:
    mode: str
    kind: str
    cut_in: bool = False  # the turn was taken before the user finished
    taken_ms: float | None = None  # end of the user's speech -> RESPONSE_STARTED; None: not after the end
    first_text_ms: float | None = None  # end of the user's speech -> the reply's first text
    silence_ms: int = 0  # the session's endpointing silence in effect (SessionStarted)


def plan(trials: int, seed: int = 0) -> list[Trial]:
    """`trials` turns, finished and paused alternately, by held-out voices saying held-out sentences."""
    rng = random.Random(f"{seed}:turn-taking")
    voices = [v for v in HELD_OUT_VOICES if available(v)]
    if not voices:
        raise RuntimeError("no held-out TTS voice is available: install espeak-ng or flite")
    sentences = [q.text for q in texts.questions("heldout")] + texts.reply_prompts("heldout")
    long_ones = [s for s in sentences if len(s.split()) >= 4]
    planned = []
    for index in range(trials):
        voice = rng.choice(voices).id
        if KINDS[index % len(KINDS)] == "finished":
            planned.append(Trial("finished", voice, (rng.choice(sentences),)))
        else:
            segments = cut_at_pause(rng.choice(long_ones), rng)
            planned.append(Trial("paused", voice, segments, rng.uniform(*PAUSE_RANGE_S)))
    return planned


def speak(trial: Trial) -> Utterance:
    """The trial's audio: each segment's speech (TTS silence trimmed) with the pause between them as microphone
    noise, and a short noise lead-in."""
    voices = {v.id: v for v in HELD_OUT_VOICES}
    rng = np.random.default_rng(len(trial.segments))
    parts = [_noise(0.3, rng)]
    for index, text in enumerate(trial.segments):
        said = Utterance.from_samples(synthesize(voices[trial.voice], text))
        parts.append(said.samples[round(said.onset_s * SAMPLE_RATE) : round(said.end_s * SAMPLE_RATE)])
        if index < len(trial.segments) - 1:
            parts.append(_noise(trial.pause_s, rng))
    return Utterance.from_samples(np.concatenate(parts))


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (NOISE_LEVEL * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


async def run_trial(target: str, mode: str, trial: Trial, utterance: Utterance, timeout_s: float = 20.0) -> TrialResult:
    """One session: say the utterance, then wait for the turn to be taken after its end. A session that cut in
    waits at most `AFTER_CUT_IN_S` more: a reply already under way may be all the user gets."""
    result = TrialResult(mode, trial.kind)
    detection = conversation_pb2.TurnDetection(mode=conversation_pb2.TurnDetection.Mode.Value(mode))
    config = conversation_pb2.SessionConfig(input_sample_rate_hz=SAMPLE_RATE, text_only=True, turn_detection=detection)
    async with grpc.aio.insecure_channel(target) as channel:
        call = conversation_pb2_grpc.ConversationStub(channel).Converse()
        await call.write(conversation_pb2.ClientEvent(session_config=config))
        first = await asyncio.wait_for(call.read(), timeout_s)
        if not first.HasField("session_started"):
            raise RuntimeError(f"the session did not start: {first}")
        result.silence_ms = first.session_started.turn_detection.silence_ms
        microphone = Microphone(call, np.random.default_rng(0))
        sending = asyncio.create_task(microphone.run())
        _onset, end = microphone.say(utterance)
        watching = asyncio.create_task(_watch(call, end, result))
        try:
            await end
            await asyncio.wait_for(watching, AFTER_CUT_IN_S if result.cut_in else timeout_s)
        except TimeoutError:
            pass  # the turn was not taken after the user's end: taken_ms stays None
        finally:
            for task in (sending, watching):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            call.cancel()
    return result


async def _watch(call: grpc.aio.StreamStreamCall, end: asyncio.Future, result: TrialResult) -> None:
    """Read events until a reply started after the user's end has its first text; note one started before."""
    while True:
        event = await call.read()
        if event is grpc.aio.EOF:
            raise RuntimeError("the session ended during the trial")
        now = time.monotonic()
        if event.HasField("error"):
            raise RuntimeError(f"the stack failed the trial: {event.error.code} {event.error.message}")
        started = event.HasField("turn_event") and event.turn_event.type == TurnType.RESPONSE_STARTED
        if started and not end.done():
            result.cut_in = True
        elif started and result.taken_ms is None:
            result.taken_ms = 1000 * (now - end.result())
        elif _assistant_text(event) and result.taken_ms is not None:
            result.first_text_ms = 1000 * (now - end.result())
            return


def _assistant_text(event: conversation_pb2.ServerEvent) -> bool:
    """The reply's text (the user's own transcript comes off the critical path, after the reply starts)."""
    return event.HasField("transcript") and event.transcript.role == common_pb2.ROLE_ASSISTANT


async def evaluate(target: str, trials: int, seed: int = 0) -> list[TrialResult]:
    """Every trial in both modes, one after another (modes alternate, so load drifts alike for both)."""
    planned = plan(trials, seed)
    spoken = [await asyncio.to_thread(speak, trial) for trial in planned]
    results = []
    for trial, utterance in zip(planned, spoken, strict=True):
        for mode in MODES:
            results.append(await run_trial(target, mode, trial, utterance))
    return results


def summarise(results: list[TrialResult]) -> dict:
    """Per mode: the wait for the turn after finished and paused speech, cut-ins at pauses, turns never taken."""
    summary = {}
    for mode in MODES:
        mine = [r for r in results if r.mode == mode]
        finished = [r for r in mine if r.kind == "finished"]
        paused = [r for r in mine if r.kind == "paused"]
        summary[mode] = {
            "silence_ms": mine[0].silence_ms if mine else None,
            "taken_after_finished_ms": _percentiles([r.taken_ms for r in finished]),
            "first_text_after_finished_ms": _percentiles([r.first_text_ms for r in finished]),
            "taken_after_paused_ms": _percentiles([r.taken_ms for r in paused if not r.cut_in]),
            "cut_in_at_pause": sum(r.cut_in for r in paused) / max(len(paused), 1),
            "cut_in_before_the_end": sum(r.cut_in for r in finished) / max(len(finished), 1),
            "not_taken": sum(r.taken_ms is None and not r.cut_in for r in mine),
            "trials": len(mine),
        }
    return summary


def _percentiles(values: list[float | None]) -> dict[str, float | None]:
    latencies = Latencies()
    for value in values:
        if value is not None:
            latencies.record(value)
    return latencies.summary((0.5, 0.9))


def print_summary(summary: dict) -> None:
    table = Table(title="turn taking: from the end of the user's speech on the wire (client clock, ms)")
    for column in ("mode", "silence", "turn taken p50 / p90", "first reply text p50 / p90", "after a pause: taken p50",
                   "cut in at a pause", "never taken"):
        table.add_column(column)
    for mode, row in summary.items():
        taken, text = row["taken_after_finished_ms"], row["first_text_after_finished_ms"]
        table.add_row(
            mode, f"{row['silence_ms']} ms", f"{taken['p50']} / {taken['p90']}", f"{text['p50']} / {text['p90']}",
            str(row["taken_after_paused_ms"]["p50"]), f"{row['cut_in_at_pause']:.0%}",
            f"{row['not_taken']} / {row['trials']}",
        )
    Console(width=160).print(table)
