"""Each invariant check must be able to fail: hand-built violating states, one per
property, next to a legal state that passes (porcupine's "the checker rejects a
known-bad history")."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest

from raft.core.ready import Status
from raft.errors import InvariantViolation
from raft.sim import invariants as inv
from raft.types import ConfState, Entry, EntryKind, Role

CONF = ConfState(frozenset({"n1", "n2", "n3"}))


def status(
    nid: str = "n1",
    role: Role = Role.FOLLOWER,
    term: int = 1,
    commit: int = 0,
    last: int = 0,
    first: int = 1,
) -> Status:
    return Status(
        id=nid,
        role=role,
        term=term,
        vote=None,
        leader=nid if role is Role.LEADER else None,
        commit=commit,
        applied=commit,
        first_index=first,
        last_index=last,
        conf=CONF,
        progress={},
    )


def terms(*ts: int) -> inv.TermAt:
    """term_at for a log whose entry i (1-based) has term ts[i-1]; index 0 is term 0."""
    table = dict(enumerate((0, *ts)))
    return table.get


def raises(name: str) -> AbstractContextManager[Any]:
    return pytest.raises(InvariantViolation, match=f"^{name}: ")


def test_election_safety() -> None:
    g = inv.Ghost()
    inv.check_election_safety(g, 3, "n1")
    inv.check_election_safety(g, 3, "n1")  # the same leader, observed again
    inv.check_election_safety(g, 4, "n2")
    with raises("election-safety"):
        inv.check_election_safety(g, 3, "n2")


def test_leader_append_only() -> None:
    g = inv.Ghost()
    inv.check_node(g, status(role=Role.LEADER, term=2, last=3), terms(1, 2, 2), 3)
    inv.check_node(g, status(role=Role.LEADER, term=2, last=4), terms(1, 2, 2, 2), 4)
    with raises("leader-append-only"):  # the entry at 4 was replaced
        inv.check_node(g, status(role=Role.LEADER, term=2, last=4), terms(1, 2, 2, 1), 4)
    g = inv.Ghost()
    inv.check_node(g, status(role=Role.LEADER, term=2, last=3), terms(1, 2, 2), 3)
    with raises("leader-append-only"):  # the log shrank
        inv.check_node(g, status(role=Role.LEADER, term=2, last=2), terms(1, 2), 3)


def test_leader_append_only_allows_compaction() -> None:
    g = inv.Ghost()
    inv.check_node(g, status(role=Role.LEADER, term=2, last=3), terms(1, 2, 2), 3)
    compacted: inv.TermAt = {4: 2, 5: 2}.get  # entries <= 3 compacted away
    inv.check_node(g, status(role=Role.LEADER, term=2, last=5, first=4), compacted, 5)


def test_log_matching() -> None:
    g = inv.Ghost()
    inv.check_appended(g, "n1", [Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")], 0)
    inv.check_appended(g, "n2", [Entry(1, 2, data=b"b")], 1)  # same entry, same predecessor
    with raises("log-matching"):  # same (index, term), different data
        inv.check_appended(g, "n3", [Entry(1, 2, data=b"X")], 1)
    with raises("log-matching"):  # same entry, different predecessor term
        inv.check_appended(g, "n3", [Entry(1, 2, data=b"b")], 7)
    with raises("log-matching"):  # different kind
        inv.check_appended(g, "n3", [Entry(1, 1, EntryKind.CONF_CHANGE, b"a")], 0)


def test_leader_completeness() -> None:
    g = inv.Ghost()
    inv.check_node(g, status("n2", commit=3, last=3), terms(1, 1, 2), 3)  # commits 2/3
    ok = status("n1", Role.LEADER, term=3, last=4)
    inv.check_node(g, ok, terms(1, 1, 2, 3), 4)
    g2 = inv.Ghost()
    inv.check_node(g2, status("n2", commit=3, last=3), terms(1, 1, 2), 3)
    with raises("leader-completeness"):  # its entry at 3 is not the committed one
        inv.check_node(g2, status("n1", Role.LEADER, term=3, last=4), terms(1, 1, 1, 3), 4)
    g3 = inv.Ghost()
    inv.check_node(g3, status("n2", commit=3, last=3), terms(1, 1, 2), 3)
    with raises("leader-completeness"):  # its log is too short
        inv.check_node(g3, status("n1", Role.LEADER, term=3, last=2), terms(1, 1), 2)


def test_late_leader_of_a_stale_term_is_legal() -> None:
    """A candidate whose votes were granted before a pause may become leader of its
    old term after later terms committed more; only later-term leaders must hold it."""
    g = inv.Ghost()
    inv.check_node(g, status("n2", term=3, commit=6, last=6), terms(1, 1, 1, 3, 3, 3), 6)
    inv.check_node(g, status("n1", Role.LEADER, term=2, last=4), terms(1, 1, 1, 2), 4)
    with raises("leader-completeness"):
        inv.check_node(g, status("n3", Role.LEADER, term=4, last=4), terms(1, 1, 1, 2), 4)


def test_commit_monotonic_and_durable() -> None:
    g = inv.Ghost()
    inv.check_node(g, status(commit=2, last=3), terms(1, 1, 1), 3)
    with raises("commit-monotonic"):
        inv.check_node(g, status(commit=1, last=3), terms(1, 1, 1), 3)
    g.forget_lifetime("n1")  # a restart starts a new lifetime
    inv.check_node(g, status(commit=1, last=3), terms(1, 1, 1), 3)
    with raises("commit-durable"):  # commit beyond what storage holds
        inv.check_node(g, status(commit=3, last=3), terms(1, 1, 1), 2)


def test_committed_entries_are_final() -> None:
    g = inv.Ghost()
    inv.check_node(g, status("n1", commit=2, last=2), terms(1, 1), 2)
    with raises("state-machine-safety"):
        inv.check_node(g, status("n2", commit=2, last=2), terms(1, 2), 2)


def test_restart_commit_never_goes_back() -> None:
    g = inv.Ghost()
    inv.check_restart_commit(g, "n1", 5)
    inv.check_restart_commit(g, "n1", 5)
    with raises("commit-durable"):
        inv.check_restart_commit(g, "n1", 4)
    g.forget_node("n1")  # wiped storage: a new history
    inv.check_restart_commit(g, "n1", 0)


def test_state_machine_safety() -> None:
    g = inv.Ghost()
    inv.check_applied(g, "n1", Entry(1, 1, data=b"a"))
    inv.check_applied(g, "n2", Entry(1, 1, data=b"a"))
    with raises("state-machine-safety"):
        inv.check_applied(g, "n3", Entry(2, 1, data=b"a"))
    with raises("state-machine-safety"):
        inv.check_applied(g, "n3", Entry(1, 1, data=b"b"))


def test_exactly_once_apply() -> None:
    g = inv.Ghost()
    inv.check_applied(g, "n1", Entry(1, 1, data=b"w"))
    with raises("exactly-once"):
        inv.check_applied(g, "n1", Entry(1, 2, data=b"w"))


def test_restored_snapshot_must_match_history() -> None:
    g = inv.Ghost()
    for e in (Entry(1, 1, data=b"a"), Entry(1, 2), Entry(1, 3, data=b"c")):
        inv.check_applied(g, "n1", e)
    inv.check_restored(g, "n2", 3, [(1, b"a"), (3, b"c")])
    inv.check_restored(g, "n2", 2, [(1, b"a")])
    with raises("state-machine-safety"):  # misses an applied command
        inv.check_restored(g, "n2", 3, [(1, b"a")])
    with raises("state-machine-safety"):  # a different command
        inv.check_restored(g, "n2", 3, [(1, b"a"), (3, b"X")])
    with raises("state-machine-safety"):  # a command past its own index
        inv.check_restored(g, "n2", 2, [(1, b"a"), (3, b"c")])


def test_write_real_time_order() -> None:
    inv.check_write_ack(b"w", index=5, max_acked_at_invoke=4)
    with raises("real-time-order"):
        inv.check_write_ack(b"w", index=5, max_acked_at_invoke=5)


def test_stale_and_phantom_reads() -> None:
    proposed = {b"a", b"b"}
    inv.check_read(b"r", frozenset({b"a", b"b"}), [b"a"], proposed)
    with raises("stale-read"):
        inv.check_read(b"r", frozenset({b"b"}), [b"a"], proposed)
    with raises("phantom-read"):
        inv.check_read(b"r", frozenset({b"a", b"zzz"}), [b"a"], proposed)


def test_final_log_holds_every_acked_write_once() -> None:
    g = inv.Ghost()
    inv.check_applied(g, "n1", Entry(1, 1, data=b"a"))
    inv.check_applied(g, "n1", Entry(1, 2, data=b"b"))
    inv.check_final([(b"a", 1), (b"b", 2)], g, final_commit=2)
    with raises("lost-write"):  # acked at an index that holds something else
        inv.check_final([(b"a", 2)], g, final_commit=2)
    with raises("lost-write"):  # never applied anywhere
        inv.check_final([(b"c", 3)], g, final_commit=3)
    with raises("lost-write"):  # beyond the final commit
        inv.check_final([(b"b", 2)], g, final_commit=1)


def test_committed_log_must_match_applied_history() -> None:
    g = inv.Ghost()
    inv.check_applied(g, "n1", Entry(1, 1, data=b"a"))
    inv.check_committed_log(g, "n2", [Entry(1, 1, data=b"a"), Entry(2, 2)])
    with raises("state-machine-safety"):
        inv.check_committed_log(g, "n2", [Entry(2, 1, data=b"a")])


def test_liveness_is_reported_distinctly() -> None:
    exc = inv.liveness("stuck")
    assert isinstance(exc, inv.LivenessViolation)
    assert isinstance(exc, InvariantViolation)
    assert exc.invariant == "liveness"  # type: ignore[attr-defined]
