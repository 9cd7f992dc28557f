"""RaftLog: the core's in-memory copy of the log, with what is durable and applied.

The log is a snapshot (the state through ``snapshot.meta.index``) and ``_entries``,
the entries after ``offset``. The two positions differ on purpose: a locally taken
snapshot may leave a *catch-up margin* of entries it already covers in memory
(``compact(snapshot, keep)``, etcd's SnapshotCatchUpEntries), so a follower a little
behind is sent those entries rather than the whole snapshot. Entries at or below the
snapshot index are committed and applied; they are kept only to be sent. A leader's
snapshot (``restore``) replaces everything, so there ``offset`` is the snapshot index.

Entries above ``stabled`` have been handed out (or are about to be) for persistence
but are not yet acknowledged durable. The core never reads storage: the runtime
restores this log once at start (from the snapshot on), and it stays bounded by
snapshots/compaction.

Invariants: offset <= snapshot index <= committed <= last_index; offset <= stabled <=
last_index; applied <= committed, and applied >= snapshot index except while a
received snapshot is pending (``restore`` until ``snapshot_stable``).
"""

from __future__ import annotations

from raft.errors import InvariantViolation
from raft.types import Entry, EntryId, Index, Snapshot, Term


class RaftLog:
    __slots__ = (
        "_base",
        "_entries",
        "applied",
        "committed",
        "pending_snapshot",
        "snapshot",
        "stabled",
    )

    def __init__(self, snapshot: Snapshot, entries: tuple[Entry, ...], committed: Index) -> None:
        self.snapshot = snapshot
        # The entry just before the first held one: only its id is kept, so appends
        # right after it can still be checked (§5.3 consistency check).
        self._base = EntryId(snapshot.meta.term, snapshot.meta.index)
        self._entries: list[Entry] = list(entries)
        for i, e in enumerate(self._entries):
            if e.index != self.offset + 1 + i:
                raise InvariantViolation(f"restored log not contiguous at {e.index}")
        self.stabled = self.last_index
        self.committed = max(committed, self.snapshot_index)
        if self.committed > self.last_index:
            raise InvariantViolation(
                f"restored commit {self.committed} beyond last index {self.last_index}"
            )
        self.applied = self.snapshot_index
        # Snapshot received from the leader and not yet acknowledged durable.
        self.pending_snapshot: Snapshot | None = None

    # ---- positions ---------------------------------------------------------------

    @property
    def offset(self) -> Index:
        """Index of the entry before the first held one (<= the snapshot index)."""
        return self._base.index

    @property
    def snapshot_index(self) -> Index:
        return self.snapshot.meta.index

    @property
    def first_index(self) -> Index:
        return self.offset + 1

    @property
    def last_index(self) -> Index:
        return self.offset + len(self._entries)

    @property
    def last_term(self) -> Term:
        return self._entries[-1].term if self._entries else self._base.term

    @property
    def last_id(self) -> EntryId:
        return EntryId(self.last_term, self.last_index)

    def term_or_none(self, index: Index) -> Term | None:
        """Term at ``index``; None when compacted away or beyond the end."""
        if index == self.offset:
            return self._base.term
        if self.offset < index <= self.last_index:
            return self._entries[index - self.offset - 1].term
        return None

    def term(self, index: Index) -> Term:
        t = self.term_or_none(index)
        if t is None:
            raise InvariantViolation(f"term of unavailable index {index}")
        return t

    def matches(self, index: Index, term: Term) -> bool:
        return self.term_or_none(index) == term

    def is_up_to_date(self, last_index: Index, last_term: Term) -> bool:
        """§5.4.1: is a candidate's log at least as up-to-date as ours?"""
        mine = self.last_term
        return last_term > mine or (last_term == mine and last_index >= self.last_index)

    # ---- reading -----------------------------------------------------------------

    def slice(self, lo: Index, hi: Index) -> tuple[Entry, ...]:
        """Entries ``lo <= index < hi``."""
        if lo < self.first_index or hi > self.last_index + 1 or lo > hi:
            raise ValueError(f"slice [{lo}, {hi}) outside [{self.first_index}, {self.last_index}]")
        return tuple(self._entries[lo - self.offset - 1 : hi - self.offset - 1])

    def entries_from(self, lo: Index, max_count: int, max_bytes: int) -> list[Entry]:
        """Up to ``max_count`` entries from ``lo``; at least one if any, then bytes-bounded."""
        start = lo - self.offset - 1
        if start < 0:
            raise InvariantViolation(f"entries_from({lo}) below first index {self.first_index}")
        out: list[Entry] = []
        size = 0
        for e in self._entries[start : start + max_count]:
            size += e.size
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def unstable_entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries[self.stabled - self.offset :])

    def next_committed(self) -> tuple[Entry, ...]:
        """Committed entries not yet handed out for applying (never ones a snapshot
        covers: after a restore the snapshot, not the log, brings the state there)."""
        lo = max(self.applied, self.snapshot_index)
        if self.committed <= lo:
            return ()
        return tuple(self._entries[lo - self.offset : self.committed - self.offset])

    def has_next_committed(self) -> bool:
        return self.committed > max(self.applied, self.snapshot_index)

    def find_conflict_by_term(self, index: Index, term: Term) -> tuple[Index, Term]:
        """The last index <= ``index`` whose term is <= ``term``, with its term: a
        follower's hint (or the leader's probe) that skips a whole conflicting term
        per round trip instead of one entry (dissertation §5.3 / etcd)."""
        index = min(index, self.last_index)
        while index > self.offset:
            t = self.term(index)
            if t <= term:
                return index, t
            index -= 1
        return self.offset, self._base.term

    # ---- writing -----------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Leader append: entries continue the log exactly."""
        if entries and entries[0].index != self.last_index + 1:
            raise InvariantViolation(f"append at {entries[0].index}, last {self.last_index}")
        self._entries.extend(entries)

    def maybe_append(
        self, prev_index: Index, prev_term: Term, leader_commit: Index, entries: tuple[Entry, ...]
    ) -> Index | None:
        """Follower append (§5.3). Returns the last index known to match the leader,
        or None when (prev_index, prev_term) does not match."""
        if not self.matches(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for e in entries:
            mine = self.term_or_none(e.index)
            if mine == e.term:
                continue
            if e.index <= self.committed:
                raise InvariantViolation(
                    f"conflict at {e.index} <= committed {self.committed}: log matching broken"
                )
            self._truncate_and_append(entries[e.index - prev_index - 1 :])
            break
        self.commit_to(min(leader_commit, last_new))
        return last_new

    def _truncate_and_append(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        del self._entries[first - self.offset - 1 :]
        self._entries.extend(entries)
        self.stabled = min(self.stabled, first - 1)

    def commit_to(self, index: Index) -> None:
        """Raise the commit index; never lowers it (a stale leader hint is ignored)."""
        if index > self.committed:
            if index > self.last_index:
                raise InvariantViolation(f"commit {index} beyond last index {self.last_index}")
            self.committed = index

    def stable_to(self, entry: EntryId) -> None:
        """Entries through ``entry`` are durable, unless the log changed under them."""
        if self.term_or_none(entry.index) == entry.term and entry.index > self.stabled:
            self.stabled = entry.index

    def applied_to(self, index: Index) -> None:
        if index > self.committed or index < self.applied:
            raise InvariantViolation(
                f"applied_to({index}) outside [{self.applied}, {self.committed}]"
            )
        self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a leader's snapshot (not yet durable)."""
        self.snapshot = snapshot
        self._base = EntryId(snapshot.meta.term, snapshot.meta.index)
        self.pending_snapshot = snapshot
        self._entries = []
        self.committed = snapshot.meta.index
        self.stabled = snapshot.meta.index

    def snapshot_stable(self, snapshot: Snapshot) -> None:
        if self.pending_snapshot is snapshot:
            self.pending_snapshot = None
        self.applied = max(self.applied, snapshot.meta.index)

    def compact(self, snapshot: Snapshot, keep: int = 0) -> None:
        """Adopt a locally taken snapshot and drop the entries it covers, except the
        last ``keep`` of them (the catch-up margin; never un-drops entries)."""
        index = snapshot.meta.index
        if not (self.snapshot_index < index <= self.applied):
            raise ValueError(
                f"cannot compact to {index}: outside ({self.snapshot_index}, {self.applied}]"
            )
        if keep < 0:
            raise ValueError(f"cannot keep {keep} entries")
        base = max(self.offset, index - keep)
        if base > self.offset:
            term = self.term(base)
            del self._entries[: base - self.offset]
            self._base = EntryId(term, base)
        self.snapshot = snapshot
