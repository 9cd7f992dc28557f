"""Nemesis: partition shapes computed right (halves, isolation, majorities ring, bridge),
``--nemesis`` parsing (groups, unknown and unavailable kinds), and the schedule: faults
recorded on the timeline in start/stop pairs, and every run ending healed, even when a
fault fails."""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from jepsen_like.clock import NodeClocks
from jepsen_like.db import DBError
from jepsen_like.nemesis import (
    FAULTS,
    GROUPS,
    Env,
    Fault,
    NemesisError,
    Schedule,
    bridge,
    combined,
    complete_grudge,
    halves,
    isolate,
    majorities_ring,
    needs_clock,
    parse_nemesis,
    reachable_from,
    verification,
)
from jepsen_like.observe import Evidence
from jepsen_like.proxy import Link
from kvstore.client import Indeterminate, Members, NodeStatus, Unavailable

pytestmark = pytest.mark.timeout(30)

NODES = {3: ["n1", "n2", "n3"], 5: ["n1", "n2", "n3", "n4", "n5"]}


def connected(nodes: list[str], grudge: frozenset[Link], a: str, b: str) -> bool:
    return (a, b) not in grudge and (b, a) not in grudge


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", range(20))
def test_halves_cut_a_minority_from_a_majority(n: int, seed: int) -> None:
    nodes = NODES[n]
    minority, majority = halves(nodes, random.Random(seed))
    assert len(minority) == n // 2 and len(majority) == n // 2 + 1
    assert minority | majority == set(nodes) and not minority & majority
    grudge = complete_grudge([minority, majority])
    for a, b in itertools.permutations(nodes, 2):
        same = {a, b} <= minority or {a, b} <= majority
        assert ((a, b) not in grudge) == same


def test_halves_vary_with_the_seed() -> None:
    shapes = {halves(NODES[5], random.Random(s))[0] for s in range(30)}
    assert len(shapes) > 3


@pytest.mark.parametrize("n", [3, 5])
def test_isolate_cuts_one_node_both_ways(n: int) -> None:
    nodes = NODES[n]
    grudge = complete_grudge(isolate(nodes, "n2"))
    assert grudge == {(a, b) for a, b in itertools.permutations(nodes, 2) if "n2" in (a, b)}


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", range(20))
def test_majorities_ring_every_node_hears_its_own_majority(n: int, seed: int) -> None:
    nodes = NODES[n]
    grudge = majorities_ring(nodes, random.Random(seed))
    heard = {node: frozenset(reachable_from(nodes, grudge, node)) for node in nodes}
    majority = n // 2 + 1
    assert all(len(h) == majority for h in heard.values()), heard
    assert len(set(heard.values())) == n, "no two nodes may hear the same majority"
    assert all(node in heard[node] for node in nodes)
    # Not a partition into components: the ring is connected (each node hears someone
    # who hears someone else), yet no node hears everyone.
    assert all(len(h) < n for h in heard.values())


def test_majorities_ring_of_five_is_symmetric_and_of_three_is_not() -> None:
    for seed in range(10):
        five = majorities_ring(NODES[5], random.Random(seed))
        assert all((b, a) in five for a, b in five)
        # With 5 nodes each node hears its two ring neighbours.
        assert len(five) == 5 * 2
        three = majorities_ring(NODES[3], random.Random(seed))
        assert len(three) == 3  # one incoming link blocked per node ...
        assert all((b, a) not in three for a, b in three)  # ... in one direction only


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", range(20))
def test_bridge_joins_two_halves_through_one_node(n: int, seed: int) -> None:
    nodes = NODES[n]
    grudge, node = bridge(nodes, random.Random(seed))
    assert all(node not in link for link in grudge), "the bridge talks to everyone"
    others = [x for x in nodes if x != node]
    cut = [
        (a, b) for a, b in itertools.combinations(others, 2) if not connected(nodes, grudge, a, b)
    ]
    # The others form two sides of sizes k and n-1-k, cut completely from each other.
    sides: list[set[str]] = []
    for x in others:
        for side in sides:
            if all(connected(nodes, grudge, x, y) for y in side):
                side.add(x)
                break
        else:
            sides.append({x})
    assert len(sides) == 2 and sorted(map(len, sides)) == sorted([n // 2, n - 1 - n // 2])
    assert len(cut) == len(sides[0]) * len(sides[1])
    assert all((b, a) in grudge for a, b in grudge), "bridge partitions are symmetric"


def test_parse_nemesis_expands_groups_and_deduplicates() -> None:
    assert parse_nemesis("partition") == list(GROUPS["partition"])
    assert parse_nemesis("kill,kill-all,pause-leader") == [*GROUPS["kill"], "pause-leader"]
    assert parse_nemesis("none") == []
    assert parse_nemesis(" latency , drop ") == ["latency", "drop"]
    assert set(parse_nemesis(",".join(FAULTS))) == set(FAULTS)


def test_the_clock_group_is_every_clock_kind() -> None:
    kinds = ["clock-offset", "clock-step-forward", "clock-step-backward", "clock-strobe"]
    assert parse_nemesis("clock") == [*kinds, "clock-drift"]
    assert needs_clock(parse_nemesis("all")) and not needs_clock(parse_nemesis("partition"))


def test_unknown_nemesis_lists_the_choices() -> None:
    with pytest.raises(NemesisError, match=r"unknown nemesis 'partitoin'.*partition-ring"):
        parse_nemesis("partitoin")


# ---- the schedule, against fakes --------------------------------------------------------


class FakeNet:
    """The network as the faults see it; a probe of a link reaches iff it is not cut,
    and traffic (chunks held back, redials) flows as long as ``traffic`` says so."""

    def __init__(self) -> None:
        self.grudge: frozenset[Link] = frozenset()
        self.latency = (0.0, 0.0)
        self.drops = 0
        self.traffic = True
        self.stats = {"accepted": 0, "bytes": 0, "dropped": 0, "delayed": 0, "delay_ms": 0}

    def partition(self, grudge: Iterable[Link]) -> None:
        self.grudge = frozenset(grudge)

    def set_latency(self, delay_s: float, jitter_s: float) -> None:
        self.latency = (delay_s, jitter_s)

    def drop_connections(self) -> int:
        self.drops += 1
        self.stats["dropped"] += 2
        return 2

    def heal(self) -> None:
        self.grudge, self.latency = frozenset(), (0.0, 0.0)

    def link_blocked(self, link: Link) -> bool:
        return link in self.grudge

    def link_latency(self, link: Link) -> tuple[float, float]:
        return self.latency

    def counters(self) -> dict[str, int]:
        if self.traffic:  # every look sees a little more traffic
            self.stats["accepted"] += 1
            self.stats["bytes"] += 100
            if self.latency[0] > 0:
                self.stats["delayed"] += 3
                self.stats["delay_ms"] += round(3000 * self.latency[0])
        return dict(self.stats)

    async def probe(
        self, src: str, dst: str, address: tuple[str, int], timeout: float
    ) -> dict[str, object]:
        assert address == ("127.0.0.1", 9000 + int(dst[1:])), "dialled where the config says"
        cut = (src, dst) in self.grudge
        return {"reached": not cut, "observed": "silence" if cut else "EOF"}


class FakeDB:
    """Processes with a fake /proc (a ``stat`` per pid: S running, T stopped, removed
    when killed; ``fd`` links into the node's data directory) and a node log on which
    each start writes what it recovered, as a real node does."""

    root: Path  # set by the autouse fixture: holds proc/ and data/
    next_pid = 5_000_000  # above any real pid_max: never a real process

    def __init__(self, n: int = 3) -> None:
        self.nodes = NODES[n]
        self.paused: set[str] = set()
        self.the_leader: str | None = "n2"
        self.term = 3  # a transfer makes a new term
        self.proc = self.root / "proc"
        self.pids: dict[str, int] = {}
        self.wiped: set[str] = set()
        self.held: set[str] = set()
        for node in self.nodes:
            raft = self.own_data_dir(node) / "raft"
            raft.mkdir(parents=True, exist_ok=True)
            (raft / "wal-1.log").write_text("17 entries")
            self._spawn(node)

    @property
    def alive(self) -> set[str]:
        return set(self.pids)

    def _spawn(self, node: str) -> int:
        pid = FakeDB.next_pid = FakeDB.next_pid + 1
        d = self.own_data_dir(node)
        fd = self.proc / str(pid) / "fd"
        fd.mkdir(parents=True)
        (fd / "3").symlink_to(d / "node.log")
        (fd / "4").symlink_to(d / "raft" / "wal-1.log")
        self._set_state(pid, "S")
        empty = not any((d / "raft").iterdir()) if (d / "raft").exists() else True
        with open(d / "node.log", "a") as log:
            log.write(
                f"x INFO raft: {node}: started at term {0 if empty else 3}, snapshot 0, "
                f"{0 if empty else 17} log entries\nx INFO kv: {node}: serving (pid {pid})\n"
            )
        self.pids[node] = pid
        return pid

    def _set_state(self, pid: int, state: str) -> None:
        (self.proc / str(pid) / "stat").write_text(f"{pid} (kv node) {state} 1 2 3\n")

    def pid(self, node: str) -> int | None:
        return self.pids.get(node)

    def own_data_dir(self, node: str) -> Path:
        return self.root / "data" / node

    def dial_address(self, src: str, dst: str) -> tuple[str, int]:
        return ("127.0.0.1", 9000 + int(dst[1:]))

    clocks: NodeClocks | None = None  # set by make_env: the clock files the node obeys

    async def status(self, node: str) -> NodeStatus:
        role = "leader" if node == self.the_leader else "follower"
        now = time.time()
        wall = now if self.clocks is None else now + self.clocks.settings[node].expected_offset(now)
        return NodeStatus(
            node,
            role,
            self.term,
            self.the_leader,
            "",
            10,
            10,
            int(wall * 1000),
            _mono_ms(),
            self.pids.get(node),
        )

    def kill(self, nodes: list[str]) -> list[str]:
        victims = [n for n in nodes if n in self.pids]
        for n in victims:
            shutil.rmtree(self.proc / str(self.pids.pop(n)))
        self.paused -= set(victims)
        return victims

    def restart(self, node: str) -> int | None:
        if node in self.pids or node in self.held:
            return None
        return self._spawn(node)

    def pause(self, node: str) -> bool:
        if node not in self.pids:
            return False
        self._set_state(self.pids[node], "T")
        self.paused.add(node)
        return True

    def resume(self, node: str) -> bool:
        if node not in self.paused:
            return False
        self.paused.discard(node)
        self._set_state(self.pids[node], "S")
        return True

    def dead(self) -> list[str]:
        return [n for n in self.nodes if n not in self.alive]

    async def leader(self) -> str | None:
        return self.the_leader

    async def transfer_leader(self, to: str) -> str:
        self.the_leader = to
        self.term += 1
        with open(self.own_data_dir(to) / "node.log", "a") as log:
            log.write(f"x INFO kvstore.server: {to}: lessor promoted in term {self.term}\n")
        return to

    # Membership, as the leader applies it; restart() of a wiped node models --join.
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()

    def running(self, node: str) -> bool:
        return node in self.alive

    def wipe(self, node: str) -> None:
        assert node not in self.alive
        self.wiped.add(node)
        shutil.rmtree(self.own_data_dir(node) / "raft")
        (self.own_data_dir(node) / "raft").mkdir()

    def _members(self) -> Members:
        if not self.voters:
            self.voters = tuple(self.nodes)
        return Members(self.voters, self.learners, self.the_leader)

    async def member_list(self, node: str | None = None) -> Members:
        return self._members()

    async def member_add(self, node: str, learner: bool) -> Members:
        m = self._members()
        voters = [n for n in m.voters if n != node]
        learners = [n for n in m.learners if n != node]
        (learners if learner else voters).append(node)
        self.voters, self.learners = tuple(sorted(voters)), tuple(sorted(learners))
        return self._members()

    async def member_remove(self, node: str) -> Members:
        m = self._members()
        self.voters = tuple(n for n in m.voters if n != node)
        self.learners = tuple(n for n in m.learners if n != node)
        return self._members()

    async def wait_caught_up(self, node: str, timeout: float) -> int:
        assert node in self.alive and node in self.learners, "only a running learner catches up"
        return 42


def healed(env: Env) -> bool:
    net, db = env.net, env.db
    assert isinstance(net, FakeNet) and isinstance(db, FakeDB)
    return (
        not net.grudge and net.latency == (0.0, 0.0) and not db.paused and db.alive == set(db.nodes)
    )


@pytest.fixture(autouse=True)
def fake_root(tmp_path: Path) -> None:
    FakeDB.root = tmp_path


def _mono_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def make_env(db: FakeDB | None = None, net: FakeNet | None = None) -> Env:
    db = db or FakeDB()
    db.clocks = clocks = NodeClocks(db.root / "clock", db.nodes)
    return Env(
        net or FakeNet(),
        db,
        random.Random(1),
        proc=db.proc,
        settle_s=0.1,
        clock=clocks,
        drift_window_s=0.5,  # a fake's clock is exact: a short window shows the rate
        clock_recheck_s=0.01,
        answer_s=0.3,
        traffic_s=0.1,
    )


def make_schedule(
    kinds: list[str], interval: float = 0.02, env: Env | None = None, **kw: bool
) -> Schedule:
    clock = itertools.count(0, 1000)
    env = env or make_env()
    return Schedule(kinds, env, interval=interval, clock_ns=lambda: next(clock), **kw)


def run_schedule(schedule: Schedule, seconds: float) -> None:
    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(schedule.run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        async with asyncio.timeout(5):
            await task
        await schedule.heal()

    asyncio.run(body())


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_starts_stops_and_ends_healed(kind: str) -> None:
    schedule = make_schedule([kind])

    async def body() -> None:
        await schedule.start(kind)
        assert schedule.active == kind
        if kind.startswith("partition"):
            assert schedule.env.net.grudge  # type: ignore[attr-defined]
        elif kind.startswith("kill"):
            assert schedule.env.db.dead()
        elif kind.startswith("pause"):
            assert schedule.env.db.paused
        elif kind == "latency":
            assert schedule.env.net.latency[0] > 0  # type: ignore[attr-defined]
        await schedule.stop_active()
        assert healed(schedule.env), f"{kind}'s stop must undo it"
        await schedule.heal()

    asyncio.run(body())
    events = [(e.event, e.kind) for e in schedule.timeline]
    assert events == [("start", kind), ("stop", kind), ("heal", "all")]


def test_leader_faults_target_the_leader() -> None:
    schedule = make_schedule(["partition-leader", "kill-leader", "pause-leader"])

    async def body() -> None:
        await schedule.start("partition-leader")
        assert schedule.timeline[-1].details["isolated"] == "n2"
        await schedule.stop_active()
        await schedule.start("kill-leader")
        assert schedule.env.db.dead() == ["n2"]
        await schedule.stop_active()
        await schedule.start("pause-leader")
        assert schedule.env.db.paused == {"n2"}
        await schedule.heal()

    asyncio.run(body())
    assert healed(schedule.env)


def test_transfer_moves_leadership_to_another_node_and_records_it() -> None:
    schedule = make_schedule(["transfer"])

    async def body() -> None:
        for _ in range(5):
            before = schedule.env.db.the_leader  # type: ignore[attr-defined]
            await schedule.start("transfer")
            details = schedule.timeline[-1].details
            assert details["leader"] == before and details["to"] != before
            assert details["new_leader"] == details["to"] and details["outcome"] == "moved"
            await schedule.stop_active()

    asyncio.run(body())
    assert parse_nemesis("transfer") == ["transfer"]


def test_membership_removes_a_follower_and_brings_it_back_as_learner_then_voter() -> None:
    schedule = make_schedule(["membership"])
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    async def body() -> None:
        await schedule.start("membership")
        start = schedule.timeline[-1].details
        victim = start["victim"]
        assert victim != "n2", "never the leader"
        assert [s["step"] for s in start["steps"]] == ["removed", "killed", "wiped"]
        assert victim not in db.voters and victim in db.dead() and victim in db.wiped
        await schedule.stop_active()
        stop = schedule.timeline[-1].details
        steps = [s["step"] for s in stop["steps"]]
        assert steps == ["restarted", "learner added", "caught up", "promoted"]
        assert db.voters == tuple(db.nodes) and db.learners == () and not db.dead()
        await schedule.heal()

    asyncio.run(body())


def test_membership_whose_remove_fails_goes_on_and_still_restores() -> None:
    class StuckDB(FakeDB):
        async def member_remove(self, node: str) -> Members:
            raise Indeterminate("gave up")

    env = make_env(StuckDB())
    schedule = Schedule(["membership"], env, interval=0.02, clock_ns=lambda: 0)

    async def body() -> None:
        await schedule.start("membership")
        assert schedule.timeline[-1].details["steps"][0]["step"] == "remove failed"
        assert not env.db.dead(), "nothing is killed when the remove failed"
        await schedule.heal()

    asyncio.run(body())
    stop = next(e for e in schedule.timeline if e.event == "stop")
    assert stop.details["steps"] == [], "still a voter: nothing to restore"
    assert healed(env)


def test_membership_heal_completes_an_interrupted_change() -> None:
    schedule = make_schedule(["membership"])
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    async def body() -> None:
        await schedule.start("membership")
        victim = schedule.timeline[-1].details["victim"]
        db.held.discard(victim)  # as if a stop got this far (released, restarted),
        db.restart(victim)  # then failed
        await db.member_add(victim, learner=True)
        await schedule.heal()

    asyncio.run(body())
    stop = next(e for e in schedule.timeline if e.event == "stop")
    assert [s["step"] for s in stop.details["steps"]] == ["caught up", "promoted"]
    assert db.voters == tuple(db.nodes) and db.learners == ()
    assert healed(schedule.env)


def test_a_failed_transfer_is_recorded_not_raised() -> None:
    class StuckDB(FakeDB):
        async def transfer_leader(self, to: str) -> str:
            raise TimeoutError("no new leader")

    env = make_env(StuckDB())
    schedule = Schedule(["transfer"], env, interval=0.02, clock_ns=lambda: 0)
    asyncio.run(schedule.start("transfer"))
    assert schedule.timeline[-1].event == "start"
    assert schedule.timeline[-1].details["outcome"].startswith("TimeoutError")


def test_schedule_alternates_and_always_ends_healed() -> None:
    schedule = make_schedule(["kill-all", "pause-one", "latency", "drop", *GROUPS["partition"]])
    run_schedule(schedule, 0.5)
    assert healed(schedule.env)
    starts = [e for e in schedule.timeline if e.event == "start"]
    stops = [e for e in schedule.timeline if e.event == "stop"]
    assert len(starts) >= 3
    assert schedule.timeline[-1].event == "heal"
    # One fault at a time: each start is followed by its own stop (or the final heal).
    open_fault = None
    for e in schedule.timeline:
        if e.event == "start":
            assert open_fault is None
            open_fault = e.fault
        elif e.event == "stop":
            assert e.fault == open_fault
            open_fault = None
    assert len(stops) in (len(starts), len(starts) - 1)
    times = [e.time for e in schedule.timeline]
    assert times == sorted(times)


def test_heal_recovers_from_a_fault_whose_stop_failed() -> None:
    class FlakyDB(FakeDB):
        failures = 1

        def restart(self, node: str) -> int | None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("disk on fire")
            return super().restart(node)

    env = make_env(FlakyDB())
    schedule = make_schedule(["kill-one"], env=env)

    async def body() -> dict[str, object]:
        await schedule.start("kill-one")
        env.db.pause(next(n for n in env.db.nodes if n not in env.db.dead()))
        with pytest.raises(RuntimeError):
            await schedule.stop_active()
        return await schedule.heal()

    details = asyncio.run(body())
    assert healed(env)
    stop = next(e for e in schedule.timeline if e.event == "stop")
    assert details["resumed"] and stop.details["restarted"], (details, stop)
    # The failed stop left the fault in force; the heal stopped it again, successfully.
    assert [e.event for e in schedule.timeline] == ["start", "error", "stop", "heal"]
    assert verification(schedule.timeline)["valid"] is True


def test_no_faults_means_an_empty_timeline_but_still_a_heal() -> None:
    schedule = make_schedule([])
    run_schedule(schedule, 0.05)
    assert [e.event for e in schedule.timeline] == ["heal"]


def test_schedule_gives_every_kind_its_turn_in_a_seeded_order() -> None:
    kinds = sorted(FAULTS)

    def order() -> list[str]:
        schedule = make_schedule(kinds)

        async def body() -> None:
            for _ in range(2 * len(kinds)):
                await schedule.start(schedule._next_kind())
                await schedule.stop_active()

        asyncio.run(body())
        return [e.kind for e in schedule.timeline if e.event == "start"]

    first = order()
    assert sorted(first[: len(kinds)]) == kinds and sorted(first[len(kinds) :]) == kinds
    assert first == order(), "the same seed gives the same schedule"
    assert first[: len(kinds)] != kinds, "shuffled, not alphabetical"


# ---- every fault proves it took effect ------------------------------------------------


def _evidence(schedule: Schedule, event: str) -> dict[str, object]:
    ev = next(e for e in reversed(schedule.timeline) if e.event == event)
    return ev.details["evidence"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_is_verified_and_so_is_its_undoing(kind: str) -> None:
    schedule = make_schedule([kind])

    async def body() -> None:
        await schedule.start(kind)
        start = _evidence(schedule, "start")
        assert start["status"] == "verified", start
        await schedule.stop_active()
        stop = schedule.timeline[-1].details.get("evidence")
        assert stop is None or stop["status"] == "verified", stop
        await schedule.heal()
        assert _evidence(schedule, "heal")["status"] == "verified"

    asyncio.run(body())
    assert verification(schedule.timeline)["valid"] is True


class DeafNet(FakeNet):
    """A network whose partitions and latency silently do nothing."""

    def partition(self, grudge: Iterable[Link]) -> None:
        pass

    def set_latency(self, delay_s: float, jitter_s: float) -> None:
        pass


class WrongProxyNet(FakeNet):
    """Cuts the links it is asked to in its own tables, while the nodes dial elsewhere:
    the drop-mode check holds, the probe the node's way goes through."""

    async def probe(
        self, src: str, dst: str, address: tuple[str, int], timeout: float
    ) -> dict[str, object]:
        return {"reached": True, "observed": "EOF"}


class QuietNet(FakeNet):
    """Counters that never move: no traffic was delayed, nobody redialled."""

    def counters(self) -> dict[str, int]:
        return dict(self.stats)


class UndelayedNet(FakeNet):
    """Traffic flows, but a delay set on the links holds nothing back (a dud proxy)."""

    def counters(self) -> dict[str, int]:
        self.stats["bytes"] += 100
        return dict(self.stats)


class DudDB(FakeDB):
    """Signals that never land, and the old relative-path wipe: it removes a directory
    the node does not use, so the node comes back with its whole log."""

    def kill(self, nodes: list[str]) -> list[str]:
        victims = [n for n in nodes if n in self.pids]
        for n in victims:
            self.pids.pop(n)  # forgotten by the harness, still running
        return victims

    def pause(self, node: str) -> bool:
        self.paused.add(node)
        return True

    def wipe(self, node: str) -> None:
        self.wiped.add(node)
        shutil.rmtree(self.root / "elsewhere" / node, ignore_errors=True)

    async def transfer_leader(self, to: str) -> str:
        return to  # says it moved; nothing happened, nothing logged

    async def status(self, node: str) -> NodeStatus:
        # Never moved, and its clocks never either (a node started without libfaketime).
        wall = time.time_ns() // 1_000_000
        return NodeStatus(node, "follower", 3, "n2", "", 10, 10, wall, _mono_ms(), None)


@pytest.mark.parametrize(
    ("kind", "net", "db"),
    [
        ("partition-one", DeafNet, FakeDB),
        ("partition-halves", WrongProxyNet, FakeDB),
        ("latency", DeafNet, FakeDB),
        ("latency", UndelayedNet, FakeDB),
        ("drop", QuietNet, FakeDB),
        ("kill-one", FakeNet, DudDB),
        ("kill-all", FakeNet, DudDB),
        ("pause-one", FakeNet, DudDB),
        ("transfer", FakeNet, DudDB),
        ("membership", FakeNet, DudDB),
        ("clock-offset", FakeNet, DudDB),
        ("clock-step-forward", FakeNet, DudDB),
        ("clock-strobe", FakeNet, DudDB),
        ("clock-drift", FakeNet, DudDB),
    ],
)
def test_a_fault_that_does_nothing_is_not_verified(
    kind: str, net: type[FakeNet], db: type[FakeDB]
) -> None:
    env = make_env(db(), net())
    schedule = make_schedule([kind], env=env)

    async def body() -> None:
        await schedule.start(kind)
        await schedule.stop_active()

    asyncio.run(body())
    start = _evidence(schedule, "start")
    assert start["status"] == "unverified", start
    result = verification(schedule.timeline)
    assert result["valid"] is None and "NOT every fault verified" in result["summary"]


def test_a_wipe_that_missed_is_caught_at_both_ends() -> None:
    """The old bug itself: the harness wiped a directory the node never used. The node's
    open files show where its Raft state really is (still full), and the restarted node
    logs that it recovered its whole log."""
    env = make_env(DudDB())
    schedule = make_schedule(["membership"], env=env)

    async def body() -> None:
        await schedule.start("membership")
        await schedule.stop_active()

    asyncio.run(body())
    start = _evidence(schedule, "start")
    empty = next(c for c in start["checks"] if c["check"] == "Raft directory empty")
    assert not empty["ok"] and empty["observed"]["source"].endswith("/fd"), empty
    assert empty["observed"]["entries"] == ["wal-1.log"]
    stop = _evidence(schedule, "stop")
    recovered = next(c for c in stop["checks"] if c["check"] == "recovered index 0 from disk")
    assert not recovered["ok"] and recovered["observed"]["recovered_index"] == 17, recovered


def test_a_correct_wipe_is_seen_empty_and_the_node_recovers_nothing() -> None:
    schedule = make_schedule(["membership"])

    async def body() -> None:
        await schedule.start("membership")
        await schedule.stop_active()

    asyncio.run(body())
    stop = _evidence(schedule, "stop")
    checks = {c["check"]: c for c in stop["checks"]}
    assert checks["Raft directory empty before restart"]["ok"]
    assert checks["recovered index 0 from disk"]["observed"]["entries"] == 0
    assert stop["status"] == "verified", stop


def test_probes_skip_links_into_a_paused_node_and_say_so() -> None:
    schedule = make_schedule(["partition-one", "pause-one"])
    db = schedule.env.db

    async def body() -> None:
        db.pause("n3")
        await schedule.start("partition-one")

    asyncio.run(body())
    start = _evidence(schedule, "start")
    skipped = [c for c in start["checks"] if "skipped" in c["check"]]
    isolated = schedule.timeline[-1].details["isolated"]
    if isolated == "n3":
        assert len(skipped) == 2  # n1->n3, n2->n3
    else:
        assert [c["check"] for c in skipped] == [f"probe {isolated}->n3 skipped"]
    assert start["status"] == "verified"


def test_not_applied_faults_do_not_make_a_run_unknown() -> None:
    schedule = make_schedule(["transfer"])
    schedule.env.db.the_leader = None  # type: ignore[attr-defined]
    asyncio.run(schedule.start("transfer"))
    assert _evidence(schedule, "start")["status"] == "not-applied"
    assert verification(schedule.timeline)["valid"] is True


# ---- overlapping faults (--nemesis all): a verifier waits out another group's fault ----


def before_verify(
    schedule: Schedule, kind: str, meanwhile: Callable[[dict[str, object]], None]
) -> None:
    """Let ``meanwhile`` (another fault, acting) run between the start of ``kind`` and
    its verification: how the overlaps of ``--nemesis all`` are staged."""
    fault = schedule._faults[kind]
    verify = fault.verify_start

    async def staged(env: Env, details: dict[str, object]) -> Evidence:
        meanwhile(details)
        return await verify(env, details)

    fault.verify_start = staged  # type: ignore[method-assign]


def test_a_clock_read_waits_out_a_kill_by_another_fault() -> None:
    """The clock was stepped; another group kills the node before the read-back and
    restarts it a little later. The read-back waits for it and verifies the step (it
    used to give up: "status failed", and the run ended unknown)."""
    env = make_env()
    env.answer_s = 3.0
    db = env.db
    assert isinstance(db, FakeDB)
    schedule = make_schedule(["clock-step-forward"], env=env)

    def killed_meanwhile(details: dict[str, object]) -> None:
        node = str(details["node"])
        db.kill([node])
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, db.restart, node)

    before_verify(schedule, "clock-step-forward", killed_meanwhile)
    asyncio.run(schedule.start("clock-step-forward"))
    start = _evidence(schedule, "start")
    assert start["status"] == "verified", start
    checks = [c["check"] for c in start["checks"]]
    assert not any("skipped" in c for c in checks), checks
    assert any("wall clock +" in c for c in checks), checks


def test_a_node_still_down_at_the_end_of_the_wait_is_noted_and_proves_nothing() -> None:
    """Killed by another fault for the whole wait: no read, so nothing is verified (a
    skip used to count as a passing check, and a fault nobody saw was "verified")."""
    schedule = make_schedule(["clock-step-forward"])
    db = schedule.env.db

    def killed_for_good(details: dict[str, object]) -> None:
        db.kill([str(details["node"])])

    before_verify(schedule, "clock-step-forward", killed_for_good)
    asyncio.run(schedule.start("clock-step-forward"))
    node = schedule.timeline[-1].details["node"]
    ev = _evidence(schedule, "start")
    assert ev["status"] == "superseded" and ev["checks"] == [], ev
    assert ev["notes"] == [f"{node} not read: down (another fault) until the deadline"]
    result = verification(schedule.timeline)
    assert result["valid"] is True and "1 superseded" in result["summary"], result


def test_a_node_that_died_on_its_own_fails_the_clock_check() -> None:
    """A node that crashed (the harness still has its pid: no fault killed it) is asked,
    does not answer, and the check fails: not a skip."""

    class CrashingDB(FakeDB):
        crashed: set[str] = set()

        async def status(self, node: str) -> NodeStatus:
            if node in self.crashed:
                raise ConnectionRefusedError(f"{node} is gone")
            return await super().status(node)

    env = make_env(CrashingDB())
    db = env.db
    assert isinstance(db, CrashingDB)
    schedule = make_schedule(["clock-step-forward"], env=env)

    def crashed_meanwhile(details: dict[str, object]) -> None:
        db.crashed.add(str(details["node"]))

    before_verify(schedule, "clock-step-forward", crashed_meanwhile)
    asyncio.run(schedule.start("clock-step-forward"))
    ev = _evidence(schedule, "start")
    assert ev["status"] == "unverified", ev
    assert "is gone" in str(ev["checks"][0]["observed"])


def test_a_kill_and_its_heal_leave_the_membership_victim_down_until_its_own_stop() -> None:
    """A kill of the victim (another group's) ends while the membership change is in
    force: its restart must not start the wiped victim early, or the change's own stop
    finds a Raft directory that is no longer empty and cannot verify the wipe."""
    schedule = make_schedule(["membership", "kill-one"])
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    async def body() -> None:
        await schedule.start("membership")
        victim = schedule.timeline[-1].details["victim"]
        kill = schedule._faults["kill-one"]
        kill._victims = [victim]  # type: ignore[attr-defined]  # it killed the victim first
        kid = schedule._next_id
        schedule._next_id += 1
        schedule._active[kid] = kill
        await schedule.stop(kid)
        assert not db.running(victim), "the kill's stop restarted the held victim"
        assert victim not in db.alive
        await schedule.heal()

    asyncio.run(body())
    stops = [e for e in schedule.timeline if e.event == "stop"]
    assert stops[0].kind == "kill-one" and stops[0].details["restarted"] == {}
    member = next(e for e in stops if e.kind == "membership")
    ev = member.details["evidence"]
    assert ev["status"] == "verified", ev
    assert "Raft directory empty before restart" in [c["check"] for c in ev["checks"]]
    assert healed(schedule.env) and not db.held


def test_a_membership_start_first_finishes_the_restore_a_failed_stop_left() -> None:
    """A stop that failed leaves its victim held down; the group goes on and starts the
    kind again. That start must bring the old victim back first, or it stays held (and
    out of the cluster) for the rest of the run."""
    schedule = make_schedule(["membership"])
    db = schedule.env.db
    assert isinstance(db, FakeDB)
    fault = schedule._faults["membership"]

    async def body() -> tuple[str, str]:
        first = await fault.start(schedule.env)
        assert first["victim"] in db.held
        second = await fault.start(schedule.env)  # no stop in between
        return first["victim"], second["victim"]

    old, new = asyncio.run(body())
    assert db.running(old) and old in db.voters and old not in db.held
    assert new in db.held and not db.running(new)


def test_a_drift_read_across_a_restart_is_read_again_from_the_new_process() -> None:
    env = make_env()
    env.answer_s = 3.0
    db = env.db
    assert isinstance(db, FakeDB)
    schedule = make_schedule(["clock-drift"], env=env)

    def restarted_meanwhile(details: dict[str, object]) -> None:
        node = str(details["node"])
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, lambda: (db.kill([node]), db.restart(node)))

    before_verify(schedule, "clock-drift", restarted_meanwhile)
    asyncio.run(schedule.start("clock-drift"))
    ev = _evidence(schedule, "start")
    assert ev["status"] == "verified", ev
    assert any("restarted between the reads" in n for n in ev["notes"]), ev
    pids = {c["observed"]["first"]["pid"] for c in ev["checks"]}
    assert pids == {c["observed"]["second"]["pid"] for c in ev["checks"]} and len(pids) == 1


@pytest.mark.parametrize("stuck", ["member_list", "wait_caught_up"])
def test_a_membership_start_that_cannot_finish_the_last_restore_is_not_applied(
    stuck: str,
) -> None:
    """No quorum for longer than the retries (member_list: Unavailable), or the old
    victim not catching up in time (DBError, the 10-minute lock run): the start says so
    (not applied) rather than failing as an error, and the heal finishes it later."""
    schedule = make_schedule(["membership"])
    db = schedule.env.db
    assert isinstance(db, FakeDB)
    fault = schedule._faults["membership"]
    fault.conflict_retry_s = 0.1  # type: ignore[attr-defined]

    async def body() -> None:
        old = (await fault.start(schedule.env))["victim"]
        real = getattr(db, stuck)

        async def refuse(*args: object) -> Members:
            if stuck == "member_list":
                raise Unavailable("no leader known")
            raise DBError("n2 did not catch up within 20 s")

        setattr(db, stuck, refuse)
        await schedule.start("membership")
        setattr(db, stuck, real)
        await schedule.heal()
        assert old not in db.held and db.running(old) and old in db.voters

    asyncio.run(body())
    ev = _evidence(schedule, "start")
    assert ev["status"] == "not-applied" and "not restored yet" in ev["not_applied"], ev


def test_a_pause_killed_by_another_fault_before_it_is_seen_is_noted() -> None:
    """kill-all right after pause-one (the 10-minute lock run): the stopped process is
    gone before the verifier looks, and that is the other fault's doing."""
    schedule = make_schedule(["pause-one"])
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    def killed_first(details: dict[str, object]) -> None:
        db.kill([str(details["paused"])])

    before_verify(schedule, "pause-one", killed_first)
    asyncio.run(schedule.start("pause-one"))
    ev = _evidence(schedule, "start")
    assert ev["status"] == "superseded" and ev["checks"] == [], ev
    assert "killed by another fault" in ev["notes"][0]


def test_a_node_back_from_another_fault_too_late_to_answer_is_noted_not_failed() -> None:
    """Killed by another fault, restarted just before the deadline, still replaying its
    log when time ran out: it had no fair chance to answer."""

    class BootingDB(FakeDB):
        booting: set[str] = set()

        async def status(self, node: str) -> NodeStatus:
            if node in self.booting:
                raise ConnectionRefusedError(f"{node} is starting")
            return await super().status(node)

    env = make_env(BootingDB())
    env.answer_s = 0.6
    db = env.db
    assert isinstance(db, BootingDB)
    schedule = make_schedule(["clock-step-forward"], env=env)

    def killed_then_booting(details: dict[str, object]) -> None:
        node = str(details["node"])
        db.kill([node])
        db.booting.add(node)
        asyncio.get_running_loop().call_later(0.3, db.restart, node)

    before_verify(schedule, "clock-step-forward", killed_then_booting)
    asyncio.run(schedule.start("clock-step-forward"))
    ev = _evidence(schedule, "start")
    assert ev["status"] == "superseded" and ev["checks"] == [], ev
    assert "down (another fault)" in ev["notes"][0]


class EmptyNet(QuietNet):
    """No connection open anywhere (every link cut, every node down): a drop resets
    nothing, nobody dials."""

    def drop_connections(self) -> int:
        return 0


@pytest.mark.parametrize(
    ("kind", "why"), [("latency", "no traffic"), ("drop", "no peer connection")]
)
def test_a_link_fault_with_nothing_to_act_on_is_not_applied_and_says_why(
    kind: str, why: str
) -> None:
    """Another group's fault left no traffic for a delay or a drop to act on: not
    applied (the run is not made unknown for it), with the reason; what could be
    checked (every link set to the delay) is still checked."""
    env = make_env(net=EmptyNet())
    schedule = make_schedule([kind], env=env)
    asyncio.run(schedule.start(kind))
    start = _evidence(schedule, "start")
    assert start["status"] == "not-applied", start
    assert why in start["not_applied"]
    assert all(c["ok"] for c in start["checks"])
    assert verification(schedule.timeline)["valid"] is True


def test_a_delay_not_set_on_every_link_is_unverified_even_without_traffic() -> None:
    class HalfSetNet(EmptyNet):
        def link_latency(self, link: Link) -> tuple[float, float]:
            return (0.0, 0.0) if link == ("n1", "n2") else self.latency

    env = make_env(net=HalfSetNet())
    schedule = make_schedule(["latency"], env=env)
    asyncio.run(schedule.start("latency"))
    assert _evidence(schedule, "start")["status"] == "unverified"


class UnloggedDB(FakeDB):
    """Transfers happen, but the target's log says nothing of them: the other ways to
    see a transfer are what is tested."""

    async def transfer_leader(self, to: str) -> str:
        self.the_leader = to
        self.term += 1
        return to


def _transfer_schedule() -> Schedule:
    return make_schedule(["transfer"], env=make_env(UnloggedDB()))


def test_a_transfer_whose_target_is_paused_is_verified_by_another_node() -> None:
    schedule = _transfer_schedule()
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    def paused_meanwhile(details: dict[str, object]) -> None:
        db.pause(str(details["to"]))

    before_verify(schedule, "transfer", paused_meanwhile)
    asyncio.run(schedule.start("transfer"))
    start = _evidence(schedule, "start")
    assert start["status"] == "verified", start
    to = schedule.timeline[-1].details["to"]
    assert start["checks"][0]["check"].endswith(f"names {to} the leader")


def test_a_transfer_nobody_can_be_asked_about_is_noted_not_verified() -> None:
    """Every node killed by another fault right after the transfer: no observation at
    all, so the transfer is not applied as far as anyone can tell (not verified)."""
    schedule = _transfer_schedule()
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    def all_killed(details: dict[str, object]) -> None:
        db.kill(list(db.nodes))

    before_verify(schedule, "transfer", all_killed)
    asyncio.run(schedule.start("transfer"))
    ev = _evidence(schedule, "start")
    assert ev["status"] == "superseded" and ev["checks"] == [], ev
    assert "no other node could answer" in ev["notes"][0]


def test_a_transfer_whose_target_led_and_lost_it_again_is_verified_by_its_log() -> None:
    """Another fault's election took leadership from the target before it could be
    asked: its own log says it led a term after the transfer began."""
    schedule = make_schedule(["transfer"])
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    def deposed_meanwhile(details: dict[str, object]) -> None:
        db.the_leader, db.term = None, db.term + 5

    before_verify(schedule, "transfer", deposed_meanwhile)
    asyncio.run(schedule.start("transfer"))
    ev = _evidence(schedule, "start")
    assert ev["status"] == "verified", ev
    assert ev["checks"][0]["check"].endswith("logged leading in a later term")


def test_a_transfer_whose_target_never_logged_leading_is_unverified() -> None:
    class SilentDB(FakeDB):
        async def transfer_leader(self, to: str) -> str:
            self.term += 1
            return to  # says moved; nobody leads, nothing logged

    env = make_env(SilentDB())
    schedule = make_schedule(["transfer"], env=env)
    asyncio.run(schedule.start("transfer"))
    assert _evidence(schedule, "start")["status"] == "unverified"


def test_a_stale_view_of_the_target_leading_does_not_verify_a_transfer() -> None:
    """The target is paused and every other node still names it the leader, but from
    the term before the transfer (cut off since): not evidence of this transfer."""
    schedule = _transfer_schedule()
    db = schedule.env.db
    assert isinstance(db, FakeDB)

    def paused_and_stale(details: dict[str, object]) -> None:
        db.pause(str(details["to"]))
        db.term = int(details["term_before"])  # type: ignore[call-overload]

    before_verify(schedule, "transfer", paused_and_stale)
    asyncio.run(schedule.start("transfer"))
    assert _evidence(schedule, "start")["status"] == "unverified"


def test_a_kind_without_a_verifier_is_unverified() -> None:
    """A new fault kind (a clock fault, say) must bring its own verifier."""

    class Silent(Fault):
        kind = group = "silent"

        async def start(self, env: Env) -> dict[str, object]:
            return {}

        async def stop(self, env: Env) -> dict[str, object]:
            return {}

    schedule = Schedule(
        ["silent"], make_env(), interval=0.02, clock_ns=lambda: 0, faults={"silent": Silent()}
    )
    asyncio.run(schedule.start("silent"))
    assert _evidence(schedule, "start")["status"] == "unverified"
    assert verification(schedule.timeline)["valid"] is None


# ---- --nemesis all: the combined schedule ----------------------------------------------------


def test_all_parses_to_every_kind_and_asks_for_the_combined_schedule() -> None:
    assert parse_nemesis("all") == list(FAULTS)
    assert combined("all") and combined("partition, all") and not combined("partition,kill")


def _overlaps(schedule: Schedule) -> tuple[int, dict[str, int]]:
    """(most faults in force at once, most of one group in force at once)."""
    group_of = {k: FAULTS[k]().group for k in FAULTS}
    active: dict[int, str] = {}
    most, per_group = 0, dict.fromkeys(set(group_of.values()), 0)
    for e in schedule.timeline:
        if e.event == "start":
            active[e.fault] = e.kind  # type: ignore[index]
        elif e.event in ("stop", "error"):
            active.pop(e.fault, None)  # type: ignore[arg-type]
        most = max(most, len(active))
        for g in per_group:
            per_group[g] = max(per_group[g], sum(1 for k in active.values() if group_of[k] == g))
    return most, per_group


def test_combined_faults_overlap_one_per_group_and_end_healed() -> None:
    schedule = make_schedule(parse_nemesis("all"), interval=0.03, combined=True)
    run_schedule(schedule, 1.0)
    most, per_group = _overlaps(schedule)
    assert most >= 2, "faults of different groups overlap"
    assert max(per_group.values()) == 1, per_group
    assert healed(schedule.env)
    assert schedule.timeline[-1].event == "heal"
    assert {e.kind for e in schedule.timeline if e.event == "start"} >= {
        "latency",
        "drop",
        "transfer",
        "membership",
    }
    assert verification(schedule.timeline)["valid"] is True, verification(schedule.timeline)


def test_combined_draws_come_from_the_seed() -> None:
    def draws() -> dict[str, list[str]]:
        schedule = make_schedule(parse_nemesis("all"), interval=0.03, combined=True)
        run_schedule(schedule, 0.6)
        out: dict[str, list[str]] = {}
        for e in schedule.timeline:
            if e.event == "start":
                out.setdefault(FAULTS[e.kind]().group, []).append(e.kind)
        return out

    first, second = draws(), draws()
    # Timing decides how many windows each group gets; the seed decides which kinds.
    for group in first.keys() & second.keys():
        n = min(len(first[group]), len(second[group]))
        assert first[group][:n] == second[group][:n], group
