"""`minmo.client.Session` against the five services (in this process, real gRPC and Redis), and the README's
example run as it is written, against a running stack."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from minmo.audio.pcm import float_to_pcm16
from minmo.audio.synthetic import utterance
from minmo.client import Session, SessionError
from minmo.v1 import conversation_pb2

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"<!-- client-example[^>]*-->\n```python\n(.*?)```", re.DOTALL)
README_ADDRESS = "127.0.0.1:50051"
TurnType = conversation_pb2.TurnEvent.Type
CHUNK_SAMPLES = 1600  # 100 ms at 16 kHz


async def test_say_returns_the_whole_reply(full_stack):
    async with await Session.open(full_stack.address("duplex")) as session:
        assert session.session_id and session.output_sample_rate_hz == 24000
        reply = await session.say("hello", timeout_s=120)
    assert reply.text and reply.audio_ms > 0 and reply.errors == []
    assert reply.end_reason in ("COMPLETED", "MAX_TOKENS") and reply.latency.first_audio > 0


async def test_spoken_audio_and_barge_in_by_events(full_stack):
    async with await Session.open(full_stack.address("duplex")) as session:
        samples = utterance(seed=2)
        for start in range(0, samples.size, CHUNK_SAMPLES):
            await session.send_audio(float_to_pcm16(samples[start : start + CHUNK_SAMPLES]))
        await session.send_audio(bytes(2 * 16000))  # a second of silence ends the turn
        seen = []
        async with asyncio.timeout(120):
            async for event in session.events():
                if event.HasField("turn_event"):
                    seen.append(event.turn_event.type)
                if event.HasField("audio_output"):
                    await session.cancel_response()  # barge-in from code, at the first audio
                if event.HasField("turn_event") and event.turn_event.type == TurnType.RESPONSE_INTERRUPTED:
                    assert event.turn_event.end_reason == conversation_pb2.TurnEvent.EndReason.INTERRUPTED
                    break
    assert seen[:3] == [TurnType.USER_SPEECH_STARTED, TurnType.USER_SPEECH_STOPPED, TurnType.RESPONSE_STARTED]


async def test_open_without_a_server_is_one_clear_error():
    with pytest.raises(SessionError, match="no MinMo server answers") as raised:
        await Session.open("127.0.0.1:1", ready_timeout_s=1)
    assert raised.value.code == "NOT_READY"


async def test_bad_settings_are_refused_with_the_servers_reason(full_stack):
    with pytest.raises(SessionError, match="input_sample_rate_hz 11025") as raised:
        await Session.open(full_stack.address("duplex"), input_sample_rate_hz=11025)
    assert raised.value.code == "INVALID_ARGUMENT"


async def test_the_readme_example_runs_as_written(full_stack, tmp_path):
    [example] = EXAMPLE.findall(README.read_text())
    assert README_ADDRESS in example
    script = tmp_path / "example.py"
    script.write_text(example.replace(README_ADDRESS, full_stack.address("duplex")))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("assistant: ") and "ms of speech" in lines[0]
    assert lines[1].startswith("first audio after ") and len(lines) == 3

