"""The chat client over real gRPC on loopback, against a scripted Conversation peer standing in for duplex.

The peer is a test double for the remote side only: it answers SessionStarted, then replays a fixed turn
(user transcript, streamed assistant text, three audio chunks, RESPONSE_DONE, a LatencyReport) once it has
heard enough audio or a TextInput, and records what the client sent and when.
"""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from minmo.cli import app
from minmo.client import ChatRequest, InputAudio, load_wav, run_chat
from minmo.v1 import common_pb2, conversation_pb2, conversation_pb2_grpc

INPUT_RATE = 16000
OUTPUT_RATE = 24000
REPLY_CHUNKS = 3
REPLY_CHUNK_MS = 200
REPLY_MS = REPLY_CHUNKS * REPLY_CHUNK_MS
SILENCE_MS = 1500
TurnType = conversation_pb2.TurnEvent.Type


@dataclass(frozen=True)
class Script:
    """What the scripted peer does in one session."""

    reply: bool = True
    reply_after_ms: int = 1000  # input audio heard before it replies
    error: str | None = None  # message of an Error event sent before the reply
    abort: str | None = None  # details of an INVALID_ARGUMENT abort right after the SessionConfig
    interrupt: bool = False  # end the response with RESPONSE_INTERRUPTED instead of RESPONSE_DONE


def _reply_chunk(index: int) -> bytes:
    samples = OUTPUT_RATE * REPLY_CHUNK_MS // 1000
    return np.full(samples, 1000 * (index + 1), dtype="<i2").tobytes()


def _reply(interrupt: bool) -> list[conversation_pb2.ServerEvent]:
    event = conversation_pb2.ServerEvent
    user, assistant = common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT
    events = [
        event(turn_event=conversation_pb2.TurnEvent(type=TurnType.USER_SPEECH_STARTED, turn_id="u1")),
        event(transcript=conversation_pb2.Transcript(turn_id="u1", role=user, text="hel")),
        event(transcript=conversation_pb2.Transcript(turn_id="u1", role=user, text="hello there", is_final=True)),
        event(turn_event=conversation_pb2.TurnEvent(type=TurnType.USER_SPEECH_STOPPED, turn_id="u1")),
        event(turn_event=conversation_pb2.TurnEvent(type=TurnType.RESPONSE_STARTED, turn_id="r1")),
        event(transcript=conversation_pb2.Transcript(turn_id="r1", role=assistant, text="Hi")),
        event(transcript=conversation_pb2.Transcript(turn_id="r1", role=assistant, text=" there!")),
    ]
    for i in range(REPLY_CHUNKS):
        audio = conversation_pb2.AudioOutput(turn_id="r1", audio=_reply_chunk(i), sample_rate_hz=OUTPUT_RATE)
        events.append(event(audio_output=audio))
    report = conversation_pb2.LatencyReport(turn_id="r1", encoder_ms=12.5, llm_first_token_ms=80, first_audio_ms=310)
    return [
        *events,
        event(transcript=conversation_pb2.Transcript(turn_id="r1", role=assistant, text="Hi there!", is_final=True)),
        event(turn_event=_ending(interrupt)),
        event(latency_report=report),
    ]


def _ending(interrupt: bool) -> conversation_pb2.TurnEvent:
    if interrupt:
        cut = TurnType.RESPONSE_INTERRUPTED
        return conversation_pb2.TurnEvent(type=cut, turn_id="r1", heard_ms=200, heard_text="Hi")
    return conversation_pb2.TurnEvent(type=TurnType.RESPONSE_DONE, turn_id="r1")


class ScriptedConversation(conversation_pb2_grpc.ConversationServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.config: conversation_pb2.SessionConfig | None = None
        self.chunks: list[bytes] = []
        self.chunk_times: list[float] = []
        self.text: str | None = None
        self.ended = False
        self.closed = threading.Event()

    def Converse(self, request_iterator, context):
        context.add_callback(self.closed.set)
        for request in request_iterator:
            kind = request.WhichOneof("event")
            if kind == "session_config":
                yield from self._start(request.session_config, context)
            elif kind == "audio_chunk":
                yield from self._hear(request.audio_chunk.audio)
            elif kind == "text_input":
                self.text = request.text_input.text
                yield from self._respond()
            elif kind == "end_session":
                self.ended = True
                return

    def _start(self, config, context):
        self.config = config
        if self.script.abort:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.script.abort)
        formats = {
            "input_format": common_pb2.AudioFormat(sample_rate_hz=config.input_sample_rate_hz, channels=1),
            "output_format": common_pb2.AudioFormat(sample_rate_hz=OUTPUT_RATE, channels=1),
        }
        yield conversation_pb2.ServerEvent(session_started=conversation_pb2.SessionStarted(session_id="s-1", **formats))

    def _hear(self, audio: bytes):
        heard_before = sum(map(len, self.chunks))
        self.chunks.append(audio)
        self.chunk_times.append(time.monotonic())
        threshold = 2 * self.config.input_sample_rate_hz * self.script.reply_after_ms // 1000
        if heard_before < threshold <= heard_before + len(audio):
            yield from self._respond()

    def _respond(self):
        if self.script.error:
            error = conversation_pb2.Error(code="INTERNAL", message=self.script.error, session_id="s-1")
            yield conversation_pb2.ServerEvent(error=error)
        if self.script.reply:
            yield from _reply(self.script.interrupt)


@pytest.fixture
def serve():
    """Start scripted peers on loopback; returns (target, peer) per call."""
    servers = []

    def start(script: Script = Script()) -> tuple[str, ScriptedConversation]:
        peer = ScriptedConversation(script)
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        conversation_pb2_grpc.add_ConversationServicer_to_server(peer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", peer

    yield start
    for server in servers:
        server.stop(grace=None)


def _tone(seconds: float, rate: int = INPUT_RATE, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _audio_request(seconds: float = 1.0, **options) -> ChatRequest:
    return ChatRequest(audio=InputAudio(_tone(seconds), INPUT_RATE), realtime=False, **options)


def _write_input(path: Path, seconds: float = 1.0) -> Path:
    sf.write(path, _tone(seconds), INPUT_RATE, subtype="PCM_16")
    return path


async def test_result_collects_the_turn(serve) -> None:
    target, peer = serve()
    result = await run_chat(target, _audio_request(system_prompt="be brief", voice_instruction="whisper"))
    assert result.problems() == []
    assert result.to_json() == {
        "session_id": "s-1",
        "turns": [
            {
                "user_text": "hello there",
                "assistant_text": "Hi there!",
                "audio_ms": float(REPLY_MS),
                "interrupted": False,
                "end_reason": "",
                "latency_ms": {
                    "encoder": 12.5,
                    "llm_first_token": 80.0,
                    "voicelm_first_tokens": None,
                    "vocoder_first_chunk": None,
                    "first_audio": 310.0,
                },
            }
        ],
        "error": None,
    }
    assert (peer.config.input_sample_rate_hz, peer.config.output_sample_rate_hz) == (INPUT_RATE, OUTPUT_RATE)
    assert (peer.config.system_prompt, peer.config.voice_instruction) == ("be brief", "whisper")
    assert peer.ended, "the client must end the session with EndSession"


async def test_an_interrupted_response_keeps_its_full_text(serve) -> None:
    target, _ = serve(Script(interrupt=True))
    result = await run_chat(target, _audio_request())
    turn = result.turns[0]
    assert result.problems() == [] and result.to_json()["turns"][0]["interrupted"] is True
    assert (turn.assistant_text, turn.heard_ms, turn.heard_text) == ("Hi there!", 200, "Hi")


async def test_an_unreachable_server_is_waited_for_then_reported_in_one_line() -> None:
    result = await run_chat("127.0.0.1:1", _audio_request(timeout_s=1.0))
    assert result.rpc_failure is None and result.turns == []
    assert result.problems() == [result.not_ready]
    assert result.not_ready.startswith("no MinMo server answers at 127.0.0.1:1")


async def test_audio_goes_out_in_100_ms_chunks_followed_by_silence(serve) -> None:
    target, peer = serve()
    await run_chat(target, _audio_request(1.05))
    chunk_bytes = 2 * INPUT_RATE // 10
    assert all(len(chunk) == chunk_bytes for chunk in peer.chunks[:-1])
    sent = b"".join(peer.chunks)
    assert len(sent) == 2 * INPUT_RATE * (1050 + SILENCE_MS) // 1000
    assert not any(sent[-2 * INPUT_RATE * SILENCE_MS // 1000 :]), "the input must end with silence"


@pytest.mark.parametrize(("realtime", "min_s", "max_s"), [(True, 0.85, 1.5), (False, 0.0, 0.3)])
async def test_realtime_pacing(serve, realtime: bool, min_s: float, max_s: float) -> None:
    target, peer = serve()
    request = ChatRequest(audio=InputAudio(_tone(1.0), INPUT_RATE), realtime=realtime, trailing_silence_ms=0)
    result = await run_chat(target, request)
    assert result.problems() == []
    assert min_s <= result.send_s <= max_s
    assert min_s - 0.1 <= peer.chunk_times[-1] - peer.chunk_times[0] <= max_s


async def test_typed_text_is_one_turn(serve) -> None:
    target, peer = serve()
    result = await run_chat(target, ChatRequest(text="what time is it?"))
    assert peer.text == "what time is it?" and peer.chunks == []
    assert result.problems() == [] and result.turns[0].assistant_text == "Hi there!"


async def test_a_server_error_event_fails_the_chat(serve) -> None:
    target, _ = serve(Script(error="voicelm replica lost"))
    result = await run_chat(target, _audio_request())
    assert result.complete
    assert result.problems() == ["server error INTERNAL: voicelm replica lost"]


async def test_an_aborted_rpc_is_reported_with_its_status(serve) -> None:
    target, _ = serve(Script(abort="input_sample_rate_hz must be 8000, 16000, 24000 or 48000"))
    result = await run_chat(target, _audio_request())
    assert result.rpc_failure is not None and result.rpc_failure.code == "INVALID_ARGUMENT"
    assert result.problems() == [
        "RPC failed with INVALID_ARGUMENT: input_sample_rate_hz must be 8000, 16000, 24000 or 48000"
    ]


async def test_no_reply_times_out_and_still_ends_the_session(serve) -> None:
    target, peer = serve(Script(reply=False))
    result = await run_chat(target, ChatRequest(text="hello", timeout_s=0.3))
    assert result.timed_out and result.problems() == ["timed out before the reply was complete"]
    assert peer.ended


async def test_audio_the_server_hears_no_speech_in_is_reported_as_such(serve) -> None:
    target, peer = serve(Script(reply=False))
    result = await run_chat(target, _audio_request(0.2, timeout_s=0.3))
    assert result.no_speech and not result.timed_out
    assert result.problems()[0].startswith("no speech detected")
    assert peer.ended


async def test_cancelling_the_task_cancels_the_call(serve) -> None:
    target, peer = serve(Script(reply=False))
    task = asyncio.create_task(run_chat(target, _audio_request(0.2, timeout_s=10.0)))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(peer.closed.wait, 2.0), "the server must see the call end"
    assert not peer.ended


def test_an_unsupported_rate_is_resampled_to_16k_mono(tmp_path: Path) -> None:
    stereo = np.stack([_tone(0.5, 22050), _tone(0.5, 22050)], axis=1)
    sf.write(tmp_path / "in.wav", stereo, 22050, subtype="FLOAT")
    audio = load_wav(tmp_path / "in.wav")
    assert audio.sample_rate == INPUT_RATE
    assert abs(len(audio.samples) - INPUT_RATE // 2) <= 1
    middle = slice(800, 7200)  # away from the filter's edges
    np.testing.assert_allclose(audio.samples[middle], _tone(0.5)[middle], atol=1e-2)


async def test_a_resampled_file_is_announced_at_16k(serve, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", _tone(0.5, 22050), 22050)
    target, peer = serve(Script(reply_after_ms=500))
    await run_chat(target, ChatRequest(audio=load_wav(tmp_path / "in.wav"), realtime=False, trailing_silence_ms=0))
    assert peer.config.input_sample_rate_hz == INPUT_RATE
    assert abs(sum(map(len, peer.chunks)) - INPUT_RATE) <= 2  # 0.5 s of PCM16 at 16 kHz


def test_cli_json_and_wav_output(serve, tmp_path: Path) -> None:
    target, _ = serve()
    out = tmp_path / "out.wav"
    args = ["chat", "--server", target, "--wav", str(_write_input(tmp_path / "in.wav")), "--out", str(out)]
    outcome = CliRunner().invoke(app, [*args, "--no-realtime", "--json"])
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout)
    assert result["session_id"] == "s-1" and result["turns"][0]["audio_ms"] == REPLY_MS
    samples, rate = sf.read(out, dtype="int16")
    assert rate == OUTPUT_RATE and sf.info(out).subtype == "PCM_16"
    expected = np.frombuffer(b"".join(_reply_chunk(i) for i in range(REPLY_CHUNKS)), dtype="<i2")
    np.testing.assert_array_equal(samples, expected)


def test_cli_prints_events_for_people(serve, tmp_path: Path) -> None:
    target, _ = serve()
    wav = str(_write_input(tmp_path / "in.wav"))
    outcome = CliRunner().invoke(app, ["chat", "--server", target, "--wav", wav, "--no-realtime"])
    assert outcome.exit_code == 0, outcome.output
    for line in ("session s-1 started", "user: hello there", "assistant: Hi there!", "✓ response done", "first audio"):
        assert line in outcome.stdout


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (Script(error="voicelm replica lost"), "server error INTERNAL: voicelm replica lost"),
        (Script(abort="bad rate"), "RPC failed with INVALID_ARGUMENT: bad rate"),
    ],
)
def test_cli_failures_exit_non_zero(serve, tmp_path: Path, script: Script, message: str) -> None:
    target, _ = serve(script)
    wav = str(_write_input(tmp_path / "in.wav"))
    outcome = CliRunner().invoke(app, ["chat", "--server", target, "--wav", wav, "--no-realtime", "--json"])
    assert outcome.exit_code == 1
    assert message in outcome.stderr


def test_cli_needs_exactly_one_input(serve) -> None:
    target, _ = serve()
    outcome = CliRunner().invoke(app, ["chat", "--server", target])
    assert outcome.exit_code == 2 and "exactly one of --mic, --wav or --text" in outcome.output


def test_cli_sends_the_voice_instruction_and_prompt(serve, tmp_path: Path) -> None:
    target, peer = serve()
    prompt = tmp_path / "voice.wav"
    sf.write(prompt, _tone(3.5, rate=24000, hz=220.0), 24000, subtype="PCM_16")
    args = ["chat", "--server", target, "--text", "hi", "--voice-instruction", "Please speak very fast."]
    outcome = CliRunner().invoke(app, [*args, "--voice-prompt", str(prompt), "--json"])
    assert outcome.exit_code == 0, outcome.output
    sent = peer.config.voice_prompt
    assert (peer.config.voice_instruction, sent.sample_rate_hz) == ("Please speak very fast.", 24000)
    expected = np.round(_tone(3.5, rate=24000, hz=220.0) * 32767).astype("<i2")
    assert np.abs(np.frombuffer(sent.audio, dtype="<i2").astype(int) - expected).max() <= 1
