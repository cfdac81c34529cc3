"""One assistant response: LLM text tokens -> voicelm speech tokens -> vocoder PCM -> the client.

Three hops run as a pipeline: each text token goes to voicelm the moment the LLM emits it, each batch of
speech tokens to the vocoder the moment voicelm emits it, and each PCM chunk to the client the moment
the vocoder emits it. Cancelling the response (barge-in) cancels the voicelm and vocoder calls at once
and tells the LLM to drop the response from its context; `heard` then maps the audio the user actually
heard back to the words that audio spoke (the 5:15 schedule).

Failover: when the voicelm or vocoder call breaks mid-turn (its replica died), that hop alone is reopened on another
replica and continues from what this response logged (`minmo.duplex.speech_hops`): a new voicelm goes on after the
speech tokens already produced, a new vocoder re-runs the logged speech tokens and the samples the client already
has are skipped, so the user hears the reply continue where it stopped, nothing twice, without resending anything.
Only when no replica takes the hop (`FAILOVER_DELAYS_S` spent) does the turn fail.

When the llm stream breaks mid-reply, `resume_llm` (`minmo.duplex.failover`) continues the reply on another llm
replica after the tokens it already has; the speech hops stay open and simply receive the rest of the text.

First audio first: the text positions after the first `first_audio_positions` (those whose speech tokens complete
token2wav's first chunk) go to voicelm only once the vocoder has been sent that chunk's `first_audio_tokens`. The
in-process pipeline runs in that order by construction (one step at a time); here, without the hold, voicelm would
race ahead through the rest of the turn (every later block, and at TextEnd the whole tail) on the CPUs the first
chunk's speech tokens need. The LLM holds too: asked with `pause_after_tokens`, it stops after those positions' tokens
and writes the rest of the reply (then the transcript of the user's turn) once told the vocoder has them
(`ResumeGeneration`). From then the LLM and voicelm work alongside the vocoder's first chunk: held until its PCM was
out, as they were, they left the other core idle meanwhile, and nano's second chunk came ~0.8 s after a first one
that plays 0.3 s (README, "A shorter second chunk").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from minmo.audio.pcm import StreamingResampler, float_to_pcm16, pcm16_to_float
from minmo.duplex.latency import TurnTimings, now_ms
from minmo.duplex.links import LinkLost, LlmLink, Replicas
from minmo.duplex.speech_hops import SpeechHops
from minmo.model.config import VOCODER_SAMPLE_RATE_HZ
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
ResumeLlm = Callable[["Response", LinkLost], Awaitable[asyncio.Queue]]  # a new token queue, or raises the LinkLost


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
    resume_llm: ResumeLlm | None = None  # continues the reply on another llm replica; None: a lost llm fails it
    first_audio_positions: int = 0  # text positions that complete the first audio chunk; later ones wait for it
    first_audio_tokens: int = 0  # speech tokens of the first audio chunk: the hold ends when the vocoder has them
    audio_lead_s: float = 0.0  # the vocoder works at most this far ahead of real-time playback (speech_hops.py)
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # the reply's tokens so far (a failover's prefix)
    speech_tokens: int = 0
    audio_samples_sent: int = 0  # at VOCODER_RATE
    end_reason: str = "EOS"  # ResponseEnd.Reason name
    ended: bool = False  # its terminal RESPONSE_DONE was sent
    text_done: bool = False  # the LLM's ResponseEnd came: the LLM is free to listen while the speech goes on
    failovers: int = 0  # times the speech hops were reopened on another replica
    _hops: SpeechHops | None = None  # the voicelm and vocoder calls (speech sessions)
    _queue: asyncio.Queue | None = None  # the turn's messages from the LLM stream (a new one after an llm failover)
    _resampler: StreamingResampler | None = None  # one for the whole response: the audio stays continuous
    _released: asyncio.Event = field(default_factory=asyncio.Event)  # the first chunk's tokens reached the vocoder

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
        self._queue = self.llm.subscribe(self.turn_id, self.max_tokens)
        try:
            await self.llm.write(
                llm_pb2.LlmRequest(
                    generate_response=llm_pb2.GenerateResponse(
                        turn_id=self.turn_id,
                        trace_context=self.trace_context,
                        instruction=self.instruction,
                        max_tokens=self.max_tokens,
                        pause_after_tokens=self.first_audio_positions if self.voicelm is not None else 0,
                    )
                )
            )
            self.timings.generate_sent = now_ms()
            if self.voicelm is None:
                end = await self._text_only()
            else:
                end = await self._with_speech()
        finally:
            self.llm.unsubscribe(self.turn_id)
        return ResponseResult("".join(self.pieces), self.audio_ms, len(self.pieces), end)

    async def cancel(self) -> None:
        """Barge-in: stop the downstream calls now and have the LLM drop the response."""
        if self._hops is not None:
            self._hops.cancel()
        with contextlib.suppress(LinkLost):
            await self.llm.write(
                llm_pb2.LlmRequest(
                    cancel_generation=llm_pb2.CancelGeneration(turn_id=self.turn_id, trace_context=self.trace_context)
                )
            )

    async def _text_only(self) -> str:
        async for token in self._tokens():
            await self._emit_text(token.text)
        return self.end_reason

    async def _with_speech(self) -> str:
        """The speech hops (`SpeechHops`: each reopened on another replica when it breaks, continuing from the log);
        the LLM's own loss (LinkLost from its queue, not continued) and running out of replicas end the turn."""
        synthesize = voicelm_pb2.SynthesizeConfig(
            session_id=self.session_id,
            turn_id=self.turn_id,
            trace_context=self.trace_context,
            voice_instruction=self.instruction,
            audio_lead_ms=round(self.audio_lead_s * 1000),
        )
        vocode = vocoder_pb2.VocodeConfig(
            session_id=self.session_id,
            turn_id=self.turn_id,
            trace_context=self.trace_context,
            sample_rate_hz=VOCODER_RATE,
            voice=self.voice,
        )
        self._resampler = StreamingResampler(VOCODER_RATE, self.output_rate)
        self._hops = SpeechHops(
            self.voicelm, self.vocoder, synthesize, vocode, self.timings, self.timeout_s, self._audio_out,
            self.audio_lead_s, self.first_audio_tokens,
        )
        release = asyncio.create_task(self._release_when_first_audio_sent(self._hops), name="first-audio-release")
        try:
            await self._hops.run(self._text_to_speech(self._hops))
        finally:
            release.cancel()
            self.failovers = self._hops.failovers
            self.speech_tokens = len(self._hops.speech_tokens)
        return self.end_reason

    async def _text_to_speech(self, hops: SpeechHops) -> None:
        async for token in self._tokens():
            if self.timings.first_positions_sent is None:
                self.timings.first_positions_sent = now_ms()
            positions = voicelm_pb2.TextPositions(
                hidden=token.hidden, token_embedding=token.token_embedding, first_index=token.index
            )
            await self._emit_text(token.text)
            await self._after_first_audio(len(hops.positions))
            await hops.add_positions(positions)
        await self._after_first_audio(len(hops.positions))
        await hops.end_text()

    async def _release_when_first_audio_sent(self, hops: SpeechHops) -> None:
        """End the first-audio hold once the vocoder has the first chunk's tokens."""
        await hops.first_audio_sent.wait()
        await self._release()

    async def _release(self) -> None:
        """End the hold: the LLM, paused after the tokens the first audio needed, writes the rest; held positions go."""
        if not self._released.is_set():
            self._released.set()
            with contextlib.suppress(LinkLost):  # a lost llm is the token queue's concern (`_tokens`)
                resume = llm_pb2.ResumeGeneration(turn_id=self.turn_id)
                await self.llm.write(llm_pb2.LlmRequest(resume_generation=resume))

    async def _after_first_audio(self, positions_before: int) -> None:
        """Hold a message to voicelm that `positions_before` text positions precede until the hold ends, when those
        positions already complete the first audio chunk (module docstring). The limit also frees a turn whose speech
        hop is being reopened or whose vocoder needs more tokens than expected."""
        if self.first_audio_positions and positions_before >= self.first_audio_positions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), FIRST_AUDIO_HOLD_LIMIT_S)
            await self._release()

    async def _tokens(self):
        """The turn's TextTokens until ResponseEnd; a lost LLM stream is continued elsewhere (`resume_llm`) or
        raises LinkLost."""
        while True:
            message = await self._queue.get()
            if isinstance(message, LinkLost):
                if len(self.token_ids) >= self.max_tokens:  # the reply was complete: only its ResponseEnd was lost
                    self.end_reason = "LENGTH"
                    return
                if self.resume_llm is None:
                    raise message
                self._queue = await self.resume_llm(self, message)
                continue
            if isinstance(message, llm_pb2.ResponseEnd):
                self.text_done = True
                self.end_reason = llm_pb2.ResponseEnd.Reason.Name(message.reason)
                self.timings.llm_first_token_compute_ms = message.first_token_ms or None
                return
            self.timings.token_times.append(now_ms())
            self.token_ids.append(message.token_id)
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

    async def _audio_out(self, pcm16: bytes, last: bool) -> None:
        await self._release()  # the hold has ended by now, unless the first chunk needed fewer tokens than expected
        await self._send_audio(self._resampler, pcm16, last)

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
