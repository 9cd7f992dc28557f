"""raft.core.progress: the leader's per-follower flow control. Mistakes here do not
break safety but stall replication (a follower paused forever) or flood it."""

from __future__ import annotations

import pytest

from raft.core.progress import Inflights, Progress, ProgressState


def _pr(match: int, next_: int, state: ProgressState = ProgressState.PROBE, **kw: int) -> Progress:
    pr = Progress(match=match, next=next_, inflights=Inflights(kw.get("cap", 3), 1000))
    if state is ProgressState.REPLICATE:
        pr.become_replicate()
        pr.next = next_
    elif state is ProgressState.SNAPSHOT:
        pr.become_snapshot(kw.get("pending", 10))
    return pr


# ---- Inflights -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_count", "max_bytes", "sizes", "full"),
    [
        (3, 100, [1, 1], False),
        (3, 100, [1, 1, 1], True),  # count bound
        (3, 100, [60, 39], False),
        (3, 100, [60, 40], True),  # byte bound reached exactly
        (3, 100, [150], True),  # one oversized message fills the window
        (1, 100, [0], True),
    ],
)
def test_inflights_full(max_count: int, max_bytes: int, sizes: list[int], full: bool) -> None:
    inf = Inflights(max_count, max_bytes)
    for i, size in enumerate(sizes, 1):
        inf.add(i * 10, size)
    assert inf.full() is full
    assert len(inf) == len(sizes)


@pytest.mark.parametrize(
    ("free", "left", "full_after"),
    [
        (5, 3, True),  # below the first: nothing freed
        (10, 2, False),
        (25, 1, False),  # frees 10 and 20, keeps 30
        (30, 0, False),
        (99, 0, False),
    ],
)
def test_inflights_free_le(free: int, left: int, full_after: bool) -> None:
    inf = Inflights(3, 1000)
    for idx in (10, 20, 30):
        inf.add(idx, 100)
    inf.free_le(free)
    assert len(inf) == left
    assert inf.full() is full_after
    assert inf._bytes == 100 * left


def test_inflights_free_le_releases_bytes() -> None:
    """Freeing must return the bytes too, or a byte-bounded window never reopens."""
    inf = Inflights(10, 100)
    inf.add(1, 60)
    inf.add(2, 40)
    assert inf.full()
    inf.free_le(1)
    assert not inf.full()
    inf.reset()
    assert len(inf) == 0 and inf._bytes == 0


# ---- Progress transitions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "match", "next_", "pending", "want_next"),
    [
        (ProgressState.PROBE, 1, 5, 0, 2),
        (ProgressState.REPLICATE, 1, 5, 0, 2),
        (ProgressState.SNAPSHOT, 1, 5, 10, 11),  # past the snapshot just sent
        (ProgressState.SNAPSHOT, 12, 5, 10, 13),  # already beyond it
    ],
)
def test_become_probe(
    state: ProgressState, match: int, next_: int, pending: int, want_next: int
) -> None:
    pr = _pr(match, next_, state, pending=pending)
    pr.inflights.add(4, 1)
    pr.become_probe()
    assert pr.state is ProgressState.PROBE
    assert pr.next == want_next
    assert not pr.probe_sent and pr.pending_snapshot == 0 and len(pr.inflights) == 0


def test_become_replicate_and_snapshot() -> None:
    pr = _pr(3, 9)
    pr.probe_sent = True
    pr.become_replicate()
    assert (pr.state, pr.next, pr.probe_sent) == (ProgressState.REPLICATE, 4, False)
    pr.become_snapshot(20)
    assert (pr.state, pr.pending_snapshot, pr.snapshot_offset) == (ProgressState.SNAPSHOT, 20, 0)
    assert pr.is_paused()


@pytest.mark.parametrize(
    ("match", "next_", "ack", "updated", "want_match", "want_next"),
    [
        (2, 3, 5, True, 5, 6),
        (5, 6, 5, False, 5, 6),  # duplicate ack
        (5, 9, 3, False, 5, 9),  # stale ack never lowers anything
        (5, 6, 8, True, 8, 9),
        (0, 10, 4, True, 4, 10),  # next already ahead (pipelined) stays
    ],
)
def test_maybe_update(
    match: int, next_: int, ack: int, updated: bool, want_match: int, want_next: int
) -> None:
    pr = _pr(match, next_)
    pr.probe_sent = True
    assert pr.maybe_update(ack) is updated
    assert (pr.match, pr.next) == (want_match, want_next)
    assert pr.probe_sent is (not updated)


@pytest.mark.parametrize(
    ("state", "match", "next_", "rejected", "hint", "ok", "want_next"),
    [
        # REPLICATE: a rejection at or below match answers an old append: stale.
        (ProgressState.REPLICATE, 5, 10, 5, 5, False, 10),
        (ProgressState.REPLICATE, 5, 10, 3, 3, False, 10),
        (ProgressState.REPLICATE, 5, 10, 7, 2, True, 6),  # fresh: fall back to match+1
        # PROBE: only the rejection of the probe just sent (next-1) counts.
        (ProgressState.PROBE, 0, 10, 9, 9, True, 9),  # hint = rejected: one step
        (ProgressState.PROBE, 0, 10, 9, 3, True, 4),  # hint skips ahead
        (ProgressState.PROBE, 0, 10, 9, 20, True, 9),  # hint beyond rejected is capped
        (ProgressState.PROBE, 5, 10, 9, 1, True, 6),  # never below match+1
        (ProgressState.PROBE, 0, 10, 8, 3, False, 10),  # stale: answers an older probe
        (ProgressState.PROBE, 0, 10, 10, 3, False, 10),
    ],
)
def test_maybe_decr_to(
    state: ProgressState,
    match: int,
    next_: int,
    rejected: int,
    hint: int,
    ok: bool,
    want_next: int,
) -> None:
    pr = _pr(match, next_, state)
    pr.probe_sent = state is ProgressState.PROBE
    assert pr.maybe_decr_to(rejected, hint) is ok
    assert pr.next == want_next
    if ok and state is ProgressState.PROBE:
        assert not pr.probe_sent  # the leader may probe again at once


@pytest.mark.parametrize(
    ("state", "probe_sent", "inflight", "paused"),
    [
        (ProgressState.PROBE, False, 0, False),
        (ProgressState.PROBE, True, 0, True),
        (ProgressState.REPLICATE, False, 2, False),
        (ProgressState.REPLICATE, False, 3, True),
        (ProgressState.REPLICATE, True, 0, False),  # probe_sent means nothing here
        (ProgressState.SNAPSHOT, False, 0, True),
    ],
)
def test_is_paused(state: ProgressState, probe_sent: bool, inflight: int, paused: bool) -> None:
    pr = _pr(0, 1, state, cap=3)
    pr.probe_sent = probe_sent
    for i in range(inflight):
        pr.inflights.add(i + 1, 1)
    assert pr.is_paused() is paused


@pytest.mark.parametrize(
    ("state", "last", "want_next", "want_sent", "want_inflight"),
    [
        (ProgressState.PROBE, 7, 3, True, 0),  # probe: next moves only on ack
        (ProgressState.PROBE, None, 3, True, 0),
        (ProgressState.REPLICATE, 7, 8, False, 1),  # optimistic pipelining
        (ProgressState.REPLICATE, None, 3, False, 0),  # empty append: nothing in flight
    ],
)
def test_sent_entries(
    state: ProgressState, last: int | None, want_next: int, want_sent: bool, want_inflight: int
) -> None:
    pr = _pr(2, 3, state)
    pr.sent_entries(last, 10)
    assert (pr.next, pr.probe_sent, len(pr.inflights)) == (want_next, want_sent, want_inflight)
