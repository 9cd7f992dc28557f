"""Issue 8, item 1, as scripted scenarios over the real storage: a node killed after
membership changes must restart with every change it had applied.

Both schedules were confirmed against the code before the fix (the commit index on
disk lagged, so a restarted node rebuilt an old membership); each test also replays
its schedule with that bug planted back (``commit-not-in-wal`` from
:mod:`tests.raft.sim.storage_bugs`) and requires the simulator to catch it.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from raft.errors import InvariantViolation
from raft.sim import Cluster, Scenario
from raft.types import ConfChange, ConfChangeKind, NodeId
from tests.raft.sim.storage_bugs import planted

# No snapshots: a snapshot carries the membership and would hide a stale commit.
QUIET = Scenario(
    schedule=(), membership=False, drop_p=0.0, dup_p=0.0, clients=3, snapshot_every=10**9
)


def _settle(c: Cluster, events: int = 400) -> NodeId:
    c.run_faults(events)
    leader = c.leader()
    assert leader is not None, "no leader"
    return leader


def _change(c: Cluster, kind: ConfChangeKind, node: NodeId) -> None:
    """Propose a membership change through the leader and run until every live member
    has applied it."""
    leader = _settle(c, 50)
    raw = c.raw(leader)
    assert raw is not None
    index = raw.propose_conf_change(ConfChange(kind, node))
    c.nodes[leader].drain_and_check()
    for _ in range(60):
        c.run_faults(50)
        live = [c.nodes[m] for m in sorted(c.conf.members) if c.nodes[m].sm is not None]
        if all(n.sm is not None and n.sm.applied >= index for n in live):
            return
    pytest.fail(f"{kind.name} {node} at {index} not applied everywhere")


def minority_restart(seed: int) -> None:
    """Founders add n4 then n5 in one term; partition {leader, n4, n5} | {f1, f2}; the
    leader keeps committing; f2 is killed and restarts. With a stale membership f2
    wins a term with f1's vote and commits its own entries at indexes the majority
    side already committed."""
    c = Cluster(seed, 5, QUIET, founders=3)
    _settle(c)
    _change(c, ConfChangeKind.ADD_VOTER, "n4")
    _change(c, ConfChangeKind.ADD_VOTER, "n5")
    leader = _settle(c, 100)
    f1, f2 = (n for n in c.founders if n != leader)
    c.partition([[leader, "n4", "n5"], [f1, f2]], 0)
    c.run_faults(300)
    c.crash(f2, 0, power_loss=False)
    c.restart(f2)
    c.run_faults(2000)
    c.run_quiet()


def everyone_killed(seed: int) -> None:
    """Add n4, add n5, remove two founders, then kill -9 every node: a leader must be
    elected again (before the fix, none ever was)."""
    c = Cluster(seed, 5, QUIET, founders=3)
    leader = _settle(c)
    _change(c, ConfChangeKind.ADD_VOTER, "n4")
    _change(c, ConfChangeKind.ADD_VOTER, "n5")
    for founder in [n for n in c.founders if n != leader]:
        _change(c, ConfChangeKind.REMOVE_NODE, founder)
    c.run_faults(200)
    for nid in c.ids:
        c.crash(nid, 0, power_loss=False)
    for nid in c.ids:
        c.restart(nid)
    c.run_quiet()


SCHEDULES = {"minority-restart": minority_restart, "everyone-killed": everyone_killed}


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("seed", range(3))
def test_schedule_is_safe_and_live(name: str, seed: int) -> None:
    SCHEDULES[name](seed)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_catches_the_stale_commit_bug(name: str) -> None:
    with planted("commit-not-in-wal"), pytest.raises(InvariantViolation) as info:
        SCHEDULES[name](0)
    print(f"{name}: caught as [{getattr(info.value, 'invariant', '?')}] {info.value}")


@pytest.mark.parametrize(
    ("name", "seed", "consequence"),
    [
        ("minority-restart", 1, "leader-completeness"),
        ("everyone-killed", 0, "liveness"),
    ],
)
def test_without_the_restart_check_the_damage_itself_is_caught(
    name: str, seed: int, consequence: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The membership-durable check names the cause at the restart; without it the
    consequence the issue reported is what the simulator sees: a second leader that
    lacks committed entries, or a cluster that never elects a leader again."""
    from raft.sim import invariants as inv

    monkeypatch.setattr(inv, "check_restart_membership", lambda *args: None)
    with planted("commit-not-in-wal"), pytest.raises(InvariantViolation) as info:
        SCHEDULES[name](seed)
    assert getattr(info.value, "invariant", "") == consequence, info.value


@pytest.mark.parametrize("who", ["leader", "follower"])
@pytest.mark.parametrize("step", range(1, 31, 2))
def test_crash_at_every_storage_step_of_a_membership_change(who: str, step: int) -> None:
    """The leader or a follower dies at its ``step``-th storage operation (write, fsync,
    rename, unlink, directory fsync) after n4's addition is proposed, half the time
    losing power; the cluster stays safe and, healed, converges with n4 a voter or not
    (every invariant and the final checks run)."""
    c = Cluster(step, 5, replace(QUIET, lose_unsynced=True, crash_points=0.0), founders=3)
    leader = _settle(c)
    target = leader if who == "leader" else next(n for n in c.founders if n != leader)
    c.nodes[target].fs.crash_countdown = step
    raw = c.raw(leader)
    assert raw is not None
    raw.propose_conf_change(ConfChange(ConfChangeKind.ADD_VOTER, "n4"))
    c.nodes[leader].drain_and_check()
    c.run_faults(1500)
    assert c.stats["crash_points"] == 1, "the scripted crash did not happen"
    c.run_quiet()


@pytest.mark.parametrize("who", ["leader", "follower"])
def test_crash_inside_a_membership_change_catches_the_unsynced_commit(who: str) -> None:
    """The same schedule, with item 1's forced sync planted out: the crash after the
    batch that commits n4's addition (step 5 here) loses that commit to the power
    loss, and the restart is caught using the old membership."""
    with planted("commit-past-membership-unsynced"), pytest.raises(InvariantViolation) as info:
        test_crash_at_every_storage_step_of_a_membership_change(who, 5)
    assert getattr(info.value, "invariant", "") == "membership-durable"
