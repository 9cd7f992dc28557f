"""Cross-node safety and liveness properties, checked after every simulator event.

Each check is a plain function of what an outside observer can see — a node's
``Status``, the entries it hands out in a ``Ready``, what it applies, what the
clients saw — and of :class:`Ghost`, the global history the checks accumulate
(who led which term, which entry was seen at each (index, term), what was committed
and applied where). Nothing here reads private core fields, so the checks stay true
to Raft's definitions rather than to one implementation, and tests can feed them a
hand-built violating state to prove each one can fail.

Checks are incremental: an event changes one node, so only that node is examined,
against the accumulated ghost. Log matching is checked on every entry a node hands
out for persistence (the only way an entry enters a log); chained through each
entry's predecessor term it covers whole prefixes.

A broken property raises :class:`InvariantViolation` whose ``invariant`` attribute
names it; liveness failures raise :class:`LivenessViolation` so reports can tell
"the cluster did something wrong" from "the cluster got stuck".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from raft.core.ready import Restored, Status
from raft.errors import InvariantViolation
from raft.types import Entry, EntryKind, Index, NodeId, Role, Term

TermAt = Callable[[Index], Term | None]


class LivenessViolation(InvariantViolation):
    """The healed cluster failed to make progress within the quiet period."""


def violation(invariant: str, message: str) -> InvariantViolation:
    exc = InvariantViolation(f"{invariant}: {message}")
    exc.invariant = invariant  # type: ignore[attr-defined]
    return exc


def liveness(message: str) -> LivenessViolation:
    exc = LivenessViolation(f"liveness: {message}")
    exc.invariant = "liveness"  # type: ignore[attr-defined]
    return exc


@dataclass(slots=True)
class Ghost:
    """Everything observed so far, across all nodes and all their lifetimes."""

    leaders: dict[Term, NodeId] = field(default_factory=dict)
    # (index, term) -> (kind, data, term of index-1) as first seen in any log.
    log_ids: dict[tuple[Index, Term], tuple[EntryKind, bytes, Term | None]] = field(
        default_factory=dict
    )
    committed: dict[Index, Term] = field(default_factory=dict)  # sampled commit points
    max_commit: Index = 0
    # Highest commit index seen at a node whose current term was t: everything up to it
    # was committed in some term <= t, so every leader of a term > t must hold it.
    commit_by_term: dict[Term, Index] = field(default_factory=dict)
    applied: dict[Index, Entry] = field(default_factory=dict)
    command_index: dict[bytes, Index] = field(default_factory=dict)
    # Per node, this lifetime: last commit seen, and (lead term, last index, its term).
    node_commit: dict[NodeId, Index] = field(default_factory=dict)
    leader_tail: dict[NodeId, tuple[Term, Index, Term]] = field(default_factory=dict)
    # Per node, across restarts: the commit index its storage held at the last restart.
    restart_commit: dict[NodeId, Index] = field(default_factory=dict)
    # Per node, across restarts: the index of the last membership change it applied.
    applied_conf: dict[NodeId, Index] = field(default_factory=dict)

    def forget_lifetime(self, node: NodeId) -> None:
        """A crash ends a lifetime: in-memory monotonicity starts over."""
        self.node_commit.pop(node, None)
        self.leader_tail.pop(node, None)

    def forget_node(self, node: NodeId) -> None:
        """The node's storage was wiped (removed, to be re-added fresh)."""
        self.forget_lifetime(node)
        self.restart_commit.pop(node, None)
        self.applied_conf.pop(node, None)


# ---- per-event checks on one node -------------------------------------------------


def check_node(g: Ghost, st: Status, term_at: TermAt, persisted_last: Index) -> None:
    """All single-node-observable properties after an event touched ``st.id``."""
    check_commit(g, st, term_at, persisted_last)
    if st.role is Role.LEADER:
        check_election_safety(g, st.term, st.id)
        check_leader(g, st, term_at)
    else:
        g.leader_tail.pop(st.id, None)


def check_election_safety(g: Ghost, term: Term, node: NodeId) -> None:
    """(1) At most one leader per term, ever (§3.6.3 Election Safety)."""
    prev = g.leaders.setdefault(term, node)
    if prev != node:
        raise violation("election-safety", f"term {term} has two leaders: {prev} and {node}")


def check_leader(g: Ghost, st: Status, term_at: TermAt) -> None:
    """(2) leader append-only and (4) leader completeness."""
    tail = g.leader_tail.get(st.id)
    last_term = term_at(st.last_index)
    assert last_term is not None
    if tail is None or tail[0] != st.term:
        check_leader_completeness(g, st, term_at)
    else:
        _, idx, t = tail
        now = term_at(idx)
        if st.last_index < idx or (now is not None and now != t):
            raise violation(
                "leader-append-only",
                f"{st.id} leading term {st.term} had {t}/{idx}, now last={st.last_index} "
                f"term_at({idx})={now}",
            )
    g.leader_tail[st.id] = (st.term, st.last_index, last_term)


def check_leader_completeness(g: Ghost, st: Status, term_at: TermAt) -> None:
    """(4) A leader of term T holds every entry committed in earlier terms (§3.6.3).

    Not "everything committed so far": a candidate whose votes were granted long ago
    may become leader of its (by now stale) term late — a legal, harmless leader that
    cannot commit anything. Checking the highest qualifying commit point suffices:
    log matching extends it to the whole prefix."""
    mc = max((i for t, i in g.commit_by_term.items() if t < st.term), default=0)
    if mc == 0:
        return
    if st.last_index < mc:
        raise violation(
            "leader-completeness",
            f"{st.id} leads term {st.term} with last index {st.last_index} < {mc}, "
            "committed in an earlier term",
        )
    want = g.committed.get(mc)
    have = term_at(mc)
    if want is not None and have is not None and want != have:
        raise violation(
            "leader-completeness",
            f"{st.id} leads term {st.term} with {have}/{mc}, but {want}/{mc} was committed",
        )


def check_commit(g: Ghost, st: Status, term_at: TermAt, persisted_last: Index) -> None:
    """(6) Commit never decreases in a lifetime and never passes the persisted log;
    every commit point agrees with every other node's (committed entries are final)."""
    prev = g.node_commit.get(st.id, 0)
    c = st.commit
    if c < prev:
        raise violation("commit-monotonic", f"{st.id} commit went from {prev} to {c}")
    if c > persisted_last:
        raise violation(
            "commit-durable", f"{st.id} commit {c} beyond persisted last index {persisted_last}"
        )
    if c == prev:
        return
    g.node_commit[st.id] = c
    t = term_at(c)
    if t is None:
        return
    seen = g.committed.setdefault(c, t)
    if seen != t:
        raise violation(
            "state-machine-safety", f"{st.id} committed {t}/{c} but {seen}/{c} was committed"
        )
    g.max_commit = max(g.max_commit, c)
    if c > g.commit_by_term.get(st.term, 0):
        g.commit_by_term[st.term] = c


def check_restart_commit(g: Ghost, node: NodeId, stored_commit: Index) -> None:
    """(6) The durable commit index never goes backwards across restarts."""
    prev = g.restart_commit.get(node, 0)
    if stored_commit < prev:
        raise violation(
            "commit-durable", f"{node} restarted with commit {stored_commit} < earlier {prev}"
        )
    g.restart_commit[node] = stored_commit


def check_restart_membership(g: Ghost, node: NodeId, restored_commit: Index) -> None:
    """(6b) A restarted node applies at least every membership change it applied in an
    earlier life: else it would count votes in a configuration the cluster has left
    (issue 8, item 1)."""
    applied = g.applied_conf.get(node, 0)
    if restored_commit < applied:
        raise violation(
            "membership-durable",
            f"{node} restarted with commit {restored_commit}, below the membership "
            f"change at {applied} it had applied",
        )


def check_restored_log(node: NodeId, restored: Restored) -> None:
    """(6c) What storage hands a restarting node is a possible Raft state: log terms
    never decrease, starting from the snapshot's (a disagreeing tail that a snapshot
    install discarded must not come back), and the commit index lies within the log."""
    meta = restored.snapshot.meta
    prev = meta.term
    for e in restored.entries:
        if e.term < prev:
            raise violation(
                "restored-log", f"{node} restarted with {e.term}/{e.index} after term {prev}"
            )
        prev = e.term
    last = meta.index + len(restored.entries)
    if restored.hard_state.commit > last:
        raise violation(
            "restored-log",
            f"{node} restarted with commit {restored.hard_state.commit} past its log ({last})",
        )


def check_appended(
    g: Ghost, node: NodeId, entries: Sequence[Entry], prev_term: Term | None
) -> None:
    """(3) Log matching: an (index, term) names one entry, with one predecessor term,
    in every log. ``prev_term`` is the term of ``entries[0].index - 1`` in that log."""
    ids = g.log_ids
    for e in entries:
        key = (e.index, e.term)
        val = (e.kind, e.data, prev_term)
        seen = ids.setdefault(key, val)
        if seen != val and not (seen[:2] == val[:2] and None in (seen[2], prev_term)):
            raise violation(
                "log-matching",
                f"{node} holds {e.term}/{e.index} as {val!r}, another log had {seen!r}",
            )
        prev_term = e.term


def check_applied(g: Ghost, node: NodeId, e: Entry) -> None:
    """(5) State-machine safety: every node applies the same entry at each index, and
    (7) no command is ever applied at two indices."""
    seen = g.applied.setdefault(e.index, e)
    if seen != e:
        raise violation(
            "state-machine-safety",
            f"{node} applied {e.term}/{e.index} {e.data!r}, "
            f"another node applied {seen.term}/{seen.index} {seen.data!r}",
        )
    if e.kind is EntryKind.CONF_CHANGE:
        g.applied_conf[node] = max(g.applied_conf.get(node, 0), e.index)
    if e.kind is EntryKind.NORMAL and e.data:
        at = g.command_index.setdefault(e.data, e.index)
        if at != e.index:
            raise violation("exactly-once", f"command {e.data!r} applied at {at} and {e.index}")


def check_restored(
    g: Ghost, node: NodeId, index: Index, commands: Iterable[tuple[Index, bytes]]
) -> None:
    """(5) A state machine restored from a snapshot at ``index`` is exactly the
    commands applied anywhere up to ``index``."""
    got = dict(commands)
    want = {
        i: e.data
        for i, e in g.applied.items()
        if i <= index and e.kind is EntryKind.NORMAL and e.data
    }
    if any(i > index for i in got):
        raise violation("state-machine-safety", f"{node} snapshot at {index} has later commands")
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise violation(
            "state-machine-safety",
            f"{node} restored a snapshot at {index} that differs from applied history: {diff}",
        )


# ---- client-visible checks -----------------------------------------------------------


def check_write_ack(key: bytes, index: Index, max_acked_at_invoke: Index) -> None:
    """(7) A write acknowledged before another began sits at a lower index."""
    if index <= max_acked_at_invoke:
        raise violation(
            "real-time-order",
            f"write {key!r} acked at index {index}, but a write acknowledged before it "
            f"began is at index {max_acked_at_invoke}",
        )


def check_read(
    key: bytes, result: frozenset[bytes], acked_before: Iterable[bytes], proposed: set[bytes]
) -> None:
    """(8) A read reflects every write acknowledged before it began, and nothing that
    was never proposed."""
    for w in acked_before:
        if w not in result:
            raise violation(
                "stale-read", f"read {key!r} misses {w!r}, acknowledged before the read began"
            )
    unknown = result - proposed
    if unknown:
        raise violation("phantom-read", f"read {key!r} saw never-proposed {sorted(unknown)[:3]}")


def check_final(acked: Iterable[tuple[bytes, Index]], g: Ghost, final_commit: Index) -> None:
    """(7) Every acknowledged write is in the final committed log, once, where acked."""
    for key, index in acked:
        at = g.command_index.get(key)
        if at != index or index > final_commit:
            raise violation(
                "lost-write",
                f"acknowledged write {key!r} at {index}: final log has it at {at} "
                f"(final commit {final_commit})",
            )


def check_committed_log(g: Ghost, node: NodeId, entries: Iterable[Entry]) -> None:
    """(5) The committed entries a node still holds are the ones applied everywhere."""
    for e in entries:
        seen = g.applied.get(e.index)
        if seen is not None and seen != e:
            raise violation(
                "state-machine-safety",
                f"{node} holds committed {e.term}/{e.index}, but {seen.term}/{seen.index} "
                "was applied",
            )
