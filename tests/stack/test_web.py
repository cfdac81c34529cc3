"""`minmo web` in a real browser: Debian's chromium (headless, driven by Playwright; no browser download) with a
fake microphone playing a WAV file, against the five services in this process. The page holds a spoken turn
and a barge-in (the user speaks again while the reply is under way), and shows transcripts, audio and latency.
A screenshot is written to test-artifacts/ (gitignored) for a person to look at."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile
from playwright.async_api import async_playwright

from minmo.audio.synthetic import SAMPLE_RATE, speech_like
from minmo.web.bridge import WebSettings, start_bridge

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TURN_TIMEOUT_MS = 150_000
# The fake microphone (chromium loops the file): speech, a pause in which the reply starts, speech over it
# (barge-in), then a long silence in which the second reply plays out.
MIC_SCRIPT_S = (("silence", 0.5), ("speech", 1.5), ("silence", 2.0), ("speech", 1.5), ("silence", 12.0))


def _microphone_wav(path: Path) -> Path:
    rng = np.random.default_rng(7)
    parts = [
        speech_like(rng, seconds) if kind == "speech" else np.zeros(int(seconds * SAMPLE_RATE))
        for kind, seconds in MIC_SCRIPT_S
    ]
    signal = np.concatenate(parts)
    soundfile.write(
        path, (signal + 1e-3 * rng.standard_normal(signal.size)).astype(np.float32), SAMPLE_RATE, subtype="PCM_16"
    )
    return path


@pytest.fixture
async def web(full_stack):
    runner, port = await start_bridge(WebSettings(server=full_stack.address("duplex"), port=0))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def browser_page(tmp_path):
    assert CHROMIUM, "the chromium package is missing: scripts/setup.sh installs it (apt-get install chromium)"
    wav = _microphone_wav(tmp_path / "microphone.wav")
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",  # CI runs as root
    ]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = await browser.new_page()
            messages: list[str] = []
            page.on("console", lambda message: messages.append(message.text))
            page.on("pageerror", lambda error: messages.append(f"page error: {error}"))
            yield page, messages
        finally:
            await browser.close()


async def test_page_and_assets_come_from_the_package(web):
    async with aiohttp.ClientSession() as client:
        for path, kind in (("/", "text/html"), ("/static/app.js", "javascript"), ("/static/capture-worklet.js", "")):
            async with client.get(web + path) as response:
                assert response.status == 200 and kind in response.headers["Content-Type"]
                assert "http://" not in await response.text() or path == "/", "no CDN: nothing is fetched at run time"


async def test_bridge_refuses_a_bad_start_in_one_message(web):
    async with aiohttp.ClientSession() as client, client.ws_connect(web.replace("http", "ws") + "/ws") as ws:
        await ws.send_json({"type": "start", "input_sample_rate_hz": 11025})
        reply = await ws.receive_json(timeout=30)
    assert reply["type"] == "error" and "input_sample_rate_hz 11025" in reply["message"]


async def test_bridge_protocol_typed_turn_bad_message_and_disconnect(web):
    url = web.replace("http", "ws") + "/ws"
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(url) as ws:  # a page that leaves mid-session
            await ws.send_json({"type": "start"})
            assert "session_started" in (await ws.receive_json(timeout=60))["event"]
        async with client.ws_connect(url) as ws:
            await ws.send_json({"type": "start"})
            await ws.receive_json(timeout=60)
            await ws.send_str("{not json")
            assert (await ws.receive_json(timeout=30))["type"] == "error"
            await ws.send_json({"type": "text", "text": "hello"})
            audio_bytes, turn_types, header = 0, [], None
            async with asyncio.timeout(120):
                while "RESPONSE_DONE" not in turn_types:
                    message = await ws.receive()
                    if message.type == aiohttp.WSMsgType.BINARY:
                        assert header is not None, "every audio frame follows its header"
                        audio_bytes, header = audio_bytes + len(message.data), None
                    elif (data := message.json())["type"] == "audio":
                        header = data
                    elif "turn_event" in data.get("event", {}):
                        turn_types.append(data["event"]["turn_event"]["type"])
    assert turn_types == ["RESPONSE_STARTED", "RESPONSE_DONE"] and audio_bytes > 0


async def test_spoken_turn_and_barge_in_in_a_real_browser(web, browser_page):
    page, console = browser_page
    await page.goto(web)
    await page.click("#start")
    interrupted_then_answered = """() => {
        const events = window.minmo.turnEvents;
        const cut = events.indexOf("RESPONSE_INTERRUPTED");
        return cut >= 0 && events.indexOf("RESPONSE_DONE", cut) > cut;
    }"""
    try:
        await page.wait_for_function(interrupted_then_answered, timeout=TURN_TIMEOUT_MS, polling=250)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "web-page.png", full_page=True)
    state = await page.evaluate("window.minmo")
    events = state["turnEvents"]
    assert events[:3] == ["USER_SPEECH_STARTED", "USER_SPEECH_STOPPED", "RESPONSE_STARTED"], (events, console)
    barge_in = events.index("RESPONSE_INTERRUPTED")
    assert events[barge_in + 1] == "USER_SPEECH_STARTED", "the second speech interrupted the first reply"
    assert state["errors"] == [], state["errors"]
    assert state["audioChunks"] > 0 and state["audioReceivedMs"] > 500, "the replies' audio reached the page"
    assert state["latency"]["first_audio_ms"] > 0
    # Both replies have a line; each ends with the server's final transcript (the cut one: only what was heard,
    # maybe nothing; the answered one: tiny's random weights may say nothing either, so its text is not required).
    assistant = page.locator(".line.assistant .text")
    assert await assistant.count() >= 2, await assistant.all_inner_texts()
    assert "interim" not in (await assistant.last.get_attribute("class") or ""), "the final transcript reached the page"
    first_reply_notes = await page.locator(".line.assistant").first.locator(".note").all_inner_texts()
    assert any("interrupted after" in note for note in first_reply_notes), first_reply_notes  # maybe after "cut: …"
    assert await page.locator("#latency tr").count() >= 3
    assert (ARTIFACTS / "web-page.png").stat().st_size > 0
