"""One simulated user: a real full-duplex Converse session driven like a person with a microphone and a speaker.

The microphone never stops: every `CHUNK_MS` it sends the next 100 ms of PCM16, speech when the user is talking
and low-level noise otherwise, exactly as a browser or phone client does. The user speaks a turn, listens to the
reply (playing it at real time in a simulated speaker), thinks, and speaks again; on a share of turns it barges in
while the previous reply is still playing, and on a share it types instead of speaking.

What is measured is what the user feels, on the client's clock:
- first audio: the end of the user's speech (the last speech sample reached the wire) -> the reply's first audio;
- underruns: the speaker buffer ran dry during a reply (audio arriving slower than real time), in ms;
- barge-in stop: the onset of the interrupting speech -> the server says the reply stopped (RESPONSE_INTERRUPTED);
- errors by gRPC status code (Error events, a failed stream, or a client-side timeout as DEADLINE_EXCEEDED).
A reply that is slower than real time but keeps coming is not a failure: its wait is in the underruns. It fails
(DEADLINE_EXCEEDED) when it has not ended `turn_timeout_s` after the user's turn and its audio stopped coming
`stall_timeout_s` before, or `max_reply_s` after the user's turn whatever it does.
Every wait is bounded by the scenario's timeouts; every loop by its turn count.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from minmo.audio.pcm import PCM16_BYTES, float_to_pcm16
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ
from minmo.v1 import conversation_pb2, conversation_pb2_grpc

SAMPLE_RATE = ENCODER_SAMPLE_RATE_HZ  # the rate the load generator sends (no resampling at the server)
CHUNK_MS = 100
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_MS // 1000
NOISE_LEVEL = 0.003  # the microphone's floor between turns (the synthetic utterances use the same)
SPEECH_THRESHOLD = 0.02  # |sample| above this counts as speech when locating onset and end in a WAV
BARGE_IN_GRACE_S = 3.0  # how long after the reply's end of playback an interruption may still arrive
CLIENT_TIMEOUT = "DEADLINE_EXCEEDED"  # the code a turn that got no reply in time is counted under
TurnType = conversation_pb2.TurnEvent.Type


@dataclass(frozen=True)
class Utterance:
    """Mono float32 audio at 16 kHz and where its speech starts and ends (seconds from its start)."""

    samples: np.ndarray
    onset_s: float
    end_s: float

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> Utterance:
        loud = np.flatnonzero(np.abs(samples) > SPEECH_THRESHOLD)
        if loud.size == 0:
            raise ValueError("the utterance has no speech (nothing louder than the speech threshold)")
        return cls(samples.astype(np.float32), loud[0] / SAMPLE_RATE, (loud[-1] + 1) / SAMPLE_RATE)


@dataclass(frozen=True)
class Scenario:
    """How every simulated user of a run behaves; shares are fractions of turns (after the first for barge-in)."""

    turns: int = 3
    barge_in_share: float = 0.25
    typed_share: float = 0.2
    barge_in_after_ms: float = 400.0  # into the reply's playback, the user starts talking over it
    think_ms: float = 300.0  # pause after a reply has played, before the next turn
    turn_timeout_s: float = 60.0  # a reply not started, or not finished with its audio stalled, by then: a failure
    stall_timeout_s: float = 20.0  # past turn_timeout_s, a reply whose audio stopped this long ago has failed
    max_reply_s: float = 180.0  # a reply not finished by then has failed, however it goes
    session_timeout_s: float = 20.0  # for SessionStarted
    typed_texts: tuple[str, ...] = ("What time is it?", "Tell me a short story.", "How are you today?")
    system_prompt: str = "You are a helpful voice assistant."
    seed: int = 0


@dataclass
class TurnRecord:
    """One user turn and its reply, as the user experienced them."""

    index: int
    typed: bool
    barge_in: bool  # this turn's speech started while the previous reply was playing
    ok: bool = False
    failure: str = ""  # a gRPC status code name when not ok
    first_audio_ms: float | None = None
    server_first_audio_ms: float | None = None  # the server's own LatencyReport, for comparison
    audio_ms: float = 0.0
    underrun_ms: float = 0.0
    barge_in_stop_ms: float | None = None  # set on the turn that barged in
    started_at: float = 0.0  # time.monotonic() of the end of the user's input


@dataclass
class SessionRecord:
    turns: list[TurnRecord] = field(default_factory=list)
    refused: str = ""  # the status code when the session never started
    session_id: str = ""  # the server's (SessionStarted), to find a failed turn in the services' logs


@dataclass
class _Reply:
    """A response the server started, as the speaker plays it."""

    turn_id: str
    started_at: float
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    play_end: float | None = None  # when the speaker will have played everything received
    audio_ms: float = 0.0
    underrun_ms: float = 0.0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted_at: float | None = None
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    first_audio: asyncio.Event = field(default_factory=asyncio.Event)
    report_first_audio_ms: float | None = None
    failure: str = ""

    def play(self, now: float, duration_ms: float) -> None:
        """A chunk arrived: the speaker plays it after what it holds; a dry buffer before it is an underrun."""
        self.last_audio_at = now
        if self.first_audio_at is None:
            self.first_audio_at, self.play_end = now, now
            self.first_audio.set()
        if now > self.play_end:
            self.underrun_ms += 1000 * (now - self.play_end)
            self.play_end = now
        self.play_end += duration_ms / 1000
        self.audio_ms += duration_ms


class Microphone:
    """Sends 100 ms of audio every 100 ms for as long as the session lasts: queued speech, else noise."""

    def __init__(self, call: grpc.aio.StreamStreamCall, rng: np.random.Generator) -> None:
        self.call = call
        self.rng = rng
        self.write_lock = asyncio.Lock()  # the user's typed turns share the stream: one write at a time, or it hangs
        self.pending = np.zeros(0, dtype=np.float32)
        self.marks: list[tuple[int, asyncio.Future]] = []  # (sample index in `pending`, future of its wall time)

    def say(self, utterance: Utterance) -> tuple[asyncio.Future, asyncio.Future]:
        """Queue an utterance; the futures resolve to the wall times its speech onset and end reached the wire."""
        loop = asyncio.get_running_loop()
        onset, end = loop.create_future(), loop.create_future()
        base = self.pending.size
        self.marks.append((base + round(utterance.onset_s * SAMPLE_RATE), onset))
        self.marks.append((base + round(utterance.end_s * SAMPLE_RATE), end))
        self.pending = np.concatenate([self.pending, utterance.samples])
        return onset, end

    async def send(self, event: conversation_pb2.ClientEvent) -> None:
        """Write one event on the session's stream; the microphone's chunks and the user's other events take turns
        (two writes started together hang a gRPC stream for good: the session would go silent, its turns lost)."""
        async with self.write_lock:
            await self.call.write(event)

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            next_at += CHUNK_MS / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            chunk = self.pending[:CHUNK_SAMPLES]
            self.pending = self.pending[CHUNK_SAMPLES:]
            if chunk.size < CHUNK_SAMPLES:
                noise = NOISE_LEVEL * self.rng.standard_normal(CHUNK_SAMPLES - chunk.size).astype(np.float32)
                chunk = np.concatenate([chunk, noise])
            await self.send(
                conversation_pb2.ClientEvent(audio_chunk=conversation_pb2.AudioChunk(audio=float_to_pcm16(chunk)))
            )
            sent = time.monotonic()
            for index, (sample, future) in enumerate(self.marks):
                # a chunk goes out when its last sample has been "recorded": an earlier sample was spoken earlier
                if sample <= CHUNK_SAMPLES and not future.done():
                    future.set_result(sent - (CHUNK_SAMPLES - sample) / SAMPLE_RATE)
                self.marks[index] = (sample - CHUNK_SAMPLES, future)
            self.marks = [(sample, future) for sample, future in self.marks if not future.done()]


class SimulatedUser:
    """Runs one session of `scenario.turns` turns against a Conversation server and records what it felt."""

    def __init__(self, server: str, scenario: Scenario, utterances: list[Utterance], index: int) -> None:
        self.server = server
        self.scenario = scenario
        self.utterances = utterances
        self.index = index
        self.random = random.Random(scenario.seed * 1_000_003 + index)
        self.replies: list[_Reply] = []
        self.reply_started = asyncio.Condition()
        self.stream_failure = ""
        self.session_started = asyncio.Event()
        self.record = SessionRecord()  # filled as the session goes, so a cancelled user keeps what it measured

    async def run(self) -> SessionRecord:
        record = self.record
        async with grpc.aio.insecure_channel(self.server) as channel:
            call = conversation_pb2_grpc.ConversationStub(channel).Converse()
            reader = asyncio.create_task(self._read(call))
            microphone = Microphone(call, np.random.default_rng(self.scenario.seed + self.index))
            mic_task: asyncio.Task | None = None
            try:
                config = conversation_pb2.SessionConfig(
                    input_sample_rate_hz=SAMPLE_RATE, system_prompt=self.scenario.system_prompt
                )
                await call.write(conversation_pb2.ClientEvent(session_config=config))
                started = asyncio.create_task(self.session_started.wait())
                timeout_s = self.scenario.session_timeout_s
                await asyncio.wait([started, reader], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
                started.cancel()
                if not self.session_started.is_set():
                    record.refused = self.stream_failure or CLIENT_TIMEOUT
                    return record
                mic_task = asyncio.create_task(microphone.run())
                await self._converse(call, microphone, record)
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await microphone.send(conversation_pb2.ClientEvent(end_session=conversation_pb2.EndSession()))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                if not record.turns:
                    record.refused = self.stream_failure or "UNAVAILABLE"
            finally:
                for task in (mic_task, reader):
                    if task is not None:
                        task.cancel()
                        # a microphone that wrote to a stream the server had closed ended with its error
                        with contextlib.suppress(
                            asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError
                        ):
                            await task
                call.cancel()
        return record

    async def _converse(self, call: grpc.aio.StreamStreamCall, microphone: Microphone, record: SessionRecord) -> None:
        previous: _Reply | None = None
        for index in range(self.scenario.turns):
            typed = self.random.random() < self.scenario.typed_share
            barge = (
                not typed
                and previous is not None
                and previous.first_audio_at is not None
                and self.random.random() < self.scenario.barge_in_share
            )
            turn = TurnRecord(index=index, typed=typed, barge_in=barge)
            record.turns.append(turn)
            if self.stream_failure:
                turn.failure = self.stream_failure
                continue
            if previous is not None:
                await self._listen(previous, barge)
            replies_before = len(self.replies)
            if typed:
                text = self.random.choice(self.scenario.typed_texts)
                await microphone.send(conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=text)))
                turn.started_at = time.monotonic()
            else:
                onset, end = microphone.say(self.random.choice(self.utterances))
                if barge:
                    await self._measure_barge_in(previous, onset, turn)
                turn.started_at = await self._wait_future(end)
            previous = await self._reply(turn, replies_before)

    async def _listen(self, reply: _Reply, barge: bool) -> None:
        """Let the previous reply play: to its end and a pause, or, when barging in, only for a moment."""
        if reply.first_audio_at is None:
            return
        if barge:
            start_at = reply.first_audio_at + self.scenario.barge_in_after_ms / 1000
        else:
            await self._wait(reply.ended, self.scenario.turn_timeout_s)
            start_at = (reply.play_end or time.monotonic()) + self.scenario.think_ms / 1000
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))

    async def _measure_barge_in(self, previous: _Reply, onset: asyncio.Future, turn: TurnRecord) -> None:
        """Speech onset -> the server stops the reply; no barge-in if the reply had played out before the onset."""
        onset_at = await self._wait_future(onset)
        playing_until = previous.play_end or onset_at
        if playing_until <= onset_at and previous.ended.is_set():
            turn.barge_in = False
            return
        # the server may take until the end of the reply's playback (plus the VAD's onset time) to stop it
        timeout_s = min(self.scenario.turn_timeout_s, max(0.0, playing_until - time.monotonic()) + BARGE_IN_GRACE_S)
        await self._wait(previous.interrupted, timeout_s)
        if previous.interrupted_at is not None:
            turn.barge_in_stop_ms = max(0.0, 1000 * (previous.interrupted_at - onset_at))
        else:
            turn.barge_in = False  # the reply played out before the server heard the user

    async def _reply(self, turn: TurnRecord, replies_before: int) -> _Reply | None:
        """The reply to `turn`: the first response started after the user's input ended; wait for it to finish."""
        deadline = turn.started_at + self.scenario.turn_timeout_s
        reply = None
        async with self.reply_started:
            while reply is None and not self.stream_failure and time.monotonic() < deadline:
                reply = next((r for r in self.replies[replies_before:] if r.started_at >= turn.started_at - 0.05), None)
                if reply is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.reply_started.wait(), max(0.0, deadline - time.monotonic()))
        if reply is None:
            turn.failure = self.stream_failure or CLIENT_TIMEOUT
            return None
        await wait_for_reply_end(reply, self.scenario, turn.started_at)
        turn.audio_ms, turn.underrun_ms = reply.audio_ms, reply.underrun_ms
        if reply.first_audio_at is not None:
            turn.first_audio_ms = 1000 * (reply.first_audio_at - turn.started_at)
        turn.server_first_audio_ms = reply.report_first_audio_ms
        if reply.failure or self.stream_failure:
            turn.failure = reply.failure or self.stream_failure
        elif not reply.ended.is_set():
            turn.failure = CLIENT_TIMEOUT
        elif reply.first_audio_at is None:
            turn.failure = "NO_AUDIO"
        else:
            turn.ok = True
        return reply

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        replies: dict[str, _Reply] = {}
        try:
            async for event in call:
                now = time.monotonic()
                kind = event.WhichOneof("event")
                if kind == "session_started":
                    self.record.session_id = event.session_started.session_id
                    self.session_started.set()
                elif kind == "turn_event":
                    await self._on_turn_event(event.turn_event, replies, now)
                elif kind == "audio_output" and event.audio_output.turn_id in replies:
                    audio = event.audio_output
                    duration_ms = 1000 * len(audio.audio) / PCM16_BYTES / audio.sample_rate_hz
                    replies[audio.turn_id].play(now, duration_ms)
                elif kind == "latency_report" and event.latency_report.turn_id in replies:
                    report = event.latency_report
                    if report.HasField("first_audio_ms"):
                        replies[report.turn_id].report_first_audio_ms = report.first_audio_ms
                    replies[report.turn_id].ended.set()  # the report is a response's last event
                elif kind == "error":
                    reply = replies.get(event.error.turn_id)
                    if reply is not None:
                        reply.failure = event.error.code
            self.stream_failure = self.stream_failure or "CANCELLED"
        except grpc.aio.AioRpcError as error:
            self.stream_failure = error.code().name
        finally:
            for reply in replies.values():  # the stream is over: nothing more will arrive for any reply
                reply.ended.set()
                reply.interrupted.set()
            async with self.reply_started:
                self.reply_started.notify_all()

    async def _on_turn_event(self, event: conversation_pb2.TurnEvent, replies: dict[str, _Reply], now: float) -> None:
        if event.type == TurnType.RESPONSE_STARTED:
            reply = _Reply(event.turn_id, now)
            replies[event.turn_id] = reply
            self.replies.append(reply)
            async with self.reply_started:
                self.reply_started.notify_all()
        elif event.type == TurnType.RESPONSE_INTERRUPTED and event.turn_id in replies:
            replies[event.turn_id].interrupted_at = now  # the server stopped sending its audio
            replies[event.turn_id].interrupted.set()
            replies[event.turn_id].ended.set()

    async def _wait_future(self, future: asyncio.Future) -> float:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.scenario.turn_timeout_s)
        except TimeoutError:
            return time.monotonic()

    @staticmethod
    async def _wait(event: asyncio.Event, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)


async def wait_for_reply_end(reply: _Reply, scenario: Scenario, asked_at: float) -> None:
    """Wait until the reply ends, or has failed (module docstring): `turn_timeout_s` after `asked_at`, and on while its
    audio keeps coming (`stall_timeout_s`), up to `max_reply_s`."""
    last_chance = asked_at + scenario.max_reply_s
    while not reply.ended.is_set():
        heard_at = reply.last_audio_at if reply.last_audio_at is not None else reply.started_at
        until = min(max(asked_at + scenario.turn_timeout_s, heard_at + scenario.stall_timeout_s), last_chance)
        if time.monotonic() >= until:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reply.ended.wait(), until - time.monotonic())
