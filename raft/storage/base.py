"""The durable-storage contract of one Raft node, and its errors.

The core never reads storage (it keeps its log in memory); the runtime calls
:meth:`Storage.save` with the persistence part of every ``Ready`` and
:meth:`Storage.load` once at start-up. Both implementations (disk and memory) share
the argument checks below so that the model-based test compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from raft.core.ready import Restored
from raft.errors import RaftError
from raft.types import Entry, HardState, Index, Snapshot


class StorageError(RaftError):
    """Storage cannot do what was asked: a bad argument, or an I/O failure after which
    the on-disk state is unknown (the node must stop, not retry an fsync)."""


class CorruptStorage(StorageError):
    """Durable data that fails its checks anywhere a crash cannot explain. Raised instead
    of guessing, because silently dropping acknowledged entries breaks Raft's safety."""

    def __init__(self, path: Path | str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at offset {offset}: {reason}")
        self.path = str(path)
        self.offset = offset
        self.reason = reason


class Storage(Protocol):
    """Durable state of one node: hard state, latest snapshot, and the log after it.

    Durability: ``save(..., sync=True)`` makes everything stored so far durable before it
    returns. With ``sync=False`` entries and hard state may be lost on a crash. Writing a
    snapshot (in ``save`` or ``save_snapshot``) is rare and always durable, together with
    everything stored before it, so a crash never pairs a snapshot with a stale log.
    """

    def load(self) -> Restored:
        """Hard state, latest snapshot and the entries after its index."""
        ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        """Persist one ``Ready``: snapshot first, then entries, then hard state.

        A snapshot discards the entries it covers; if the stored entry at its index has a
        different term (or there is none), every later entry is discarded too, because
        the core replaced its whole log (dissertation §5.3, InstallSnapshot step 6-7).
        Entries starting at index ``i`` replace every stored entry with index >= i.
        """
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist a snapshot the local state machine took (index <= last stored index,
        matching that entry's term), then compact the log it covers."""
        ...

    def close(self) -> None:
        """Flush and release resources; everything stored so far becomes durable."""
        ...


def check_append(entries: Sequence[Entry], snapshot_index: Index, last_index: Index) -> None:
    """Reject appends that would leave a hole or rewrite what a snapshot covers.

    Such a call is a caller bug; refusing it keeps the stored log contiguous, which
    recovery relies on to tell corruption from legitimate history.
    """
    first = entries[0].index
    if not snapshot_index < first <= last_index + 1:
        raise StorageError(f"append at index {first} outside ({snapshot_index}, {last_index + 1}]")
    if entries[-1].index - first != len(entries) - 1:
        raise StorageError(f"entries from index {first} are not contiguous")


def check_snapshot(snapshot: Snapshot, snapshot_index: Index) -> None:
    """A snapshot older than the stored one would resurrect compacted history."""
    if snapshot.meta.index < snapshot_index:
        raise StorageError(
            f"snapshot at index {snapshot.meta.index} is older than stored {snapshot_index}"
        )


def check_local_snapshot(
    snapshot: Snapshot, snapshot_index: Index, last_index: Index, term: Index | None
) -> None:
    """A locally taken snapshot must describe an entry this log holds (``term`` is the
    stored term at its index, or None)."""
    check_snapshot(snapshot, snapshot_index)
    meta = snapshot.meta
    if meta.index > last_index:
        raise StorageError(f"snapshot at index {meta.index} is past last index {last_index}")
    if term != meta.term:
        raise StorageError(
            f"snapshot at index {meta.index} has term {meta.term}, the log has {term}"
        )
