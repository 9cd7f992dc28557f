"""The watch checker: for every anomaly kind a hand-made history that shows it beside a
minimally different one that passes; generated correct executions (a serial store,
overlapping writers, watchers reconnecting at random points) always pass, and a single
random corruption of one is always caught; and a timing run on 50,000 events."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like.history import Operation, Record, RecordType, pair_operations
from jepsen_like.watch_check import MAX_EXAMPLES, WATCH_ANOMALY_KINDS, WatchResult, check_watch

pytestmark = pytest.mark.timeout(120)

Ev = tuple[int, str, str, Any]  # [revision, type, key, value]


class H:
    """A history builder: each call records an invoke and its completion (10 ns apart)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.t = 0

    def rec(self, p: int, rtype: RecordType, f: str, key: str, value: Any) -> H:
        self.t += 10
        self.records.append(Record(process=p, type=rtype, f=f, key=key, value=value, time=self.t))
        return self

    def put(self, p: int, key: str, v: Any, rev: int | None = None, outcome: str = "ok") -> H:
        self.rec(p, RecordType.INVOKE, "put", key, v)
        if outcome == "ok":
            assert rev is not None
            return self.rec(p, RecordType.OK, "put", key, [v, rev])
        if outcome == "pending":
            return self
        return self.rec(p, RecordType(outcome), "put", key, v)

    def watch(
        self,
        p: int,
        name: str,
        frm: int,
        events: list[Ev] | None = None,
        outcome: str = "ok",
        error: str = "unavailable: no leader",
    ) -> H:
        self.rec(p, RecordType.INVOKE, "watch", name, {"from": frm})
        if outcome == "ok":
            evs = [list(e) for e in events or []]
            return self.rec(
                p, RecordType.OK, "watch", name, {"from": frm, "events": evs, "end": "closed"}
            )
        if outcome == "fail":
            return self.rec(p, RecordType.FAIL, "watch", name, {"from": frm, "error": error})
        return self.rec(p, RecordType.INFO, "watch", name, {"from": frm})

    def head(self, p: int, rev: int | None) -> H:
        self.rec(p, RecordType.INVOKE, "head", "", None)
        if rev is None:
            return self.rec(p, RecordType.FAIL, "head", "", None)
        return self.rec(p, RecordType.OK, "head", "", rev)

    def ops(self) -> list[Operation]:
        return pair_operations(self.records)

    def check(self) -> WatchResult:
        result = check_watch(self.ops())
        json.dumps(result.to_json())  # always JSON-able
        assert result.explain()
        return result


# The base run: three puts, revisions 1..3; n1 reconnects once, n2 never.
E1: Ev = (1, "put", "watch/1", 1)
E2: Ev = (2, "put", "watch/2", 1)
E3: Ev = (3, "put", "watch/1", 2)


def writes(h: H) -> H:
    return h.put(0, "watch/1", 1, 1).put(1, "watch/2", 1, 2).put(0, "watch/1", 2, 3)


def base(
    n1: list[tuple[int, list[Ev]]] | None = None,
    n2: list[Ev] | None = None,
    head: int | None = 3,
) -> H:
    h = writes(H())
    for i, (frm, events) in enumerate(n1 if n1 is not None else [(1, [E1, E2]), (3, [E3])]):
        h.watch(10 + i, "n1", frm, events)
    h.watch(20, "n2", 1, [E1, E2, E3] if n2 is None else n2)
    return h.head(30, head)


def kinds(result: WatchResult) -> set[str]:
    return set(result.anomaly_counts)


def assert_only(result: WatchResult, *expected: str) -> None:
    assert result.valid is False
    assert kinds(result) == set(expected), result.explain()
    for kind in expected:
        example = result.anomalies[kind][0]
        assert isinstance(example["explanation"], str) and example["explanation"]


# ---- valid runs ----------------------------------------------------------------------


def test_the_base_run_is_valid_with_coverage_reported() -> None:
    result = base().check()
    assert result.valid is True, result.explain()
    assert result.anomalies == {} and result.anomaly_counts == {}
    assert (result.puts_ok, result.head, result.revisions_observed) == (3, 3, 3)
    assert result.events_delivered == 6
    n1, n2 = result.watchers
    assert (n1.name, n1.segments, n1.start, n1.first, n1.last, n1.caught_up) == (
        "n1",
        2,
        1,
        1,
        3,
        True,
    )
    assert (n2.segments, n2.events, n2.revisions) == (1, 3, 3)
    assert result.to_json()["watchers"][0]["last"] == 3


def test_identical_redelivery_failed_and_unknown_segments_are_harmless() -> None:
    h = writes(H())
    h.watch(10, "n1", 1, [E1, E2])
    h.watch(11, "n1", 3, outcome="fail")
    h.watch(12, "n1", 3, outcome="info")
    h.watch(13, "n1", 2, [E2, E3])  # rewound: revision 2 again, identically
    h.watch(20, "n2", 1, [E1, E2, E3])
    result = h.head(30, 3).check()
    assert result.valid is True, result.explain()
    assert result.watchers[0].failed_segments == result.watchers[0].unknown_segments == 1


def test_multi_event_revisions_in_either_order_and_string_values() -> None:
    h = writes(H()).put(2, "watch/3", 7, 4).put(3, "watch/4", 7, 4)
    txn = [(4, "put", "watch/3", "7"), (4, "put", "watch/4", 7)]
    h.watch(10, "n1", 1, [E1, E2, E3, *txn])
    h.watch(20, "n2", 1, [E1, E2, E3, *reversed(txn)])
    result = h.head(30, 4).check()
    assert result.valid is True, result.explain()


def test_a_watcher_starting_later_covers_only_from_its_start() -> None:
    result = base(n1=[(2, [E2, E3])]).check()
    assert result.valid is True, result.explain()
    assert result.watchers[0].start == 2


def test_no_head_read_gives_no_verdict_unless_something_is_wrong() -> None:
    assert base(head=None).check().valid is None
    wrong = base(n2=[E1, E3], head=None).check()
    assert wrong.valid is False and "revision-gap" in kinds(wrong)


def test_no_watch_at_all_gives_no_verdict() -> None:
    result = writes(H()).head(30, 3).check()
    assert result.valid is None
    assert any("no watch segment" in n for n in result.notes)


def test_other_functions_are_ignored() -> None:
    h = base()
    h.rec(40, RecordType.INVOKE, "read", "watch/1", None)
    h.rec(40, RecordType.OK, "read", "watch/1", 5)
    assert h.check().valid is True


# ---- one anomaly kind at a time, each beside its valid twin --------------------------


def test_resume_gap() -> None:
    assert base(n1=[(1, [E1]), (2, [E2, E3])]).check().valid is True
    result = base(n1=[(1, [E1]), (3, [E3])]).check()
    # Skipping revision 2 also leaves a hole in n1's stream where a put was acknowledged.
    assert_only(result, "resume-gap", "revision-gap", "missing-write")
    example = result.anomalies["resume-gap"][0]
    assert (example["watcher"], example["from"], example["skipped"]) == ("n1", 3, [2, 2])
    assert "process 11" in example["explanation"]


def test_resume_gap_after_an_empty_first_segment() -> None:
    assert base(n1=[(1, []), (1, [E1, E2, E3])]).check().valid is True
    result = base(n1=[(1, []), (2, [E2, E3])]).check()
    assert "resume-gap" in kinds(result) and "revision-gap" in kinds(result)


def test_out_of_order_within_a_segment() -> None:
    assert base(n2=[E1, E2, E3]).check().valid is True
    result = base(n2=[E2, E1, E3]).check()
    assert "out-of-order" in kinds(result) and result.valid is False
    assert result.anomalies["out-of-order"][0]["revision"] == 1


def test_non_contiguous_events_of_one_revision_are_out_of_order() -> None:
    h = writes(H()).put(2, "watch/3", 7, 4).put(3, "watch/4", 7, 4)
    a, b = (4, "put", "watch/3", 7), (4, "put", "watch/4", 7)
    h.watch(10, "n1", 1, [E1, E2, E3, a, b])
    h.watch(20, "n2", 1, [E1, E2, E3, a, b])
    assert h.head(30, 4).check().valid is True
    h = writes(H()).put(2, "watch/3", 7, 4).put(3, "watch/4", 7, 4).put(4, "watch/2", 2, 5)
    e5 = (5, "put", "watch/2", 2)
    h.watch(10, "n1", 1, [E1, E2, E3, a, e5, b])
    h.watch(20, "n2", 1, [E1, E2, E3, a, b, e5])
    result = h.head(30, 5).check()
    assert result.valid is False and "out-of-order" in kinds(result)


def test_out_of_order_event_before_the_segment_start() -> None:
    assert base(n1=[(1, [E1, E2]), (2, [E2, E3])]).check().valid is True
    result = base(n1=[(1, [E1, E2]), (3, [E2, E3])]).check()
    assert_only(result, "out-of-order")
    assert "before its start" in result.anomalies["out-of-order"][0]["explanation"]


def test_out_of_order_redelivery_with_different_events() -> None:
    h = writes(H()).put(2, "watch/3", 7, outcome="info")
    h.watch(10, "n1", 1, [E1, E2])
    h.watch(11, "n1", 2, [(2, "put", "watch/3", 7), E3])  # revision 2 again, differently
    h.watch(20, "n2", 1, [E1, E2, E3])
    result = h.head(30, 3).check()
    assert_only(result, "out-of-order")
    example = result.anomalies["out-of-order"][0]
    assert example["revision"] == 2 and example["earlier_line"] < example["line"]


def test_stream_gap_inside_a_segment_even_if_delivered_elsewhere() -> None:
    assert base(n1=[(1, [E1, E2, E3]), (1, [E1, E2, E3])]).check().valid is True
    result = base(n1=[(1, [E1, E2, E3]), (1, [E1, E3])]).check()
    assert_only(result, "stream-gap")
    assert result.anomalies["stream-gap"][0]["skipped"] == [2, 2]
    first_late = base(n1=[(1, [E1, E2, E3]), (1, [E2, E3])]).check()
    assert_only(first_late, "stream-gap")


def test_revision_gap() -> None:
    assert base(n2=[E1, E2, E3]).check().valid is True
    result = base(n2=[E1, E3]).check()
    assert "revision-gap" in kinds(result) and result.valid is False
    example = result.anomalies["revision-gap"][0]
    assert (example["watcher"], example["missing"], example["missing_count"]) == ("n2", [2, 2], 1)
    # A watcher whose first revision is above its start missed the ones between.
    late = base(n1=[(1, []), (1, [E2, E3])]).check()
    assert late.anomalies["revision-gap"][0]["missing"] == [1, 1]


def test_divergence() -> None:
    def run(n2_txn: list[Ev]) -> WatchResult:
        h = writes(H()).put(2, "watch/3", 7, outcome="info").put(3, "watch/4", 7, outcome="info")
        a, b = (4, "put", "watch/3", 7), (4, "put", "watch/4", 7)
        h.watch(10, "n1", 1, [E1, E2, E3, a, b])
        h.watch(20, "n2", 1, [E1, E2, E3, *n2_txn])
        return h.head(30, 4).check()

    assert run([(4, "put", "watch/3", 7), (4, "put", "watch/4", 7)]).valid is True
    result = run([(4, "put", "watch/3", 7)])
    assert_only(result, "divergence")
    example = result.anomalies["divergence"][0]
    assert example["revision"] == 4 and len(example["versions"]) == 2
    assert "n1" in example["explanation"] and "n2" in example["explanation"]


def test_missing_write() -> None:
    def run(first: int, second: int) -> WatchResult:
        h = H().put(0, "watch/1", 1, first).put(1, "watch/2", 1, second)
        e1, e2 = (1, "put", "watch/1", 1), (2, "put", "watch/2", 1)
        h.watch(10, "n1", 1, [e1, e2]).watch(20, "n2", 1, [e1, e2])
        return h.head(30, 2).check()

    assert run(1, 2).valid is True
    result = run(2, 1)  # the puts say the opposite of what every watcher saw
    assert_only(result, "missing-write")
    assert result.anomaly_counts["missing-write"] == 2
    example = result.anomalies["missing-write"][0]
    assert example["watchers"] == ["n1", "n2"] and "instead" in example["explanation"]


def test_missing_write_only_where_a_watcher_spans_the_revision() -> None:
    # n1 started at 2: it answers for 2..3 only; n2 for everything.
    h = writes(H())
    h.watch(10, "n1", 2, [(2, "put", "watch/2", 1), E3])
    h.watch(20, "n2", 1, [(1, "put", "watch/9", 1), (2, "put", "watch/2", 1), E3])
    h.put(5, "watch/9", 1, outcome="info")
    result = h.head(30, 3).check()
    assert_only(result, "missing-write")
    assert result.anomalies["missing-write"][0]["watchers"] == ["n2"]


def test_phantom_event() -> None:
    def run(extra_put: str | None) -> WatchResult:
        h = writes(H())
        if extra_put is not None:
            h.put(5, "watch/9", 99, outcome=extra_put)
        e3 = (3, "put", "watch/9", 99)
        h.watch(10, "n1", 1, [E1, E2, E3, e3]).watch(20, "n2", 1, [E1, E2, E3, e3])
        return h.head(30, 3).check()

    assert run("info").valid is True  # an unknown put may have happened
    result = run(None)
    assert_only(result, "phantom-event")
    assert result.anomalies["phantom-event"][0]["key"] == "watch/9"
    failed = run("fail")
    assert_only(failed, "failed-write-visible")
    assert "process 5" in failed.anomalies["failed-write-visible"][0]["explanation"]


def test_phantom_delete_event() -> None:
    def run(delete: bool) -> WatchResult:
        h = writes(H())
        if delete:
            h.rec(5, RecordType.INVOKE, "delete", "watch/2", None)
            h.rec(5, RecordType.OK, "delete", "watch/2", None)
        d: Ev = (4, "delete", "watch/2", None)
        h.watch(10, "n1", 1, [E1, E2, E3, d]).watch(20, "n2", 1, [E1, E2, E3, d])
        return h.head(30, 4).check()

    assert run(True).valid is True
    assert_only(run(False), "phantom-event")


def test_duplicate_event() -> None:
    def run(value: int) -> WatchResult:
        h = writes(H()).put(2, "watch/3", 5, outcome="info")
        e4 = (4, "put", "watch/1", value)
        h.watch(10, "n1", 1, [E1, E2, E3, e4]).watch(20, "n2", 1, [E1, E2, E3, e4])
        return h.head(30, 4).check()

    h = writes(H()).put(2, "watch/1", 5, outcome="info")
    e4 = (4, "put", "watch/1", 5)
    h.watch(10, "n1", 1, [E1, E2, E3, e4]).watch(20, "n2", 1, [E1, E2, E3, e4])
    assert h.head(30, 4).check().valid is True
    result = run(1)  # watch/1=1 again at revision 4: applied twice
    assert_only(result, "duplicate-event")
    assert result.anomalies["duplicate-event"][0]["revisions"] == [1, 4]


def test_duplicate_event_within_one_revision() -> None:
    result = base(n1=[(1, [E1, E1, E2, E3])], n2=[E1, E1, E2, E3]).check()
    assert_only(result, "duplicate-event")
    assert "twice within revision 1" in result.anomalies["duplicate-event"][0]["explanation"]


def test_lagging() -> None:
    assert base(n1=[(1, [E1, E2]), (3, [E3])]).check().valid is True
    result = base(n1=[(1, [E1, E2])]).check()
    assert_only(result, "lagging")
    example = result.anomalies["lagging"][0]
    assert (example["watcher"], example["received_upto"], example["head"]) == ("n1", 2, 3)
    assert result.watchers[0].caught_up is False


def test_a_watcher_that_never_connected_is_lagging() -> None:
    h = base()
    h.watch(40, "n3", 1, outcome="fail")
    assert_only(h.check(), "lagging")


def test_a_watcher_ended_by_compaction_is_not_lagging_but_leaves_the_verdict_unknown() -> None:
    """Compaction legitimately ends a watch, so it is no anomaly; but that watcher's
    stream past the compaction was never seen, so the run cannot be called valid."""
    h = writes(H())
    h.watch(10, "n1", 1, [E1]).watch(11, "n1", 2, outcome="fail", error="COMPACTED at 2")
    h.watch(12, "n1/1", 3, [E3])
    h.watch(20, "n2", 1, [E1, E2, E3])
    result = h.head(30, 3).check()
    assert result.valid is None and not result.anomalies, result.explain()
    assert result.watchers[0].compacted and any("compacted" in n for n in result.notes)


def test_the_largest_head_read_counts() -> None:
    h = base(n1=[(1, [E1, E2])], head=2)
    h.head(31, None).head(32, 3)
    assert "lagging" in kinds(h.check())


def test_stale_head() -> None:
    assert base(head=3).check().valid is True
    result = base(head=2).check()
    assert_only(result, "stale-head")
    assert result.anomalies["stale-head"][0]["revision"] == 3


def test_examples_are_capped_but_counts_are_true() -> None:
    h = H()
    events: list[Ev] = [(r, "put", f"watch/{r}", 1) for r in range(1, 31)]
    h.watch(10, "n1", 1, events).watch(20, "n2", 1, events)
    result = h.head(30, 30).check()
    assert result.anomaly_counts == {"phantom-event": 30}
    assert len(result.anomalies["phantom-event"]) == MAX_EXAMPLES


def test_malformed_values_are_noted_not_judged() -> None:
    h = base()
    h.rec(40, RecordType.INVOKE, "watch", "n1", {"from": 4})
    h.rec(40, RecordType.OK, "watch", "n1", {"from": 4, "events": [[4, "put"]], "end": "x"})
    result = h.check()
    assert result.valid is True
    assert any("malformed" in n for n in result.notes)


# ---- generated executions ------------------------------------------------------------


@dataclass
class Run:
    """A simulated run: records by (time, sequence), what a corruption may touch."""

    records: list[tuple[int, int, Record]] = field(default_factory=list)
    watch_done: list[int] = field(default_factory=list)  # indices of ok watch completions
    ok_puts: list[int] = field(default_factory=list)  # indices of ok put completions
    head: int = 0

    def add(self, t: int, rec: Record) -> int:
        self.records.append((t, len(self.records), rec))
        return len(self.records) - 1

    def history(self) -> list[Record]:
        return [r for _, _, r in sorted(self.records, key=lambda x: (x[0], x[1]))]


def simulate(rng: random.Random, watchers: int) -> Run:
    """A serial store: puts take effect in order, each a revision (sometimes two puts
    share one, as a transaction would); clients overlap in real time; watchers reconnect
    at random points, sometimes rewinding, sometimes refused or left unknown."""
    run = Run()
    free_at: dict[int, float] = {}  # process -> when its last op returned (inf: retired)
    next_process = 0
    next_value: dict[str, int] = {}
    revisions: list[list[Ev]] = []

    def client(call: int) -> int:
        nonlocal next_process
        idle = [p for p, t in free_at.items() if t < call]
        if idle and rng.random() < 0.8:
            return rng.choice(idle)
        next_process += 1
        return next_process - 1

    effect = 0
    for _ in range(rng.randint(1, 40)):
        effect += 1000
        group = 2 if rng.random() < 0.15 else 1
        applied: list[tuple[str, int]] = []
        for _ in range(group):
            key = f"watch/{rng.randrange(4)}"
            value = next_value[key] = next_value.get(key, 0) + 1
            call = effect - rng.randint(0, 3000)
            ret = effect + rng.randint(1, 3000)
            p = client(call)
            run.add(
                call,
                Record(process=p, type=RecordType.INVOKE, f="put", key=key, value=value, time=call),
            )
            outcome = rng.choices(["ok", "info-applied", "info-lost", "fail"], [80, 7, 5, 8])[0]
            if not run.ok_puts:
                outcome = "ok"  # at least one acknowledged write per run
            if outcome in ("ok", "info-applied"):
                applied.append((key, value))
            if outcome == "fail":
                free_at[p] = ret
                run.add(
                    ret,
                    Record(
                        process=p, type=RecordType.FAIL, f="put", key=key, value=value, time=ret
                    ),
                )
            elif outcome.startswith("info"):
                free_at[p] = float("inf")
                if rng.random() < 0.5:
                    run.add(
                        ret,
                        Record(
                            process=p, type=RecordType.INFO, f="put", key=key, value=value, time=ret
                        ),
                    )
            else:
                free_at[p] = ret
                index = run.add(
                    ret,
                    Record(
                        process=p,
                        type=RecordType.OK,
                        f="put",
                        key=key,
                        value=[value, len(revisions) + 1],
                        time=ret,
                    ),
                )
                run.ok_puts.append(index)
        if applied:
            revisions.append([(len(revisions) + 1, "put", k, v) for k, v in applied])
        else:
            effect -= 1000
    head = run.head = len(revisions)
    end = effect + 10_000

    for w in range(watchers):
        name = f"n{w}/0"
        cursor, t, seg = 1, rng.randint(0, 5000), 0
        while True:
            p = 1000 + 100 * w + seg
            seg += 1
            frm = cursor if rng.random() < 0.8 else rng.randint(max(1, cursor - 3), cursor)
            run.add(
                t,
                Record(
                    process=p,
                    type=RecordType.INVOKE,
                    f="watch",
                    key=name,
                    value={"from": frm},
                    time=t,
                ),
            )
            t += rng.randint(1, 4000)
            kind = rng.choices(["ok", "fail", "info"], [80, 12, 8])[0]
            if kind == "fail":
                done = {"from": frm, "error": "unavailable: no leader"}
                run.add(
                    t,
                    Record(
                        process=p, type=RecordType.FAIL, f="watch", key=name, value=done, time=t
                    ),
                )
            elif kind == "info":
                if rng.random() < 0.5:
                    run.add(
                        t,
                        Record(
                            process=p,
                            type=RecordType.INFO,
                            f="watch",
                            key=name,
                            value={"from": frm},
                            time=t,
                        ),
                    )
            else:
                upto = min(head, frm - 1 + rng.randint(0, 12))
                if cursor > head:
                    upto = head  # caught up: deliver what remains, then stop
                events = []
                for r in range(frm, upto + 1):
                    group_events = list(revisions[r - 1])
                    rng.shuffle(group_events)
                    events += [list(e) for e in group_events]
                cursor = max(cursor, upto + 1)
                done = {"from": frm, "events": events, "end": "cut"}
                index = run.add(
                    t,
                    Record(process=p, type=RecordType.OK, f="watch", key=name, value=done, time=t),
                )
                run.watch_done.append(index)
                if cursor > head and rng.random() < 0.6:
                    break
            t += rng.randint(1, 2000)
        end = max(end, t + 10)
    run.add(
        end, Record(process=9999, type=RecordType.INVOKE, f="head", key="", value=None, time=end)
    )
    run.add(
        end + 5,
        Record(process=9999, type=RecordType.OK, f="head", key="", value=head, time=end + 5),
    )
    return run


def _replace(run: Run, index: int, **changes: Any) -> None:
    t, seq, rec = run.records[index]
    run.records[index] = (t, seq, Record(**{**rec.to_json(), "type": rec.type, **changes}))


def corrupt(run: Run, rng: random.Random) -> str:
    """One random corruption that a correct store could never produce; returns its name."""
    segments = [i for i in run.watch_done if run.records[i][2].value["events"]]
    options = ["drop", "duplicate", "alter-value", "alter-key", "alter-revision"] * 2
    options += ["put-revision", "put-failed"]
    what = rng.choice(options) if segments else rng.choice(["put-revision", "put-failed"])
    if what.startswith("put"):
        index = rng.choice(run.ok_puts)
        rec = run.records[index][2]
        value, rev = rec.value
        if what == "put-revision":
            _replace(
                run,
                index,
                value=[value, rng.choice([r for r in range(1, run.head + 3) if r != rev])],
            )
        else:
            _replace(run, index, type=RecordType.FAIL, value=value)
        return what
    index = rng.choice(segments)
    done = run.records[index][2].value
    events = [list(e) for e in done["events"]]
    if what == "drop":  # never the last event: a stream may end anywhere
        if len(events) < 2:
            return corrupt(run, rng)
        del events[rng.randrange(len(events) - 1)]
    elif what == "duplicate":
        src = rng.choice(events)
        dst = rng.randrange(len(events))
        events.insert(dst, [events[dst][0], *src[1:]])
    else:
        n = rng.randrange(len(events))
        ev = events[n]
        if what == "alter-value":
            ev[3] += 1000
        elif what == "alter-key":
            ev[2] = ev[2] + "x"
        else:
            ev[0] += rng.choice([-1, 1]) if ev[0] > 1 else 1
    _replace(run, index, value={**done, "events": events})
    return what


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_generated_correct_runs_are_valid(seed: int, watchers: int) -> None:
    run = simulate(random.Random(seed), watchers)
    result = check_watch(pair_operations(run.history()))
    assert result.valid is True, result.explain()
    assert result.head == run.head
    assert all(w.caught_up for w in result.watchers)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 4))
def test_any_single_corruption_is_caught(seed: int, watchers: int) -> None:
    rng = random.Random(seed)
    run = simulate(rng, watchers)
    what = corrupt(run, rng)
    result = check_watch(pair_operations(run.history()))
    assert result.valid is False, f"{what} went unnoticed:\n{result.explain()}"
    assert set(result.anomaly_counts) <= set(WATCH_ANOMALY_KINDS)


# ---- speed ---------------------------------------------------------------------------


def test_fifty_thousand_events_check_quickly() -> None:
    h = H()
    n = 12_500
    for r in range(1, n + 1):
        h.put(r % 50, f"watch/{r % 7}", r, r)
    events: list[Ev] = [(r, "put", f"watch/{r % 7}", r) for r in range(1, n + 1)]
    for w in range(4):
        for s in range(0, n, 500):
            h.watch(100 + w, f"n{w}", s + 1, events[s : s + 500])
    h.head(200, n)
    ops = h.ops()
    started = time.perf_counter()
    result = check_watch(ops)
    elapsed = time.perf_counter() - started
    assert result.valid is True and result.events_delivered == 4 * n
    print(f"\ncheck_watch: {result.events_delivered} events, {len(ops)} ops in {elapsed:.3f}s")
