"""DiskStorage under the two crash models and media corruption (issue 8, items 1-4).

Each test names the bug it guards against; each fails on the code before its fix.
The simulated filesystem (``raft.storage.simfs``) applies power loss exactly as
docs/ARCHITECTURE.md states the model; process crashes (kill -9) are modelled by
dropping the storage object without ``close``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from raft.codec import decode_hard_state
from raft.core.ready import Restored
from raft.storage import CorruptStorage, DiskStorage
from raft.storage.disk import LEGACY_HARD_STATE_FILE
from raft.storage.fs import make_dirs
from raft.storage.simfs import SimFileSystem
from raft.types import ConfChange, ConfChangeKind, Entry, EntryKind, HardState

from .helpers import ents, snap

FIXTURE = Path(__file__).parent / "data" / "format1-n1"
NODE = Path("/data/n1/raft")


def conf_entry(index: int, term: int, node: str) -> Entry:
    cc = ConfChange(ConfChangeKind.ADD_VOTER, node)
    return Entry(term, index, EntryKind.CONF_CHANGE, cc.encode())


@pytest.mark.parametrize("seed", range(20))
def test_commit_past_a_membership_change_survives_power_loss(seed: int) -> None:
    """Item 1: a node that applied a membership change must restart with a commit
    index covering it; else it counts votes in a configuration the cluster left."""
    fs = SimFileSystem()
    st = DiskStorage(NODE, fs=fs)
    st.save(HardState(2, "n1", 1), ents(1, 1, 2), None, sync=True)
    st.save(None, [conf_entry(2, 2, "n4"), *ents(3, 3, 2)], None, sync=True)
    # The batch that commits the change carries no entries: the core asks for no sync.
    st.save(HardState(2, "n1", 3), (), None, sync=False)
    fs.power_loss(random.Random(seed))
    assert DiskStorage(NODE, fs=fs).load().hard_state.commit == 3


def test_commit_alone_is_not_synced_when_no_membership_change_is_passed() -> None:
    """The forced sync is only for membership: ordinary batches keep one fsync."""
    fs = SimFileSystem()
    st = DiskStorage(NODE, fs=fs)
    st.save(HardState(2, "n1", 1), ents(1, 3, 2), None, sync=True)
    before = fs.fsyncs
    st.save(HardState(2, "n1", 3), (), None, sync=False)
    assert fs.fsyncs == before


@pytest.mark.parametrize("seed", range(10))
def test_new_directories_are_made_durable(seed: int) -> None:
    """Item 4: the data root and node directory are fsynced into their parents; else a
    power loss forgets the directory and every fsynced file in it."""
    fs = SimFileSystem()
    st = DiskStorage(NODE, fs=fs)
    st.save(HardState(1, "n1", 0), ents(1, 3, 1), None, sync=True)
    fs.power_loss(random.Random(seed))
    assert DiskStorage(NODE, fs=fs).load().entries == tuple(ents(1, 3, 1))


def test_make_dirs_fsyncs_every_parent() -> None:
    fs = SimFileSystem()
    make_dirs(Path("/a/b/c"), fs)
    fs.power_loss(random.Random(0))
    assert fs.is_dir(Path("/a/b/c"))


@pytest.mark.parametrize("seed", range(10))
def test_reopen_makes_a_recovered_unsynced_tail_durable(seed: int) -> None:
    """After kill -9 the unsynced tail is in the page cache; the restarted node treats
    what it reads as durable (it will acknowledge it), so opening must fsync it."""
    fs = SimFileSystem()
    st = DiskStorage(NODE, fs=fs)
    st.save(HardState(1, "n1", 0), ents(1, 3, 1), None, sync=True)
    st.save(HardState(1, "n1", 0), ents(4, 60, 1), None, sync=False)
    del st  # kill -9
    restored = DiskStorage(NODE, fs=fs).load()
    assert len(restored.entries) == 60
    fs.power_loss(random.Random(seed))
    assert DiskStorage(NODE, fs=fs).load().entries == restored.entries


def _synced_entries_in_batches(path: Path) -> Path:
    st = DiskStorage(path)
    for i in range(1, 401, 20):
        st.save(HardState(1, "n1", i - 1), ents(i, i + 19, 1), None, sync=True)
    st.close()
    [seg] = sorted(path.glob("wal-*.log"))
    return seg


def test_zeroed_sector_in_synced_data_stops_the_node(tmp_path: Path) -> None:
    """Item 3: one zeroed sector in the middle of the last segment used to truncate
    everything after it, fsynced and acknowledged entries included (199 of 400 kept)."""
    seg = _synced_entries_in_batches(tmp_path)
    data = bytearray(seg.read_bytes())
    mid = len(data) // 2 // 512 * 512
    data[mid : mid + 512] = bytes(512)
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage) as info:
        DiskStorage(tmp_path)
    assert info.value.path == str(seg)
    assert mid - 512 < info.value.offset <= mid + 512
    assert seg.name in str(info.value) and "offset" in str(info.value)


@pytest.mark.parametrize("seed", range(40))
def test_power_loss_keeps_every_synced_batch(seed: int) -> None:
    """The WAL under the power-loss model: whatever survives, every batch whose sync
    returned is there, and recovery never mistakes a tear for corruption."""
    rng = random.Random(seed)
    fs = SimFileSystem()
    st = DiskStorage(NODE, segment_bytes=rng.choice([300, 2000, 1 << 20]), fs=fs)
    synced = 0
    last = 0
    for _ in range(rng.randint(1, 30)):
        n = rng.randint(1, 8)
        sync = rng.random() < 0.6
        st.save(HardState(1, "n1", synced), ents(last + 1, last + n, 1), None, sync=sync)
        last += n
        if sync:
            synced = last
    fs.power_loss(rng)
    restored = DiskStorage(NODE, fs=fs).load()
    assert len(restored.entries) >= synced
    assert restored.entries == tuple(ents(1, len(restored.entries), 1))
    assert restored.hard_state.commit <= len(restored.entries)


@pytest.mark.parametrize("seed", range(40))
def test_media_corruption_of_durable_data_is_detected(seed: int) -> None:
    """A zeroed or flipped sector anywhere the disk proves durable is reported, never
    absorbed: the node stops rather than serve or acknowledge less than it had."""
    rng = random.Random(seed)
    fs = SimFileSystem()
    st = DiskStorage(NODE, segment_bytes=rng.choice([400, 1 << 20]), fs=fs)
    for i in range(1, 200, 10):
        st.save(HardState(1, "n1", i - 1), ents(i, i + 9, 1), None, sync=True)
    if rng.random() < 0.5:
        st.save_snapshot(snap(100, 1, rng.randbytes(3000)))
    st.close()
    files = [Path(p) for p in fs.files()]
    target = rng.choice(files)
    # The region the WAL proves durable ends at its last SYNCED mark (written after
    # the fsync that covers it): the last 17 bytes of the last segment. Damage that
    # also destroys that mark looks exactly like a power loss (the known limit).
    hi = fs.size(target) - 17 if target == files[-1] else None
    if fs.corrupt(target, rng, 0, hi) < 0:
        pytest.skip("the chosen sector held nothing to damage")
    with pytest.raises(CorruptStorage) as info:
        DiskStorage(NODE, fs=fs)
    assert info.value.path == str(target)


def test_format1_data_directory_opens_and_migrates(tmp_path: Path) -> None:
    """A data directory written before the hard state moved into the WAL (checked in
    from a real 3-node cluster: 60 puts, snapshot every 40 entries) still opens."""
    d = tmp_path / "raft"
    shutil.copytree(FIXTURE, d)
    legacy = decode_hard_state((d / LEGACY_HARD_STATE_FILE).read_bytes()[17:])
    st = DiskStorage(d)
    first = st.load()
    st.close()
    assert first.hard_state == legacy
    assert not (d / LEGACY_HARD_STATE_FILE).exists()
    again = DiskStorage(d).load()
    assert again == first
    assert first.snapshot.meta.index > 0 and first.entries
    assert first.entries[-1].index >= first.hard_state.commit


def test_format1_fixture_replays_to_the_written_keys(tmp_path: Path) -> None:
    from kvstore.state_machine import KVStateMachine

    d = tmp_path / "raft"
    shutil.copytree(FIXTURE, d)
    restored: Restored = DiskStorage(d).load()
    sm = KVStateMachine()
    sm.restore(restored.snapshot.data)
    for e in restored.entries:
        if e.index > restored.snapshot.meta.index and e.kind is EntryKind.NORMAL and e.data:
            sm.apply(e.index, e.data)
    for i in range(1, 61):
        kv = sm.get(f"k{i}".encode())
        assert kv is not None and kv.value == f"v{i}".encode()


@pytest.mark.parametrize("seed", range(10))
def test_close_makes_unsynced_writes_durable(seed: int) -> None:
    """fsync = "never" still syncs at a clean shutdown (the simulator only ever kills
    nodes, so this fsync is tested here)."""
    fs = SimFileSystem()
    st = DiskStorage(NODE, fs=fs)
    st.save(HardState(1, "n1", 0), ents(1, 3, 1), None, sync=True)
    st.save(HardState(2, "n2", 3), ents(4, 50, 2), None, sync=False)
    st.close()
    fs.power_loss(random.Random(seed))
    restored = DiskStorage(NODE, fs=fs).load()
    assert restored.hard_state == HardState(2, "n2", 3)
    assert restored.entries == tuple(ents(1, 3, 1) + ents(4, 50, 2))


def _fixture_on(fs: SimFileSystem) -> Path:
    make_dirs(NODE, fs)
    for f in sorted(FIXTURE.iterdir()):
        h = fs.open_truncate(NODE / f.name)
        h.write(f.read_bytes())
        h.fsync()
        h.close()
    fs.fsync_dir(NODE)
    return NODE


@pytest.mark.parametrize("seed", range(10))
def test_format1_migration_survives_power_loss(seed: int) -> None:
    fs = SimFileSystem()
    _fixture_on(fs)
    first = DiskStorage(NODE, fs=fs).load()
    fs.power_loss(random.Random(seed))
    assert DiskStorage(NODE, fs=fs).load() == first


@pytest.mark.parametrize("seed", range(10))
def test_reopen_makes_a_renamed_snapshot_durable(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash right after the snapshot's rename, before its directory fsync: the
    restarted node uses that snapshot (and records a commit index at its index), so
    opening must make the directory entry durable before a power loss can undo it."""
    from raft.storage.simfs import SimulatedCrash

    fs = SimFileSystem()
    st = DiskStorage(NODE, fs=fs)
    st.save(HardState(1, "n1", 5), ents(1, 5, 1), None, sync=True)
    real = SimFileSystem.rename

    def rename_then_crash(self: SimFileSystem, src: Path, dst: Path) -> None:
        real(self, src, dst)
        raise SimulatedCrash("after rename")

    monkeypatch.setattr(SimFileSystem, "rename", rename_then_crash)
    with pytest.raises(SimulatedCrash):
        st.save(HardState(2, "n1", 9), (), snap(9, 2), sync=True)
    monkeypatch.undo()
    reopened = DiskStorage(NODE, fs=fs)
    assert reopened.load().snapshot.meta.index == 9
    reopened.save(HardState(2, "n1", 9), ents(10, 10, 2), None, sync=True)
    fs.power_loss(random.Random(seed))
    after = DiskStorage(NODE, fs=fs).load()
    assert after.snapshot.meta.index == 9
    assert after.hard_state.commit <= after.snapshot.meta.index + len(after.entries)


@pytest.mark.parametrize("seed", range(30))
def test_compaction_never_deletes_the_only_hard_state(seed: int) -> None:
    """A segment rotated in just before a power loss can come back empty, without the
    STATE record that opens every segment; a snapshot's compaction then deleted the
    older segment, the only one holding term and vote (found in review: a restarted
    node came back at term 0, free to vote again)."""
    fs = SimFileSystem()
    st = DiskStorage(NODE, segment_bytes=600, fs=fs)
    hs = HardState(term=5, vote="n2", commit=8)
    st.save(hs, [Entry(5, i, data=b"x" * 40) for i in range(1, 9)], None, True)
    st.save(None, [Entry(5, 9, data=b"y" * 400)], None, False)  # rotates
    fs.power_loss(random.Random(seed))
    st = DiskStorage(NODE, segment_bytes=600, fs=fs)
    assert st.load().hard_state == hs
    st.save_snapshot(snap(8, 5))
    st.close()
    assert DiskStorage(NODE, segment_bytes=600, fs=fs).load().hard_state == hs


@pytest.mark.parametrize("seed", range(20))
def test_format1_migration_syncs_before_removing_the_file(seed: int) -> None:
    """The legacy file may only go once its copy in the WAL is durable: a filesystem
    may persist the unlink at any journal commit (here: the next open's directory
    fsync) while the record still waits for write-back (found in review)."""
    fs = SimFileSystem()
    _fixture_on(fs)
    first = DiskStorage(NODE, fs=fs).load()  # migrates; then kill -9
    fs.fsync_dir(NODE)  # a journal commit makes the unlink durable
    fs.power_loss(random.Random(seed))
    assert DiskStorage(NODE, fs=fs).load().hard_state == first.hard_state


@pytest.mark.parametrize("seed", range(10))
def test_open_makes_a_directory_someone_else_created_durable(seed: int) -> None:
    """An operator (or an older version) created the data directory without fsyncing
    its parent: opening storage makes the directory durable, else a power loss could
    take it, with every fsynced file in it. (The simulator's nodes always create their
    directories with make_dirs, so this fsync is tested here.)"""
    fs = SimFileSystem()
    make_dirs(NODE.parent, fs)
    fs.mkdir(NODE)  # no fsync of /data/n1
    st = DiskStorage(NODE, fs=fs)
    st.save(HardState(1, "n1", 0), ents(1, 3, 1), None, sync=True)
    fs.power_loss(random.Random(seed))
    assert DiskStorage(NODE, fs=fs).load().entries == tuple(ents(1, 3, 1))
