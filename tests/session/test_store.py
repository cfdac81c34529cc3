"""SessionStore against a real Redis: ownership fencing, resume tokens, history, TTLs."""

import asyncio
import hashlib

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from minmo.session import (
    EmbeddedRedis,
    PermissionDenied,
    Role,
    SessionEnded,
    SessionNotFound,
    SessionState,
    SessionStore,
    StaleOwner,
    Turn,
    connect,
)

TTL_S = 600
CONFIG = {"voice": "default", "turn_detection": {"silence_duration_ms": 500}}


@pytest.fixture
def store(redis_client: redis.asyncio.Redis, key_prefix: str) -> SessionStore:
    return SessionStore(redis_client, ttl_s=TTL_S, key_prefix=key_prefix)


async def claimed(store: SessionStore, replica_id: str = "replica-a") -> tuple[str, str, int]:
    record, token = await store.create(CONFIG)
    owned = await store.claim(record.session_id, token, replica_id)
    return record.session_id, token, owned.epoch


async def test_create_then_load_round_trips(store: SessionStore) -> None:
    record, token = await store.create(CONFIG)
    assert token and record.epoch == 0 and record.owner == "" and record.state is SessionState.LISTENING
    assert await store.load(record.session_id) == record


async def test_load_of_unknown_session_is_none(store: SessionStore) -> None:
    assert await store.load("no-such-session") is None


async def test_claim_with_the_right_token_bumps_the_epoch(store: SessionStore) -> None:
    record, token = await store.create(CONFIG)
    first = await store.claim(record.session_id, token, "replica-a")
    second = await store.claim(record.session_id, token, "replica-b")
    assert (first.epoch, first.owner) == (1, "replica-a")
    assert (second.epoch, second.owner) == (2, "replica-b")
    assert (await store.load(record.session_id)).epoch == 2


async def test_claim_with_a_wrong_token_is_denied(store: SessionStore) -> None:
    record, token = await store.create(CONFIG)
    with pytest.raises(PermissionDenied):
        await store.claim(record.session_id, token + "x", "replica-a")
    assert (await store.load(record.session_id)).epoch == 0


async def test_claim_of_unknown_session_is_not_found(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound):
        await store.claim("no-such-session", "token", "replica-a")
    with pytest.raises(SessionNotFound):
        await store.set_state("no-such-session", 1, SessionState.RESPONDING)


async def test_only_a_digest_of_the_resume_token_is_stored(
    store: SessionStore, redis_client: redis.asyncio.Redis
) -> None:
    record, token = await store.create(CONFIG)
    stored = await redis_client.hgetall(store.session_key(record.session_id))
    assert token not in stored.values()
    assert hashlib.sha256(token.encode()).hexdigest() in stored.values()


async def test_an_unclaimed_session_accepts_no_writes(store: SessionStore) -> None:
    record, _ = await store.create(CONFIG)
    with pytest.raises(StaleOwner):
        await store.set_state(record.session_id, 0, SessionState.RESPONDING)


async def test_the_previous_owner_cannot_write_after_another_claim(store: SessionStore) -> None:
    session_id, token, old_epoch = await claimed(store, "replica-a")
    new_epoch = (await store.claim(session_id, token, "replica-b")).epoch
    turn = Turn("t1", Role.USER, "hello", audio_ms=800)
    with pytest.raises(StaleOwner):
        await store.set_state(session_id, old_epoch, SessionState.RESPONDING)
    with pytest.raises(StaleOwner):
        await store.append_turn(session_id, old_epoch, turn)
    with pytest.raises(StaleOwner):
        await store.truncate_last_assistant_turn(session_id, old_epoch, "", 0)
    with pytest.raises(StaleOwner):
        await store.end(session_id, old_epoch)
    await store.set_state(session_id, new_epoch, SessionState.RESPONDING)
    record = await store.load(session_id)
    assert (record.state, record.owner, record.epoch) == (SessionState.RESPONDING, "replica-b", new_epoch)
    assert await store.history(session_id) == []


async def test_concurrent_claims_get_distinct_epochs(store: SessionStore) -> None:
    record, token = await store.create(CONFIG)
    replicas = [f"replica-{i}" for i in range(20)]
    claims = await asyncio.gather(*(store.claim(record.session_id, token, r) for r in replicas))
    assert sorted(c.epoch for c in claims) == list(range(1, len(replicas) + 1))
    winner = max(claims, key=lambda c: c.epoch)
    assert (await store.load(record.session_id)).owner == winner.owner
    for loser in claims:
        if loser is not winner:
            with pytest.raises(StaleOwner):
                await store.set_state(record.session_id, loser.epoch, SessionState.RESPONDING)


async def test_history_appends_in_order_and_truncates_the_last_assistant_turn(store: SessionStore) -> None:
    session_id, _, epoch = await claimed(store)
    turns = [
        Turn("t1", Role.USER, "What's the weather in Zürich?", audio_ms=1800),
        Turn("t2", Role.ASSISTANT, "Sonnig, 24 °C — mit leichter Brise.", audio_ms=3200),
        Turn("t3", Role.USER, "And tomorrow?", audio_ms=900),
    ]
    for turn in turns[:2]:
        await store.append_turn(session_id, epoch, turn)
    truncated = await store.truncate_last_assistant_turn(session_id, epoch, "Sonnig, 24 °C —", heard_ms=1150)
    await store.append_turn(session_id, epoch, turns[2])
    expected = Turn("t2", Role.ASSISTANT, "Sonnig, 24 °C —", audio_ms=3200, interrupted=True, heard_ms=1150)
    assert truncated == expected
    assert await store.history(session_id) == [turns[0], expected, turns[2]]


async def test_truncate_skips_user_turns_after_the_assistant_turn(store: SessionStore) -> None:
    session_id, _, epoch = await claimed(store)
    await store.append_turn(session_id, epoch, Turn("t1", Role.ASSISTANT, "one two three", audio_ms=2000))
    await store.append_turn(session_id, epoch, Turn("t2", Role.USER, "stop", audio_ms=400))
    truncated = await store.truncate_last_assistant_turn(session_id, epoch, "one", heard_ms=500)
    assert (truncated.turn_id, truncated.text, truncated.heard_ms) == ("t1", "one", 500)
    assert [t.text for t in await store.history(session_id)] == ["one", "stop"]


async def test_truncate_without_an_assistant_turn_returns_none(store: SessionStore) -> None:
    session_id, _, epoch = await claimed(store)
    await store.append_turn(session_id, epoch, Turn("t1", Role.USER, "hi", audio_ms=400))
    assert await store.truncate_last_assistant_turn(session_id, epoch, "", heard_ms=0) is None


async def test_a_spoken_turn_gets_its_transcript_later(store: SessionStore) -> None:
    session_id, _, epoch = await claimed(store)
    await store.append_turn(session_id, epoch, Turn("t1", Role.USER, "", audio_ms=1800))
    await store.append_turn(session_id, epoch, Turn("t2", Role.ASSISTANT, "Sure.", audio_ms=600))
    updated = await store.set_turn_text(session_id, epoch, "t1", "Can you help me?")
    assert updated == Turn("t1", Role.USER, "Can you help me?", audio_ms=1800)
    assert [turn.text for turn in await store.history(session_id)] == ["Can you help me?", "Sure."]
    assert await store.set_turn_text(session_id, epoch, "no-such-turn", "x") is None


async def test_ttl_is_set_on_every_key_and_refreshed_by_writes(
    store: SessionStore, redis_client: redis.asyncio.Redis
) -> None:
    session_id, _, epoch = await claimed(store)
    await store.append_turn(session_id, epoch, Turn("t1", Role.USER, "hi", audio_ms=400))
    keys = [store.session_key(session_id), store.history_key(session_id)]
    for key in keys:
        assert TTL_S - 5 <= await redis_client.ttl(key) <= TTL_S
        await redis_client.expire(key, 30)
    await store.set_state(session_id, epoch, SessionState.USER_SPEAKING)
    for key in keys:
        assert TTL_S - 5 <= await redis_client.ttl(key) <= TTL_S


async def test_touch_refreshes_the_ttl_and_reports_missing_sessions(
    store: SessionStore, redis_client: redis.asyncio.Redis
) -> None:
    record, _ = await store.create(CONFIG)
    key = store.session_key(record.session_id)
    await redis_client.expire(key, 30)
    assert await store.touch(record.session_id)
    assert await redis_client.ttl(key) > 30
    assert not await store.touch("no-such-session")


async def test_an_ended_session_can_be_read_but_not_claimed_or_written(store: SessionStore) -> None:
    session_id, token, epoch = await claimed(store)
    await store.end(session_id, epoch)
    record = await store.load(session_id)
    assert (record.state, record.owner) == (SessionState.ENDED, "")
    with pytest.raises(SessionEnded):
        await store.claim(session_id, token, "replica-b")
    with pytest.raises(SessionEnded):
        await store.set_state(session_id, epoch, SessionState.LISTENING)


async def test_a_client_without_decode_responses_works_too(redis_url: str, key_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = SessionStore(client, ttl_s=TTL_S, key_prefix=key_prefix)
        session_id, _, epoch = await claimed(store)
        await store.append_turn(session_id, epoch, Turn("t1", Role.USER, "bytes", audio_ms=100))
        assert (await store.load(session_id)).config == CONFIG
        assert [t.text for t in await store.history(session_id)] == ["bytes"]
    finally:
        await client.aclose()


async def test_connect_without_a_url_runs_an_embedded_server_until_exit() -> None:
    async with connect(None) as client:
        assert await client.ping()
        socket_path = client.get_connection_kwargs()["path"]
    probe = redis.asyncio.Redis(unix_socket_path=socket_path, retry=Retry(NoBackoff(), retries=0))
    with pytest.raises(redis.ConnectionError):
        await probe.ping()
    await probe.aclose()


def test_embedded_redis_on_a_loopback_port_stops_on_exit(unused_tcp_port: int) -> None:
    with EmbeddedRedis(port=unused_tcp_port) as server:
        url = server.url
        assert url == f"redis://127.0.0.1:{unused_tcp_port}/0"
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, retry=SyncRetry(NoBackoff(), retries=0)).ping()
