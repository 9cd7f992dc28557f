"""Snapshot capture (kvstore/snapshot.py, MVCCStore.capture): a snapshot captured at one
applied index and encoded while writes go on is exactly the state at that index, byte
for byte what a replica stopped there produces, and what the one-shot encoder of format
2 produced before capture existed. And the engine encodes it off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
from collections.abc import Callable
from typing import Any
from unittest import mock

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import snapshot as snapshot_mod
from kvstore.commands import Delete, Header, LeaseGrant, OpenSession, Put, encode_command
from kvstore.quota import alarms_section
from kvstore.state_machine import SNAPSHOT_FORMAT_VERSION, KVStateMachine
from raft.config import Config
from raft.errors import ProposalDropped
from raft.runtime.node import RaftEngine
from raft.storage.memory import MemoryStorage
from tests.kvstore.test_state_machine import logs, new_sm, rich_commands


def one_shot(sm: KVStateMachine) -> bytes:
    """The oracle: format 2 as the pre-capture ``snapshot()`` encoded it, all rows
    built, then one packb."""
    st_ = sm._store
    sessions = [
        [
            cid,
            s.last_active_ms,
            s.floor,
            [[q, s.results[q].to_obj(), s.digests[q]] for q in sorted(s.results)],
        ]
        for cid, s in sm._sessions.items()  # least recently active first
    ]
    state = [
        SNAPSHOT_FORMAT_VERSION,
        sm.applied_index,
        sm.clock_ms,
        [
            st_.revision,
            [kv.to_obj() for kv in st_._kvs.values()],
            st_.compacted_revision,
            [ev.to_obj() for ev in st_._events],
        ],
        sessions,
        [[lid, e.ttl_ms, e.expiry_ms] for lid, e in sorted(sm._leases.items())],
        sm._next_lease_id,
        list(sm._ended),
        {
            "alarms": alarms_section(sm._alarms),
            "auth": {
                **sm.auth.to_obj(),
                "sessions": [[cid, s.user] for cid, s in sm._sessions.items() if s.user],
            },
        },
    ]
    data: bytes = msgpack.packb(state, use_bin_type=True)
    return data


def replica(log: list[bytes], upto: int, make: Callable[[], KVStateMachine] = new_sm) -> Any:
    sm = make()
    for i, e in enumerate(log[:upto], 1):
        sm.apply(i, e)
    return sm


def put(client: int, seq: int, key: bytes, value: bytes) -> bytes:
    """Seq 1 of a client is its session's open; its puts are seqs 2, 3, ..."""
    cmd = OpenSession() if seq == 1 else Put(key, value)
    return encode_command(Header(bytes([client]) * 16, seq, seq - 1), cmd)


@settings(max_examples=300, deadline=None)
@given(logs(rich_commands), st.data())
def test_capture_is_the_state_at_its_index_while_writes_go_on(
    log: list[bytes], data: st.DataObject
) -> None:
    """Writes applied between every chunk of the encoding (one row per chunk) never
    show: the bytes equal those of a replica that stopped at the capture."""
    cut = data.draw(st.integers(0, len(log)))
    sm = replica(log, cut)
    rest = iter(enumerate(log[cut:], cut + 1))
    with mock.patch.object(snapshot_mod, "CHUNK_ROWS", 1):
        cap = sm.snapshot_capture()
        parts = []
        for part in cap.parts():
            parts.append(bytes(part))
            for i, e in rest:  # one write between two pieces of the encoding
                sm.apply(i, e)
                break
        for i, e in rest:
            sm.apply(i, e)
    encoded = b"".join(parts)
    stopped = replica(log, cut)
    assert encoded == one_shot(stopped) == stopped.snapshot()
    restored = new_sm()
    restored.restore(encoded)
    assert restored.snapshot() == encoded
    assert sm.snapshot() == replica(log, len(log)).snapshot()  # the live state moved on


def test_capture_encoded_in_another_thread_while_applying() -> None:
    """A real thread encodes while this one applies overwrites, deletes and new keys."""
    log = [put(c, s, b"k%05d" % (s * 7 % 4000), b"v%d" % s) for s in range(1, 1501) for c in (1, 2)]
    log += [
        put(3, 1, b"lease", b"x"),
        encode_command(Header(bytes([3]) * 16, 2, 1), LeaseGrant(50)),
    ]
    more = [
        encode_command(Header(bytes([4]) * 16, s, s - 1), Delete(b"k%05d" % s))
        if s % 3 else put(4, s, b"k%05d" % (s * 13 % 5000), b"w")
        for s in range(1, 3001)
    ]  # fmt: skip
    sm = replica(log, len(log), KVStateMachine)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL back and forth as often as possible
    try:
        with mock.patch.object(snapshot_mod, "CHUNK_ROWS", 8):
            encode = sm.snapshot_capture()
            out: list[bytes] = []
            worker = threading.Thread(target=lambda: out.append(encode()))
            worker.start()
            for i, e in enumerate(more, len(log) + 1):
                sm.apply(i, e)
            worker.join()
    finally:
        sys.setswitchinterval(switch)
    assert out == [replica(log, len(log), KVStateMachine).snapshot()]
    assert sm.snapshot() == replica(log + more, len(log) + len(more), KVStateMachine).snapshot()


def test_restore_after_capture_does_not_leak_into_it() -> None:
    log = [put(1, s, b"k%d" % (s % 5), b"v%d" % s) for s in range(1, 30)]
    sm = replica(log, 20, KVStateMachine)
    encode = sm.snapshot_capture()
    sm.restore(replica(log, 29, KVStateMachine).snapshot())
    sm.apply(30, put(2, 1, b"k1", b"after"))
    assert encode() == replica(log, 20, KVStateMachine).snapshot()


def test_finished_capture_stops_copy_on_write() -> None:
    sm = KVStateMachine()
    sm.apply(1, put(1, 1, b"", b""))
    sm.apply(2, put(1, 2, b"a", b"1"))
    encode = sm.snapshot_capture()
    sm.apply(3, put(1, 3, b"a", b"2"))
    assert len(sm._store._captures) == 1
    encode()
    sm.apply(4, put(1, 4, b"b", b"3"))
    assert sm._store._captures == ()


# ---- the engine: snapshots off the event loop ------------------------------------------


@dataclasses.dataclass
class BlockedEncoder:
    """Wraps ``snapshot_capture``: records where capture and encoding ran, and holds
    the encoder until released, so the test can apply more while it runs."""

    sm: KVStateMachine
    release: threading.Event = dataclasses.field(default_factory=threading.Event)
    captures: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (sm index, thread)
    encoders: list[int] = dataclasses.field(default_factory=list)  # thread ids

    def __call__(self) -> Callable[[], bytes]:
        encode = KVStateMachine.snapshot_capture(self.sm)
        self.captures.append((self.sm.applied_index, threading.get_ident()))

        def blocked() -> bytes:
            self.encoders.append(threading.get_ident())
            assert self.release.wait(10), "the test never released the encoder"
            return encode()

        return blocked


async def _until(cond: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def test_engine_encodes_off_the_loop_while_applying() -> None:
    """The engine captures on its loop, encodes in a worker thread, and applies (and
    answers) more proposals meanwhile; the snapshot it persists is the state of a
    replica at exactly the snapshot's index; the core keeps its catch-up margin."""

    async def run() -> None:
        sm = KVStateMachine()
        applied: list[tuple[int, bytes]] = []  # every command the engine applied

        def apply(index: int, cmd: bytes) -> Any:
            applied.append((index, cmd))
            return KVStateMachine.apply(sm, index, cmd)

        sm.apply = apply  # type: ignore[method-assign]
        hook = BlockedEncoder(sm)
        sm.snapshot_capture = hook  # type: ignore[method-assign]
        storage = MemoryStorage()
        engine = RaftEngine(
            config=Config(id="n1", snapshot_catchup_entries=4),
            storage=storage,
            state_machine=sm,
            bootstrap_voters=frozenset({"n1"}),
            tick_seconds=0.005,
            snapshot_threshold=10,
        )
        engine.start()
        loop_thread = threading.get_ident()
        try:
            await _until(lambda: engine.status().role == "leader")
            seq = 0
            while not hook.captures and seq < 30:  # until the threshold starts a snapshot
                seq += 1
                await engine.propose(put(1, seq, b"k%d" % (seq % 3), b"v%d" % seq), 5)
            assert hook.captures, "no snapshot was taken through snapshot_capture"
            await _until(lambda: bool(hook.encoders))
            index = engine._snapshot_job[0] if engine._snapshot_job else -1
            for _ in range(15):  # the encoder is stuck; applying must go on
                seq += 1
                await engine.propose(put(1, seq, b"k%d" % (seq % 3), b"v%d" % seq), 5)
            assert engine.status().applied >= index + 15
            assert storage.load().snapshot.meta.index == 0
            hook.release.set()
            await _until(lambda: storage.load().snapshot.meta.index == index)
            snap = storage.load().snapshot
            st = engine._require_node().status()
        finally:
            hook.release.set()
            await engine.close()
        assert hook.captures[0][1] == loop_thread  # captured on the loop ...
        assert hook.encoders[0] != loop_thread  # ... encoded elsewhere
        assert max(i for i, _ in applied) > snap.meta.index + 10  # applied while encoding
        stopped = KVStateMachine()
        for i, cmd in applied:
            if i <= snap.meta.index:
                stopped.apply(i, cmd)
        assert snap.data == stopped.snapshot()
        assert st.first_index == snap.meta.index - 4 + 1  # the catch-up margin

    asyncio.run(run())


def test_engine_drops_a_snapshot_overtaken_by_a_leaders(monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoding that finishes after a leader's snapshot replaced the log is dropped
    (create_snapshot refuses it), not persisted over the newer one."""

    async def run() -> None:
        sm = KVStateMachine()
        engine = RaftEngine(
            config=Config(id="n1"),
            storage=MemoryStorage(),
            state_machine=sm,
            bootstrap_voters=frozenset({"n1"}),
            tick_seconds=0.005,
            snapshot_threshold=1_000_000,
        )
        engine.start()
        try:
            await _until(lambda: engine.status().role == "leader")
            node = engine._require_node()

            def refuse(index: int, data: bytes) -> Any:
                raise ProposalDropped("overtaken")

            monkeypatch.setattr(node, "create_snapshot", refuse)
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            fut.set_result(b"stale")
            engine._snapshot_job = (1, fut)
            engine._wake.set()
            await _until(lambda: engine._snapshot_job is None)
            assert engine._snapshot_index == 0
            await engine.propose(put(1, 1, b"k", b"v"), 5)  # still running
        finally:
            await engine.close()

    asyncio.run(run())
