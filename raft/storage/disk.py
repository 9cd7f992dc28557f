"""Storage in one directory: ``hardstate`` and ``snapshot`` files plus the WAL segments.

Ordering is what makes a crash harmless:

* entries are fsynced before the hard state that may commit them is replaced, so a
  durable commit index never points past the durable log;
* before a snapshot file is written, everything stored earlier is made durable, so a
  crash cannot pair a new snapshot with an older log that disagrees with it;
* WAL segments are deleted only after the snapshot covering them is durable.

A hard state saved with ``sync=False`` is only kept in memory until the next sync:
replacing the file without fsync could leave it empty after a power loss, which would
stop the node. Losing it is allowed (etcd only skips sync when just the commit index
moved, and a restarted node relearns that from the leader).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from raft.codec import (
    decode_hard_state,
    decode_snapshot_meta,
    encode_hard_state,
    encode_snapshot_meta,
)
from raft.core.ready import Restored
from raft.errors import CodecError
from raft.storage.base import (
    CorruptStorage,
    StorageError,
    check_append,
    check_local_snapshot,
    check_snapshot,
)
from raft.storage.files import HEADER_SIZE, TMP_SUFFIX, fsync_dir, read_checked, write_checked
from raft.storage.wal import WAL
from raft.types import Entry, HardState, Index, Snapshot, SnapshotMeta, Term

HARD_STATE_FILE = "hardstate"
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

    def __init__(self, directory: Path, segment_bytes: int = 64 << 20) -> None:
        self._dir = Path(directory)
        if not self._dir.is_dir():
            self._dir.mkdir(parents=True)
            fsync_dir(self._dir.parent)
        for tmp in self._dir.glob("*" + TMP_SUFFIX):
            tmp.unlink()  # an atomic_write interrupted before its rename
        self._hs_path = self._dir / HARD_STATE_FILE
        self._snap_path = self._dir / SNAPSHOT_FILE
        self._hs = self._read_hard_state()
        self._durable_hs = self._hs
        snapshot = self._read_snapshot()
        self._snap: SnapshotMeta = snapshot.meta
        self._wal, log = WAL.open(self._dir, segment_bytes)
        try:
            entries = self._after_snapshot(log)
        except CorruptStorage:
            self._wal.close()
            raise
        # Terms of the stored entries after the snapshot: enough to decide whether a
        # snapshot matches the log, without keeping a second copy of the core's log.
        self._terms: list[Term] = [e.term for e in entries]
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
        return not (self._hs_path.exists() or self._snap_path.exists()) and self._wal.is_empty()

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
            if entries:
                self._wal.append(entries)
                del self._terms[entries[0].index - self._snap.index - 1 :]
                self._terms.extend(e.term for e in entries)
            if hard_state is not None:
                self._hs = hard_state
            if sync:
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
                self._sync(commit_too=True)
        except OSError as exc:
            self._fail(exc)
        finally:
            self._wal.close()

    def _install(self, snapshot: Snapshot) -> None:
        """Persist ``snapshot``, then drop what it covers (the whole log if it disagrees
        with the stored entry at its index)."""
        meta = snapshot.meta
        keep_tail = self.term(meta.index) == meta.term
        if not keep_tail and self.last_index > meta.index:
            self._wal.truncate_from(meta.index + 1)
        self._sync(commit_too=True)
        write_checked(self._snap_path, encode_snapshot(snapshot))
        self._terms = self._terms[meta.index - self._snap.index :] if keep_tail else []
        self._snap = meta
        self._wal.compact(meta.index)

    def _sync(self, *, commit_too: bool = False) -> None:
        """Make everything stored so far durable: the log first, then the hard state.

        The hard state file is rewritten (two fsyncs: file and directory) only when the
        term or vote changed, which Raft needs durable before any message that depends
        on them. A commit index alone is not worth it: it is volatile state in Raft
        (Figure 2), a restarted node learns it again from the leader, and a stale one on
        disk only means replaying fewer entries at start-up. So a batch that only
        advanced the commit costs the WAL's one fsync. ``commit_too`` writes it anyway
        (at a snapshot and at close, so a clean restart starts where it left off)."""
        self._wal.sync()
        hs, durable = self._hs, self._durable_hs
        if (hs.term, hs.vote) != (durable.term, durable.vote) or (
            commit_too and hs != durable
        ):
            write_checked(self._hs_path, encode_hard_state(hs))
            self._durable_hs = hs

    def _after_snapshot(self, log: list[Entry]) -> list[Entry]:
        index = self._snap.index
        if not log:
            return []
        if log[0].index > index + 1:
            raise CorruptStorage(
                self._dir, 0, f"WAL starts at index {log[0].index}, snapshot ends at {index}"
            )
        return log[index + 1 - log[0].index :]

    def _read_hard_state(self) -> HardState:
        if not self._hs_path.exists():
            return HardState()
        try:
            return decode_hard_state(read_checked(self._hs_path))
        except CodecError as exc:
            raise CorruptStorage(self._hs_path, HEADER_SIZE, f"bad hard state: {exc}") from exc

    def _read_snapshot(self) -> Snapshot:
        if not self._snap_path.exists():
            return Snapshot()
        return decode_snapshot(self._snap_path, read_checked(self._snap_path))

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


__all__ = ["HARD_STATE_FILE", "SNAPSHOT_FILE", "DiskStorage", "decode_snapshot", "encode_snapshot"]
