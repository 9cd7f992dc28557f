"""In-memory storage for the simulator and tests, with a crash model.

It keeps two views of the log: what was stored, and what a crash would leave (the
synced view). Both always share the snapshot, because writing a snapshot syncs, as it
does on disk; so the synced log is brought up to date by patching from the lowest list
position changed since the last sync, not by copying the log on every Ready.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.core.ready import Restored
from raft.storage.base import check_append, check_local_snapshot, check_snapshot
from raft.types import Entry, HardState, Index, Snapshot, Term


class MemoryStorage:
    """:class:`~raft.storage.base.Storage` in memory; :meth:`crash` loses unsynced saves."""

    __slots__ = ("_dirty", "_entries", "_hs", "_snap", "_synced", "_synced_hs")

    def __init__(
        self,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        self._hs = hard_state or HardState()
        self._snap = snapshot or Snapshot()
        # Invariant: _entries[k].index == _snap.meta.index + 1 + k, and likewise _synced.
        self._entries: list[Entry] = list(entries)
        self._synced_hs = self._hs
        self._synced: list[Entry] = list(entries)
        # Lowest position in _entries changed since the last sync, if any.
        self._dirty: int | None = None

    @classmethod
    def from_restored(cls, restored: Restored) -> MemoryStorage:
        return cls(restored.hard_state, restored.snapshot, restored.entries)

    def is_empty(self) -> bool:
        return not self._entries and self._snap == Snapshot() and self._hs == HardState()

    @property
    def last_index(self) -> Index:
        return self._snap.meta.index + len(self._entries)

    def term(self, index: Index) -> Term | None:
        """Term of the stored entry (or snapshot) at ``index``; None if not stored."""
        meta = self._snap.meta
        if index == meta.index:
            return meta.term
        k = index - meta.index - 1
        return self._entries[k].term if 0 <= k < len(self._entries) else None

    def load(self) -> Restored:
        return Restored(self._hs, self._snap, tuple(self._entries))

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        snap_index, last = self._snap.meta.index, self.last_index
        if snapshot is not None:
            check_snapshot(snapshot, snap_index)
            snap_index = snapshot.meta.index
            if self.term(snap_index) != snapshot.meta.term:
                last = snap_index
        if entries:
            check_append(entries, snap_index, max(last, snap_index))
        if snapshot is not None:
            self._install(snapshot)
        if entries:
            k = entries[0].index - self._snap.meta.index - 1
            del self._entries[k:]
            self._entries.extend(entries)
            self._dirty = k if self._dirty is None else min(k, self._dirty)
        if hard_state is not None:
            self._hs = hard_state
        if sync:
            self._sync()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        index = snapshot.meta.index
        check_local_snapshot(snapshot, self._snap.meta.index, self.last_index, self.term(index))
        self._install(snapshot)

    def close(self) -> None:
        self._sync()

    def crash(self) -> MemoryStorage:
        """A new storage holding only what survived: the last synced state."""
        return MemoryStorage(self._synced_hs, self._snap, self._synced)

    def _install(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        if self.term(meta.index) == meta.term:
            del self._entries[: meta.index - self._snap.meta.index]
        else:
            self._entries = []
        self._snap = snapshot
        self._synced = list(self._entries)
        self._synced_hs = self._hs
        self._dirty = None

    def _sync(self) -> None:
        if self._dirty is not None:
            del self._synced[self._dirty :]
            self._synced.extend(self._entries[self._dirty :])
            self._dirty = None
        self._synced_hs = self._hs
