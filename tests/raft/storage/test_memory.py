from __future__ import annotations

from raft.core.ready import Restored
from raft.storage import MemoryStorage, Storage
from raft.types import HardState

from .helpers import ents, snap

HS1 = HardState(1, "n1", 0)
HS2 = HardState(2, "n2", 3)


def test_is_a_storage() -> None:
    st: Storage = MemoryStorage()
    assert st.load() == Restored()


def test_synced_save_survives_crash_unsynced_does_not() -> None:
    st = MemoryStorage()
    st.save(HS1, ents(1, 5, 1), None, sync=True)
    st.save(HS2, ents(6, 8, 1), None, sync=False)
    assert st.load() == Restored(HS2, entries=tuple(ents(1, 8, 1)))
    assert st.crash().load() == Restored(HS1, entries=tuple(ents(1, 5, 1)))


def test_sync_makes_earlier_unsynced_saves_durable() -> None:
    st = MemoryStorage()
    st.save(HS1, ents(1, 5, 1), None, sync=False)
    st.save(None, ents(6, 6, 1), None, sync=True)
    assert st.crash().load() == Restored(HS1, entries=tuple(ents(1, 6, 1)))


def test_unsynced_conflict_does_not_damage_synced_log() -> None:
    st = MemoryStorage()
    st.save(None, ents(1, 10, 1), None, sync=True)
    st.save(None, ents(4, 5, 2), None, sync=False)
    assert st.load().entries == tuple(ents(1, 3, 1) + ents(4, 5, 2))
    assert st.crash().load().entries == tuple(ents(1, 10, 1))
    st.save(None, ents(6, 6, 2), None, sync=True)
    assert st.crash().load().entries == tuple(ents(1, 3, 1) + ents(4, 6, 2))


def test_snapshots_are_always_durable() -> None:
    st = MemoryStorage()
    st.save(HS1, ents(1, 10, 1), None, sync=False)
    st.save_snapshot(snap(6, 1))
    st.save(None, ents(11, 12, 1), None, sync=False)
    crashed = st.crash()
    assert crashed.load() == Restored(HS1, snap(6, 1), tuple(ents(7, 10, 1)))
    crashed.save(HS2, (), snap(20, 2), sync=False)
    assert crashed.crash().load() == Restored(HS1, snap(20, 2), ())


def test_crash_copies_are_independent() -> None:
    st = MemoryStorage()
    st.save(None, ents(1, 3, 1), None, sync=True)
    crashed = st.crash()
    crashed.save(None, ents(2, 2, 5), None, sync=True)
    assert st.load().entries == tuple(ents(1, 3, 1))
