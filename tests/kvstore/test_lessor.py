"""The lessor (issue 9, item 4): leases run out by the leader's monotonic clock alone.

Unit tests of :class:`kvstore.lessor.Lessor` on a hand-driven clock, then the real
ClientServer and AsyncClient (``LocalEngine``, 127.0.0.1) with the node's clock in the
test's hand: no wall clock is read anywhere, a new leader restarts every lease, a
follower expires nothing, and a keep-alive needs confirmed leadership."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvstore import protocol as p
from kvstore.client import NotFound, PutOp
from kvstore.lessor import Lessor
from raft.types import Index
from tests.kvstore.test_server_client import (
    ELECTION_TIMEOUT,
    Node,
    client,
    cluster,
    lessor_promoted,
    run,
)

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lessor() -> tuple[Lessor, Clock]:
    clock = Clock()
    return Lessor(clock, extend_s=1.0, retry_s=0.5), clock


def test_a_follower_expires_nothing_and_renews_nothing() -> None:
    les, clock = lessor()
    les.lease_granted(1, 1000)
    clock.now += 3600
    assert les.due() == [] and les.renew(1) is None and les.remaining_ms(1) is None


def test_promotion_restarts_every_lease_at_ttl_plus_the_extension() -> None:
    les, clock = lessor()
    les.lease_granted(1, 1000)
    les.lease_granted(2, 3000)
    les.promote(term=4)
    assert les.remaining_ms(1) == 2000 and les.remaining_ms(2) == 4000
    clock.now += 1.999
    assert les.due() == []
    clock.now += 0.001
    assert les.due() == [1]
    les.lease_granted(3, 500)  # granted while leading: its TTL from now, no extension
    assert les.remaining_ms(3) == 500


def test_renew_restarts_from_now_and_refuses_a_lease_run_out_or_revoking() -> None:
    les, clock = lessor()
    les.lease_granted(1, 1000)
    les.promote(term=1)
    clock.now += 1.5
    assert les.renew(1) == 1000 and les.remaining_ms(1) == 1000
    clock.now += 1.0
    assert les.renew(1) is None  # run out: its expiry is due, not a renewal
    assert les.due() == [1]
    assert les.renew(1) is None and les.remaining_ms(1) == 0  # revoking
    assert les.renew(99) is None


def test_an_expiry_not_applied_is_proposed_again_and_a_revoke_ends_it() -> None:
    les, clock = lessor()
    les.lease_granted(1, 1000)
    les.promote(term=1)
    clock.now += 2.0
    assert les.due() == [1]
    clock.now += 0.4
    assert les.due() == []  # the proposal is in flight
    clock.now += 0.1
    assert les.due() == [1]  # lost (a leader change): proposed again
    les.lease_revoked(1)  # applied at last
    clock.now += 10
    assert les.due() == [] and les.remaining_ms(1) is None


def test_stale_heap_rows_do_not_expire_a_renewed_lease() -> None:
    les, clock = lessor()
    les.lease_granted(1, 1000)
    les.promote(term=1)
    for _ in range(5):
        clock.now += 0.9
        assert les.renew(1) == 1000
        assert les.due() == []
    clock.now += 1.0
    assert les.due() == [1]


def test_demotion_forgets_deadlines_and_a_restore_while_primary_restarts_them() -> None:
    les, clock = lessor()
    les.lease_granted(1, 1000)
    les.promote(term=1)
    les.demote()
    clock.now += 100
    assert les.due() == [] and not les.primary
    les.promote(term=3)
    les.leases_restored([(1, 1000), (7, 2000)])
    assert les.remaining_ms(7) == 3000 and les.promoted_term == 3


# ---- through the server ---------------------------------------------------------------------


async def wait_gone(n: Node, lease: int) -> None:
    async with asyncio.timeout(5):
        while n.sm.lease_ttl_ms(lease) is not None:
            await asyncio.sleep(0.02)


def test_no_wall_clock_moves_a_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9, item 4: expiry followed the leaders' wall clocks, so a clock stepped an
    hour ahead revoked every lease at once, and one behind froze expiry. The wall clock
    now steps an hour either way during the test: nothing happens until the node's
    monotonic clock passes the deadline."""
    real_time, real_ns = time.time, time.time_ns
    step = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + step[0])
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(step[0] * 1e9))

    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                lease = await c.lease_grant(1_000)
                await c.txn([], [PutOp(b"l", b"v", lease.id)])
                step[0] = 3600.0  # an hour ahead
                await asyncio.sleep(0.3)  # three ticker rounds
                assert (await c.get("l")).value == b"v"
                step[0] = -3600.0  # an hour behind
                n.clock[0] += 1.0  # ... and the TTL has run out by the node's clock
                await wait_gone(n, lease.id)
                with pytest.raises(NotFound):
                    await c.get("l")
            finally:
                await c.close()

    run(body)


def test_a_new_term_restarts_every_lease_at_ttl_plus_an_election_timeout() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                lease = await c.lease_grant(1_000)
                n.clock[0] += 0.9  # 0.1 s left ...
                n.engine.term += 1  # ... when this node wins another election
                await lessor_promoted(n)
                assert (await c.lease_ttl(lease.id)).ttl_ms == 1_000 + ELECTION_TIMEOUT * 1000
                n.clock[0] += 1.0 + ELECTION_TIMEOUT - 0.01
                await asyncio.sleep(0.3)
                assert n.sm.lease_ttl_ms(lease.id) == 1_000
                n.clock[0] += 0.02
                await wait_gone(n, lease.id)
            finally:
                await c.close()

    run(body)


def test_a_follower_expires_no_lease_and_redirects_keepalives() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n, deadline=0.5)
            try:
                lease = await c.lease_grant(1_000)
                n.engine.leader = None  # deposed: no leader known
                async with asyncio.timeout(5):
                    while n.server.lessor.primary:
                        await asyncio.sleep(0.02)
                n.clock[0] += 3600
                await asyncio.sleep(0.3)
                assert n.sm.lease_ttl_ms(lease.id) == 1_000
                resp = await n.server.handle(p.LeaseKeepAlive(id=1, lease=lease.id))
                assert isinstance(resp, p.ErrorResponse) and resp.code is p.Code.UNAVAILABLE
            finally:
                await c.close()

    run(body)


def test_a_keepalive_is_refused_if_the_term_changes_during_its_confirmation() -> None:
    """The ReadIndex round confirmed leadership in one term; if this node meanwhile
    lost and won again, the renewal would belong to no confirmed term: refused."""

    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                lease = await c.lease_grant(1_000)
                barrier = n.engine.read_barrier

                async def new_term_meanwhile(timeout: float) -> Index:
                    n.engine.term += 1
                    return await barrier(timeout)

                n.engine.read_barrier = new_term_meanwhile  # type: ignore[method-assign]
                resp = await n.server.handle(p.LeaseKeepAlive(id=1, lease=lease.id))
                assert isinstance(resp, p.ErrorResponse) and resp.code is p.Code.UNAVAILABLE
                n.engine.read_barrier = barrier  # type: ignore[method-assign]
                ok = await n.server.handle(p.LeaseKeepAlive(id=2, lease=lease.id))
                assert ok == p.LeaseResponse(id=2, lease=lease.id, ttl_ms=1_000)
            finally:
                await c.close()

    run(body)


def test_a_short_ttl_is_raised_to_one_and_a_half_election_timeouts() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                lease = await c.lease_grant(10)
                assert lease.ttl_ms == 1.5 * ELECTION_TIMEOUT * 1000
                assert n.sm.lease_ttl_ms(lease.id) == lease.ttl_ms
                longer = await c.lease_grant(60_000)
                assert longer.ttl_ms == 60_000
            finally:
                await c.close()

    run(body)


def test_keepalive_and_ttl_of_a_lease_that_is_gone_are_not_found() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                lease = await c.lease_grant(1_000)
                await c.lease_revoke(lease.id)
                for call in (c.lease_keepalive, c.lease_ttl):
                    with pytest.raises(NotFound):
                        await call(lease.id)
            finally:
                await c.close()

    run(body)


def test_keepalives_do_not_grow_the_heap() -> None:
    """Review: every renewal pushed a heap row that stayed until its deadline passed, so
    keep-alive spam on a long lease grew the leader's memory without bound."""
    les, clock = lessor()
    les.lease_granted(1, 3_600_000)
    les.promote(term=1)
    for _ in range(10_000):
        clock.now += 0.001
        assert les.renew(1) == 3_600_000
    assert len(les._heap) <= 2
    clock.now += 3600.5
    assert les.due() == [1]


def test_a_renewal_that_shortens_a_promotion_deadline_is_still_due_on_time() -> None:
    """Found by the KV simulation (seed 191): a renewal soon after a promotion sets a
    deadline earlier than the promotion's, and with only the promotion's heap row the
    lease came due a whole election timeout late."""
    les, clock = lessor()  # extension 1 s
    les.lease_granted(1, 1000)
    les.promote(term=1)  # deadline: now + 1 + 1
    clock.now += 0.1
    assert les.renew(1) == 1000  # deadline: now + 1, earlier
    clock.now += 1.0
    assert les.due() == [1]
