"""A data directory written by the release before issue 9's lease work (commit e4ff5f2:
command format 2 with the leader's clock in every header, ``Tick`` and replicated
keep-alives; snapshot format 3) opens and replays to the state that release had, and
the store goes on from there under the new rules. The fixture was made by
``tests/kvstore/data/make_format2_fixture.py`` run with that release's code."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from kvstore.commands import Header, OpenSession, Put, decode_command, encode_command
from kvstore.state_machine import KVStateMachine, ResultCode
from raft.config import Config
from raft.runtime.node import RaftEngine
from raft.storage.disk import DiskStorage
from raft.types import EntryKind

pytestmark = pytest.mark.timeout(60)

FIXTURE = Path(__file__).parent / "data" / "format2-n1"
A, B = b"a" * 16, b"b" * 16


def replayed(tmp_path: Path) -> KVStateMachine:
    d = tmp_path / "raft"
    shutil.copytree(FIXTURE, d)
    restored = DiskStorage(d).load()
    assert msgpack.unpackb(restored.snapshot.data)[0] == 3  # the old snapshot format
    sm = KVStateMachine()
    sm.restore(restored.snapshot.data)
    for e in restored.entries:
        if e.index > sm.applied_index and e.kind is EntryKind.NORMAL and e.data:
            assert decode_command(e.data)[0].format in (1, 2)
            sm.apply(e.index, e.data)
    return sm


def test_an_old_log_replays_to_the_state_the_old_release_had(tmp_path: Path) -> None:
    sm = replayed(tmp_path)
    assert sm.applied_index == 58
    for i in range(2, 50):
        kv = sm.get(b"k%d" % i)
        assert kv is not None and kv.value == b"v%d" % i
    # The old log's Tick carried the old leader's clock past the short lease's deadline:
    # replayed, it expires it at the same index, as the old release did; the long lease
    # (an hour, kept alive by a replicated keep-alive) lives on.
    assert sm.get(b"short") is None and sm.lease_ttl_ms(1) is None
    assert sm.get(b"long") is not None and sm.lease_ttl_ms(2) == 3_600_000
    assert sm.session_count == 2


def test_the_store_goes_on_under_the_new_rules(tmp_path: Path) -> None:
    sm = replayed(tmp_path)
    last = encode_command(Header(A, 50, 49, 1_006_001, 2), Put(b"after-tick", b"x"))
    retry = sm.apply(59, last)  # a retry of the old log's last write: answered from cache
    assert retry.code is ResultCode.OK and sm.get(b"after-tick").version == 1  # type: ignore[union-attr]
    assert sm.apply(60, encode_command(Header(A, 51, 50), Put(b"new", b"1"))).code is ResultCode.OK
    assert (
        sm.apply(61, encode_command(Header(b"c" * 16, 1, 0), OpenSession())).code is ResultCode.OK
    )
    # No clock of the new format moves the long lease: only the lessor ends it.
    assert sm.lease_ttl_ms(2) == 3_600_000 and sm.clock_ms == 1_006_001
    twin = KVStateMachine()
    twin.restore(sm.snapshot())
    assert msgpack.unpackb(sm.snapshot())[0] == 5 and twin.snapshot() == sm.snapshot()


def test_a_node_starts_on_the_old_directory_and_serves(tmp_path: Path) -> None:
    d = tmp_path / "raft"
    shutil.copytree(FIXTURE, d)

    async def body() -> None:
        sm = KVStateMachine()
        engine = RaftEngine(
            config=Config(id="n1"),
            storage=DiskStorage(d),
            state_machine=sm,
            bootstrap_voters=frozenset({"n1"}),
            tick_seconds=0.01,
            snapshot_threshold=1000,
        )
        engine.start()
        try:
            async with asyncio.timeout(10):
                while engine.status().role != "leader":
                    await asyncio.sleep(0.01)
                await engine.read_barrier(5)
            assert sm.get(b"k49") is not None and sm.get(b"short") is None
            put = encode_command(Header(A, 51, 50), Put(b"new", b"1"))
            assert (await engine.propose(put, 5)).code is ResultCode.OK  # type: ignore[attr-defined]
        finally:
            await engine.close()

    asyncio.run(body())
