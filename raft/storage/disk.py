"""Storage in one directory: the WAL segments (entries and hard state) plus a ``snapshot``
file.

Ordering is what makes a crash harmless:

* the hard state travels in the WAL, in the same write as the entries it covers, so
  one fsync makes term, vote, log and commit durable together, and a durable commit
  index never points past the durable log;
* a batch whose commit index passes a membership change is always fsynced (even when
  the core did not ask for a sync: configuration changes are rare), so a restarted
  node applies every membership change it applied before the crash and never counts
  votes in a configuration the cluster has left (docs/ARCHITECTURE.md, "Durability");
* before a snapshot file is written, everything stored earlier is made durable, so a
  crash cannot pair a new snapshot with an older log that disagrees with it;
* WAL segments are deleted only after the snapshot covering them is durable.

With ``sync=False`` everything is still written to the OS at once (a killed process
loses nothing) but may be lost on power loss.

Format 1 (before the hard state moved into the WAL) kept it in a ``hardstate`` file;
such a directory is migrated on open: its hard state is written to the WAL and synced,
then the file is removed.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from raft.codec import decode_hard_state, decode_snapshot_meta, encode_snapshot_meta
from raft.core.ready import Restored
from raft.errors import CodecError
from raft.storage.base import (
    CorruptStorage,
    StorageError,
    check_append,
    check_local_snapshot,
    check_snapshot,
)
from raft.storage.files import HEADER_SIZE, TMP_SUFFIX, read_checked, write_checked
from raft.storage.fs import OS_FS, FileSystem, make_dirs
from raft.storage.wal import WAL
from raft.types import Entry, EntryKind, HardState, Index, Snapshot, SnapshotMeta, Term

LEGACY_HARD_STATE_FILE = "hardstate"  # format 1 only
SNAPSHOT_FILE = "snapshot"
_META_LEN = struct.Struct(">I")


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """Length-prefixed pair: ``len(meta) u32 | meta | data``."""
    meta = encode_snapshot_meta(snapshot.meta)
    return _META_LEN.pack(len(meta)) + meta + snapshot.data


def decode_snapshot(path: Path | str, payload: bytes) -> Snapshot:
    """Inverse of :func:`encode_snapshot`; ``path`` only names the file in errors."""
    if len(payload) < _META_LEN.size:
        raise CorruptStorage(path, HEADER_SIZE, "snapshot payload too short")
    (n,) = _META_LEN.unpack_from(payload)
    end = _META_LEN.size + n
    if end > len(payload):
        raise CorruptStorage(path, HEADER_SIZE, f"snapshot meta length {n} past the end")
    try:
        meta = decode_snapshot_meta(payload[_META_LEN.size : end])
    except CodecError as exc:
        raise CorruptStorage(path, HEADER_SIZE + _META_LEN.size, f"bad meta: {exc}") from exc
    return Snapshot(meta, payload[end:])


class DiskStorage:
    """:class:`~raft.storage.base.Storage` on a local directory (one node, one process)."""

    def __init__(
        self, directory: Path, segment_bytes: int = 64 << 20, fs: FileSystem = OS_FS
    ) -> None:
        self._fs = fs
        self._dir = Path(directory)
        if not fs.is_dir(self._dir):
            make_dirs(self._dir, fs)
        for name in fs.listdir(self._dir):
            if name.endswith(TMP_SUFFIX):
                fs.unlink(self._dir / name)  # an atomic_write interrupted before its rename
        self._legacy_hs_path = self._dir / LEGACY_HARD_STATE_FILE
        self._snap_path = self._dir / SNAPSHOT_FILE
        snapshot = self._read_snapshot()
        self._snap: SnapshotMeta = snapshot.meta
        legacy = self._read_legacy_hard_state()
        self._wal, log = WAL.open(self._dir, segment_bytes, fs)  # fsyncs the log it read
        try:
            entries = self._after_snapshot(log)
            self._hs = self._wal.state or legacy or HardState()
            if legacy is not None:
                self._migrate_legacy_hard_state()
            # What was read is treated as durable from now on; a snapshot renamed into
            # place just before a crash may not be yet (found by the simulator's crash
            # points: the node restarted from it, then a power loss took it back). The
            # parent too, for a directory someone else created.
            fs.fsync_dir(self._dir)
            fs.fsync_dir(self._dir.parent)
        except (CorruptStorage, OSError):
            self._wal.close()
            raise
        # The commit index covered by the last fsync: a batch moving the commit past a
        # membership change above it must sync.
        self._durable_commit = self._hs.commit
        # Terms of the stored entries after the snapshot: enough to decide whether a
        # snapshot matches the log, without keeping a second copy of the core's log.
        self._terms: list[Term] = [e.term for e in entries]
        # Indexes of the stored membership changes after the snapshot, ascending.
        self._conf_indexes: list[Index] = [
            e.index for e in entries if e.kind is EntryKind.CONF_CHANGE
        ]
        # What open() recovered, handed out by the first load() and then dropped.
        self._restored: Restored | None = Restored(self._hs, snapshot, tuple(entries))
        self._closed = False
        self._broken: BaseException | None = None

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def wal(self) -> WAL:
        return self._wal

    def is_empty(self) -> bool:
        """Nothing was ever stored: the caller bootstraps membership."""
        return (
            self._wal.state is None
            and not self._fs.exists(self._snap_path)
            and self._wal.is_empty()
        )

    @property
    def last_index(self) -> Index:
        return self._snap.index + len(self._terms)

    def term(self, index: Index) -> Term | None:
        """Term of the stored entry (or snapshot) at ``index``; None if not stored."""
        if index == self._snap.index:
            return self._snap.term
        k = index - self._snap.index - 1
        return self._terms[k] if 0 <= k < len(self._terms) else None

    def load(self) -> Restored:
        self._check_usable()
        if self._restored is not None:
            restored, self._restored = self._restored, None
            return restored
        snapshot = self._read_snapshot()
        return Restored(self._hs, snapshot, tuple(self._after_snapshot(self._wal.read())))

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        self._check_usable()
        snap_index, last = self._snap.index, self.last_index
        if snapshot is not None:
            check_snapshot(snapshot, snap_index)
            snap_index = snapshot.meta.index
            if self.term(snap_index) != snapshot.meta.term:
                last = snap_index
        if entries:
            check_append(entries, snap_index, max(last, snap_index))
        self._restored = None
        try:
            if snapshot is not None:
                self._install(snapshot)
            if entries or hard_state is not None:
                self._wal.append(entries, hard_state)
            if entries:
                first = entries[0].index
                del self._terms[first - self._snap.index - 1 :]
                self._terms.extend(e.term for e in entries)
                del self._conf_indexes[bisect.bisect_left(self._conf_indexes, first) :]
                self._conf_indexes.extend(
                    e.index for e in entries if e.kind is EntryKind.CONF_CHANGE
                )
            if hard_state is not None:
                self._hs = hard_state
            if sync or self._commit_passes_conf_change():
                self._sync()
        except OSError as exc:
            self._fail(exc)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._check_usable()
        index = snapshot.meta.index
        check_local_snapshot(snapshot, self._snap.index, self.last_index, self.term(index))
        self._restored = None
        try:
            self._install(snapshot)
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._broken is None:
                self._sync()
        except OSError as exc:
            self._fail(exc)
        finally:
            self._wal.close()

    def _commit_passes_conf_change(self) -> bool:
        """The commit moved past a membership change since the last fsync."""
        k = bisect.bisect_right(self._conf_indexes, self._durable_commit)
        return k < len(self._conf_indexes) and self._conf_indexes[k] <= self._hs.commit

    def _install(self, snapshot: Snapshot) -> None:
        """Persist ``snapshot``, then drop what it covers (the whole log if it disagrees
        with the stored entry at its index)."""
        meta = snapshot.meta
        keep_tail = self.term(meta.index) == meta.term
        if not keep_tail and self.last_index > meta.index:
            self._wal.truncate_from(meta.index + 1)
        self._sync()
        write_checked(self._snap_path, encode_snapshot(snapshot), self._fs)
        self._terms = self._terms[meta.index - self._snap.index :] if keep_tail else []
        cut = bisect.bisect_right(self._conf_indexes, meta.index)
        self._conf_indexes = self._conf_indexes[cut:] if keep_tail else []
        self._snap = meta
        self._wal.compact(meta.index)

    def _sync(self) -> None:
        """Make everything stored so far durable: one fsync of the WAL, which holds the
        entries and the hard state alike."""
        self._wal.sync()
        self._durable_commit = self._hs.commit

    def _migrate_legacy_hard_state(self) -> None:
        """Format 1 -> 2: the hard state into the WAL (synced), then the file away."""
        # The record must be durable before the file can go: a filesystem may persist
        # the unlink at any journal commit. If a power loss brings the file back, the
        # WAL's hard state wins and the next open removes it again (so the unlink
        # itself needs no directory fsync).
        if self._wal.state is None:
            self._wal.append((), self._hs)
            self._wal.sync()
        self._fs.unlink(self._legacy_hs_path)

    def _after_snapshot(self, log: list[Entry]) -> list[Entry]:
        index = self._snap.index
        if not log:
            return []
        if log[0].index > index + 1:
            raise CorruptStorage(
                self._dir, 0, f"WAL starts at index {log[0].index}, snapshot ends at {index}"
            )
        return log[index + 1 - log[0].index :]

    def _read_legacy_hard_state(self) -> HardState | None:
        if not self._fs.exists(self._legacy_hs_path):
            return None
        try:
            return decode_hard_state(read_checked(self._legacy_hs_path, self._fs))
        except CodecError as exc:
            raise CorruptStorage(
                self._legacy_hs_path, HEADER_SIZE, f"bad hard state: {exc}"
            ) from exc

    def _read_snapshot(self) -> Snapshot:
        if not self._fs.exists(self._snap_path):
            return Snapshot()
        return decode_snapshot(self._snap_path, read_checked(self._snap_path, self._fs))

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"{self._dir}: storage is closed")
        if self._broken is not None:
            raise StorageError(f"{self._dir}: storage failed earlier: {self._broken}")

    def _fail(self, exc: OSError) -> NoReturn:
        """After a failed write or fsync the disk state is unknown (a retried fsync may
        report success for lost data), so refuse all further use."""
        self._broken = exc
        raise StorageError(f"{self._dir}: I/O failed, storage unusable: {exc}") from exc


__all__ = [
    "LEGACY_HARD_STATE_FILE",
    "SNAPSHOT_FILE",
    "DiskStorage",
    "decode_snapshot",
    "encode_snapshot",
]
