"""Tests that each pin a few sentences of the Raft paper / dissertation (in the spirit of
etcd's raft_paper_test.go), driving real RawNodes through tests/raft/core/network.py.

Why this shape: the unit tests check each module's arithmetic; these check that the
modules together keep the promises the paper makes, one promise per test, so a failure
names the broken rule. Node ids are ``n1..nN``; bootstrap writes one committed
conf-change entry per founder at term 1, so a 3-node log starts at index 3 (``B``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from raft.core.progress import ProgressState
from raft.errors import NotLeader, ProposalDropped
from raft.messages import (
    AppendEntries,
    AppendResp,
    Heartbeat,
    InstallSnapshot,
    Message,
    ReadIndex,
    ReadIndexResp,
    RequestVote,
    TimeoutNow,
    VoteResp,
)
from raft.types import ConfChange, ConfChangeKind, EntryKind, HardState, Role
from tests.raft.core.network import Disk, Network, ids

ELECTION = 10  # Config default election_ticks


def net3(**config: object) -> Network:
    return Network(ids(3), **config)


def to(node: str, kind: type = AppendEntries) -> Callable[[Message], bool]:
    """Predicate: a message of ``kind`` addressed to ``node``."""
    return lambda m: isinstance(m, kind) and m.dst == node


# ---- §5.1 / §3.3: terms ----------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize("kind", [AppendEntries, Heartbeat])
def test_update_term_from_message(role: Role, kind: type) -> None:
    """ "If a server receives a request or response with a higher term, it updates its
    current term and converts to follower"; a leader's message also names the leader.
    Reference: §5.1"""
    net = net3(pre_vote=False)
    if role is Role.LEADER:
        net.elect("n1")
    elif role is Role.CANDIDATE:
        net.isolate("n1")
        net.nodes["n1"].campaign()
        net.send()
    assert net.role("n1") is role
    m: Message
    if kind is AppendEntries:
        m = AppendEntries(
            src="n2", dst="n1", term=9, prev_index=0, prev_term=0, entries=(), commit=0
        )
    else:
        m = Heartbeat(src="n2", dst="n1", term=9, commit=0)
    net.nodes["n1"].step(m)
    st = net.nodes["n1"].status()
    assert (st.role, st.term, st.leader, st.vote) == (Role.FOLLOWER, 9, "n2", None)


def test_reject_stale_term_message() -> None:
    """ "If a server receives a request with a stale term number, it rejects the
    request": a deposed leader's append changes nothing and tells it the newer term.
    Reference: §5.1"""
    net = net3()
    net.elect("n1")
    before = net.nodes["n2"].status()
    stale = AppendEntries(
        src="n3", dst="n2", term=1, prev_index=4, prev_term=2, entries=(), commit=9
    )
    net.send([stale])
    after = net.nodes["n2"].status()
    assert (after.term, after.leader, after.commit) == (before.term, "n1", before.commit)
    reply = net.sent_of(AppendResp, src="n2", dst="n3")
    assert reply and reply[-1].term == before.term


# ---- §5.2: leader election ---------------------------------------------------------------


def test_candidate_steps_down_on_append_of_same_term() -> None:
    """ "If the leader's term is at least as large as the candidate's current term, then
    the candidate recognizes the leader as legitimate and returns to follower state."
    Reference: §5.2"""
    net = net3(pre_vote=False)
    net.isolate("n1")
    net.nodes["n1"].campaign()
    net.send()
    assert net.role("n1") is Role.CANDIDATE
    term = net.term("n1")
    net.nodes["n1"].step(Heartbeat(src="n2", dst="n1", term=term, commit=0))
    st = net.nodes["n1"].status()
    assert (st.role, st.term, st.leader) == (Role.FOLLOWER, term, "n2")


@pytest.mark.parametrize(
    ("granting", "wins"),
    [
        ({"n2", "n3"}, True),  # 3 of 5 with its own vote
        ({"n2", "n3", "n4", "n5"}, True),
        ({"n2"}, False),  # 2 of 5
        (set(), False),
    ],
)
def test_leader_election_needs_majority(granting: set[str], wins: bool) -> None:
    """ "A candidate wins an election if it receives votes from a majority of the servers
    in the full cluster for the same term." Reference: §5.2"""
    net = Network(ids(5), pre_vote=False)
    for n in {"n2", "n3", "n4", "n5"} - granting:
        net.isolate(n)
    net.nodes["n1"].campaign()
    net.send()
    assert (net.role("n1") is Role.LEADER) is wins
    if not wins:
        assert net.role("n1") is Role.CANDIDATE


def test_vote_at_most_once_per_term() -> None:
    """ "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis" (repeating the same vote is fine). Reference: §5.2"""
    net = net3(pre_vote=False)
    n3 = net.nodes["n3"]
    ask = {"term": 2, "last_index": 3, "last_term": 1}
    net.send([RequestVote(src="n1", dst="n3", **ask)])
    net.send([RequestVote(src="n2", dst="n3", **ask)])
    net.send([RequestVote(src="n1", dst="n3", **ask)])
    answers = [(m.dst, m.granted) for m in net.sent_of(VoteResp, src="n3")]
    assert answers == [("n1", True), ("n2", False), ("n1", True)]
    assert n3.status().vote == "n1"


@pytest.mark.parametrize(
    ("last_term", "last_index", "granted"),
    [
        (2, 5, True),  # same last entry
        (2, 6, True),  # same term, longer
        (3, 4, True),  # higher last term, shorter
        (2, 4, False),  # same term, shorter
        (1, 9, False),  # lower last term, longer
    ],
)
def test_vote_denied_to_less_up_to_date_log(last_term: int, last_index: int, granted: bool) -> None:
    """ "The voter denies its vote if its own log is more up-to-date than that of the
    candidate": compare last terms, then lengths. Reference: §5.4.1"""
    net = net3(pre_vote=False)
    net.rewrite("n3", [2, 2], term=2)  # log ends at 2/5
    net.send([RequestVote(src="n1", dst="n3", term=3, last_index=last_index, last_term=last_term)])
    (resp,) = net.sent_of(VoteResp, src="n3")
    assert resp.granted is granted
    assert net.nodes["n3"].status().vote == ("n1" if granted else None)


def test_election_timeout_is_randomized() -> None:
    """Election timeouts are "chosen randomly from a fixed interval (e.g., 150-300ms)" so
    that split votes are rare: followers campaign between T and 2T ticks. Reference: §5.2"""
    seen = set()
    for seed in range(8):
        net = Network(ids(3), seed=seed, pre_vote=False)
        net.isolate("n1")
        ticks = net.tick_until(
            lambda net=net: net.role("n1") is not Role.FOLLOWER, 2 * ELECTION, ["n1"]
        )
        assert ELECTION <= ticks < 2 * ELECTION
        seen.add(ticks)
    assert len(seen) > 1


def test_leader_sends_heartbeats() -> None:
    """ "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries)
    to all followers in order to maintain their authority." Reference: §5.2"""
    net = net3()
    net.elect("n1")
    net.delivered.clear()
    net.tick(["n1"])
    beats = [m for m in net.delivered if isinstance(m, Heartbeat)]
    assert sorted(m.dst for m in beats) == ["n2", "n3"]
    # Followers that keep hearing from the leader never campaign.
    net.tick(n=5 * ELECTION)
    assert net.leaders() == ["n1"] and {net.term(n) for n in net.nodes} == {2}


def test_follower_campaigns_after_leader_silence() -> None:
    """ "If a follower receives no communication over a period of time called the election
    timeout, then it assumes there is no viable leader and begins an election."
    Reference: §5.2"""
    net = net3()
    net.elect("n1")
    net.crash("n1")
    net.tick_until(lambda: bool(net.leaders()), 3 * ELECTION)
    assert net.leaders()[0] in {"n2", "n3"}
    assert net.term(net.leaders()[0]) == 3


# ---- §5.3 / §5.4: log replication and commitment --------------------------------------------


def test_leader_appends_noop_and_replicates() -> None:
    """A new leader commits a blank no-op entry of its term at the start of its term, so it
    learns which entries are committed. Reference: §5.4.2, §6.4"""
    net = net3()
    net.elect("n1")
    for n in ids(3):
        assert net.log(n) == [(1, 1), (1, 2), (1, 3), (2, 4)]
        assert net.commit(n) == 4
    noop = net.nodes["n1"].entries(4, 5)[0]
    assert (noop.kind, noop.data) == (EntryKind.NORMAL, b"")


def test_leader_commits_and_followers_apply_in_order() -> None:
    """ "A log entry is committed once the leader that created the entry has replicated it
    on a majority"; followers apply committed entries in log order. Reference: §5.3"""
    net = Network(ids(5))
    net.elect("n1")
    net.isolate("n4")
    net.isolate("n5")
    idx = net.nodes["n1"].propose(b"x")
    net.send()
    assert net.commit("n1") == idx  # n1, n2, n3 hold it
    for n in ("n1", "n2", "n3"):
        assert [e.index for e in net.applied[n]] == list(range(1, idx + 1))


def test_leader_start_replication_from_its_last_index() -> None:
    """Figure 2: a new leader initializes "nextIndex ... to leader last log index + 1", so
    its first append to an up-to-date follower carries only the new entries.
    Reference: §5.3, Figure 2"""
    net = net3()
    net.elect("n1")
    first = net.sent_of(AppendEntries, dst="n2")[0]
    assert (first.prev_term, first.prev_index) == (1, 3)
    assert [e.index for e in first.entries] == [4]


def test_figure8_old_term_entry_committed_only_with_current_term_entry() -> None:
    """ "Raft never commits log entries from previous terms by counting replicas": an entry
    of term 2 stored on a majority can still be overwritten (Figure 8 (c)→(d)), and only
    becomes committed once an entry of the leader's own term is. Reference: §5.4.2"""
    # Indexes after the 5 bootstrap entries: n1, n2 hold 2/6; n5 holds 3/6 (Figure 8 (b)).
    net = Network(ids(5), pre_vote=False, check_quorum=False, max_msg_entries=1)
    net.rewrite("n1", [2], term=3)
    net.rewrite("n2", [2], term=3)
    net.rewrite("n3", [], term=3)
    net.rewrite("n4", [], term=3)
    net.rewrite("n5", [3], term=3)
    # (c): n1 leads term 4; its no-op 4/7 does not get out, but 2/6 reaches n3.
    net.cut("n1", "n4")
    net.cut("n1", "n5")
    # Drop the no-op wherever it would be accepted, so n3 first rejects the probe at
    # 6/2, the leader backs off, and only 2/6 gets through.
    net.drop(
        lambda m: (
            isinstance(m, AppendEntries)
            and any(e.term == 4 for e in m.entries)
            and net.nodes[m.dst].term_at(m.prev_index) == m.prev_term
        )
    )
    net.elect("n1")
    assert net.term("n1") == 4
    assert all(net.nodes[n].term_at(6) == 2 for n in ("n1", "n2", "n3"))  # a majority
    assert net.commit("n1") == 5, "an old-term entry was committed by counting replicas"
    # Why that matters, (d): n1 crashes; n5 (last term 3) wins and overwrites 2/6.
    net.crash("n1")
    net.recover()
    for _ in range(3):
        if net.role("n5") is Role.LEADER:
            break
        net.nodes["n5"].campaign()
        net.send()
    assert net.role("n5") is Role.LEADER
    assert all(net.nodes[n].term_at(6) == 3 for n in ("n2", "n3", "n4", "n5"))


def test_figure8_current_term_entry_commits_old_ones() -> None:
    """(e): once the term-4 leader replicates an entry of its own term on a majority, that
    entry and the older 2/6 before it are committed together. Reference: §5.4.2"""
    net = Network(ids(5), pre_vote=False, check_quorum=False, max_msg_entries=1)
    net.rewrite("n1", [2], term=3)
    net.rewrite("n2", [2], term=3)
    net.rewrite("n5", [3], term=3)
    net.cut("n1", "n4")
    net.cut("n1", "n5")
    hold = [True]
    net.drop(
        lambda m: hold[0] and isinstance(m, AppendEntries) and any(e.term == 4 for e in m.entries)
    )
    net.elect("n1")
    assert net.commit("n1") == 5
    hold[0] = False
    net.tick(["n1"])  # the next heartbeat round resends the no-op
    assert net.commit("n1") == 7
    assert net.commit("n2") == 7 and net.commit("n3") == 7


def test_new_leader_does_not_snapshot_up_to_date_followers() -> None:
    """Consequence of Figure 2's nextIndex rule: once every log is compacted, a new leader
    whose followers are up to date sends them appends, never whole snapshots.
    Reference: §5.3 Figure 2, §5.1 (dissertation)"""
    net = net3()
    net.elect("n1")
    for n in ids(3):
        net.nodes[n].create_snapshot(4, b"state")
    net.nodes["n1"].transfer_leader("n2")
    net.send()
    assert net.leaders() == ["n2"]
    assert not net.sent_of(InstallSnapshot, src="n2")


def _diverged() -> Network:
    """n1 and n3 hold five term-2 entries; n2 holds twenty conflicting term-3 entries."""
    net = net3(pre_vote=False)
    net.rewrite("n1", [2] * 5, term=4)
    net.rewrite("n3", [2] * 5, term=4)
    net.rewrite("n2", [3] * 20, term=4)
    return net


def test_follower_rejects_mismatched_prev_and_leader_backs_off_fast() -> None:
    """The consistency check: "If the follower does not find an entry in its log with the
    same index and term, then it refuses the new entries"; with the follower's hint the
    leader skips a whole conflicting term per round trip. Reference: §5.3"""
    net = _diverged()
    net.elect("n1")
    rejects = [m for m in net.sent_of(AppendResp, src="n2") if m.reject]
    assert rejects, "the follower never rejected a mismatched prev"
    assert (rejects[0].hint_term, rejects[0].hint_index) == (1, 3)
    assert len(net.sent_of(AppendEntries, dst="n2")) < 20


def test_leader_backs_off_with_hint() -> None:
    """The hint path by itself: with nextIndex where Figure 2 puts it, twenty conflicting
    entries cost one rejection, not twenty. Reference: §5.3"""
    net = _diverged()
    net.drop(to("n2"))
    net.elect("n1")
    pr = net.nodes["n1"]._raft.prs["n2"]
    pr.next, pr.probe_sent = 9, False  # last index before the no-op + 1
    net.recover()
    net.delivered.clear()
    net.tick(["n1"])  # heartbeat → response → probe at 8
    appends = net.sent_of(AppendEntries, dst="n2")
    rejects = [m for m in net.sent_of(AppendResp, src="n2") if m.reject]
    assert (appends[0].prev_term, appends[0].prev_index) == (2, 8)
    assert [(m.index, m.hint_term, m.hint_index) for m in rejects] == [(8, 1, 3)]
    assert appends[1].prev_index == 3  # jumped straight past the term-3 run
    assert len(appends) < 20


def test_conflicting_follower_entries_are_truncated() -> None:
    """ "If an existing entry conflicts with a new one (same index but different terms),
    delete the existing entry and all that follow it." Reference: §5.3"""
    net = _diverged()
    net.elect("n1")
    assert net.log("n2") == net.log("n1")
    assert net.nodes["n2"].status().last_index == 9
    assert net.commit("n2") == 9


# ---- §9.6 pre-vote, §6.2 check-quorum and leader lease ---------------------------------------


def test_prevote_rejoining_node_does_not_disrupt() -> None:
    """With pre-vote, a partitioned server "would not be able to increment its term", so
    when it rejoins it neither bumps the cluster's term nor deposes the leader.
    Reference: §9.6"""
    net = net3()
    net.elect("n1")
    net.isolate("n3")
    net.tick(n=5 * ELECTION)
    assert net.term("n3") == 2  # pre-votes went nowhere; the term never moved
    net.recover()
    net.tick(n=3 * ELECTION)
    assert net.leaders() == ["n1"]
    assert {net.term(n) for n in net.nodes} == {2}
    assert net.nodes["n3"].status().leader == "n1"


def test_without_prevote_rejoining_node_disrupts() -> None:
    """The counterpart showing what pre-vote prevents: the isolated node's term climbs and
    forces a new election when it rejoins. Reference: §9.6"""
    net = net3(pre_vote=False, check_quorum=False)
    net.elect("n1")
    net.isolate("n3")
    net.tick(n=5 * ELECTION)
    assert net.term("n3") > 2
    net.recover()
    net.tick(n=3 * ELECTION)
    assert net.term("n1") > 2


def test_check_quorum_leader_steps_down() -> None:
    """With check-quorum, "a leader steps down if an election timeout elapses without a
    successful round of heartbeats to a majority": within two timeouts. Reference: §6.2"""
    net = net3()
    net.elect("n1")
    net.isolate("n1")
    ticks = net.tick_until(lambda: net.role("n1") is not Role.LEADER, 2 * ELECTION, ["n1"])
    assert ELECTION < ticks <= 2 * ELECTION
    assert net.term("n1") == 2


def test_follower_with_live_leader_ignores_request_vote() -> None:
    """Leader lease: "if a server receives a RequestVote request within the minimum election
    timeout of hearing from a current leader, it does not update its term or grant its
    vote". A leadership transfer is the exception. Reference: §4.2.3, §6.2"""
    net = net3()
    net.elect("n1")
    ask = RequestVote(src="n3", dst="n2", term=5, last_index=99, last_term=9)
    net.send([ask])
    assert net.term("n2") == 2 and not net.sent_of(VoteResp, src="n2", dst="n3")
    net.send([replace(ask, transfer=True)])
    assert net.term("n2") == 5
    assert [m.granted for m in net.sent_of(VoteResp, src="n2", dst="n3")] == [True]


# ---- §6.4: linearizable reads -----------------------------------------------------------------


def test_read_index_on_leader() -> None:
    """ReadIndex: the leader records its commit index, confirms leadership with a round of
    heartbeats to a majority, then the read may be served at that index. Reference: §6.4"""
    net = net3()
    net.elect("n1")
    net.nodes["n1"].propose(b"x")
    net.send()
    net.delivered.clear()
    net.nodes["n1"].read_index(b"r1")
    net.send()
    assert [(r.index, r.ctx) for r in net.read_states["n1"]] == [(5, b"r1")]
    assert {m.dst for m in net.sent_of(Heartbeat, src="n1") if m.ctx} == {"n2", "n3"}


def test_read_index_needs_heartbeat_quorum() -> None:
    """No ReadState until a majority answered the heartbeat round. Reference: §6.4"""
    net = Network(ids(5))
    net.elect("n1")
    net.drop(lambda m: isinstance(m, Heartbeat) and m.dst in {"n3", "n4", "n5"})
    net.nodes["n1"].read_index(b"r1")
    net.send()
    assert net.read_states["n1"] == []
    net.recover()
    net.tick(["n1"])
    assert [r.ctx for r in net.read_states["n1"]] == [b"r1"]


def test_read_index_via_follower() -> None:
    """A follower forwards the read to the leader and serves it at the index returned.
    Reference: §6.4"""
    net = net3()
    net.elect("n1")
    net.nodes["n2"].read_index(b"f")
    net.send()
    assert [(r.index, r.ctx) for r in net.read_states["n2"]] == [(4, b"f")]
    assert net.sent_of(ReadIndex, src="n2", dst="n1")


def test_follower_ignores_read_answers_it_did_not_ask_for() -> None:
    """A restarted follower may receive, from frames queued while it was down, the
    answer to a read its previous life forwarded: matched to a new read with the same
    context, it would serve a stale read. The core accepts an answer only for a read it
    forwarded in this life (issue 9, item 1). Reference: §6.4"""
    net = net3()
    net.elect("n1")
    net.nodes["n2"].read_index(b"old")
    net.drop(lambda m: isinstance(m, ReadIndexResp))
    net.send()
    [late] = [m for m in net.dropped if isinstance(m, ReadIndexResp)]
    net.crash("n2")
    net.start("n2")  # a new life: it never asked for b"old"
    net.recover()
    net.send([late])
    net.send([replace(late, ctx=b"forged")])
    assert net.read_states["n2"] == []
    net.tick(["n1"])  # a heartbeat: n2 learns the leader again
    net.nodes["n2"].read_index(b"new")
    net.send()
    assert [r.ctx for r in net.read_states["n2"]] == [b"new"]


def test_partitioned_old_leader_never_serves_reads() -> None:
    """A deposed leader that does not know it yet cannot confirm leadership, so it never
    returns a read index — the read could be stale. Reference: §6.4"""
    net = net3()
    net.elect("n1")
    net.isolate("n1")
    net.nodes["n1"].read_index(b"stale")
    net.send()
    net.tick(["n2", "n3"], n=3 * ELECTION)
    assert net.leaders() in (["n1", "n2"], ["n1", "n3"])  # n1 still thinks it leads
    new = next(n for n in net.leaders() if n != "n1")
    net.nodes[new].propose(b"w")
    net.send()
    net.tick(["n1"], n=2 * ELECTION)
    net.recover()
    net.tick(n=ELECTION)
    assert net.read_states["n1"] == []


def test_reads_wait_for_first_commit_of_term() -> None:
    """Until the leader has committed an entry of its term it may not know the latest
    commit index, so reads wait for its no-op to commit. Reference: §6.4 step 1"""
    net = net3()
    net.drop(lambda m: isinstance(m, AppendEntries))
    net.elect("n1")
    net.nodes["n1"].read_index(b"r")
    net.tick(["n1"], n=3)
    assert net.read_states["n1"] == []
    net.recover()
    net.tick(["n1"])
    assert [(r.index, r.ctx) for r in net.read_states["n1"]] == [(4, b"r")]


# ---- §3.10: leadership transfer ----------------------------------------------------------------


def test_leadership_transfer() -> None:
    """The leader sends TimeoutNow to an up-to-date target, which starts an election at
    once and wins it. Reference: §3.10"""
    net = net3()
    net.elect("n1")
    net.nodes["n1"].transfer_leader("n2")
    net.send()
    assert net.leaders() == ["n2"] and net.term("n2") == 3
    assert net.sent_of(TimeoutNow, src="n1", dst="n2")


def test_leadership_transfer_to_lagging_node_catches_it_up_first() -> None:
    """ "The prior leader sends it log entries using the normal log replication mechanism"
    before TimeoutNow, so the target can win. Reference: §3.10"""
    net = net3()
    net.elect("n1")
    net.cut("n1", "n3")
    for i in range(5):
        net.nodes["n1"].propose(b"e%d" % i)
    net.send()
    assert net.nodes["n3"].status().last_index == 4
    net.recover()
    net.delivered.clear()
    net.nodes["n1"].transfer_leader("n3")
    net.send()
    kinds = [type(m).__name__ for m in net.delivered if m.dst == "n3"]
    assert kinds.index("TimeoutNow") > kinds.index("AppendEntries")
    assert net.leaders() == ["n3"]
    assert net.log("n3")[:9] == net.log("n1")[:9]


def test_proposals_dropped_during_transfer() -> None:
    """While a transfer is in progress the leader "stops accepting new client requests".
    Reference: §3.10"""
    net = net3()
    net.elect("n1")
    net.isolate("n3")
    net.nodes["n1"].transfer_leader("n3")
    net.send()
    with pytest.raises(ProposalDropped):
        net.nodes["n1"].propose(b"x")
    net.tick(["n1"], n=ELECTION)  # the transfer times out after an election timeout
    assert net.nodes["n1"].status().lead_transferee is None
    net.nodes["n1"].propose(b"x")


# ---- §4: membership changes -----------------------------------------------------------------


def _cc(kind: ConfChangeKind, node: str) -> ConfChange:
    return ConfChange(kind, node)


def test_add_learner_catches_up_and_is_not_in_quorum() -> None:
    """New servers join as non-voting members until caught up, so they cannot hold up
    commitment. Reference: §4.2.1"""
    net = net3()
    net.elect("n1")
    net.nodes["n1"].propose_conf_change(_cc(ConfChangeKind.ADD_LEARNER, "n4"))
    net.send()
    net.start("n4")
    net.tick(["n1"])
    assert net.log("n4") == net.log("n1")
    assert net.nodes["n4"].status().conf.learners == {"n4"}
    # n1 + learner n4 are not a quorum of {n1, n2, n3}.
    net.isolate("n2")
    net.isolate("n3")
    idx = net.nodes["n1"].propose(b"x")
    net.send()
    assert net.nodes["n4"].status().last_index == idx
    assert net.commit("n1") < idx
    # A learner never campaigns.
    net.tick(["n4"], n=3 * ELECTION)
    assert net.role("n4") is Role.FOLLOWER


def test_promote_learner_and_remove_voter() -> None:
    """Single-server changes, each committed before the next: promote a learner, then
    remove a voter; quorums follow the new membership. Reference: §4.1"""
    net = net3()
    net.elect("n1")
    n1 = net.nodes["n1"]
    n1.propose_conf_change(_cc(ConfChangeKind.ADD_LEARNER, "n4"))
    net.send()
    net.start("n4")
    net.tick(["n1"])
    n1.propose_conf_change(_cc(ConfChangeKind.ADD_VOTER, "n4"))
    net.send()
    assert n1.status().conf.voters == {"n1", "n2", "n3", "n4"}
    assert net.nodes["n4"].status().conf.voters == {"n1", "n2", "n3", "n4"}
    n1.propose_conf_change(_cc(ConfChangeKind.REMOVE_NODE, "n2"))
    net.send()
    assert n1.status().conf.voters == {"n1", "n3", "n4"}
    net.isolate("n2")
    net.isolate("n3")
    idx = n1.propose(b"x")  # n1 + n4 are 2 of {n1, n3, n4}: a majority
    net.send()
    assert net.commit("n1") == idx


def test_leader_removes_itself() -> None:
    """A leader removed from the membership steps down once the change commits, and the
    remaining servers elect a leader among themselves. Reference: §4.2.2"""
    net = net3()
    net.elect("n1")
    net.nodes["n1"].propose_conf_change(_cc(ConfChangeKind.REMOVE_NODE, "n1"))
    net.send()
    assert net.role("n1") is Role.FOLLOWER
    assert net.nodes["n2"].status().conf.voters == {"n2", "n3"}
    net.tick_until(lambda: bool(net.leaders()), 4 * ELECTION)
    assert net.leaders() in (["n2"], ["n3"])
    new = net.leaders()[0]
    idx = net.nodes[new].propose(b"after")
    net.send()
    assert net.commit(new) == idx
    with pytest.raises(NotLeader):
        net.nodes["n1"].propose(b"x")


def test_one_membership_change_at_a_time() -> None:
    """A leader starts a change only once the previous one has committed (applied).
    Reference: §4.1"""
    net = net3()
    net.elect("n1")
    net.isolate("n2")
    net.isolate("n3")
    net.nodes["n1"].propose_conf_change(_cc(ConfChangeKind.ADD_LEARNER, "n4"))
    net.send()
    with pytest.raises(ProposalDropped):
        net.nodes["n1"].propose_conf_change(_cc(ConfChangeKind.ADD_LEARNER, "n5"))
    net.recover()
    net.tick(["n1"])
    net.nodes["n1"].propose_conf_change(_cc(ConfChangeKind.ADD_LEARNER, "n5"))


def test_new_leader_cannot_change_membership_before_noop_applied() -> None:
    """The fix to the single-server-change bug: a leader may not start a change until it
    has committed an entry of its own term. Reference: §4.1 (2015 bug note)"""
    net = net3()
    net.drop(lambda m: isinstance(m, AppendEntries))
    net.elect("n1")
    with pytest.raises(ProposalDropped):
        net.nodes["n1"].propose_conf_change(_cc(ConfChangeKind.ADD_LEARNER, "n4"))
    net.recover()
    net.tick(["n1"])
    assert net.commit("n1") == 4
    net.nodes["n1"].propose_conf_change(_cc(ConfChangeKind.ADD_LEARNER, "n4"))


# ---- §5 (dissertation): snapshots ------------------------------------------------------------


def test_snapshot_brings_up_far_behind_follower() -> None:
    """ "The leader must occasionally send snapshots to followers that lag behind", in
    chunks; afterwards plain appends resume. Reference: §5.1 (dissertation)"""
    net = net3(snapshot_chunk_bytes=8)
    net.elect("n1")
    net.isolate("n3")
    for i in range(10):
        net.nodes["n1"].propose(b"v%d" % i)
    net.send()
    n1 = net.nodes["n1"]
    applied = n1.status().applied
    assert applied == 14
    net.create_snapshot("n1", applied, b"S" * 30)
    n1.propose(b"after")
    net.send()
    assert n1.status().first_index == 15
    net.recover()
    net.delivered.clear()
    net.tick(["n1"])
    chunks = net.sent_of(InstallSnapshot, dst="n3")
    assert len(chunks) == 4 and chunks[-1].done
    assert [c.offset for c in chunks] == [0, 8, 16, 24]
    assert net.nodes["n3"].status().first_index == 15
    assert net.log("n3") == net.log("n1")
    assert net.disks["n3"].snapshot.data == b"S" * 30
    later = [m for m in net.sent_of(AppendEntries, dst="n3") if m.entries]
    assert later and later[-1].entries[-1].data == b"after"
    assert net.nodes["n1"]._raft.prs["n3"].state is ProgressState.REPLICATE
    # What n3 persisted is enough to restart from.
    net.crash("n3")
    n3 = net.start("n3")
    assert n3.status().first_index == 15 and net.log("n3") == net.log("n1")


@pytest.mark.parametrize(
    ("keep", "behind", "snapshot"),
    [
        (0, 3, True),  # no margin: any compacted entry costs the whole snapshot
        (5, 3, False),  # within the margin: plain appends
        (5, 5, False),  # exactly the margin
        (2, 3, True),  # beyond the margin: the snapshot after all
    ],
)
def test_catchup_margin_spares_a_snapshot(keep: int, behind: int, snapshot: bool) -> None:
    """A snapshot keeps ``snapshot_catchup_entries`` entries below its index, so a
    follower only a little behind is caught up by appends, not the whole state
    (etcd's SnapshotCatchUpEntries). Reference: §5.1 (dissertation)"""
    net = net3(snapshot_catchup_entries=keep)
    net.elect("n1")
    n1 = net.nodes["n1"]
    start = n1.status().applied
    net.isolate("n3")
    for i in range(behind):
        n1.propose(b"v%d" % i)
    net.send()
    applied = n1.status().applied
    assert applied == start + behind and net.nodes["n3"].status().last_index == start
    net.create_snapshot("n1", applied, b"S")
    assert n1.status().first_index == max(1, applied - keep + 1)
    assert n1.term_at(applied - keep) is not None  # the margin's base still matches
    net.recover()
    net.delivered.clear()
    net.tick(["n1"])
    assert bool(net.sent_of(InstallSnapshot, dst="n3")) is snapshot
    n3 = net.nodes["n3"].status()
    assert (n3.last_index, n3.commit, n3.applied) == (applied, applied, applied)
    if not snapshot:  # every missed entry was applied on n3 itself
        assert [e.data for e in net.applied["n3"][-behind:]] == [b"v%d" % i for i in range(behind)]


# ---- §3.8: persistence ------------------------------------------------------------------------


def _check_persist_before_send(net: Network, disks: dict[str, Disk]) -> None:
    """Replay every Ready on copies of the disks: each message that depends on the term,
    vote or log must find them already durable (and the batch flagged must_sync)."""
    for node, rd in net.readies:
        disk = disks[node]
        before = (disk.hard_state.term, disk.hard_state.vote)
        disk.save(rd)
        changed = (disk.hard_state.term, disk.hard_state.vote) != before
        if rd.entries or rd.snapshot or changed:
            assert rd.must_sync, rd
        for m in rd.messages:
            if not getattr(m, "pre_vote", False):
                assert m.term <= disk.hard_state.term, m
            if isinstance(m, VoteResp) and m.granted and not m.pre_vote:
                assert (disk.hard_state.term, disk.hard_state.vote) == (m.term, m.dst), m
            if isinstance(m, RequestVote) and not m.pre_vote:
                assert disk.hard_state.vote == node, m
            if isinstance(m, AppendResp) and not m.reject:
                held = {e.index for e in disk.entries} | {disk.snapshot.meta.index}
                assert m.index == 0 or m.index in held or m.index < min(held), m


def test_persist_before_send() -> None:
    """ "Raft's persistent state ... must be persisted before responding to RPCs": every
    Ready whose messages depend on a new term, vote or entries has must_sync set and the
    state saved first. Reference: §3.8"""
    net = Network(ids(3), snapshot_chunk_bytes=8)
    net.readies.clear()
    disks = {n: Disk(d.hard_state, d.snapshot, list(d.entries)) for n, d in net.disks.items()}
    net.elect("n1")
    net.isolate("n3")
    for i in range(5):
        net.nodes["n1"].propose(b"p%d" % i)
    net.send()
    net.create_snapshot("n1", net.nodes["n1"].status().applied, b"snapshot-data")
    net.recover()
    net.tick(n=2)
    assert net.sent_of(InstallSnapshot, dst="n3")
    net.nodes["n1"].transfer_leader("n2")
    net.send()
    net.tick(n=2)
    assert any(rd.must_sync and rd.messages for _, rd in net.readies)
    _check_persist_before_send(net, disks)


def test_restarted_node_keeps_term_and_vote() -> None:
    """currentTerm and votedFor survive a crash, so a restarted server cannot vote twice in
    the same term. Reference: §3.8, Figure 2"""
    net = net3(pre_vote=False)
    net.isolate("n1")
    net.send([RequestVote(src="n1", dst="n2", term=2, last_index=3, last_term=1)])
    net.recover()
    net.isolate("n1")
    net.nodes["n2"].step(RequestVote(src="n1", dst="n2", term=2, last_index=3, last_term=1))
    net.send()
    assert net.nodes["n2"].status().vote == "n1"
    net.crash("n2")
    n2 = net.start("n2")
    net.send()
    st = n2.status()
    assert (st.term, st.vote) == (2, "n1")
    net.send([RequestVote(src="n3", dst="n2", term=2, last_index=3, last_term=1)])
    assert [m.granted for m in net.sent_of(VoteResp, src="n2", dst="n3")] == [False]


def test_restarted_node_keeps_log_and_commit() -> None:
    """A crashed follower restarts from its durable log and hard state, rejoins, and
    catches up without losing any acknowledged entry. Reference: §3.8"""
    net = net3()
    net.elect("n1")
    idx = net.nodes["n1"].propose(b"x")
    net.send()
    net.crash("n2")
    n2 = net.start("n2")
    assert n2.status().last_index == idx and n2.status().commit >= 4
    net.tick(n=2)
    assert net.commit("n2") == idx
    # Config.applied comes from the application's durable state: nothing is re-applied.
    assert [e.index for e in net.applied["n2"]].count(idx) == 1


def test_snapshot_ack_never_claims_unverified_entries() -> None:
    """State Machine Safety: "if a server has applied a log entry at a given index to its
    state machine, no other server will ever apply a different log entry for the same
    index". A follower that already holds the snapshot's last entry may only vouch for
    what the snapshot covers, not for its own later, possibly stale, entries.
    Reference: §5.4.3 (Figure 3), §5.1 (dissertation, InstallSnapshot)"""
    net = net3(pre_vote=False, check_quorum=False)
    net.rewrite("n1", [2], term=4)  # 2/4
    net.rewrite("n2", [2], term=4)  # 2/4
    net.rewrite("n3", [2, 3], term=4)  # 2/4 3/5: 3/5 was never committed
    net.cut("n1", "n3")
    net.elect("n1")  # term 5 with n2; commits 2/4 and the no-op 5/5
    assert net.commit("n1") == 5
    net.create_snapshot("n1", 4, b"state@4")  # matches n3's 2/4
    # Reach the snapshot path the way a probe that backed off earlier would: next <= 4
    # with 4 compacted away (a new leader alone starts n3 at 5 and never needs it).
    net.nodes["n1"]._raft.prs["n3"].next = 4
    net.recover()
    net.tick(["n1"], n=2)
    assert net.sent_of(InstallSnapshot, dst="n3")
    acks = [m.index for m in net.sent_of(AppendResp, src="n3") if not m.reject]
    # The answer to the snapshot vouches only for what it covers; later acks follow
    # ordinary appends, after n3 replaced its stale 3/5 with the leader's 5/5.
    assert acks and acks[0] <= 4, f"n3 answered the snapshot with {acks[0]}, matches through 4"
    assert net.nodes["n3"].term_at(5) == 5
    by_index: dict[int, set[tuple[int, int]]] = {}
    for n in ids(3):
        for e in net.applied[n]:
            by_index.setdefault(e.index, set()).add((e.term, e.index))
    assert all(len(v) == 1 for v in by_index.values()), by_index


def test_leader_recovers_from_lost_appends_with_full_inflight_window() -> None:
    """A leader pipelining in REPLICATE state must not stall forever when every append
    in its in-flight window is lost: a heartbeat response frees a slot, the next append
    exposes the gap, and the follower is probed back into line (found by the simulator,
    seed 29). Reference: §5.3 ("the leader retries AppendEntries indefinitely")"""
    net = net3(max_inflight_msgs=2, max_msg_entries=1)
    net.elect("n1")
    net.cut("n1", "n3")  # only n2 acks; n3's pipeline is lost below
    for i in range(3):
        net.nodes["n1"].propose(b"a%d" % i)
        net.send()
    net.recover()
    net.drop(to("n2"))  # n2's next appends vanish, filling its window
    for i in range(4):
        net.nodes["n1"].propose(b"b%d" % i)
        net.send()
    net.recover()
    net.tick(["n1"], n=3)  # heartbeats only: no new proposals
    last = net.nodes["n1"].status().last_index
    assert net.commit("n1") == last
    assert net.log("n2") == net.log("n1")


def test_leader_repairs_a_follower_that_lost_acknowledged_entries() -> None:
    """A follower whose storage lost entries it had acknowledged (a disk that broke its
    fsync promise) is outside Raft's fault model, but the leader must not stall on it
    forever: probing goes below the old match and the follower catches up (found by
    the integration test that truncates a follower's last WAL record).
    Reference: §5.3 (consistency check and back-off)"""
    net = net3()
    net.elect("n1")
    for i in range(3):
        net.nodes["n1"].propose(b"x%d" % i)
        net.send()
    last = net.nodes["n1"].status().last_index
    assert net.nodes["n1"]._raft.prs["n2"].match == last
    # n2 restarts having lost its last two acknowledged entries (its state machine is
    # rebuilt from the log, so nothing counts as applied).
    net.crash("n2")
    disk = net.disks["n2"]
    disk.entries = disk.entries[:-2]
    hs = disk.hard_state
    disk.hard_state = HardState(term=hs.term, vote=hs.vote, commit=min(hs.commit, last - 2))
    disk.applied = 0
    net.start("n2")
    assert net.nodes["n2"].status().last_index == last - 2
    net.nodes["n1"].report_unreachable("n2")
    net.tick(["n1"], n=3)
    assert net.log("n2") == net.log("n1")


def test_no_campaign_while_a_committed_membership_change_is_unapplied() -> None:
    """etcd's hup guard: a node restored with a committed but not yet applied
    membership change would count votes in a configuration the cluster has left, so it
    refuses to campaign until the change is applied (issue 8, item 1). Reference:
    dissertation §4.1 (a server uses the latest configuration it has applied)."""
    import random as _random

    from raft.config import Config
    from raft.core.raw_node import RawNode
    from raft.core.ready import Restored
    from raft.types import ConfState, Entry, Snapshot, SnapshotMeta

    three = ConfState(frozenset({"n1", "n2", "n3"}))
    snapshot = Snapshot(SnapshotMeta(3, 1, three), b"")
    add = Entry(2, 4, EntryKind.CONF_CHANGE, ConfChange(ConfChangeKind.ADD_VOTER, "n4").encode())
    restored = Restored(HardState(2, None, 4), snapshot, (add,))
    raw = RawNode(Config(id="n1", pre_vote=False, applied=3), restored, _random.Random(1))
    assert raw.status().conf == three  # a voter of the applied configuration
    raw.campaign()  # committed up to 4, applied 3: refused
    assert raw.status().role is Role.FOLLOWER and raw.status().term == 2
    rd = raw.ready()
    assert not any(m.__class__.__name__ == "RequestVote" for m in rd.messages)
    assert [e.index for e in rd.committed_entries] == [4]
    raw.advance(rd)  # now applied: voters n1..n4
    raw.campaign()
    assert raw.status().role is Role.CANDIDATE
    assert raw.status().conf.voters == frozenset({"n1", "n2", "n3", "n4"})
