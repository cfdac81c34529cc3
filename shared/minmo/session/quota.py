"""Sessions each API key holds open across every duplex replica, counted in Redis.

A key's quota (its `max sessions` in the keys file) must hold for the whole deployment, not per replica, or N
replicas would let a client open N times its quota. Each key has one sorted set, `{prefix}:apikey:{<digest>}:
sessions`: a member per open session (a random slot id), scored by the Redis server time at which its lease runs
out. Taking a slot is one Lua script, atomic across replicas: drop the expired members, refuse when the set still
holds `limit`, else add the new one. The replica holding a slot renews its lease every third of `lease_s` while the
session lasts and removes it when the session ends; a replica that crashed stops renewing, so its slots free
themselves within `lease_s`. Scores come from Redis's clock (TIME), so replicas' clocks never have to agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
LEASE_S = 30.0  # a crashed replica's slots are free again within this long
RENEWALS_PER_LEASE = 3

# KEYS[1] the key's set; ARGV: limit, lease in ms, slot id. Returns 1 when the slot was taken, 0 when full.
_ACQUIRE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS[1] the key's set; ARGV: lease in ms, slot id. Extends a held slot's lease (XX: a slot already reclaimed
# after a long stall is not taken back over the quota). Returns 1 when the slot was still held.
_RENEW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == false then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return 1
"""


class QuotaUnavailable(Exception):
    """Redis could not be asked; the session is refused (UNAVAILABLE) rather than let past its key's quota."""


class SessionQuota:
    """Open sessions per API key, shared by every replica that uses the same Redis."""

    def __init__(self, redis_client: redis.Redis, lease_s: float = LEASE_S, key_prefix: str = "minmo") -> None:
        self.redis = redis_client
        self.lease_ms = round(1000 * lease_s)
        self.key_prefix = key_prefix
        self._acquire = redis_client.register_script(_ACQUIRE)
        self._renew = redis_client.register_script(_RENEW)

    def _key(self, digest: str) -> str:
        return f"{self.key_prefix}:apikey:{{{digest}}}:sessions"

    async def open_sessions(self, digest: str) -> int:
        """Slots the key holds now (expired ones not counted)."""
        now_s, now_us = await self.redis.time()
        return await self.redis.zcount(self._key(digest), now_s * 1000 + now_us // 1000 + 1, "+inf")

    @contextlib.asynccontextmanager
    async def hold(self, digest: str, limit: int) -> AsyncIterator[bool]:
        """Take one of the key's `limit` slots for the duration of the block (renewed meanwhile); yields False,
        holding nothing, when all are taken. Raises QuotaUnavailable when Redis cannot be asked."""
        slot = uuid.uuid4().hex
        key = self._key(digest)
        try:
            taken = bool(await self._acquire(keys=[key], args=[limit, self.lease_ms, slot]))
        except RedisError as error:
            raise QuotaUnavailable(str(error)) from error
        if not taken:
            yield False
            return
        renewing = asyncio.create_task(self._keep(key, slot), name="quota-lease")
        try:
            yield True
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            try:
                await self.redis.zrem(key, slot)
            except RedisError as error:  # the lease runs out on its own
                log.warning("API key session slot not released (frees itself within its lease): %s", error)

    async def _keep(self, key: str, slot: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 1000 / RENEWALS_PER_LEASE)
            try:
                if not await self._renew(keys=[key], args=[self.lease_ms, slot]):
                    log.warning("an API key session slot expired while its session was open (Redis unreachable?)")
                    return
            except RedisError as error:  # try again at the next renewal; the lease covers two missed ones
                log.warning("API key session slot not renewed: %s", error)
