"""API-key session quotas in a real Redis: the count holds across holders (replicas), slots come back when their
session ends, and a replica killed with -9 stops renewing, so its slots free themselves within the lease."""

import asyncio
import subprocess
import sys
import textwrap

import redis.asyncio

from minmo.session.quota import SessionQuota

DIGEST = "ab" * 32
LEASE_S = 1.0


async def test_a_key_holds_at_most_its_limit_across_replicas_and_slots_come_back(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    replica_a, replica_b = (SessionQuota(redis_client, LEASE_S, key_prefix) for _ in range(2))
    async with replica_a.hold(DIGEST, 2) as first, replica_b.hold(DIGEST, 2) as second:
        assert first and second
        async with replica_b.hold(DIGEST, 2) as third:
            assert not third, "the third session is refused whichever replica it reaches"
        await asyncio.sleep(2 * LEASE_S)  # renewed meanwhile: both still held
        assert await replica_a.open_sessions(DIGEST) == 2
    assert await replica_a.open_sessions(DIGEST) == 0
    async with replica_a.hold(DIGEST, 2) as again:
        assert again


async def test_a_killed_replicas_slots_free_themselves_within_the_lease(redis_url: str, key_prefix: str) -> None:
    holder = textwrap.dedent(
        f"""
        import asyncio, redis.asyncio
        from minmo.session.quota import SessionQuota

        async def main():
            quota = SessionQuota(redis.asyncio.Redis.from_url({redis_url!r}), {LEASE_S}, {key_prefix!r})
            async with quota.hold({DIGEST!r}, 1) as held:
                print("held" if held else "full", flush=True)
                await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        client = redis.asyncio.Redis.from_url(redis_url)
        quota = SessionQuota(client, LEASE_S, key_prefix)
        async with quota.hold(DIGEST, 1) as held:
            assert not held
        process.kill()  # no release, no more renewals
        process.wait()
        await asyncio.sleep(LEASE_S + 0.2)
        async with quota.hold(DIGEST, 1) as held:
            assert held, "the dead replica's slot expired"
        await client.aclose()
    finally:
        process.kill()
        process.wait()
