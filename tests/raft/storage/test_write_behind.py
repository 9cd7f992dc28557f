"""WriteBehindStorage really loses acknowledged saves on a crash (that is its job)."""

from __future__ import annotations

from raft.storage.memory import MemoryStorage
from raft.storage.write_behind import WriteBehindStorage
from raft.types import Entry, HardState


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_saves_reach_the_disk_only_after_the_delay() -> None:
    disk = MemoryStorage()
    clock = FakeClock()
    wb = WriteBehindStorage(disk, delay_s=2.0, clock=clock)
    wb.save(HardState(term=1), [Entry(1, 1, data=b"a")], None, sync=True)
    assert disk.crash().load().entries == ()  # acknowledged, yet not durable
    clock.now = 2.5
    wb.save(None, [Entry(1, 2, data=b"b")], None, sync=True)
    restored = disk.crash().load()
    assert [e.data for e in restored.entries] == [b"a", b"b"]
    assert restored.hard_state.term == 1


def test_close_flushes_everything() -> None:
    disk = MemoryStorage()
    wb = WriteBehindStorage(disk, delay_s=60.0, clock=FakeClock())
    wb.save(HardState(term=2), [Entry(2, 1)], None, sync=True)
    wb.close()
    assert disk.load().hard_state.term == 2
