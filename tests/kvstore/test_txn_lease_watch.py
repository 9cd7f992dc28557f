"""Transactions, leases and watches through the real ClientServer and AsyncClient
(over 127.0.0.1, with the single-replica ``LocalEngine``), and the state machine rules
behind them: etcd's compare semantics, one revision per txn, lease expiry by the
leader's lessor, and gap-free watches that refuse compacted history."""

from __future__ import annotations

import asyncio

import pytest

from kvstore import protocol as p
from kvstore.client import (
    Compacted,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    LeaseNotFound,
    NotFound,
    PutOp,
    RangeOp,
    TooLarge,
    WatchEnded,
)
from kvstore.commands import (
    ExpireLease,
    Header,
    LeaseGrant,
    OpenSession,
    Tick,
    Txn,
    encode_command,
)
from kvstore.mvcc import EventType
from kvstore.state_machine import KVStateMachine, ResultCode
from tests.kvstore.test_server_client import client, cluster, run

pytestmark = pytest.mark.timeout(60)

EQ, NE, LT, GT = CompareOp.EQ, CompareOp.NE, CompareOp.LT, CompareOp.GT
VALUE, VERSION, CREATE, MOD, LEASE = (
    CompareTarget.VALUE,
    CompareTarget.VERSION,
    CompareTarget.CREATE,
    CompareTarget.MOD,
    CompareTarget.LEASE,
)


def test_txn_branches_on_compares_and_is_one_revision() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                await c.put("a", "1")
                r = await c.txn(
                    [Compare(b"a", VALUE, EQ, b"1")],
                    [PutOp(b"a", b"2"), PutOp(b"b", b"x"), RangeOp(b"a", None, None)],
                    [RangeOp(b"a", None, None)],
                )
                assert r.succeeded and r.revision == 2
                prev_a, prev_b, read = r.responses
                assert isinstance(prev_a, p.WriteOpResult) and prev_a.prev is not None
                assert prev_a.prev.value == b"1"
                assert isinstance(prev_b, p.WriteOpResult) and prev_b.prev is None
                # the txn reads its own write, and both keys share one revision
                assert isinstance(read, p.RangeResult) and read.kvs[0].value == b"2"
                a, b = await c.get("a"), await c.get("b")
                assert a.mod_revision == b.mod_revision == 2
                again = await c.txn(
                    [Compare(b"a", VALUE, EQ, b"1")],
                    [PutOp(b"a", b"3")],
                    [RangeOp(b"a", None, None)],
                )
                assert not again.succeeded and again.revision == 2  # nothing written
                (cur,) = again.responses
                assert isinstance(cur, p.RangeResult) and cur.kvs[0].value == b"2"
            finally:
                await c.close()

    run(body)


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (Compare(b"k", VERSION, EQ, 2), True),
        (Compare(b"k", VERSION, GT, 2), False),
        (Compare(b"k", CREATE, EQ, 1), True),
        (Compare(b"k", MOD, LT, 2), False),
        (Compare(b"k", MOD, NE, 1), True),
        (Compare(b"k", VALUE, GT, b"a"), True),
        (Compare(b"k", LEASE, EQ, 0), True),
        (Compare(b"absent", VERSION, EQ, 0), True),  # absent: version 0
        (Compare(b"absent", CREATE, EQ, 0), True),
        (Compare(b"absent", VALUE, NE, b"x"), False),  # absent has no value at all
        (Compare(b"absent", VALUE, EQ, b""), False),
    ],
)
def test_compare_semantics_follow_etcd(compare: Compare, holds: bool) -> None:
    sm = KVStateMachine()
    cid = b"c" * 16
    sm.apply(1, encode_command(Header(cid, 1, 0, 0), OpenSession()))
    sm.apply(2, encode_command(Header(cid, 2, 1, 0), Txn((), (PutOp(b"k", b"v1"),), ())))
    sm.apply(3, encode_command(Header(cid, 3, 2, 0), Txn((), (PutOp(b"k", b"v2"),), ())))
    res = sm.read_txn(Txn((compare,), (RangeOp(b"k", None, None),), ()))
    assert res.data[0] is holds


def test_read_only_txn_needs_no_session_and_writes_nothing() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                await c.put("x/1", "a")
                await c.put("x/2", "b")
                before = n.engine.proposals
                r = await c.txn([], [RangeOp(b"x/", b"x0", None), RangeOp(b"x/1", None, None)])
                assert n.engine.proposals == before  # served by the read barrier
                scan, one = r.responses
                assert isinstance(scan, p.RangeResult) and [kv.key for kv in scan.kvs] == [
                    b"x/1",
                    b"x/2",
                ]
                assert isinstance(one, p.RangeResult) and one.kvs[0].value == b"a"
            finally:
                await c.close()

    run(body)


def test_txn_put_to_missing_lease_applies_nothing() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                with pytest.raises(LeaseNotFound):
                    await c.txn([], [PutOp(b"a", b"1"), PutOp(b"b", b"2", lease=99)])
                with pytest.raises(NotFound):
                    await c.get("a")
                assert n.sm.revision == 0
            finally:
                await c.close()

    run(body)


def test_lease_keys_vanish_on_revoke_and_on_expiry_by_the_leaders_lessor() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                async with asyncio.timeout(5):
                    while not n.server.lessor.primary:  # the ticker sees it leads
                        await asyncio.sleep(0.02)
                lease = await c.lease_grant(5_000)
                await c.txn([], [PutOp(b"l/a", b"1", lease.id), PutOp(b"l/b", b"2", lease.id)])
                assert (await c.get("l/a")).lease == lease.id
                await c.lease_revoke(lease.id)
                for key in ("l/a", "l/b"):
                    with pytest.raises(NotFound):
                        await c.get(key)
                with pytest.raises(NotFound):
                    await c.lease_revoke(lease.id)

                short = await c.lease_grant(1_000)
                await c.txn([], [PutOp(b"l/c", b"3", short.id)])
                n.clock[0] += 0.6
                assert (await c.lease_keepalive(short.id)).ttl_ms == 1_000  # restarts TTL
                n.clock[0] += 0.9  # 1.5 s after the grant, 0.9 s after the keep-alive
                await asyncio.sleep(0.3)  # three ticker rounds: not run out yet
                assert (await c.get("l/c")).value == b"3"
                assert 90 <= (await c.lease_ttl(short.id)).ttl_ms <= 100
                n.clock[0] += 0.2
                # Nobody writes: the ticker proposes the lease's expiry by itself.
                async with asyncio.timeout(5):
                    while n.sm.lease_count:
                        await asyncio.sleep(0.05)
                with pytest.raises(NotFound):
                    await c.get("l/c")
                with pytest.raises(NotFound):
                    await c.lease_keepalive(short.id)
            finally:
                await c.close()

    run(body)


@pytest.mark.parametrize("fmt", [2, 3])
def test_lease_expiry_is_one_revision_and_survives_snapshot(fmt: int) -> None:
    """Format 3: the lessor's ExpireLease ends the lease, and nothing else does, however
    far any clock moves. Format 2 (an old log): the leader's clock in the log did, and
    replay must keep doing it so the old log rebuilds the state it had."""
    sm = KVStateMachine()
    cid = b"c" * 16
    clock = 1000 if fmt == 2 else 0
    sm.apply(1, encode_command(Header(cid, 1, 0, clock, fmt), OpenSession()))
    r = sm.apply(2, encode_command(Header(cid, 2, 1, clock, fmt), LeaseGrant(500)))
    lease = r.data[0]
    ops = (PutOp(b"a", b"1", lease), PutOp(b"b", b"2", lease))
    sm.apply(3, encode_command(Header(cid, 3, 2, clock, fmt), Txn((), ops, ())))
    copy = KVStateMachine()
    copy.restore(sm.snapshot())
    assert copy.snapshot() == sm.snapshot()
    for replica in (sm, copy):
        old_tick = encode_command(Header(bytes(16), 1, 0, 1499, 2), Tick())
        assert replica.apply(4, old_tick).code is ResultCode.OK
        assert replica.get(b"a") is not None
        if fmt == 2:
            replica.apply(5, encode_command(Header(bytes(16), 1, 0, 1500, 2), Tick()))
        else:
            later = encode_command(Header(bytes(16), 1, 0, 3_600_000, 2), Tick())
            assert replica.apply(5, later).code is ResultCode.OK  # an hour on: no effect
            assert replica.get(b"a") is not None
            replica.apply(6, encode_command(Header(bytes(16), 1, 0), ExpireLease(lease)))
        assert replica.get(b"a") is None and replica.get(b"b") is None
        assert replica.revision == 2  # both keys went in one revision
        events, _ = replica.events_since(2, b"\x01", b"\x00")
        assert [(e.revision, e.type, e.kv.key) for e in events] == [
            (2, EventType.DELETE, b"a"),
            (2, EventType.DELETE, b"b"),
        ]
    assert sm.snapshot() == copy.snapshot()


def test_expire_lease_and_old_ticks_are_idempotent_and_sessionless() -> None:
    sm = KVStateMachine()
    tick = encode_command(Header(bytes(16), 1, 0, 5, 2), Tick())
    assert sm.apply(1, tick).code is ResultCode.OK
    assert sm.apply(2, tick).code is ResultCode.OK
    assert sm.session_count == 0 and sm.clock_ms == 5
    cid = b"c" * 16
    sm.apply(3, encode_command(Header(cid, 1, 0), OpenSession()))
    lease = sm.apply(4, encode_command(Header(cid, 2, 1), LeaseGrant(100))).data[0]
    expire = encode_command(Header(bytes(16), 1, 0), ExpireLease(lease))
    assert sm.apply(5, expire).code is ResultCode.OK and sm.lease_count == 0
    assert sm.apply(6, expire).code is ResultCode.NOT_FOUND
    assert sm.session_count == 1 and sm.clock_ms == 5


def test_watch_streams_gap_free_from_a_revision_on_any_node() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                await c.put("w/a", "1")
                await c.put("other", "x")
                await c.txn([], [PutOp(b"w/b", b"2"), DeleteOp(b"w/a")])
                watch = await c.watch("w/", prefix=True, start_revision=1)
                seen: list[tuple[int, str, bytes]] = []
                async with asyncio.timeout(5):
                    async for batch in watch:
                        seen += [(e.kv.mod_revision, e.type, e.kv.key) for e in batch]
                        if watch.revision >= 3:
                            break
                assert seen == [(1, "put", b"w/a"), (3, "put", b"w/b"), (3, "delete", b"w/a")]
                assert watch.revision == 3
                await c.put("w/c", "3")  # live events follow
                async with asyncio.timeout(5):
                    batch = await anext(watch)
                    while not batch:
                        batch = await anext(watch)
                assert [(e.kv.mod_revision, e.kv.key, e.kv.value) for e in batch] == [
                    (4, b"w/c", b"3")
                ]
                await watch.close()
                assert [b async for b in watch] == []
            finally:
                await c.close()

    run(body)


def test_watch_from_compacted_revision_is_refused() -> None:
    async def body() -> None:
        async with cluster("n1", history_limit=4) as (n,):
            c = client(n)
            try:
                for i in range(10):
                    await c.put(f"k{i}", "v")
                assert n.sm.compacted_revision > 0
                watch = await c.watch("k", prefix=True, start_revision=1)
                with pytest.raises(Compacted) as info:
                    await anext(watch)
                assert info.value.compact_revision == n.sm.compacted_revision
                await watch.close()
                ok = await c.watch("k", prefix=True, start_revision=n.sm.compacted_revision + 1)
                batch = await anext(ok)
                assert batch and batch[0].kv.mod_revision == n.sm.compacted_revision + 1
                await ok.close()
            finally:
                await c.close()

    run(body)


def test_watch_ends_with_watch_ended_when_the_server_goes() -> None:
    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                watch = await c.watch("k")
                assert await anext(watch) == ()  # created
                await n.server.close()
                with pytest.raises(WatchEnded):
                    async with asyncio.timeout(5):
                        async for _ in watch:
                            pass
                await watch.close()
            finally:
                await c.close()

    run(body)


def test_a_retried_txn_applies_once_and_gets_its_first_answer() -> None:
    """The response to a write txn is lost after it applied: the client retries with the
    same seq, and the session table answers with the cached result (exactly once)."""

    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                await c.put("ctr", "0")
                n.engine.drop_responses = 1
                r = await c.txn(
                    [Compare(b"ctr", VALUE, EQ, b"0")],
                    [PutOp(b"ctr", b"1"), PutOp(b"log", b"once")],
                    [RangeOp(b"ctr", None, None)],
                )
                assert r.succeeded and r.revision == 2  # the first application's answer
                assert n.sm.revision == 2 and (await c.get("log")).version == 1
            finally:
                await c.close()

    run(body)


def test_state_machine_restores_a_format_1_snapshot() -> None:
    import msgpack  # type: ignore[import-untyped]

    sm = KVStateMachine()
    old = msgpack.packb([1, 7, 1234, [3, [[b"k", b"v", 1, 3, 2]]], []], use_bin_type=True)
    sm.restore(old)
    assert sm.applied_index == 7 and sm.revision == 3 and sm.get(b"k") is not None
    assert sm.compacted_revision == 3 and sm.lease_count == 0
    cid = b"c" * 16
    sm.apply(8, encode_command(Header(cid, 1, 0), OpenSession()))
    r = sm.apply(9, encode_command(Header(cid, 2, 1), LeaseGrant(100)))
    assert r.data[0] == 1  # lease ids start afresh


def test_a_watch_far_behind_catches_up_without_new_writes() -> None:
    """More history than one batch behind the watcher: the stream must keep sending
    until it is current, not wait for the next write."""

    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                opening = encode_command(Header(b"w" * 16, 1, 0, 0), OpenSession())
                await n.engine.propose(opening, 1)
                for i in range(2500):  # straight into the engine: fast, same history
                    put = Txn((), (PutOp(b"h/%d" % i, b"v"),), ())
                    header = Header(b"w" * 16, i + 2, i + 1, 0)
                    await n.engine.propose(encode_command(header, put), 1)
                watch = await c.watch("h/", prefix=True, start_revision=1)
                seen = 0
                async with asyncio.timeout(10):
                    async for batch in watch:
                        seen += len(batch)
                        if watch.revision >= 2500:
                            break
                assert seen == 2500
                await watch.close()
            finally:
                await c.close()

    run(body)


def test_txn_ranges_are_bounded_and_fit_one_frame() -> None:
    """A range without a limit returns at most max_scan_limit keys; a read-only txn
    whose answer cannot fit a frame is refused (nothing changed), a writing one is
    applied and its reads are cut and marked ``more``."""

    async def body() -> None:
        async with cluster("n1") as (n,):
            c = client(n)
            try:
                big = b"x" * 10_000  # 10 such values are over the 64 KiB test frame
                for i in range(12):
                    await c.put(f"b/{i:02d}", big)
                with pytest.raises(TooLarge):
                    await c.txn([], [RangeOp(b"b/", b"b0", None)])
                r = await c.txn([], [RangeOp(b"b/", b"b0", None), PutOp(b"w", b"1")])
                assert r.succeeded and (await c.get("w")).value == b"1"
                cut, _ = r.responses
                assert isinstance(cut, p.RangeResult) and cut.more and 0 < len(cut.kvs) < 12
                small = await c.txn([], [RangeOp(b"b/", b"b0", 2)])
                (two,) = small.responses
                assert isinstance(two, p.RangeResult) and len(two.kvs) == 2 and two.more
            finally:
                await c.close()

    run(body)
