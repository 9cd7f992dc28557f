from __future__ import annotations

from pathlib import Path

import pytest

from raft.core.ready import Restored
from raft.storage import CorruptStorage, DiskStorage, StorageError
from raft.storage.disk import SNAPSHOT_FILE
from raft.storage.simfs import SimFileSystem
from raft.types import HardState, Snapshot

from .helpers import ents, flip, snap

HS = HardState(term=3, vote="n2", commit=4)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def test_fresh_directory_loads_empty(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path / "node")
    assert st.is_empty()
    assert st.load() == Restored()
    st.close()
    assert DiskStorage(tmp_path / "node").is_empty()


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    st.save(HS, ents(1, 5, 1), None, sync=True)
    expected = Restored(HS, Snapshot(), tuple(ents(1, 5, 1)))
    assert st.load() == expected
    assert not st.is_empty()
    st.close()
    st = DiskStorage(tmp_path)
    assert st.load() == expected
    assert st.load() == expected  # the second load reads from disk
    st.close()


def test_conflict_truncation(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    st.save(None, ents(1, 10, 1), None, sync=True)
    st.save(None, ents(6, 8, 2), None, sync=True)
    want = tuple(ents(1, 5, 1) + ents(6, 8, 2))
    assert st.load().entries == want
    st.close()
    assert DiskStorage(tmp_path).load().entries == want


def test_group_commit_fsyncs_once_per_batch() -> None:
    fs = SimFileSystem()
    st = DiskStorage(Path("/n1"), fs=fs)
    st.save(HS, ents(1, 1, 1), None, sync=True)  # segment creation is not measured
    before = fs.fsyncs
    st.save(HardState(3, "n2", 1), ents(2, 500, 1), None, sync=True)
    assert fs.fsyncs == before + 1, "entries and hard state share one fsync"
    st.save(HardState(3, "n2", 2), ents(501, 600, 1), None, sync=False)
    assert fs.fsyncs == before + 1
    st.close()


def test_hard_state_survives_a_kill_without_sync(tmp_path: Path) -> None:
    """fsync = "never": term and vote are written (not fsynced) whenever they change,
    so kill -9 forgets no vote (a regression: they used to be written only at close)."""
    st = DiskStorage(tmp_path)
    st.save(HS, ents(1, 2, 1), None, sync=False)
    assert st.load().hard_state == HS
    # kill -9: the object is dropped without close; the page cache keeps the writes.
    assert DiskStorage(tmp_path).load().hard_state == HS


def test_segment_rotation_and_restart(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path, segment_bytes=128)
    for i in range(1, 40, 3):
        st.save(HS, ents(i, i + 2, 1), None, sync=True)
    st.close()
    assert len(segments(tmp_path)) > 5
    st = DiskStorage(tmp_path, segment_bytes=128)
    assert st.load().entries == tuple(ents(1, 39, 1))
    st.close()


def test_torn_tail_recovered_on_reopen(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    st.save(HS, ents(1, 9, 1), None, sync=True)
    st.save(None, ents(10, 10, 1), None, sync=False)  # then power fails mid-write
    [path] = segments(tmp_path)
    path.write_bytes(path.read_bytes()[:-5] + b"\xffgarbage")
    st = DiskStorage(tmp_path)
    assert st.load().entries == tuple(ents(1, 9, 1))
    assert st.wal.truncated_tail is not None
    st.save(None, ents(10, 12, 2), None, sync=True)
    st.close()
    assert DiskStorage(tmp_path).load().entries == tuple(ents(1, 9, 1) + ents(10, 12, 2))


def test_damage_to_the_last_synced_batch_is_corruption_not_a_tear(tmp_path: Path) -> None:
    """The SYNCED mark written after the fsync proves the batch durable: damage there
    cannot be a torn write, so it must stop the node rather than drop the entries."""
    st = DiskStorage(tmp_path)
    st.save(HS, ents(1, 10, 1), None, sync=True)
    st.close()
    [path] = segments(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-40] + b"\xffgarbage!" + data[-31:])  # same length: damage
    with pytest.raises(CorruptStorage):
        DiskStorage(tmp_path)


def test_corruption_in_the_middle_stops_the_node(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    st.save(HS, ents(1, 10, 1), None, sync=True)
    st.close()
    [path] = segments(tmp_path)
    flip(path, 30)  # inside the second record
    with pytest.raises(CorruptStorage) as info:
        DiskStorage(tmp_path)
    assert path.name in str(info.value) and info.value.offset > 0


@pytest.mark.parametrize("name", [SNAPSHOT_FILE])
@pytest.mark.parametrize("offset", [0, 25, -1])
def test_corrupt_snapshot_raises(tmp_path: Path, name: str, offset: int) -> None:
    st = DiskStorage(tmp_path)
    st.save(HS, ents(1, 5, 1), None, sync=True)
    st.save_snapshot(snap(3, 1, b"some state machine image"))
    st.close()
    path = tmp_path / name
    flip(path, offset % path.stat().st_size)
    with pytest.raises(CorruptStorage) as info:
        DiskStorage(tmp_path)
    assert name in str(info.value)


def test_snapshot_compaction_deletes_covered_segments(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path, segment_bytes=100)
    st.save(HS, ents(1, 30, 1), None, sync=True)
    before = segments(tmp_path)
    st.save_snapshot(snap(20, 1))
    after = segments(tmp_path)
    assert before[: len(before) - len(after)] and set(after) < set(before)
    assert all(s.max_index > 20 for s in st.wal.segments[:1])
    restored = st.load()
    assert restored.snapshot == snap(20, 1)
    assert restored.entries == tuple(ents(21, 30, 1))
    st.close()
    assert DiskStorage(tmp_path, segment_bytes=100).load() == restored


def test_restart_after_snapshot_and_more_entries(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path, segment_bytes=100)
    st.save(HS, ents(1, 30, 1), None, sync=True)
    st.save_snapshot(snap(25, 1))
    st.save(HardState(4, "n1", 30), ents(31, 40, 4), None, sync=True)
    st.close()
    st = DiskStorage(tmp_path, segment_bytes=100)
    restored = st.load()
    assert restored.hard_state == HardState(4, "n1", 30)
    assert restored.snapshot == snap(25, 1)
    assert restored.entries == tuple(ents(26, 30, 1) + ents(31, 40, 4))
    st.save_snapshot(snap(38, 4))
    st.close()
    assert DiskStorage(tmp_path).load().entries == tuple(ents(39, 40, 4))


def test_installed_snapshot_keeps_matching_tail(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    st.save(None, ents(1, 10, 2), None, sync=True)
    st.save(None, (), snap(5, 2), sync=True)
    assert st.load().entries == tuple(ents(6, 10, 2))


def test_installed_snapshot_discards_disagreeing_log(tmp_path: Path) -> None:
    """§5.3 InstallSnapshot: a log that disagrees at the snapshot index is discarded whole,
    and stays discarded after a restart."""
    st = DiskStorage(tmp_path)
    st.save(None, ents(1, 10, 1), None, sync=True)
    st.save(HS, ents(8, 8, 3), snap(7, 2), sync=True)
    assert st.load().entries == tuple(ents(8, 8, 3))
    st.close()
    restored = DiskStorage(tmp_path).load()
    assert restored.snapshot == snap(7, 2)
    assert restored.entries == tuple(ents(8, 8, 3))


def test_installed_snapshot_past_the_log(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    st.save(None, ents(1, 3, 1), None, sync=True)
    st.save(None, ents(51, 52, 5), snap(50, 4), sync=True)
    st.close()
    assert DiskStorage(tmp_path).load().entries == tuple(ents(51, 52, 5))


@pytest.mark.parametrize(
    "bad",
    [
        lambda st: st.save(None, ents(5, 6, 1), None, sync=True),  # hole after index 3
        lambda st: st.save(None, [*ents(4, 4, 1), *ents(6, 6, 1)], None, sync=True),
        lambda st: st.save_snapshot(snap(4, 1)),  # past the last index
        lambda st: st.save_snapshot(snap(2, 9)),  # wrong term
    ],
)
def test_bad_calls_are_refused_without_side_effects(tmp_path: Path, bad: object) -> None:
    st = DiskStorage(tmp_path)
    st.save(None, ents(1, 3, 1), None, sync=True)
    with pytest.raises(StorageError):
        bad(st)  # type: ignore[operator]
    assert st.load().entries == tuple(ents(1, 3, 1))
    st.close()


def test_old_snapshot_and_use_after_close_are_refused(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    st.save(None, ents(1, 3, 1), None, sync=True)
    st.save_snapshot(snap(3, 1))
    with pytest.raises(StorageError):
        st.save(None, (), snap(2, 1), sync=True)
    st.close()
    with pytest.raises(StorageError):
        st.load()


def test_commit_travels_with_the_entries(tmp_path: Path) -> None:
    """The commit index is written in the WAL batch with the entries, so a restart
    (even after kill -9) applies everything it had committed."""
    s = DiskStorage(tmp_path)
    s.save(HardState(term=1, vote="n1", commit=0), ents(1, 3, 1), None, True)
    s.save(HardState(term=1, vote="n1", commit=3), (), None, False)
    s.save(HardState(term=2, vote="n2", commit=3), ents(4, 4, 2), None, True)
    s.save(HardState(term=2, vote="n2", commit=4), (), None, False)
    crashed = DiskStorage(tmp_path).load()  # no close: a kill -9
    assert crashed.hard_state == HardState(term=2, vote="n2", commit=4)
    assert [e.index for e in crashed.entries] == [1, 2, 3, 4]
    s.close()
