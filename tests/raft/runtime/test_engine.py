"""RaftEngine at the seams with the world (issue 9): read contexts across restarts, a
slow disk, and shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence

import pytest

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.errors import NotLeader
from raft.messages import Message
from raft.runtime.node import RaftEngine
from raft.storage.memory import MemoryStorage
from raft.types import Entry, HardState, Index, Snapshot


class _Nowhere:
    def send(self, msgs: Iterable[Message]) -> None:
        pass


class _Register:
    def apply(self, index: Index, command: bytes) -> object:
        return None

    def snapshot(self) -> bytes:
        return b""

    def snapshot_capture(self) -> Callable[[], bytes]:
        return lambda: b""

    def restore(self, data: bytes) -> None:
        pass

    def validate(self, data: bytes, index: Index) -> None:
        pass


class SlowDisk(MemoryStorage):
    """Saves block while ``gate`` is clear: an fsync that takes as long as the test
    wants (the thread doing it is the runtime's persist worker)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        if not self.gate.is_set():
            self.blocked.set()
            self.gate.wait(10)
        super().save(hard_state, entries, snapshot, sync)


def _engine(storage: MemoryStorage, voters: frozenset[str]) -> RaftEngine:
    engine = RaftEngine(
        config=Config(id="n1", election_ticks=5, pre_vote=False),
        storage=storage,
        state_machine=_Register(),
        bootstrap_voters=voters,
        tick_seconds=0.005,
        snapshot_threshold=1_000_000,
    )
    engine.attach(_Nowhere())
    return engine


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def test_read_contexts_differ_across_incarnations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two lives of one node never reuse a read context, so an answer queued for the
    first life cannot match a read of the second (the core also drops answers to reads
    it did not issue; tests/raft/core/test_paper.py)."""
    seen: list[bytes] = []
    real = RawNode.read_index

    def record(self: RawNode, ctx: bytes) -> None:
        seen.append(ctx)
        real(self, ctx)

    monkeypatch.setattr(RawNode, "read_index", record)

    async def one_life(storage: MemoryStorage) -> None:
        engine = _engine(storage, frozenset({"n1"}))
        engine.start()
        try:
            await _until(lambda: engine.status().role == "leader")
            await engine.read_barrier(timeout=2)
        finally:
            await engine.close()

    storage = MemoryStorage()
    asyncio.run(one_life(storage))
    asyncio.run(one_life(MemoryStorage.from_restored(storage.load())))
    assert len(seen) == 2 and seen[0] != seen[1]


def test_a_slow_disk_does_not_kill_the_loop() -> None:
    """A caller gives up (its wait times out) while the node waits on its disk; the
    node later fails that caller's request (no leader) on a future already cancelled.
    That used to raise InvalidStateError and end the Raft loop, and the process."""

    async def main() -> None:
        disk = SlowDisk()
        engine = _engine(disk, frozenset({"n1", "n2", "n3"}))  # peers never answer
        engine.start()
        disk.gate.clear()  # the campaign's term and vote will wait on the disk
        try:
            await asyncio.get_running_loop().run_in_executor(None, disk.blocked.wait, 5)
            with pytest.raises(TimeoutError):
                await engine.read_barrier(timeout=0.05)
            disk.gate.set()
            await asyncio.sleep(0.1)  # the loop runs the abandoned read: NotLeader
            assert engine._task is not None and not engine._task.done(), engine._task
            with pytest.raises(NotLeader):
                await engine.read_barrier(timeout=1)  # and keeps serving
        finally:
            await engine.close()

    asyncio.run(main())


def test_close_waits_for_an_in_flight_persist() -> None:
    """Closing while a save runs in the worker thread must not close the storage under
    it: close waits for the save, then closes."""

    async def main() -> None:
        disk = SlowDisk()
        order: list[str] = []
        real_close = disk.close
        disk.close = lambda: (order.append("close"), real_close())[1]  # type: ignore[method-assign]
        real_save = disk.save

        def save(*args: object, **kwargs: object) -> None:
            real_save(*args, **kwargs)  # type: ignore[arg-type]
            order.append("save")

        disk.save = save  # type: ignore[method-assign,assignment]
        engine = _engine(disk, frozenset({"n1", "n2", "n3"}))
        engine.close_timeout = 0.01  # the loop is given up on while the disk works
        engine.start()
        disk.gate.clear()
        await asyncio.get_running_loop().run_in_executor(None, disk.blocked.wait, 5)
        closing = asyncio.ensure_future(engine.close())
        # Longer than any close timeout (the old code's was a fixed 5 s): the loop is
        # cancelled while the worker thread still writes.
        await asyncio.sleep(5.5)
        assert "close" not in order
        disk.gate.set()
        await closing
        assert order[-2:] == ["save", "close"]

    asyncio.run(main())


def test_close_cleans_up_after_the_loop_died() -> None:
    """A loop that died (here: the disk failed) must not make close() skip closing the
    storage and failing the waiting callers."""
    from raft.storage.base import StorageError

    class FailingDisk(MemoryStorage):
        closed = False
        armed = False

        def save(self, *args: object, **kwargs: object) -> None:
            if self.armed:
                raise StorageError("disk on fire")
            super().save(*args, **kwargs)  # type: ignore[arg-type]

        def close(self) -> None:
            self.closed = True

    async def main() -> None:
        disk = FailingDisk()
        engine = _engine(disk, frozenset({"n1", "n2", "n3"}))
        engine.start()
        disk.armed = True  # the campaign's save fails: the loop dies
        failed = await asyncio.wait_for(engine.wait_failed(), 5)
        assert isinstance(failed, StorageError)
        await engine.close()
        assert disk.closed

    asyncio.run(main())
