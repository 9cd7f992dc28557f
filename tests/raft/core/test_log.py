"""raft.core.log: the follower-side rules of §5.3 (consistency check, conflict
truncation, commit) and the bookkeeping of what is durable, committed and applied."""

from __future__ import annotations

import pytest

from raft.core.log import RaftLog
from raft.errors import InvariantViolation
from raft.types import Entry, EntryId, Snapshot, SnapshotMeta


def ents(*terms: int, start: int = 1) -> tuple[Entry, ...]:
    """Entries with the given terms at consecutive indexes from ``start``."""
    return tuple(Entry(t, i) for i, t in enumerate(terms, start))


def snap(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index=index, term=term), b"s")


def ids_of(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.term, e.index) for e in log.slice(log.first_index, log.last_index + 1)]


# Log 1/1 1/2 2/3 3/4 3/5, committed 2, durable through 5.
def base() -> RaftLog:
    return RaftLog(Snapshot(), ents(1, 1, 2, 3, 3), committed=2)


def test_restore_rejects_gaps_and_commit_past_end() -> None:
    with pytest.raises(InvariantViolation):
        RaftLog(Snapshot(), (Entry(1, 1), Entry(1, 3)), 0)
    with pytest.raises(InvariantViolation):
        RaftLog(Snapshot(), ents(1, 1), committed=3)
    log = RaftLog(snap(10, 2), ents(2, 3, start=11), committed=4)
    assert (log.first_index, log.last_index, log.committed, log.applied) == (11, 12, 10, 10)


@pytest.mark.parametrize(
    ("index", "term", "want"),
    [(0, 0, True), (1, 1, True), (3, 2, True), (3, 3, False), (5, 3, True), (6, 3, False)],
)
def test_matches(index: int, term: int, want: bool) -> None:
    assert base().matches(index, term) is want


def test_term_after_compaction() -> None:
    log = RaftLog(snap(3, 2), ents(3, 3, start=4), 3)
    assert log.term_or_none(2) is None  # compacted
    assert log.term_or_none(3) == 2  # the snapshot's own id still matches
    assert log.matches(3, 2)
    with pytest.raises(InvariantViolation):
        log.term(6)


@pytest.mark.parametrize(
    ("last_index", "last_term", "want"),
    [
        (5, 3, True),  # identical
        (6, 3, True),  # same term, longer
        (4, 3, False),  # same term, shorter
        (1, 4, True),  # higher last term wins regardless of length
        (9, 2, False),  # lower last term loses regardless of length
        (0, 0, False),
    ],
)
def test_is_up_to_date(last_index: int, last_term: int, want: bool) -> None:
    """§5.4.1: compare last terms first, then lengths."""
    assert base().is_up_to_date(last_index, last_term) is want


@pytest.mark.parametrize(
    ("prev", "commit", "entries", "want", "log_after", "commit_after"),
    [
        # prev does not match: nothing changes.
        ((5, 2), 5, (), None, [1, 1, 2, 3, 3], 2),
        ((6, 3), 5, ents(3, start=7), None, [1, 1, 2, 3, 3], 2),
        # heartbeat-like append: commit follows the leader, capped by what matches.
        ((5, 3), 4, (), 5, [1, 1, 2, 3, 3], 4),
        ((3, 2), 5, (), 3, [1, 1, 2, 3, 3], 3),  # cap at prev: 4,5 not known to match
        # new entries appended at the end.
        ((5, 3), 6, ents(3, 4, start=6), 7, [1, 1, 2, 3, 3, 3, 4], 6),
        # entries already present: no truncation, even though the append is shorter.
        ((2, 1), 2, ents(2, 3, start=3), 4, [1, 1, 2, 3, 3], 2),
        # conflict at 4: truncate from there and take the leader's.
        ((3, 2), 3, ents(4, start=4), 4, [1, 1, 2, 4], 3),
        ((2, 1), 2, ents(2, 4, 4, 4, start=3), 6, [1, 1, 2, 4, 4, 4], 2),
    ],
)
def test_maybe_append(
    prev: tuple[int, int],
    commit: int,
    entries: tuple[Entry, ...],
    want: int | None,
    log_after: list[int],
    commit_after: int,
) -> None:
    log = base()
    assert log.maybe_append(prev[0], prev[1], commit, entries) == want
    assert [t for t, _ in ids_of(log)] == log_after
    assert log.committed == commit_after


def test_maybe_append_truncation_lowers_stabled() -> None:
    """Truncated entries were durable; their replacements are not yet."""
    log = base()
    assert log.stabled == 5
    log.maybe_append(3, 2, 3, ents(4, start=4))
    assert log.stabled == 3
    assert log.unstable_entries() == (Entry(4, 4),)


def test_maybe_append_refuses_to_truncate_committed() -> None:
    """A conflict at or below commit means Log Matching was broken elsewhere: a bug."""
    log = base()
    with pytest.raises(InvariantViolation):
        log.maybe_append(1, 1, 2, ents(9, start=2))


@pytest.mark.parametrize(("to", "want"), [(1, 2), (2, 2), (4, 4), (5, 5)])
def test_commit_to_is_monotonic(to: int, want: int) -> None:
    log = base()
    log.commit_to(to)
    assert log.committed == want


def test_commit_to_past_end_is_a_bug() -> None:
    with pytest.raises(InvariantViolation):
        base().commit_to(6)


@pytest.mark.parametrize(
    ("index", "term", "want"),
    [
        (5, 3, (5, 3)),
        (5, 2, (3, 2)),  # skip the whole term-3 run
        (5, 1, (2, 1)),
        (5, 0, (0, 0)),
        (9, 9, (5, 3)),  # beyond the end: start from the last entry
        (2, 5, (2, 1)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, want: tuple[int, int]) -> None:
    assert base().find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_stops_at_snapshot() -> None:
    log = RaftLog(snap(3, 2), ents(5, 5, start=4), 3)
    assert log.find_conflict_by_term(5, 4) == (3, 2)


def test_stable_to_ignores_stale_ids() -> None:
    """An ack for entries that have since been replaced must not mark the new ones durable."""
    log = base()
    log.maybe_append(3, 2, 3, ents(4, 4, start=4))  # replaces 4,5 (term 3) with term 4
    assert log.stabled == 3
    log.stable_to(EntryId(3, 5))  # the old entry: stale
    assert log.stabled == 3
    log.stable_to(EntryId(4, 6))  # beyond the end: stale
    assert log.stabled == 3
    log.stable_to(EntryId(4, 5))
    assert log.stabled == 5
    log.stable_to(EntryId(4, 4))  # lower: never goes back
    assert log.stabled == 5


def test_next_committed_and_applied_to() -> None:
    log = base()
    assert log.next_committed() == ents(1, 1)
    log.applied_to(2)
    assert log.next_committed() == () and not log.has_next_committed()
    log.commit_to(4)
    assert log.next_committed() == ents(2, 3, start=3)
    with pytest.raises(InvariantViolation):
        log.applied_to(5)  # beyond commit
    with pytest.raises(InvariantViolation):
        log.applied_to(1)  # backwards


@pytest.mark.parametrize(
    ("lo", "hi", "want"),
    [(1, 1, []), (1, 6, [1, 2, 3, 4, 5]), (3, 5, [3, 4]), (6, 6, [])],
)
def test_slice(lo: int, hi: int, want: list[int]) -> None:
    assert [e.index for e in base().slice(lo, hi)] == want


@pytest.mark.parametrize(("lo", "hi"), [(0, 2), (1, 7), (4, 3)])
def test_slice_out_of_bounds(lo: int, hi: int) -> None:
    with pytest.raises(ValueError):
        base().slice(lo, hi)


@pytest.mark.parametrize(
    ("max_count", "max_bytes", "want"),
    [(10, 10_000, 5), (2, 10_000, 2), (10, 33, 2), (10, 1, 1)],  # size = 16 each
)
def test_entries_from_limits(max_count: int, max_bytes: int, want: int) -> None:
    """Bounded by count and bytes, but always at least one entry so progress is made."""
    assert len(base().entries_from(1, max_count, max_bytes)) == want


def test_compact() -> None:
    log = base()
    log.applied_to(2)
    with pytest.raises(ValueError):
        log.compact(snap(3, 2))  # beyond applied
    log.compact(snap(2, 1))
    assert (log.first_index, log.last_index, log.term_or_none(2)) == (3, 5, 1)
    assert ids_of(log) == [(2, 3), (3, 4), (3, 5)]
    with pytest.raises(ValueError):
        log.compact(snap(2, 1))  # not beyond the offset
    with pytest.raises(ValueError):
        log.slice(2, 3)


def test_compact_keeps_catchup_margin() -> None:
    """``keep`` entries below the snapshot stay, so the log starts before the snapshot
    index; the margin's base still answers the §5.3 consistency check."""
    log = base()
    log.commit_to(5)
    log.applied_to(5)
    log.compact(snap(4, 3), keep=2)
    assert (log.offset, log.snapshot_index, log.first_index) == (2, 4, 3)
    assert ids_of(log) == [(2, 3), (3, 4), (3, 5)]
    assert (log.term_or_none(1), log.term_or_none(2), log.term_or_none(4)) == (None, 1, 3)
    assert log.find_conflict_by_term(5, 0) == (2, 1)  # bottoms out at the base
    assert not log.has_next_committed()
    with pytest.raises(ValueError):
        log.compact(snap(4, 3), keep=2)  # not beyond the snapshot
    log.compact(snap(5, 3), keep=10)  # a margin never brings entries back
    assert (log.offset, log.snapshot_index) == (2, 5)


def test_restore_replaces_log_until_stable() -> None:
    log = base()
    s = snap(10, 4)
    log.restore(s)
    assert (log.first_index, log.last_index, log.committed, log.last_term) == (11, 10, 10, 4)
    assert log.pending_snapshot is s
    assert log.unstable_entries() == ()
    log.snapshot_stable(s)
    assert log.pending_snapshot is None and log.applied == 10
