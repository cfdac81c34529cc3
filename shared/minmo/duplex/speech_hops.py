"""The speech half of one response: voicelm and vocoder calls fed from what the response logged, each reopened on
its own replica when it breaks, continuing where it stopped.

Both per-turn calls are fed from a log with a cursor: the text positions the LLM produced go to voicelm, the speech
tokens voicelm produced go to the vocoder. A pump writes whatever its call has not had yet, so a new call gets the
whole log first and then the rest as it arrives. When a hop breaks mid-turn (its replica died):
- voicelm: a new Synthesize call is told the speech tokens the turn already has (`prefix_speech_tokens`) and is fed
  every position again; it reads those tokens in place of its own draws and sends only what follows, numbered on.
  The vocoder call stays open and simply receives the rest: nothing is synthesised twice, nothing heard again.
- vocoder: a new Vocode call is fed the logged speech tokens (its flow caches are rebuilt from them; the flow's
  noise is fixed by mel frame, so the audio comes out the same) and told to resume at the sample the client has
  (`resume_at_sample`): the vocoder passes over the audio before it instead of synthesising it again, so a failover
  late in a long reply costs about one chunk; anything a chunk repeats is dropped. voicelm goes on undisturbed.
Only when no replica takes a hop (`FAILOVER_DELAYS_S` spent) or the turn's deadline passes does the turn fail.

Pacing (`audio_lead_s`): the vocoder, the most expensive hop, is fed speech tokens only as far as `audio_lead_s` of
audio ahead of the client's real-time playback (which starts at the first PCM); voicelm paces its own tail by the
same lead (SynthesizeConfig.audio_lead_ms, set by `Response`). A reply is then synthesised while it
plays, instead of in one burst at its start that delays every other session's first audio on the same CPUs (the
first audio is never held: the first `audio_lead_s` of tokens go at once), and a reply the user interrupts stops
costing vocoder compute `audio_lead_s` after the point they heard. 0 feeds every token as it comes.

A call is never read or written by a task that is cancelled while the call is healthy (cancelling a grpc.aio read or
write cancels the call): each call has its own reader task, stopped only when that call is abandoned, and the
vocoder is written by its own pump task, never by voicelm's reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field

import grpc

from minmo.api.speech_tokens import split_speech_tokens
from minmo.audio.pcm import PCM16_BYTES
from minmo.duplex.latency import TurnTimings, now_ms
from minmo.duplex.links import FAILOVER_DELAYS_S, NOT_RETRIED, LinkLost, Replicas, ReplicasFull
from minmo.model.config import SPEECH_TOKEN_RATE_HZ
from minmo.v1 import vocoder_pb2, voicelm_pb2

log = logging.getLogger(__name__)
VOICELM, VOCODER = "voicelm", "vocoder"
HOP_ERRORS = (grpc.aio.AioRpcError, asyncio.InvalidStateError)  # a call that broke, or a write to one that ended
MAX_FAILOVERS = 2 * len(FAILOVER_DELAYS_S)  # hop reopenings per response: replicas that accept and die at once
PACING_STEP_S = 0.2  # a paced vocoder is fed every this often (5 speech tokens), so its work stays spread out


@dataclass
class _Hop:
    """One hop's current call, its reader, and how much of its log the call has had."""

    name: str
    call: grpc.aio.StreamStreamCall | None = None
    reader: asyncio.Task | None = None
    sent: int = 0  # log entries written to this call
    ended: bool = False  # the end marker (TextEnd / Flush) was written to this call
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one writer: the pump or a reopening


@dataclass
class _Broken:
    hop: _Hop
    call: grpc.aio.StreamStreamCall
    error: BaseException


class SpeechHops:
    """Feeds the response's text positions through voicelm and the vocoder; `run` supervises them to the end."""

    def __init__(
        self,
        voicelm: Replicas,
        vocoder: Replicas,
        synthesize: voicelm_pb2.SynthesizeConfig,
        vocode: vocoder_pb2.VocodeConfig,
        timings: TurnTimings,
        timeout_s: float,
        on_pcm: Callable[[bytes, bool], Awaitable[None]],
        audio_lead_s: float = 0.0,
        first_audio_tokens: int = 0,
    ) -> None:
        """`on_pcm(pcm16, last)` gets the turn's audio once, in order; `timeout_s` is the turn's deadline;
        `audio_lead_s` paces the vocoder (module docstring; 0: no pacing); `first_audio_sent` is set once the vocoder
        was written `first_audio_tokens` speech tokens (those of token2wav's first chunk) or the turn's flush."""
        self.replicas = {VOICELM: voicelm, VOCODER: vocoder}
        self.audio_lead_s = audio_lead_s
        self.first_audio_tokens = first_audio_tokens
        self.first_audio_sent = asyncio.Event()
        self.configs = {VOICELM: synthesize, VOCODER: vocode}
        self.timings = timings
        self.timeout_s = timeout_s
        self.on_pcm = on_pcm
        self.positions: list[voicelm_pb2.TextPositions] = []  # every text position of the turn, to replay
        self.text_done = False
        self.speech_tokens: list[int] = []  # every speech token voicelm produced, to replay
        self.synthesis_done = False
        self.samples_out = 0  # vocoder samples passed to on_pcm
        self.failovers = 0
        self.voicelm, self.vocoder = _Hop(VOICELM), _Hop(VOCODER)
        self._broken: asyncio.Queue[_Broken] = asyncio.Queue()
        self._finished = asyncio.Event()  # the vocoder's VocodeDone was read: the turn's audio is out
        self._tokens_ready = asyncio.Event()  # voicelm's reader logged speech tokens (or SynthesisDone)
        self._started = now_ms()

    async def run(self, text: Coroutine) -> None:
        """Open both hops, run `text` (which calls `add_positions` and `end_text`) and keep the hops going until the
        audio is out; a hop that breaks is reopened (module docstring). Raises LinkLost (the LLM's, or a hop's with
        no replica left) or the hop's AioRpcError when it refused the turn itself."""
        try:
            opened = await asyncio.gather(self._open(self.voicelm), self._open(self.vocoder), return_exceptions=True)
            if failures := [result for result in opened if isinstance(result, BaseException)]:
                raise failures[0]
        except BaseException:  # a hop refused, or the turn was cancelled (barge-in) while they opened
            text.close()  # never started: closing it says so, instead of a "never awaited" warning
            self.cancel()
            raise
        text_task = asyncio.create_task(text, name="speech-text")
        pump = asyncio.create_task(self._vocoder_pump(), name="vocoder-pump")
        try:
            while not self._finished.is_set():
                broken = asyncio.create_task(self._broken.get())
                finished = asyncio.create_task(self._finished.wait())
                waiting = {broken, finished} | ({text_task} if not text_task.done() else set())
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (broken, finished):
                        task.cancel()
                if text_task.done() and text_task.exception() is not None:
                    raise text_task.exception()
                if broken.done() and not broken.cancelled():
                    await self._fail_over(broken.result())
        finally:
            for task in (text_task, pump):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not self._finished.is_set():  # a finished turn's calls end on their own (the services close them)
                self.cancel()

    def cancel(self) -> None:
        """Stop both hops' calls now (barge-in, or the turn failed)."""
        for hop in (self.voicelm, self.vocoder):
            if hop.call is not None:
                hop.call.cancel()
            if hop.reader is not None:
                hop.reader.cancel()

    # --- the pumps: log in, whatever the current call has not had out ---------------------------------------------

    async def add_positions(self, positions: voicelm_pb2.TextPositions) -> None:
        self.positions.append(positions)
        await self._feed_voicelm()

    async def end_text(self) -> None:
        self.text_done = True
        await self._feed_voicelm()

    async def _feed_voicelm(self) -> None:
        hop = self.voicelm
        async with hop.lock:
            call = hop.call
            if call is None:
                return
            try:
                while hop.sent < len(self.positions):
                    await call.write(voicelm_pb2.SynthesizeRequest(text_positions=self.positions[hop.sent]))
                    hop.sent += 1
                if self.text_done and not hop.ended:
                    total = voicelm_pb2.TextEnd(total_positions=len(self.positions))
                    await call.write(voicelm_pb2.SynthesizeRequest(text_end=total))
                    await call.done_writing()
                    hop.ended = True
                    self.first_audio_sent.set()
            except HOP_ERRORS as error:
                self._report(hop, call, error)

    async def _vocoder_pump(self) -> None:
        held_s = None  # while pacing holds tokens back: when to look again, unless new tokens or the first PCM come
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tokens_ready.wait(), held_s)
            self._tokens_ready.clear()
            held_s = await self._feed_vocoder() or None

    def _paced_tokens(self) -> tuple[int, float]:
        """How many logged tokens the vocoder may have now, and when to look again (0: it may have them all)."""
        logged = len(self.speech_tokens)
        if self.audio_lead_s <= 0:
            return logged, 0.0
        played_s = (now_ms() - self.timings.first_pcm) / 1000 if self.timings.first_pcm is not None else 0.0
        allowed = int((played_s + self.audio_lead_s) * SPEECH_TOKEN_RATE_HZ)
        if allowed >= logged:
            return logged, 0.0
        if self.timings.first_pcm is None:  # the playback clock starts at the first PCM, which wakes the pump
            return allowed, self.audio_lead_s
        return allowed, PACING_STEP_S

    async def _feed_vocoder(self) -> float:
        """Write the tokens the vocoder may have (pacing) and, once it has them all, the flush; returns the seconds
        until held-back tokens may go (0: none held)."""
        hop = self.vocoder
        async with hop.lock:
            call = hop.call
            if call is None:
                return 0.0
            try:
                while hop.sent < (paced := self._paced_tokens())[0]:  # the log grows while this writes
                    if self.timings.first_tokens_to_vocoder is None:
                        self.timings.first_tokens_to_vocoder = now_ms()
                    pending = self.speech_tokens[hop.sent : paced[0]]
                    for part in split_speech_tokens(pending, hop.sent):
                        await call.write(vocoder_pb2.VocodeRequest(speech_tokens=part))
                    hop.sent += len(pending)
                    if hop.sent >= self.first_audio_tokens:
                        self.first_audio_sent.set()
                if hop.sent < len(self.speech_tokens):
                    return paced[1]
                if self.synthesis_done and not hop.ended:
                    flush = vocoder_pb2.Flush(total_tokens=len(self.speech_tokens))
                    await call.write(vocoder_pb2.VocodeRequest(flush=flush))
                    await call.done_writing()
                    hop.ended = True
                    self.first_audio_sent.set()
            except HOP_ERRORS as error:
                self._report(hop, call, error)
            return 0.0

    async def _read_voicelm(self, call: grpc.aio.StreamStreamCall) -> None:
        """Speech tokens into the log (a reopened call numbers on after the prefix it was given), then the vocoder."""
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.HasField("speech_tokens"):
                    tokens = response.speech_tokens
                    if self.timings.first_speech_tokens is None:
                        self.timings.first_speech_tokens = now_ms()
                    known = len(self.speech_tokens) - tokens.first_index  # already logged (never on a sound stream)
                    self.speech_tokens += list(tokens.ids)[max(known, 0) :]
                else:
                    self.timings.voicelm_first_tokens_compute_ms = response.synthesis_done.first_tokens_ms or None
                    self.synthesis_done = True
                self._tokens_ready.set()
                if self.synthesis_done:
                    return
            self._report(self.voicelm, call, LinkLost("the voicelm stream ended before SynthesisDone"))
        except grpc.aio.AioRpcError as error:
            self._report(self.voicelm, call, error)

    async def _read_vocoder(self, call: grpc.aio.StreamStreamCall) -> None:
        """The call's PCM to the client, less any samples it already has (by each chunk's start_sample)."""
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.HasField("pcm_chunk"):
                    if self.timings.first_pcm is None:
                        self.timings.first_pcm = now_ms()
                        self._tokens_ready.set()  # the playback clock started: paced tokens may follow
                    chunk = response.pcm_chunk
                    known = min(max(self.samples_out - chunk.start_sample, 0), len(chunk.audio) // PCM16_BYTES)
                    audio = chunk.audio[known * PCM16_BYTES :]
                    if audio:
                        self.samples_out += len(audio) // PCM16_BYTES
                        await self.on_pcm(audio, False)
                else:
                    self.timings.vocoder_first_chunk_compute_ms = response.vocode_done.first_chunk_ms or None
                    await self.on_pcm(b"", True)
                    self._finished.set()
                    return
            self._report(self.vocoder, call, LinkLost("the vocoder stream ended before VocodeDone"))
        except grpc.aio.AioRpcError as error:
            self._report(self.vocoder, call, error)

    def _report(self, hop: _Hop, call: grpc.aio.StreamStreamCall, error: BaseException) -> None:
        self._broken.put_nowait(_Broken(hop, call, error))

    # --- opening and failover -------------------------------------------------------------------------------------

    async def _open(self, hop: _Hop) -> None:
        """A new call for `hop` on a replica that admits it, configured and fed its log from the start."""
        remaining_s = self.timeout_s - (now_ms() - self._started) / 1000
        if remaining_s <= 0:
            raise LinkLost(f"the turn's deadline passed before a {hop.name} replica took it")
        method = "Synthesize" if hop is self.voicelm else "Vocode"
        call = await self.replicas[hop.name].open(method, timeout=remaining_s)
        async with hop.lock:
            hop.call, hop.sent, hop.ended = call, 0, False
            try:
                if hop is self.voicelm:
                    config = voicelm_pb2.SynthesizeConfig()
                    config.CopyFrom(self.configs[VOICELM])
                    config.prefix_speech_tokens[:] = self.speech_tokens
                    await call.write(voicelm_pb2.SynthesizeRequest(config=config))
                else:
                    config = vocoder_pb2.VocodeConfig()
                    config.CopyFrom(self.configs[VOCODER])
                    config.resume_at_sample = self.samples_out
                    await call.write(vocoder_pb2.VocodeRequest(config=config))
            except HOP_ERRORS as error:
                call.cancel()
                if isinstance(error, asyncio.InvalidStateError):  # the replica ended the call as it opened
                    raise LinkLost(f"the {hop.name} call ended as it opened") from error
                raise
        read = self._read_voicelm if hop is self.voicelm else self._read_vocoder
        hop.reader = asyncio.create_task(read(call), name=f"{hop.name}-reader")
        await (self._feed_voicelm() if hop is self.voicelm else self._feed_vocoder())
        if hop is self.vocoder:  # the pump stopped looking while the hop had no call: tokens may still be held back
            self._tokens_ready.set()

    async def _fail_over(self, broken: _Broken) -> None:
        """Reopen the broken hop on another replica; raises what broke it when that is not to be retried or no
        replica took it."""
        hop, error = broken.hop, broken.error
        if broken.call is not hop.call:
            return  # an earlier call of the hop, already replaced
        if isinstance(error, grpc.aio.AioRpcError) and error.code() in NOT_RETRIED:
            raise error
        if isinstance(error, asyncio.InvalidStateError) and broken.call.done():  # a write to a call that ended
            status = f"{(await broken.call.code()).name}: {await broken.call.details()}"
            error = LinkLost(f"{hop.name} call ended ({status})")
        broken.call.cancel()
        if hop.reader is not None and hop.reader is not asyncio.current_task():
            hop.reader.cancel()
        hop.call = None
        if self.failovers >= MAX_FAILOVERS:
            raise error
        last: BaseException = error
        for delay in FAILOVER_DELAYS_S:
            await asyncio.sleep(delay)
            try:
                await self._open(hop)
            except (LinkLost, *HOP_ERRORS) as reopen_error:
                last = reopen_error
                log.warning("%s failover attempt failed: %s", hop.name, _describe(reopen_error))
                continue
            self.failovers += 1
            self.timings.failovers.append(hop.name)
            log.warning(
                "%s stream lost (%s); reopened on another replica after %d text positions and %d speech tokens",
                hop.name,
                _describe(error),
                len(self.positions),
                len(self.speech_tokens),
            )
            return
        raise last if isinstance(last, ReplicasFull) else error  # every replica full: RESOURCE_EXHAUSTED, else lost


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)
