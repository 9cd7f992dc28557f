"""The storage quota at the server (kvstore/quota.py) and the client: a write past the
quota is refused with NOSPACE and raises the replicated alarm; the alarm shows in
``alarm_list`` and ``status``; deletes and disarm are the way out. Over real sockets,
with ``LocalEngine`` (one replica, no Raft) under the real ClientServer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from kvstore import protocol as p
from kvstore.client import AsyncClient, BadRequest, Indeterminate, NoSpace
from kvstore.mvcc import kv_bytes
from kvstore.server import ClientServer
from kvstore.state_machine import KVStateMachine
from tests.kvstore.local_engine import LocalEngine
from tests.kvstore.test_server_client import LIMITS, run

pytestmark = pytest.mark.timeout(60)

VALUE = b"v" * 100
PUT_BYTES = 2 * kv_bytes(2, len(VALUE))  # a new two-byte key: its record and its event
NOSPACE_N1 = (p.AlarmInfo(alarm="NOSPACE", node="n1"),)


@asynccontextmanager
async def node(quota: int) -> AsyncIterator[tuple[LocalEngine, ClientServer, AsyncClient]]:
    sm = KVStateMachine()
    engine = LocalEngine(sm, "n1")
    addresses: dict[str, str] = {}
    server = ClientServer(engine, sm, "n1", addresses, LIMITS, quota_bytes=quota)
    await server.start("127.0.0.1", 0)
    addresses["n1"] = f"127.0.0.1:{server.port}"
    c = AsyncClient([addresses["n1"]], timeout=2.0, deadline=5.0)
    try:
        yield engine, server, c
    finally:
        await c.close()
        await server.close()


def test_a_write_past_the_quota_is_refused_and_raises_the_alarm() -> None:
    async def body() -> None:
        async with node(quota=3 * PUT_BYTES) as (engine, _, c):
            for i in range(3):
                await c.put(b"k%d" % i, VALUE)
            assert await c.alarm_list() == ()
            proposals = engine.proposals
            with pytest.raises(NoSpace, match=r"past this node's quota of \d+ bytes"):
                await c.put(b"k3", VALUE)
            assert engine.proposals == proposals + 1  # the alarm, not the write
            assert await c.alarm_list() == NOSPACE_N1
            st = await c.status()
            assert st.alarms == NOSPACE_N1 and st.quota_bytes == 3 * PUT_BYTES
            assert st.data_bytes == 3 * PUT_BYTES
            # Raised, the alarm refuses growth at apply, even a write within the quota.
            await c.delete(b"k0")
            with pytest.raises(NoSpace, match="NOSPACE alarm raised"):
                await c.put(b"k0", b"")
            with pytest.raises(NoSpace):
                await c.lease_grant(60_000)
            assert (await c.get(b"k1")).value == VALUE  # reads go on
            assert await c.alarm_disarm() == ()
            # The delete freed k0's record; its event stays in the history (which
            # counts) until newer events push it out: room for a small value only.
            assert (await c.status()).data_bytes == 3 * PUT_BYTES - PUT_BYTES // 2 + 2 + 16
            with pytest.raises(NoSpace):
                await c.put(b"k0", VALUE)
            await c.alarm_disarm()
            await c.put(b"k0", b"")
            assert (await c.status()).alarms == ()

    run(body)


def test_disarm_while_over_quota_is_rearmed_by_the_next_growing_write() -> None:
    async def body() -> None:
        async with node(quota=PUT_BYTES) as (_, _, c):
            await c.put(b"k0", VALUE)
            with pytest.raises(NoSpace):
                await c.put(b"k1", VALUE)
            assert await c.alarm_disarm("nospace") == ()
            with pytest.raises(NoSpace):
                await c.put(b"k1", VALUE)
            assert await c.alarm_list() == NOSPACE_N1
            with pytest.raises(BadRequest, match="unknown alarm"):
                await c.alarm_disarm("CORRUPT")

    run(body)


def test_nospace_after_an_unknown_outcome_is_indeterminate() -> None:
    """The first attempt was applied but its answer lost; the retry of the same seq is
    refused by the quota check (the data now includes the write): the client must not
    report that as definite."""

    async def body() -> None:
        async with node(quota=PUT_BYTES) as (engine, _, c):
            await c.open_session()
            engine.drop_responses = 1
            with pytest.raises(Indeterminate, match="NOSPACE after an unknown outcome"):
                await c.put(b"k0", VALUE)
            assert (await c.get(b"k0")).value == VALUE

    run(body)


def test_concurrent_writes_past_the_quota_raise_the_alarm_once() -> None:
    async def body() -> None:
        async with node(quota=PUT_BYTES) as (engine, _, c):
            await c.put(b"k0", VALUE)
            engine.delay = 0.05  # the alarm's proposal takes a while: writes pile up
            proposals = engine.proposals
            results = await asyncio.gather(
                *(c.put(b"k%d" % i, VALUE) for i in range(1, 9)), return_exceptions=True
            )
            assert all(isinstance(r, NoSpace) for r in results), results
            assert engine.proposals == proposals + 1
            assert await c.alarm_list() == NOSPACE_N1

    run(body)


def test_a_server_refuses_a_quota_below_one() -> None:
    sm = KVStateMachine()
    with pytest.raises(ValueError, match="quota_bytes"):
        ClientServer(LocalEngine(sm), sm, "n1", {}, LIMITS, quota_bytes=0)
