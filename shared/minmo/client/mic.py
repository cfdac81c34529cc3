"""`minmo chat --mic`: talk to MinMo live: microphone in, speaker out, turn after turn until Ctrl-C.

The microphone streams 100 ms PCM16 chunks at 16 kHz into a `Session`; replies play as they arrive. Speaking
over a reply is a barge-in: the server stops it (RESPONSE_INTERRUPTED), and the player drops what it still
had queued the moment the server hears the user start, so the speaker falls silent at once. The player tells
the server how much of each reply has really been played (PlaybackPosition), so the history keeps only the
words the user heard. Audio devices come from PortAudio through `sounddevice`; without a microphone or a
speaker, `check_devices` says so in one line before anything connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from rich.console import Console

from minmo.audio.pcm import PCM16_BYTES
from minmo.client.console import ConsoleRenderer
from minmo.client.session import Session
from minmo.client.wav import MS_PER_S
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ, VOCODER_SAMPLE_RATE_HZ
from minmo.v1 import conversation_pb2

INPUT_RATE = ENCODER_SAMPLE_RATE_HZ  # the speech encoder's rate; PortAudio resamples the microphone to it
OUTPUT_RATE = VOCODER_SAMPLE_RATE_HZ  # the vocoder's rate
CHUNK_MS = 100
POSITION_EVERY_S = 0.2  # PlaybackPosition while a reply plays (the API asks for every 100-250 ms)
TurnType = conversation_pb2.TurnEvent.Type
_STOP_PLAYBACK = (TurnType.USER_SPEECH_STARTED, TurnType.RESPONSE_INTERRUPTED)


class NoAudioDevice(RuntimeError):
    """There is no usable microphone or speaker here; the message says what to use instead."""


def check_devices():
    """The `sounddevice` module once a default microphone and speaker exist; NoAudioDevice (one line) otherwise."""
    try:
        import sounddevice
    except OSError as error:  # the PortAudio library itself is missing
        raise NoAudioDevice(
            f"no audio support on this machine ({error}); install PortAudio (Debian: libportaudio2), "
            "or talk with --wav FILE, --text, or `minmo web` in a browser"
        ) from None
    for kind, what in (("input", "microphone"), ("output", "speaker")):
        try:
            sounddevice.query_devices(kind=kind)
        except (sounddevice.PortAudioError, ValueError):
            raise NoAudioDevice(
                f"no {what} found (PortAudio sees no default {kind} device); "
                "talk with --wav FILE or --text instead, or open `minmo web` in a browser"
            ) from None
    return sounddevice


@dataclass
class _Queued:
    turn_id: str
    pcm: bytearray


class Player:
    """Reply audio waiting for the speaker, filled from the event loop and drained by PortAudio's callback thread.

    `played_ms` is what the speaker has really taken of the current reply; `stop` drops the rest (barge-in).
    """

    def __init__(self, sample_rate: int = OUTPUT_RATE) -> None:
        self.sample_rate = sample_rate
        self._lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._played: dict[str, int] = {}  # turn_id -> bytes handed to the speaker
        self.current: str | None = None  # the reply being played

    def add(self, turn_id: str, pcm16: bytes) -> None:
        with self._lock:
            if self._queue and self._queue[-1].turn_id == turn_id:
                self._queue[-1].pcm += pcm16
            else:
                self._queue.append(_Queued(turn_id, bytearray(pcm16)))

    def stop(self) -> None:
        """Silence now: drop everything not yet played."""
        with self._lock:
            self._queue.clear()

    def played_ms(self, turn_id: str) -> float:
        with self._lock:
            return self._played.get(turn_id, 0) / PCM16_BYTES * MS_PER_S / self.sample_rate

    def callback(self, outdata, frames: int, _time, _status) -> None:
        """PortAudio's output callback: fill `outdata` (frames of PCM16) from the queue, silence after it."""
        wanted = frames * PCM16_BYTES
        written = 0
        with self._lock:
            while written < wanted and self._queue:
                head = self._queue[0]
                take = min(wanted - written, len(head.pcm))
                outdata[written : written + take] = head.pcm[:take]
                del head.pcm[:take]
                written += take
                self.current = head.turn_id
                self._played[head.turn_id] = self._played.get(head.turn_id, 0) + take
                if not head.pcm:
                    self._queue.pop(0)
            if written < wanted:
                outdata[written:wanted] = bytes(wanted - written)
                if not self._queue:
                    self.current = None


async def run_mic(target: str, system_prompt: str, voice_instruction: str, ready_timeout_s: float) -> None:
    """Hold a live conversation until cancelled (Ctrl-C); NoAudioDevice or SessionError when it cannot start."""
    sounddevice = check_devices()
    console = Console()
    loop = asyncio.get_running_loop()
    microphone: asyncio.Queue[bytes] = asyncio.Queue()
    player = Player()

    def on_microphone(indata, _frames, _time, _status) -> None:
        loop.call_soon_threadsafe(microphone.put_nowait, bytes(indata))

    session = await Session.open(
        target,
        input_sample_rate_hz=INPUT_RATE,
        output_sample_rate_hz=OUTPUT_RATE,
        system_prompt=system_prompt,
        voice_instruction=voice_instruction,
        ready_timeout_s=ready_timeout_s,
    )
    block = INPUT_RATE * CHUNK_MS // MS_PER_S
    streams = (
        sounddevice.RawInputStream(INPUT_RATE, block, channels=1, dtype="int16", callback=on_microphone),
        sounddevice.RawOutputStream(OUTPUT_RATE, channels=1, dtype="int16", callback=player.callback),
    )
    async with session:
        with streams[0], streams[1]:
            console.print("listening: speak (talk over a reply to interrupt it); Ctrl-C ends the conversation")
            tasks = [
                asyncio.create_task(_send_microphone(microphone, session)),
                asyncio.create_task(_report_playback(player, session)),
            ]
            try:
                await _play_events(session, player, ConsoleRenderer(console))
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


async def _send_microphone(microphone: asyncio.Queue[bytes], session: Session) -> None:
    while True:
        await session.send_audio(await microphone.get())


async def _report_playback(player: Player, session: Session) -> None:
    while True:
        await asyncio.sleep(POSITION_EVERY_S)
        if (turn_id := player.current) is not None:
            await session.playback_position(turn_id, player.played_ms(turn_id))


async def _play_events(session: Session, player: Player, render: ConsoleRenderer) -> None:
    async for event in session.events():
        if event.HasField("audio_output"):
            player.add(event.audio_output.turn_id, event.audio_output.audio)
            continue
        if event.HasField("turn_event") and event.turn_event.type in _STOP_PLAYBACK:
            playing = player.current
            player.stop()
            if playing is not None:  # the last word on what the user heard of the reply
                await session.playback_position(playing, player.played_ms(playing))
        render(event)
