"""The lock recipe (kvstore/lock.py) through the real ClientServer and AsyncClient:
tokens grow, a held lock refuses others, and a holder whose lease expired is fenced off
even though it still believes it holds the lock (Kleppmann's scenario)."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.client import LeaseNotFound, NotFound
from kvstore.lock import Fenced, LockHeld, fenced_put, release, try_acquire
from tests.kvstore.test_server_client import client, cluster, run

pytestmark = pytest.mark.timeout(60)


def test_tokens_grow_and_a_held_lock_refuses_others() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            a, b = client(n), client(n)
            try:
                la, lb = await a.lease_grant(10_000), await b.lease_grant(10_000)
                t1 = await try_acquire(a, "L", la.id, owner="a")
                with pytest.raises(LockHeld) as held:
                    await try_acquire(b, "L", lb.id, owner="b")
                assert held.value.holder is not None and held.value.holder.create_revision == t1
                assert await fenced_put(a, "L", t1, "res", "a1") > t1
                assert await release(a, "L", t1)
                assert not await release(a, "L", t1)  # already released
                t2 = await try_acquire(b, "L", lb.id, owner="b")
                assert t2 > t1
                with pytest.raises(Fenced):
                    await fenced_put(a, "L", t1, "res", "stale")
                assert (await b.get("res")).value == b"a1"
            finally:
                await a.close()
                await b.close()

    run(body)


def test_a_holder_whose_lease_expired_is_fenced_off() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            a, b = client(n), client(n)
            try:
                la = await a.lease_grant(1_000)
                t1 = await try_acquire(a, "L", la.id)
                await fenced_put(a, "L", t1, "res", "a-enter")
                # "a" stalls past its lease (even one the leader's lessor extended on
                # promotion, by an election timeout); the ticker expires it.
                n.clock[0] += 2.0
                async with asyncio.timeout(5):
                    while n.sm.lease_count:
                        await asyncio.sleep(0.05)
                with pytest.raises(NotFound):
                    await a.get("L")  # the lock key went with the lease
                with pytest.raises(LeaseNotFound):
                    await try_acquire(a, "L", la.id)  # a dead lease cannot take it again
                lb = await b.lease_grant(10_000)
                t2 = await try_acquire(b, "L", lb.id)
                await fenced_put(b, "L", t2, "res", "b-enter")
                with pytest.raises(Fenced):
                    await fenced_put(a, "L", t1, "res", "a-exit")  # "a" wakes up: refused
                assert (await b.get("res")).value == b"b-enter"
                assert not await release(a, "L", t1)
                assert await release(b, "L", t2)
            finally:
                await a.close()
                await b.close()

    run(body)
