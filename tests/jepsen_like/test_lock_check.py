"""The lock checker: for every anomaly kind a hand-made history that shows it beside a
minimally different one that passes; generated correct executions (a serial lock store
with leases that expire under stalled holders, clients overlapping in real time) always
pass, and a single random corruption, or a store that lets one lease-expired holder's
write through, is always caught; and a timing run on 50,000 fenced writes."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like.history import Record, RecordType, pair_operations
from jepsen_like.lock_check import LOCK_ANOMALY_KINDS, MAX_EXAMPLES, LockResult, check_lock

pytestmark = pytest.mark.timeout(120)

L = "lock/0"


class H:
    """A history builder. ``inv``/``done`` record one half of an operation (10 ns after
    the previous record); the other helpers record both halves at once."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.t = 0

    def inv(self, p: int, f: str, value: Any, lock: str = L) -> H:
        return self._rec(p, RecordType.INVOKE, f, value, lock)

    def done(self, p: int, f: str, outcome: str, value: Any, lock: str = L) -> H:
        return self._rec(p, RecordType(outcome), f, value, lock)

    def _rec(self, p: int, rtype: RecordType, f: str, value: Any, lock: str) -> H:
        self.t += 10
        self.records.append(Record(process=p, type=rtype, f=f, key=lock, value=value, time=self.t))
        return self

    def acquire(self, p: int, token: int | None, outcome: str = "ok", lock: str = L) -> H:
        self.inv(p, "acquire", None, lock)
        return self if outcome == "pending" else self.done(p, "acquire", outcome, token, lock)

    def fenced(
        self, p: int, token: int, phase: str, rev: int | None, outcome: str = "ok", lock: str = L
    ) -> H:
        self.inv(p, "fenced", [token, phase], lock)
        if outcome == "pending":
            return self
        value = [token, phase, rev] if outcome == "ok" else [token, phase]
        return self.done(p, "fenced", outcome, value, lock)

    def release(self, p: int, token: int, outcome: str = "ok", lock: str = L) -> H:
        self.inv(p, "release", token, lock)
        return self if outcome == "pending" else self.done(p, "release", outcome, token, lock)

    def resource(self, p: int, entries: list[Any] | None, lock: str = L) -> H:
        self.inv(p, "resource", None, lock)
        if entries is None:
            return self.done(p, "resource", "fail", None, lock)
        return self.done(p, "resource", "ok", [list(e) for e in entries], lock)

    def holder(self, p: int, token: int, enter: int, exit_: int, lock: str = L) -> H:
        """A whole, undisturbed critical section."""
        self.acquire(p, token, lock=lock).fenced(p, token, "enter", enter, lock=lock)
        return self.fenced(p, token, "exit", exit_, lock=lock).release(p, token, lock=lock)

    def check(self) -> LockResult:
        result = check_lock(pair_operations(self.records))
        json.dumps(result.to_json())  # always JSON-able
        assert result.explain()
        return result


BASE_LOG = [(2, 1, "enter"), (3, 1, "exit"), (6, 5, "enter"), (7, 5, "exit")]


def base() -> H:
    """Two holders one after the other: tokens 1 and 5 (release deletes at 4 and 8)."""
    return H().holder(1, 1, 2, 3).holder(2, 5, 6, 7)


def kinds(result: LockResult) -> set[str]:
    return set(result.anomaly_counts)


def assert_only(result: LockResult, *expected: str) -> None:
    assert result.valid is False
    assert kinds(result) == set(expected), result.explain()
    for kind in expected:
        assert result.anomalies[kind][0]["explanation"]


# ---- valid runs ----------------------------------------------------------------------


def test_the_base_run_is_valid() -> None:
    result = base().resource(9, BASE_LOG).check()
    assert result.valid is True, result.explain()
    (summary,) = result.locks
    assert (summary.acquires_ok, summary.fenced_ok, summary.releases_ok) == (2, 4, 2)
    assert (summary.holders, summary.resource_read, summary.resource_entries) == (2, True, 4)
    assert result.to_json()["locks"][0]["lock"] == L


def test_failed_acquires_and_a_stalled_holder_whose_fence_held() -> None:
    h = H().acquire(1, 1).fenced(1, 1, "enter", 2)  # p1 stalls; its lease expires (3)
    h.acquire(3, None, "fail")  # (before the expiry)
    h.acquire(2, 4).fenced(2, 4, "enter", 5)
    h.fenced(1, 1, "exit", None, "fail").release(1, 1, "fail")  # p1 wakes: fenced out
    h.fenced(2, 4, "exit", 6).release(2, 4)
    result = h.resource(9, [(2, 1, "enter"), (5, 4, "enter"), (6, 4, "exit")]).check()
    assert result.valid is True, result.explain()


def test_unknown_fenced_writes_may_or_may_not_be_logged() -> None:
    h = H().acquire(1, 1).fenced(1, 1, "enter", None, "info")
    h.acquire(2, 4).fenced(2, 4, "enter", 5).fenced(2, 4, "exit", 6).release(2, 4)
    with_it = [(2, 1, "enter"), (5, 4, "enter"), (6, 4, "exit")]
    assert h.resource(9, with_it).check().valid is True
    h.resource(10, with_it[1:])  # a later read without it is the one used
    assert h.check().valid is True


def test_locks_are_checked_independently() -> None:
    h = H().acquire(1, 1).acquire(2, 2, lock="lock/1")  # both held at once: different locks
    h.release(1, 1).release(2, 2, lock="lock/1")
    h.resource(9, []).resource(9, [], lock="lock/1")
    result = h.check()
    assert result.valid is True and len(result.locks) == 2


def test_no_final_read_gives_no_verdict_unless_something_is_wrong() -> None:
    assert base().check().valid is None
    assert base().resource(9, None).check().valid is None
    h = base().acquire(3, 3)  # after token 5: token-order, with or without a read
    assert h.check().valid is False


def test_no_lock_operations_give_no_verdict() -> None:
    assert H().check().valid is None


# ---- one anomaly kind at a time, each beside its valid twin --------------------------


def test_duplicate_token() -> None:
    def run(second: str) -> LockResult:
        h = H().inv(1, "acquire", None).inv(2, "acquire", None)
        h.done(1, "acquire", "ok", 7).done(2, "acquire", second, 7 if second == "ok" else None)
        return h.resource(9, []).check()

    assert run("fail").valid is True
    result = run("ok")
    assert_only(result, "duplicate-token")
    example = result.anomalies["duplicate-token"][0]
    assert example["token"] == 7 and len(example["acquires"]) == 2


def test_token_order() -> None:
    def run(second: int) -> LockResult:
        h = H().holder(1, 5, 6, 7)
        h.acquire(2, second).release(2, second)  # a later holder, writing nothing
        return h.resource(9, [(6, 5, "enter"), (7, 5, "exit")]).check()

    assert run(9).valid is True
    result = run(3)  # a later holder got an older token
    assert_only(result, "token-order")
    example = result.anomalies["token-order"][0]
    assert (example["earlier"]["token"], example["later"]["token"]) == (5, 3)


def test_token_order_needs_real_time_precedence() -> None:
    h = H().inv(1, "acquire", None).inv(2, "acquire", None)
    h.done(2, "acquire", "ok", 5).done(1, "acquire", "ok", 3)  # concurrent: either order
    h.release(2, 5, "fail").release(1, 3, "fail")
    assert h.resource(9, []).check().valid is True


def test_overlap() -> None:
    def run(first_release: str) -> LockResult:
        h = H().acquire(1, 1)  # p1 holds from t=20
        h.acquire(2, 2)  # p2 "acquires" at t=40, while p1 still holds
        h.release(1, 1, first_release).release(2, 2)
        return h.resource(9, []).check()

    assert run("fail").valid is True  # p1 had lost the lock before p2 got it: fine
    result = run("ok")
    assert_only(result, "overlap")
    example = result.anomalies["overlap"][0]
    assert [s["token"] for s in example["holders"]] == [1, 2]
    assert "process 1" in example["explanation"] and "process 2" in example["explanation"]


def test_touching_holds_do_not_overlap() -> None:
    def run(gap: int) -> LockResult:
        h = H()
        h.records = [
            Record(process=1, type=RecordType.INVOKE, f="acquire", key=L, value=None, time=0),
            Record(process=1, type=RecordType.OK, f="acquire", key=L, value=1, time=10),
            Record(process=2, type=RecordType.INVOKE, f="acquire", key=L, value=None, time=15),
            Record(process=1, type=RecordType.INVOKE, f="release", key=L, value=1, time=50),
            Record(process=2, type=RecordType.OK, f="acquire", key=L, value=2, time=50 - gap),
            Record(process=1, type=RecordType.OK, f="release", key=L, value=1, time=60),
            Record(process=2, type=RecordType.INVOKE, f="release", key=L, value=2, time=70),
            Record(process=2, type=RecordType.OK, f="release", key=L, value=2, time=80),
        ]
        h.records.sort(key=lambda r: r.time)
        return h.resource(9, []).check()

    assert run(0).valid is True  # p2's acquire returned as p1's release began
    assert_only(run(1), "overlap")


def test_stale_fenced_write() -> None:
    def run(exit_outcome: str) -> LockResult:
        h = H().acquire(1, 1).fenced(1, 1, "enter", 2)  # then p1 stalls; lease expires (3)
        h.acquire(2, 4)  # p2 gets the lock and does not write yet
        h.fenced(1, 1, "exit", 5 if exit_outcome == "ok" else None, exit_outcome)
        log = [(2, 1, "enter")] + ([(5, 1, "exit")] if exit_outcome == "ok" else [])
        return h.release(2, 4, "info").resource(9, log).check()

    assert run("fail").valid is True
    result = run("ok")
    assert_only(result, "stale-fenced-write")
    example = result.anomalies["stale-fenced-write"][0]
    assert (example["token"], example["newer_token"], example["revision"]) == (1, 4, 5)


def test_fence_violation_a_stale_token_writes_after_a_newer_one() -> None:
    def run(log: list[tuple[int, int, str]]) -> LockResult:
        h = H().acquire(1, 1).fenced(1, 1, "enter", 2).inv(1, "fenced", [1, "exit"])
        h.acquire(2, 4).fenced(2, 4, "enter", 5)
        h.done(1, "fenced", "info", [1, "exit"])  # p1's exit: unknown, in flight throughout
        return h.resource(9, log).check()

    assert run([(2, 1, "enter"), (3, 1, "exit"), (5, 4, "enter")]).valid is True
    assert run([(2, 1, "enter"), (5, 4, "enter")]).valid is True
    result = run([(2, 1, "enter"), (5, 4, "enter"), (6, 1, "exit")])
    assert_only(result, "fence-violation")
    example = result.anomalies["fence-violation"][0]
    assert example["entry"] == [6, 1, "exit"]
    assert "token 4 had already written" in example["explanation"]


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        ([(3, 1, "exit")], "never wrote 'enter'"),
        ([(2, 1, "enter"), (3, 1, "enter")], "had already written 'enter'"),
        ([(2, 1, "enter"), (3, 1, "exit"), (4, 1, "exit")], "had already written 'exit'"),
        ([(2, 1, "enter"), (3, 1, "exit"), (4, 1, "enter")], "had already written 'exit'"),
        ([(1, 1, "enter")], "not after its lock key's creation"),
        ([(3, 1, "enter"), (2, 1, "exit")], "does not follow revision 3"),
        ([(2, 1, "enter"), (2, 1, "exit")], "does not follow revision 2"),
    ],
)
def test_fence_violation_shapes(log: list[tuple[int, int, str]], reason: str) -> None:
    h = H().acquire(1, 1).fenced(1, 1, "enter", None, "info")
    h.fenced(2, 1, "exit", None, "info")  # unknown ops explain any entry of token 1
    assert h.resource(9, [(2, 1, "enter"), (3, 1, "exit")]).check().valid is True
    h = H().acquire(1, 1).fenced(1, 1, "enter", None, "info")
    result = h.fenced(2, 1, "exit", None, "info").resource(9, log).check()
    assert_only(result, "fence-violation")
    assert reason in result.anomalies["fence-violation"][0]["explanation"]


def test_missing_fenced_write() -> None:
    assert base().resource(9, BASE_LOG).check().valid is True
    lost = base().resource(9, [e for e in BASE_LOG if e != (3, 1, "exit")]).check()
    assert_only(lost, "missing-fenced-write")
    assert lost.anomalies["missing-fenced-write"][0]["entry"] == [3, 1, "exit"]
    moved = base().resource(9, [(2, 1, "enter"), (4, 1, "exit"), *BASE_LOG[2:]]).check()
    assert_only(moved, "missing-fenced-write")
    assert "revision(s) [4] instead" in moved.anomalies["missing-fenced-write"][0]["explanation"]


def test_phantom_fenced_write() -> None:
    def run(outcome: str | None) -> LockResult:
        h = base().acquire(3, 9)
        if outcome is not None:
            h.fenced(3, 9, "enter", None, outcome)
        return h.release(3, 9).resource(10, [*BASE_LOG, (10, 9, "enter")]).check()

    assert run("info").valid is True
    invented = run(None)
    assert_only(invented, "phantom-fenced-write")
    assert (
        "no fenced 'enter' write with token 9"
        in (invented.anomalies["phantom-fenced-write"][0]["explanation"])
    )
    rejected = run("fail")
    assert_only(rejected, "phantom-fenced-write")
    assert rejected.anomalies["phantom-fenced-write"][0]["process"] == 3


def test_examples_are_capped_but_counts_are_true() -> None:
    h = H()
    for p in range(30):
        h.inv(p, "acquire", None)
    for p in range(30):
        h.done(p, "acquire", "ok", 1)
    result = h.resource(99, []).check()
    assert result.anomaly_counts == {"duplicate-token": 1}
    h = H().acquire(0, 100).release(0, 100)
    for p in range(1, 31):
        h.acquire(p, p).release(p, p, "fail")
    result = h.resource(99, []).check()
    assert result.anomaly_counts == {"token-order": 30}
    assert len(result.anomalies["token-order"]) == MAX_EXAMPLES


def test_malformed_values_are_noted_not_judged() -> None:
    h = base().resource(9, [*BASE_LOG, ["x"]])
    h.inv(5, "fenced", "nonsense").done(5, "fenced", "fail", "nonsense")
    result = h.check()
    assert result.valid is True
    assert any("malformed" in n for n in result.notes)


# ---- generated executions ------------------------------------------------------------


@dataclass
class Step:
    """One thing that takes effect at one instant: an operation, or a store event."""

    process: int | None  # None: the store alone (a lease expiring), or a pause
    f: str = ""
    lock: str = ""
    invoke: Any = None
    outcome: RecordType | None = None  # None: no completion recorded (unknown)
    value: Any = None


@dataclass
class LockRun:
    records: list[tuple[int, int, Record]] = field(default_factory=list)
    acquired: dict[str, list[int]] = field(default_factory=dict)  # lock -> ok acquire indices
    reads: dict[str, int] = field(default_factory=dict)  # lock -> its ok resource read index
    logs: dict[str, list[list[Any]]] = field(default_factory=dict)
    written: set[tuple[str, int, str]] = field(default_factory=set)  # ok fenced: lock, t, ph
    stale_applied: bool = False

    def add(self, t: int, rec: Record) -> int:
        self.records.append((t, len(self.records), rec))
        return len(self.records) - 1

    def history(self) -> list[Record]:
        return [r for _, _, r in sorted(self.records, key=lambda x: (x[0], x[1]))]


class Store:
    """A serial lock store with the fault a stalled holder meets: its lease expires."""

    def __init__(self, rng: random.Random, locks: int, let_stale_through: bool) -> None:
        self.rng = rng
        self.rev = 0
        self.names = [f"lock/{i}" for i in range(locks)]
        self.holder: dict[str, int | None] = dict.fromkeys(self.names)
        self.log: dict[str, list[list[Any]]] = {n: [] for n in self.names}
        self.let_stale_through = let_stale_through  # the bug: one expired holder's write
        self.stale_applied = False
        self.spawned: list[Iterator[Step]] = []  # lease expiries the scheduler must run

    def write(self, lock: str, token: int, phase: str) -> int:
        self.rev += 1
        self.log[lock].append([self.rev, token, phase])
        return self.rev

    def expire_later(self, lock: str, token: int) -> Iterator[Step]:
        """A lease of a holder that went away: it expires after a while."""
        for _ in range(self.rng.randint(0, 6)):
            yield Step(None)
        if self.holder[lock] == token:
            self.rev += 1
            self.holder[lock] = None
        yield Step(None)

    def session(self, p: int, lock: str, clean: bool) -> Iterator[Step]:
        """One client's attempt: acquire, enter, maybe stall, exit, release."""
        rng = self.rng

        def unknown() -> bool:
            return not clean and rng.random() < 0.05

        if self.holder[lock] is not None:
            yield Step(p, "acquire", lock, None, RecordType.FAIL, None)
            return
        if unknown():
            if rng.random() < 0.5:
                self.rev += 1
                self.holder[lock] = self.rev
                self.spawned.append(self.expire_later(lock, self.rev))
            yield Step(p, "acquire", lock, None, None)
            return
        self.rev += 1
        token = self.holder[lock] = self.rev
        yield Step(p, "acquire", lock, None, RecordType.OK, token)

        entered = False
        if not clean and rng.random() < 0.05:  # a definite error: not applied
            yield Step(p, "fenced", lock, [token, "enter"], RecordType.FAIL, [token, "enter"])
        elif unknown():
            if rng.random() < 0.5:
                self.write(lock, token, "enter")
            self.spawned.append(self.expire_later(lock, token))
            yield Step(p, "fenced", lock, [token, "enter"], None)
            return
        else:
            rev = self.write(lock, token, "enter")
            yield Step(p, "fenced", lock, [token, "enter"], RecordType.OK, [token, "enter", rev])
            entered = True

        if entered and not clean and rng.random() < 0.25:  # a stall outlives the lease
            for _ in range(rng.randint(0, 3)):
                yield Step(None)
            self.rev += 1  # the lease expires: the store deletes the lock key
            self.holder[lock] = None
            yield Step(None)
            for _ in range(rng.randint(0, 12)):
                yield Step(None)

        if entered:
            newer = any(e[1] > token for e in self.log[lock])
            if self.holder[lock] == token:
                if unknown():
                    if rng.random() < 0.5:
                        self.write(lock, token, "exit")
                    self.spawned.append(self.expire_later(lock, token))
                    yield Step(p, "fenced", lock, [token, "exit"], None)
                    return
                rev = self.write(lock, token, "exit")
                yield Step(p, "fenced", lock, [token, "exit"], RecordType.OK, [token, "exit", rev])
            elif self.let_stale_through and not self.stale_applied and newer:
                self.stale_applied = True  # the bug: the fence let it through
                rev = self.write(lock, token, "exit")
                yield Step(p, "fenced", lock, [token, "exit"], RecordType.OK, [token, "exit", rev])
            else:
                yield Step(p, "fenced", lock, [token, "exit"], RecordType.FAIL, [token, "exit"])

        if unknown():
            if self.holder[lock] == token and rng.random() < 0.5:
                self.rev += 1
                self.holder[lock] = None
            elif self.holder[lock] == token:
                self.spawned.append(self.expire_later(lock, token))
            yield Step(p, "release", lock, token, None)
            return
        if self.holder[lock] == token:
            self.rev += 1
            self.holder[lock] = None
            yield Step(p, "release", lock, token, RecordType.OK, token)
        else:
            yield Step(p, "release", lock, token, RecordType.FAIL, token)


def simulate_locks(rng: random.Random, locks: int, let_stale_through: bool = False) -> LockRun:
    store = Store(rng, locks, let_stale_through)
    actors: list[tuple[int | None, Iterator[Step]]] = []
    idle: list[int] = []
    next_process = 0
    steps: list[tuple[int, Step]] = []
    sessions = rng.randint(1, 40)
    tick = 0
    while sessions or actors:
        if sessions and (not actors or rng.random() < 0.3):
            sessions -= 1
            if idle and rng.random() < 0.7:
                p = idle.pop(rng.randrange(len(idle)))
            else:
                p, next_process = next_process, next_process + 1
            clean = not steps  # sessions begun before anything happened run undisturbed
            actors.append((p, store.session(p, rng.choice(store.names), clean)))
        n = rng.randrange(len(actors))
        owner, actor = actors[n]
        step = next(actor, None)
        actors += [(None, expiry) for expiry in store.spawned]
        store.spawned.clear()
        if step is None:
            actors.pop(n)
            if owner is not None:
                idle.append(owner)
            continue
        tick += 1
        steps.append((tick, step))
        if step.process is not None and step.outcome is None:
            actors[n] = (None, actor)  # unknown outcome: the process retires for good

    run = LockRun()
    by_process: dict[int, list[int]] = {}
    for tick, step in steps:
        if step.process is not None:
            by_process.setdefault(step.process, []).append(tick * 1000)
    bounds: dict[tuple[int, int], tuple[int, int]] = {}
    for p, effects in by_process.items():
        for i, e in enumerate(effects):
            before = (e - effects[i - 1]) // 2 - 1 if i else 5000
            after = (effects[i + 1] - e) // 2 - 1 if i + 1 < len(effects) else 5000
            bounds[(p, e)] = (
                e - rng.randint(0, min(5000, before)),
                e + rng.randint(0, min(5000, after)),
            )
    for tick, step in steps:
        if step.process is None:
            continue
        call, ret = bounds[(step.process, tick * 1000)]
        run.add(
            call,
            Record(
                process=step.process,
                type=RecordType.INVOKE,
                f=step.f,
                key=step.lock,
                value=step.invoke,
                time=call,
            ),
        )
        if step.outcome is None:
            if rng.random() < 0.5:
                run.add(
                    ret,
                    Record(
                        process=step.process,
                        type=RecordType.INFO,
                        f=step.f,
                        key=step.lock,
                        value=step.invoke,
                        time=ret,
                    ),
                )
            continue
        index = run.add(
            ret,
            Record(
                process=step.process,
                type=step.outcome,
                f=step.f,
                key=step.lock,
                value=step.value,
                time=ret,
            ),
        )
        if step.outcome is RecordType.OK and step.f == "acquire":
            run.acquired.setdefault(step.lock, []).append(index)
        if step.outcome is RecordType.OK and step.f == "fenced":
            run.written.add((step.lock, step.value[0], step.value[1]))
    end = (tick + 10) * 1000
    for n, lock in enumerate(store.names):
        p = 10_000 + n
        t = end + 100 * n
        run.add(
            t, Record(process=p, type=RecordType.INVOKE, f="resource", key=lock, value=None, time=t)
        )
        log = store.log[lock]
        run.reads[lock] = run.add(
            t + 50,
            Record(process=p, type=RecordType.OK, f="resource", key=lock, value=log, time=t + 50),
        )
        run.logs[lock] = log
    run.stale_applied = store.stale_applied
    return run


def corrupt(run: LockRun, rng: random.Random) -> str:
    """One random corruption a correct store could never produce; returns its name."""
    written = [
        (lock, n)
        for lock, log in run.logs.items()
        for n, (_, token, phase) in enumerate(log)
        if (lock, token, phase) in run.written
    ]
    entries = [(lock, n) for lock, log in run.logs.items() for n in range(len(log))]
    pairs = [(lock, n) for lock, n in entries if n + 1 < len(run.logs[lock])]
    options = ["shift-token", "drop-entry"] if written else []
    options += ["duplicate-entry"] if entries else []
    options += ["swap-entries"] if pairs else []
    options += ["reused-token"] if any(len(v) > 1 for v in run.acquired.values()) else []
    what = rng.choice(options)
    if what == "reused-token":
        lock = rng.choice([k for k, v in run.acquired.items() if len(v) > 1])
        earlier, later = sorted(rng.sample(run.acquired[lock], 2))
        t, seq, rec = run.records[later]
        token = run.records[earlier][2].value
        run.records[later] = (t, seq, Record(**{**rec.to_json(), "type": rec.type, "value": token}))
        return what
    if what in ("shift-token", "drop-entry"):
        lock, n = rng.choice(written)
    elif what == "swap-entries":
        lock, n = rng.choice(pairs)
    else:
        lock, n = rng.choice(entries)
    log = [list(e) for e in run.logs[lock]]
    if what == "shift-token":
        log[n][1] += rng.choice([-2, -1, 1, 2])
    elif what == "drop-entry":
        del log[n]
    elif what == "duplicate-entry":
        log.insert(n, list(log[n]))
    else:
        log[n], log[n + 1] = log[n + 1], log[n]
    t, seq, rec = run.records[run.reads[lock]]
    run.records[run.reads[lock]] = (
        t,
        seq,
        Record(**{**rec.to_json(), "type": rec.type, "value": log}),
    )
    return what


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_generated_correct_runs_are_valid(seed: int, locks: int) -> None:
    run = simulate_locks(random.Random(seed), locks)
    result = check_lock(pair_operations(run.history()))
    assert result.valid is True, result.explain()


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_any_single_corruption_is_caught(seed: int, locks: int) -> None:
    rng = random.Random(seed)
    run = simulate_locks(rng, locks)
    what = corrupt(run, rng)
    result = check_lock(pair_operations(run.history()))
    assert result.valid is False, f"{what} went unnoticed:\n{result.explain()}"
    assert set(result.anomaly_counts) <= set(LOCK_ANOMALY_KINDS)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_a_lease_expired_holder_writing_is_caught(seed: int, locks: int) -> None:
    run = simulate_locks(random.Random(seed), locks, let_stale_through=True)
    result = check_lock(pair_operations(run.history()))
    if run.stale_applied:
        assert result.valid is False, result.explain()
        assert "fence-violation" in result.anomaly_counts
    else:  # no stalled holder woke after a newer one wrote: the bug never fired
        assert result.valid is True, result.explain()


# ---- speed ---------------------------------------------------------------------------


def test_fifty_thousand_fenced_writes_check_quickly() -> None:
    records: list[Record] = []
    log: list[list[Any]] = []
    t = 0

    def op(p: int, f: str, invoke: Any, value: Any) -> None:
        nonlocal t
        records.append(Record(process=p, type=RecordType.INVOKE, f=f, key=L, value=invoke, time=t))
        records.append(Record(process=p, type=RecordType.OK, f=f, key=L, value=value, time=t + 5))
        t += 10

    rev = 0
    for n in range(25_000):
        p = n % 64
        token = rev = rev + 1
        op(p, "acquire", None, token)
        for phase in ("enter", "exit"):
            rev += 1
            op(p, "fenced", [token, phase], [token, phase, rev])
            log.append([rev, token, phase])
        op(p, "release", token, token)
        rev += 1
    op(999, "resource", None, log)
    ops = pair_operations(records)
    started = time.perf_counter()
    result = check_lock(ops)
    elapsed = time.perf_counter() - started
    assert result.valid is True and result.resource_entries == 50_000
    print(
        f"\ncheck_lock: {result.resource_entries} fenced writes, {len(ops)} ops in {elapsed:.3f}s"
    )
