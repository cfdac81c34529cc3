"""One assistant response: LLM text tokens -> voicelm speech tokens -> vocoder PCM -> the client.

Three hops run as a pipeline: each text token goes to voicelm the moment the LLM emits it, each batch of
speech tokens to the vocoder the moment voicelm emits it, and each PCM chunk to the client the moment
the vocoder emits it. Cancelling the response (barge-in) cancels the voicelm and vocoder calls at once
and tells the LLM to drop the response from its context; `heard` then maps the audio the user actually
heard back to the words that audio spoke (the 5:15 schedule).

Failover: when the voicelm or vocoder call breaks mid-turn (its replica died), the speech half of the turn is
reopened on another replica and replayed from what this response logged: every text position the LLM produced
goes to the new voicelm, and of the new audio the samples the client already has are skipped, so the user hears
the reply continue where it stopped without resending anything. Speech tokens are regenerated, so with sampling
on, the rest of the audio may differ slightly from what the lost replica would have said; the words do not.
Only when no replica takes the turn (`FAILOVER_DELAYS_S` spent) does the turn fail.

First audio first: the text positions after the first `first_audio_positions` (those whose speech tokens complete
token2wav's first chunk) go to voicelm only once the vocoder's first PCM is out. The in-process pipeline runs in
that order by construction (one step at a time); here, without the hold, voicelm would race ahead through the rest
of the turn (every later block, and at TextEnd the whole tail) on the CPUs the vocoder needs for the first chunk.
The held positions are ahead of playback anyway: each block is 0.6 s of audio and takes a fraction of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from minmo.api.speech_tokens import split_speech_tokens
from minmo.audio.pcm import PCM16_BYTES, StreamingResampler, float_to_pcm16, pcm16_to_float
from minmo.duplex.latency import TurnTimings, now_ms
from minmo.duplex.links import FAILOVER_DELAYS_S, NOT_RETRIED, LinkLost, LlmLink, Replicas
from minmo.model.config import VOCODER_SAMPLE_RATE_HZ, MinMoConfig
from minmo.model.interleave import VoiceSchedule, speech_tokens_at
from minmo.v1 import (
    common_pb2,
    conversation_pb2,
    llm_pb2,
    vocoder_pb2,
    voicelm_pb2,
)

VOCODER_RATE = VOCODER_SAMPLE_RATE_HZ  # the vocoder speaks at its own rate; the client's is made here
FIRST_AUDIO_HOLD_LIMIT_S = 2.0  # longest that positions wait for the first PCM (it is due well before)

Emit = Callable[[conversation_pb2.ServerEvent], Awaitable[None]]
log = logging.getLogger(__name__)


def first_audio_positions(cfg: MinMoConfig) -> int:
    """Text positions whose speech tokens complete token2wav's first chunk (its tokens and their lookahead)."""
    first_chunk = cfg.flow.first_chunk_tokens + cfg.flow.lookahead_tokens
    return VoiceSchedule.from_config(cfg.voice_token_lm).positions_for_tokens(first_chunk)


@dataclass
class ResponseResult:
    text: str
    audio_ms: float
    token_count: int
    end_reason: str


@dataclass
class Response:
    """A response in flight; `run` drives it, `cancel` stops it, `heard` says what the user heard."""

    session_id: str
    turn_id: str
    llm: LlmLink
    voicelm: Replicas | None  # None: text-only session
    vocoder: Replicas | None
    emit: Emit
    output_rate: int
    instruction: str  # the turn's voice instruction (to the LLM and the voice-token LM)
    max_tokens: int
    timings: TurnTimings
    timeout_s: float  # deadline of the per-turn voicelm and vocoder calls
    trace_context: dict[str, str] = field(default_factory=dict)
    voice: vocoder_pb2.VoiceConditioning | None = None  # the session's prompt voice for the flow; None: default
    first_audio_positions: int = 0  # text positions that complete the first audio chunk; later ones wait for it
    pieces: list[str] = field(default_factory=list)
    speech_tokens: int = 0
    audio_samples_sent: int = 0  # at VOCODER_RATE
    end_reason: str = "EOS"  # ResponseEnd.Reason name
    ended: bool = False  # its terminal RESPONSE_DONE was sent
    failovers: int = 0  # times the speech hops were reopened on another replica
    _calls: list = field(default_factory=list)
    _positions: list = field(default_factory=list)  # every TextPositions sent to voicelm, to replay
    _text_done: bool = False  # the LLM's ResponseEnd was read
    _resampler: StreamingResampler | None = None  # one for the whole response: the audio stays continuous
    _first_audio: asyncio.Event = field(default_factory=asyncio.Event)  # the vocoder's first PCM (or its end)

    @property
    def audio_ms(self) -> float:
        return 1000 * self.audio_samples_sent / VOCODER_RATE

    def heard(self, played_ms: float | None, schedule: VoiceSchedule) -> tuple[float, str]:
        """(ms, text) the user heard: what the client says it played, at most what was sent."""
        heard_ms = self.audio_ms if played_ms is None else min(played_ms, self.audio_ms)
        if self.voicelm is None:
            return heard_ms, "".join(self.pieces)
        positions = schedule.text_positions_heard(speech_tokens_at(heard_ms / 1000), len(self.pieces))
        return heard_ms, "".join(self.pieces[:positions])

    async def run(self) -> ResponseResult:
        queue = self.llm.subscribe(self.turn_id, self.max_tokens)
        try:
            await self.llm.write(
                llm_pb2.LlmRequest(
                    generate_response=llm_pb2.GenerateResponse(
                        turn_id=self.turn_id,
                        trace_context=self.trace_context,
                        instruction=self.instruction,
                        max_tokens=self.max_tokens,
                    )
                )
            )
            self.timings.generate_sent = now_ms()
            if self.voicelm is None:
                end = await self._text_only(queue)
            else:
                end = await self._with_speech(queue)
        finally:
            self.llm.unsubscribe(self.turn_id)
        return ResponseResult("".join(self.pieces), self.audio_ms, len(self.pieces), end)

    async def cancel(self) -> None:
        """Barge-in: stop the downstream calls now and have the LLM drop the response."""
        for call in self._calls:
            call.cancel()
        with contextlib.suppress(LinkLost):
            await self.llm.write(
                llm_pb2.LlmRequest(
                    cancel_generation=llm_pb2.CancelGeneration(turn_id=self.turn_id, trace_context=self.trace_context)
                )
            )

    async def _text_only(self, queue: asyncio.Queue) -> str:
        async for token in self._tokens(queue):
            await self._emit_text(token.text)
        return self.end_reason

    async def _with_speech(self, queue: asyncio.Queue) -> str:
        """The speech hops, reopened on another replica when one breaks (module docstring); the LLM's own loss
        (LinkLost from its queue) and running out of replicas end the turn."""
        started = now_ms()
        for attempt, delay in enumerate(FAILOVER_DELAYS_S):
            await asyncio.sleep(delay)
            remaining_s = self.timeout_s - (now_ms() - started) / 1000
            synth, vocode = await self._open_calls(remaining_s)  # on replicas that admit them (ReplicasFull: none)
            self._calls[:] = [synth, vocode]
            try:
                return await self._speak(queue, synth, vocode)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError) as error:
                for call in (synth, vocode):
                    call.cancel()  # a failed attempt leaves no per-turn call open
                hop_error = error
                if isinstance(error, grpc.aio.AioRpcError) and error.code() in NOT_RETRIED:
                    break
                if attempt + 1 < len(FAILOVER_DELAYS_S):
                    self.failovers += 1
                    log.warning("turn %s: speech hop lost (%s); reopening on another replica", self.turn_id, error)
            except LinkLost:
                for call in (synth, vocode):
                    call.cancel()
                raise
        if isinstance(hop_error, asyncio.InvalidStateError):  # a write to a call that ended: its service is gone
            raise LinkLost(await _ended_call({"voicelm": synth, "vocoder": vocode})) from hop_error
        raise hop_error

    async def _open_calls(self, timeout_s: float) -> tuple[grpc.aio.StreamStreamCall, grpc.aio.StreamStreamCall]:
        """The turn's Synthesize and Vocode streams, each on a replica that admitted it (opened side by side)."""
        opened = await asyncio.gather(
            self.voicelm.open("Synthesize", timeout=timeout_s),
            self.vocoder.open("Vocode", timeout=timeout_s),
            return_exceptions=True,
        )
        failures = [result for result in opened if isinstance(result, BaseException)]
        if failures:
            for result in opened:
                if not isinstance(result, BaseException):
                    result.cancel()
            raise failures[0]
        return opened[0], opened[1]

    async def _speak(self, queue: asyncio.Queue, synth, vocode) -> str:
        await synth.write(
            voicelm_pb2.SynthesizeRequest(
                config=voicelm_pb2.SynthesizeConfig(
                    session_id=self.session_id,
                    turn_id=self.turn_id,
                    trace_context=self.trace_context,
                    voice_instruction=self.instruction,
                )
            )
        )
        await vocode.write(
            vocoder_pb2.VocodeRequest(
                config=vocoder_pb2.VocodeConfig(
                    session_id=self.session_id,
                    turn_id=self.turn_id,
                    trace_context=self.trace_context,
                    sample_rate_hz=VOCODER_RATE,
                    voice=self.voice,
                )
            )
        )
        speech = asyncio.create_task(self._speech_tokens_to_vocoder(synth, vocode))
        audio = asyncio.create_task(self._pcm_to_client(vocode, skip_samples=self.audio_samples_sent))
        for task in (speech, audio):  # a hop that ends early (or fails) releases held positions: no wait on it
            task.add_done_callback(lambda _: self._first_audio.set())
        try:
            for positions in self._positions:  # a reopened hop: what the lost one had, first
                await synth.write(voicelm_pb2.SynthesizeRequest(text_positions=positions))
            if not self._text_done:
                async for token in self._tokens(queue):
                    if self.timings.first_positions_sent is None:
                        self.timings.first_positions_sent = now_ms()
                    positions = voicelm_pb2.TextPositions(
                        hidden=token.hidden, token_embedding=token.token_embedding, first_index=token.index
                    )
                    self._positions.append(positions)  # logged (and shown) first: a failed write replays it
                    await self._emit_text(token.text)
                    await self._after_first_audio(len(self._positions) - 1)
                    await synth.write(voicelm_pb2.SynthesizeRequest(text_positions=positions))
                self._text_done = True
            await self._after_first_audio(len(self._positions))
            await synth.write(
                voicelm_pb2.SynthesizeRequest(text_end=voicelm_pb2.TextEnd(total_positions=len(self._positions)))
            )
            await synth.done_writing()
            await asyncio.gather(speech, audio)
        finally:
            for task in (speech, audio):
                task.cancel()
        return self.end_reason

    async def _after_first_audio(self, positions_before: int) -> None:
        """Hold a message to voicelm that `positions_before` text positions precede until the first PCM is out, when
        those positions already complete the first audio chunk (module docstring)."""
        if self.first_audio_positions and positions_before >= self.first_audio_positions:
            with contextlib.suppress(TimeoutError):  # a vocoder that needs more tokens than expected: stop holding
                await asyncio.wait_for(self._first_audio.wait(), FIRST_AUDIO_HOLD_LIMIT_S)
            self._first_audio.set()

    async def _tokens(self, queue: asyncio.Queue):
        """The turn's TextTokens until ResponseEnd; a lost LLM stream raises LinkLost."""
        while True:
            message = await queue.get()
            if isinstance(message, LinkLost):
                raise message
            if isinstance(message, llm_pb2.ResponseEnd):
                self.end_reason = llm_pb2.ResponseEnd.Reason.Name(message.reason)
                self.timings.llm_first_token_compute_ms = message.first_token_ms or None
                return
            self.timings.token_times.append(now_ms())
            yield message

    async def _emit_text(self, piece: str) -> None:
        self.pieces.append(piece)
        await self.emit(
            conversation_pb2.ServerEvent(
                transcript=conversation_pb2.Transcript(
                    turn_id=self.turn_id, role=common_pb2.ROLE_ASSISTANT, text=piece, is_final=False
                )
            )
        )

    async def _speech_tokens_to_vocoder(self, synth, vocode) -> None:
        sent = 0  # speech tokens on this vocoder call
        while (response := await synth.read()) is not grpc.aio.EOF:
            if response.HasField("speech_tokens"):
                if self.timings.first_speech_tokens is None:
                    self.timings.first_speech_tokens = now_ms()
                    self.timings.first_tokens_to_vocoder = now_ms()
                tokens = response.speech_tokens
                sent += len(tokens.ids)
                self.speech_tokens = max(self.speech_tokens, sent)
                for part in split_speech_tokens(tokens.ids, tokens.first_index):  # whatever size voicelm sent
                    await vocode.write(vocoder_pb2.VocodeRequest(speech_tokens=part))
            else:
                self.timings.voicelm_first_tokens_compute_ms = response.synthesis_done.first_tokens_ms or None
                await vocode.write(vocoder_pb2.VocodeRequest(flush=vocoder_pb2.Flush(total_tokens=sent)))
                await vocode.done_writing()
                return

    async def _pcm_to_client(self, vocode, skip_samples: int = 0) -> None:
        """The vocoder's PCM to the client; a reopened hop's first `skip_samples` (the client has them) are dropped."""
        if self._resampler is None:
            self._resampler = StreamingResampler(VOCODER_RATE, self.output_rate)
        resampler = self._resampler
        while (response := await vocode.read()) is not grpc.aio.EOF:
            if response.HasField("pcm_chunk"):
                if self.timings.first_pcm is None:
                    self.timings.first_pcm = now_ms()
                self._first_audio.set()
                audio = response.pcm_chunk.audio
                if skip_samples:
                    skipped = min(skip_samples, len(audio) // PCM16_BYTES)
                    audio, skip_samples = audio[skipped * PCM16_BYTES :], skip_samples - skipped
                    if not audio:
                        continue
                await self._send_audio(resampler, audio, last=False)
            else:
                self.timings.vocoder_first_chunk_compute_ms = response.vocode_done.first_chunk_ms or None
                await self._send_audio(resampler, b"", last=True)
                return

    async def _send_audio(self, resampler: StreamingResampler, pcm16: bytes, last: bool) -> None:
        samples = pcm16_to_float(pcm16) if pcm16 else np.zeros(0, dtype=np.float32)
        out = resampler.process(samples, last=last)
        start_ms = self.audio_ms
        self.audio_samples_sent += len(samples)
        if out.size == 0:
            return
        if self.timings.first_audio_sent is None:
            self.timings.first_audio_sent = now_ms()
        await self.emit(
            conversation_pb2.ServerEvent(
                audio_output=conversation_pb2.AudioOutput(
                    turn_id=self.turn_id,
                    audio=float_to_pcm16(out),
                    sample_rate_hz=self.output_rate,
                    start_ms=round(start_ms),
                )
            )
        )


async def _ended_call(calls: dict[str, grpc.aio.StreamStreamCall]) -> str:
    """What ended the first of the turn's calls that is already over (hop and gRPC status)."""
    for hop, call in calls.items():
        if call.done():
            return f"{hop} call ended ({(await call.code()).name}: {await call.details()})"
    return "a per-turn call ended early"
