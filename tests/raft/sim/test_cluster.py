"""The simulator itself: determinism, crashes, partitions, liveness reporting."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from raft.core.raw_node import RawNode
from raft.messages import Message
from raft.sim import Cluster, Fault, Scenario, run_seed
from raft.sim import cluster as cluster_mod
from raft.sim import invariants as inv
from raft.sim.faults import CRASH, ISOLATE
from raft.sim.trace import Trace
from raft.types import Entry, HardState

STEPS = 1500
CALM = Scenario(schedule=(), membership=False, drop_p=0.0, dup_p=0.0)


def final_state(c: Cluster) -> dict[str, Any]:
    """Everything durable or applied, per node: what two identical runs must share."""
    out: dict[str, Any] = {}
    for nid, n in c.nodes.items():
        r = n.storage.load()
        out[nid] = (r.hard_state, r.snapshot.meta, r.entries, n.sm and n.sm.commands)
    return out


def test_same_seed_same_run_byte_for_byte() -> None:
    runs = []
    for _ in range(2):
        c = Cluster(11, 3, trace=Trace(keep_all=True))
        c.run(STEPS)
        runs.append(("\n".join(c.trace.full()), final_state(c), c.summary()))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1]
    assert runs[0][2] == runs[1][2]
    other = Cluster(12, 3, trace=Trace(keep_all=True))
    other.run(STEPS)
    assert "\n".join(other.trace.full()) != runs[0][0]


def _digest_in_subprocess(hash_seed: str) -> str:
    code = (
        "import hashlib; from raft.sim import run_seed; "
        "r = run_seed(5, 3, 1000, keep_trace=True); assert r.ok, r.report; "
        "print(hashlib.sha256('\\n'.join(r.trace).encode()).hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_run_does_not_depend_on_hash_randomisation() -> None:
    """A seed printed by CI must replay on a laptop: nothing may iterate over a set
    of strings in an order that changes with PYTHONHASHSEED."""
    assert _digest_in_subprocess("1") == _digest_in_subprocess("2")


def test_isolated_node_neither_sends_nor_receives(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    real_step = RawNode.step

    def step(self: RawNode, msg: Message) -> None:
        seen.append((msg.src, msg.dst))
        real_step(self, msg)

    monkeypatch.setattr(RawNode, "step", step)
    iso = Scenario(schedule=((0, Fault(ISOLATE, a=0)),), membership=False)
    c = Cluster(3, 3, iso)
    c.run_faults(STEPS)
    assert seen, "the rest of the cluster talks"
    assert all("n1" not in pair for pair in seen), "nothing crosses the cut"
    assert c.nodes["n1"].raw is not None
    c.run_quiet()  # healed: n1 catches up
    assert any("n1" in pair for pair in seen)


def test_one_way_cut_blocks_one_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cluster(4, 3, CALM)
    c.run_faults(300)
    leader = c.leader()
    assert leader is not None
    follower = next(x for x in c.ids if x != leader)
    seen: set[tuple[str, str]] = set()
    real_step = RawNode.step

    def step(self: RawNode, msg: Message) -> None:
        seen.add((msg.src, msg.dst))
        real_step(self, msg)

    monkeypatch.setattr(RawNode, "step", step)
    c.cut(leader, follower, 0)
    c.run_faults(STEPS)
    assert (leader, follower) not in seen
    assert (follower, leader) in seen  # e.g. its pre-votes, once it misses the leader


@pytest.mark.parametrize("power_loss", [True, False])
def test_crash_keeps_synced_writes_and_a_process_crash_keeps_all(power_loss: bool) -> None:
    c = Cluster(2, 3, Scenario(schedule=(), membership=False, lose_unsynced=True))
    c.run_faults(500)
    n = c.nodes["n2"]
    assert n.storage is not None
    before = n.storage.load()
    last = n.storage.last_index
    extra = Entry(before.hard_state.term, last + 1, data=b"unsynced")
    hs = HardState(before.hard_state.term, before.hard_state.vote, before.hard_state.commit)
    n.storage.save(hs, [extra], None, sync=False)
    c.crash("n2", 0, power_loss=power_loss)
    assert n.raw is None and n.sm is None and n.storage is None
    c.restart("n2")
    assert n.raw is not None and n.storage is not None
    after = n.storage.load()
    assert after.snapshot == before.snapshot
    assert after.entries[: len(before.entries)] == before.entries  # synced: always kept
    if not power_loss:
        assert extra in after.entries
        assert n.raw.status().last_index == last + 1
    else:
        assert n.raw.status().last_index in (last, last + 1)


def test_messages_in_flight_die_with_the_crashed_node(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cluster(6, 3, CALM)
    c.run_faults(400)
    # Keep the objects alive so their ids cannot be reused by later messages.
    old = [b[2] for (_, _, kind, a, b) in c._queue if kind == cluster_mod.DELIVER and a[0] == "n2"]
    in_flight = {id(m) for m in old}
    assert in_flight, "heartbeats are on their way to n2"
    c.crash("n2", 0)
    c.restart("n2")
    stale: list[bool] = []
    deliver = c._handlers[cluster_mod.DELIVER]

    def watched(to: Any, what: Any) -> None:
        stale.append(id(what[2]) in in_flight)
        deliver(to, what)

    raw = c.nodes["n2"].raw
    assert raw is not None
    real_step: Callable[[Message], None] = raw.step

    def step(msg: Message) -> None:
        assert not stale[-1], f"a message sent before the crash reached the new life: {msg}"
        real_step(msg)

    monkeypatch.setattr(raw, "step", step)
    c._handlers[cluster_mod.DELIVER] = watched
    c.run_faults(400)
    assert any(stale), "the old messages were due during the test"


def test_stuck_cluster_is_a_liveness_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Cluster, "restart", lambda self, nid: None)  # nobody comes back
    s = Scenario(
        schedule=((300, Fault(CRASH, a=0)), (300, Fault(CRASH, a=1))),
        max_down=2,
        membership=False,
        quiet_ms=2000,
    )
    r = run_seed(1, 3, 800, s)
    assert not r.ok
    assert r.invariant == "liveness"
    assert "no leader" in r.message


def test_failure_report_names_seed_invariant_and_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(g: inv.Ghost, node: str, e: Entry) -> None:
        if e.index > 10:
            raise inv.violation("state-machine-safety", f"{node} injected at {e.index}")

    monkeypatch.setattr(inv, "check_applied", broken)
    r = run_seed(42, 3, 1000)
    assert not r.ok and r.invariant == "state-machine-safety"
    lines = r.report.splitlines()
    assert lines[0] == "seed=42 nodes=3 steps=1000"
    assert "VIOLATION [state-machine-safety]" in lines[1]
    assert lines[-1] == "python -m raft.sim --seed 42 --nodes 3 --steps 1000"
    assert 100 < len(lines) <= 205  # the last 200 events


def test_core_exception_is_a_failure_with_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    real_tick = RawNode.tick
    count = [0]

    def tick(self: RawNode) -> None:
        count[0] += 1
        if count[0] == 200:
            raise RuntimeError("boom")
        real_tick(self)

    monkeypatch.setattr(RawNode, "tick", tick)
    r = run_seed(3, 3, 1000)
    assert not r.ok and r.invariant == "exception"
    assert "RuntimeError: boom" in r.report
    assert "python -m raft.sim --seed 3" in r.report


def test_summary_shows_the_workload_made_progress() -> None:
    r = run_seed(4, 3, 2000, CALM)
    assert r.ok, r.report
    s = r.summary
    assert s["writes_ok"] > 20 and s["reads_ok"] > 10
    assert s["snapshots_taken"] > 0
