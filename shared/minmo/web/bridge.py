"""`minmo web`: a browser page that talks to MinMo, and the WebSocket bridge between the page and `Converse`.

Browsers cannot speak gRPC bidi streams, so the bridge holds one `minmo.client.Session` per WebSocket and
translates, message for message (the page's code is in `static/app.js`):

page -> bridge
    text  {"type": "start", "input_sample_rate_hz": 16000, "output_sample_rate_hz": 24000,
           "system_prompt": "", "voice_instruction": ""}        first message: opens the session
    bytes PCM16LE mono microphone audio at input_sample_rate_hz  -> AudioChunk
    text  {"type": "text", "text": "..."}                        -> TextInput
    text  {"type": "playback_position", "turn_id": "...", "played_ms": 1234}  -> PlaybackPosition
    text  {"type": "cancel"}                                     -> CancelResponse

bridge -> page
    text  {"type": "event", "event": {...}}   every ServerEvent but audio, as proto JSON (field names as in
                                              docs/api.md), e.g. {"turn_event": {"type": "RESPONSE_DONE", ...}}
    text  {"type": "audio", "turn_id": "...", "start_ms": 0, "sample_rate_hz": 24000}, then
    bytes the PCM16LE of that AudioOutput (the next binary frame always belongs to the last audio header)
    text  {"type": "error", "message": "..."}  the session could not start or ended with an error

Static files come from the package (`minmo/web/static`), so the page works with no network at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aiohttp import WSMsgType, web
from google.protobuf import json_format

from minmo.client.chat import OUTPUT_SAMPLE_RATE_HZ
from minmo.client.session import DEFAULT_INPUT_RATE_HZ, Session, SessionError
from minmo.v1 import conversation_pb2

log = logging.getLogger(__name__)
STATIC_DIR = Path(str(resources.files("minmo.web") / "static"))
START_TIMEOUT_S = 30.0  # the page must send its start message this soon after connecting
MAX_MESSAGE_BYTES = 1 << 20  # one microphone chunk is a few kB; nothing legitimate comes near this


@dataclass(frozen=True)
class WebSettings:
    """Where the bridge listens and which Conversation server it talks to."""

    server: str  # the duplex service, HOST:PORT
    host: str = "127.0.0.1"
    port: int = 8080
    ready_timeout_s: float = 30.0  # how long a new session waits for the server to be SERVING


SETTINGS = web.AppKey("settings", WebSettings)


def build_app(settings: WebSettings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.router.add_get("/", _index)
    app.router.add_get("/ws", _websocket)
    app.router.add_static("/static", STATIC_DIR)
    return app


async def start_bridge(settings: WebSettings) -> tuple[web.AppRunner, int]:
    """Serve the page and the bridge; returns the runner (call `cleanup()` to stop) and the bound port."""
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    return runner, runner.addresses[0][1]  # the real port when settings.port is 0


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30.0)
    await ws.prepare(request)
    try:
        start = await ws.receive_json(timeout=START_TIMEOUT_S)
        session = await Session.open(
            settings.server,
            input_sample_rate_hz=int(start.get("input_sample_rate_hz", DEFAULT_INPUT_RATE_HZ)),
            output_sample_rate_hz=int(start.get("output_sample_rate_hz", OUTPUT_SAMPLE_RATE_HZ)),
            system_prompt=str(start.get("system_prompt", "")),
            voice_instruction=str(start.get("voice_instruction", "")),
            ready_timeout_s=settings.ready_timeout_s,
        )
    except (SessionError, ValueError, TypeError, AttributeError, TimeoutError) as error:
        message = str(error) if isinstance(error, SessionError) else f"bad start message: {error}"
        await ws.send_json({"type": "error", "message": message})
        await ws.close()
        return ws
    async with session:
        forward = asyncio.create_task(_server_to_page(session, ws), name=f"web-forward-{session.session_id}")
        try:
            await _page_to_server(ws, session)
        except SessionError as error:
            await _send_error(ws, str(error))
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward
    await ws.close()
    return ws


async def _page_to_server(ws: web.WebSocketResponse, session: Session) -> None:
    async for message in ws:
        if message.type == WSMsgType.BINARY:
            await session.send_audio(message.data)
        elif message.type == WSMsgType.TEXT:
            try:
                await _command(json.loads(message.data), session)
            except (ValueError, KeyError, TypeError, AttributeError) as error:  # a bad message costs only itself
                await _send_error(ws, f"bad message {message.data[:80]!r}: {error!r}")


async def _command(command: dict, session: Session) -> None:
    kind = command.get("type")
    if kind == "text":
        await session.send_text(str(command.get("text", "")))
    elif kind == "playback_position":
        await session.playback_position(str(command["turn_id"]), float(command["played_ms"]))
    elif kind == "cancel":
        await session.cancel_response()


async def _server_to_page(session: Session, ws: web.WebSocketResponse) -> None:
    try:
        started = conversation_pb2.ServerEvent(session_started=session.started)
        await ws.send_json({"type": "event", "event": _as_json(started)})
        async for event in session.events():
            if event.HasField("audio_output"):
                audio = event.audio_output
                header = {"turn_id": audio.turn_id, "start_ms": audio.start_ms, "sample_rate_hz": audio.sample_rate_hz}
                await ws.send_json({"type": "audio", **header})
                await ws.send_bytes(audio.audio)
            else:
                await ws.send_json({"type": "event", "event": _as_json(event)})
    except SessionError as error:
        await _send_error(ws, str(error))
    except ConnectionResetError:  # the page went away; the session closes with the WebSocket
        pass
    await ws.close()


def _as_json(event: conversation_pb2.ServerEvent) -> dict:
    return json_format.MessageToDict(event, preserving_proto_field_name=True)


async def _send_error(ws: web.WebSocketResponse, message: str) -> None:
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await ws.send_json({"type": "error", "message": message})


def run_web(settings: WebSettings) -> int:
    """Serve until Ctrl-C."""
    web.run_app(build_app(settings), host=settings.host, port=settings.port, print=None, access_log=None)
    return 0
