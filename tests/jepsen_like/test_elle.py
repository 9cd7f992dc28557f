"""The list-append checker: a hand-made history for every anomaly kind (each paired with
a minimally different valid history), INFO and FAIL transactions, realtime edges, the
result's JSON and text, and properties: simulated serial executions are valid,
corrupting one of their reads is always caught, and on small histories from a store
that serves stale reads the verdict matches a brute-force search for a serial order."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jepsen_like.elle import MAX_EXAMPLES, ElleResult, _realtime_links, check_list_append
from jepsen_like.history import Operation, Record, RecordType, Status, pair_operations

pytestmark = pytest.mark.timeout(60)

MicroOp = tuple[str, str, Any]  # ("r", key, list read or None) / ("append", key, element)


class H:
    """A hand-made history: ``h.txn(process, micro-ops, call, ret, status)`` adds one
    transaction; reads are written with the list they returned. ``ret=None`` leaves the
    invoke without a completion (an INFO operation)."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, Record]] = []

    def txn(
        self,
        process: int,
        mops: Sequence[MicroOp],
        call: int,
        ret: int | None = None,
        status: str = "ok",
    ) -> H:
        invoke = [[f, k, None if f == "r" else v] for f, k, v in mops]
        self.record(call, process, RecordType.INVOKE, invoke)
        if ret is not None:
            done = [[f, k, v] for f, k, v in mops] if status == "ok" else invoke
            self.record(ret, process, RecordType(status), done)
        return self

    def record(
        self, time: int, process: int, rtype: RecordType, value: Any, f: str = "txn"
    ) -> None:
        rec = Record(process=process, type=rtype, f=f, key="", value=value, time=time)
        self.events.append((time, len(self.events), rec))

    def records(self) -> list[Record]:
        return [rec for _, _, rec in sorted(self.events, key=lambda e: (e[0], e[1]))]

    def ops(self) -> list[Operation]:
        return pair_operations(self.records())

    def check(self) -> ElleResult:
        return check_list_append(self.ops())


def kinds(result: ElleResult) -> set[str]:
    return set(result.anomalies)


def assert_valid(result: ElleResult) -> None:
    assert result.valid is True, result.explain()
    assert result.anomalies == {} and result.anomaly_counts == {}


def only(result: ElleResult, kind: str, *also: str) -> dict[str, Any]:
    """The result has exactly one anomaly of ``kind`` and, if given, one of each kind
    in ``also`` (consequences of the same fault), nothing else; return the example of
    ``kind``."""
    assert result.valid is False
    assert result.anomaly_counts == dict.fromkeys((kind, *also), 1), result.explain()
    (example,) = result.anomalies[kind]
    assert isinstance(example["explanation"], str)
    return example


def ap(key: str, element: int) -> MicroOp:
    return ("append", key, element)


def r(key: str, value: list[int] | None) -> MicroOp:
    return ("r", key, value)


# ---- basics ------------------------------------------------------------------------------


def test_nothing_observed_is_unknown() -> None:
    assert check_list_append([]).valid is None
    result = H().txn(0, [ap("x", 1)], 0, 10, "fail").txn(1, [ap("x", 2)], 0).check()
    assert result.valid is None
    assert (result.txns, result.ok, result.failed, result.unknown) == (2, 0, 1, 1)
    assert "UNKNOWN" in result.explain()


def test_other_operations_are_ignored() -> None:
    h = H().txn(0, [ap("x", 1)], 0, 10).txn(1, [r("x", [1])], 20, 30)
    h.record(40, 2, RecordType.INVOKE, 5, f="write")
    h.record(50, 2, RecordType.OK, 5, f="write")
    result = h.check()
    assert_valid(result)
    assert result.txns == 2


def test_sequential_history_is_valid_and_counts_edges() -> None:
    result = (
        H()
        .txn(0, [ap("x", 1), r("y", None)], 0, 10)
        .txn(1, [r("x", [1]), ap("x", 2), ap("y", 1)], 20, 30)
        .txn(0, [r("x", [1, 2]), r("y", [1])], 40, 50)
        .check()
    )
    assert_valid(result)
    assert (result.txns, result.ok, result.keys, result.graph_txns) == (3, 3, 2, 3)
    assert result.edges["ww"] == 1 and result.edges["wr"] >= 2 and result.edges["rw"] == 1
    assert "VALID" in result.explain()


def test_empty_reads_none_and_empty_list_are_the_same() -> None:
    valid = (
        H()
        .txn(0, [r("x", None), r("y", [])], 0, 10)
        .txn(1, [ap("x", 1), ap("y", 1)], 20, 30)
        .txn(2, [r("x", [1]), r("y", [1])], 40, 50)
        .check()
    )
    assert_valid(valid)
    # The same empty read, invoked after the append completed: stale, whichever spelling.
    empties: tuple[list[int] | None, ...] = (None, [])
    for empty in empties:
        h = H().txn(1, [ap("x", 1)], 0, 10).txn(0, [r("x", empty)], 20, 30)
        result = h.txn(2, [r("x", [1])], 40, 50).check()
        assert kinds(result) == {"lost-append", "G-single-realtime"}
        (cycle,) = result.anomalies["G-single-realtime"]
        assert "read 'x' as empty" in cycle["explanation"]


def test_malformed_transactions_are_noted_not_trusted() -> None:
    h = H().txn(0, [ap("x", 1)], 0, 10).txn(1, [r("x", [1])], 20, 30)
    h.record(40, 2, RecordType.INVOKE, "not a transaction")
    h.record(50, 2, RecordType.OK, "still not")
    h.txn(3, [("r", "x", 5)], 60, 70)  # a read that returned something other than a list
    result = h.check()
    assert_valid(result)
    assert result.txns == 3 and len(result.notes) == 2
    assert "malformed transaction" in result.notes[0] and "not a list" in result.notes[1]


# ---- anomalies found on the reads ----------------------------------------------------------


def test_duplicate_elements() -> None:
    h = H().txn(0, [ap("x", 1)], 0, 10)
    assert_valid(H().txn(0, [ap("x", 1)], 0, 10).txn(1, [r("x", [1])], 20, 30).check())
    example = only(h.txn(1, [r("x", [1, 1])], 20, 30).check(), "duplicate-elements")
    assert example["key"] == "x" and example["duplicates"] == [1]
    assert example["op"]["index"] == 1 and "more than once" in example["explanation"]


def test_garbage_read() -> None:
    assert_valid(H().txn(0, [ap("x", 1)], 0, 10).txn(1, [r("x", [1])], 20, 30).check())
    result = H().txn(0, [ap("x", 1)], 0, 10).txn(1, [r("x", [1, 9])], 20, 30).check()
    example = only(result, "garbage-read")
    assert (example["key"], example["element"], example["reads"]) == ("x", 9, 1)
    assert "no transaction ever appended" in example["explanation"]


def test_aborted_read_g1a() -> None:
    failed = H().txn(0, [ap("x", 1)], 0, 10, "fail")
    assert_valid(H().txn(0, [ap("x", 1)], 0, 10, "fail").txn(1, [r("x", [])], 20, 30).check())
    example = only(failed.txn(1, [r("x", [1])], 20, 30).check(), "G1a")
    assert example["writer"]["status"] == "fail" and example["element"] == 1
    assert "failed" in example["explanation"]


def test_intermediate_read_g1b() -> None:
    def history(seen: list[int]) -> ElleResult:
        # The read overlaps the writer, so only what it saw matters (no lost append).
        return H().txn(0, [ap("x", 1), ap("x", 2)], 0, 50).txn(1, [r("x", seen)], 5, 30).check()

    assert_valid(history([1, 2]))
    assert_valid(history([]))
    # T1 saw T0's first append and missed its second: that is also a cycle T0 -wr-> T1
    # -rw-> T0 (an append of a transaction that happened, missing from what T1 read).
    example = only(history([1]), "G1b", "G-single")
    assert example["writer"]["index"] == 0 and example["element"] == 1
    assert "intermediate" in example["explanation"]


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        # after its own append, a read must end with it
        ([ap("x", 1), r("x", [1])], [ap("x", 1), r("x", [])]),
        # two reads with nothing appended between are equal
        ([r("x", [7]), r("x", [7])], [r("x", [7]), r("x", [])]),
        # read, append, read: the second is the first plus the append
        ([r("x", [7]), ap("x", 8), r("x", [7, 8])], [r("x", [7]), ap("x", 8), r("x", [8])]),
        # a read cannot already hold what the transaction appends afterwards
        ([r("x", [7]), ap("x", 8)], [r("x", [7, 8]), ap("x", 8)]),
    ],
)
def test_internal_inconsistency(good: list[MicroOp], bad: list[MicroOp]) -> None:
    def history(mops: list[MicroOp]) -> ElleResult:
        return H().txn(0, [ap("x", 7)], 0, 10).txn(1, mops, 5, 30).check()

    assert_valid(history(good))
    result = history(bad)
    assert result.valid is False and "internal" in kinds(result), result.explain()
    assert result.anomalies["internal"][0]["op"]["index"] == 1


def test_internal_alone() -> None:
    example = only(H().txn(0, [ap("x", 1), r("x", [])], 0, 10).check(), "internal")
    assert "does not end with its own appends" in example["explanation"]


def test_incompatible_order() -> None:
    def history(second: list[int]) -> ElleResult:
        h = H()
        for p, e in enumerate((1, 2, 3)):  # three concurrent appends
            h.txn(p, [ap("x", e)], p, 100)
        return h.txn(3, [r("x", [1, 2])], 10, 20).txn(4, [r("x", second)], 10, 20).check()

    assert_valid(history([1, 2, 3]))
    example = only(history([1, 3]), "incompatible-order")
    assert example["agree"] == 1 and example["diverging"] == [[2], [3]]
    assert "neither is a prefix" in example["explanation"]


def test_lost_append_never_observed() -> None:
    def history(first_ret: int) -> ElleResult:
        return (
            H()
            .txn(0, [ap("x", 1)], 0, first_ret)
            .txn(1, [ap("x", 2)], 20, 30)
            .txn(2, [r("x", [2])], 40, 50)
            .check()
        )

    assert_valid(history(45))  # the append of 1 may still take effect after the read
    result = history(10)
    example = only(result, "lost-append", "G-single-realtime")
    assert (example["element"], example["writer"]["index"], example["op"]["index"]) == (1, 0, 2)
    assert "without it" in example["explanation"]
    (cycle,) = result.anomalies["G-single-realtime"]
    assert "the longest version anyone read, without 1" in cycle["explanation"]


def test_unobserved_append_of_a_transaction_that_happened() -> None:
    def history(y: list[int]) -> ElleResult:
        # T0's outcome is unknown, but T1 saw its append to x, so its append to y
        # happened too, although no read of y shows it.
        return (
            H().txn(0, [ap("x", 1), ap("y", 1)], 0).txn(1, [r("x", [1]), r("y", y)], 5, 15).check()
        )

    assert_valid(history([1]))
    example = only(history([]), "G-single")
    rw = next(step for step in example["steps"] if step["type"] == "rw")
    assert (rw["key"], rw["element"], rw["next"]) == ("y", None, 1)


def test_lost_append_of_an_observed_element_is_also_a_realtime_cycle() -> None:
    result = (
        H()
        .txn(0, [ap("x", 1)], 0, 10)
        .txn(1, [r("x", [])], 20, 30)
        .txn(2, [r("x", [1])], 40, 50)
        .check()
    )
    assert kinds(result) == {"lost-append", "G-single-realtime"}


# ---- cycles ----------------------------------------------------------------------------------


def test_g0_write_cycle() -> None:
    def history(y: list[int]) -> ElleResult:
        return (
            H()
            .txn(0, [ap("x", 1), ap("y", 1)], 0, 10)
            .txn(1, [ap("x", 2), ap("y", 2)], 0, 10)
            .txn(2, [r("x", [1, 2]), r("y", y)], 20, 30)
            .check()
        )

    assert_valid(history([1, 2]))
    example = only(history([2, 1]), "G0")
    assert [step["type"] for step in example["steps"]] == ["ww", "ww"]
    assert {step["key"] for step in example["steps"]} == {"x", "y"}
    assert {t["index"] for t in example["cycle"]} == {0, 1}


def test_g1c_circular_information_flow() -> None:
    def history(x: list[int]) -> ElleResult:
        return (
            H()
            .txn(0, [ap("x", 1), r("y", [1])], 0, 10)
            .txn(1, [ap("y", 1), r("x", x)], 0, 10)
            .check()
        )

    assert_valid(history([]))
    example = only(history([1]), "G1c")
    assert [step["type"] for step in example["steps"]] == ["wr", "wr"]


def test_g_single_read_skew() -> None:
    def history(y: list[int]) -> ElleResult:
        return (
            H()
            .txn(0, [ap("x", 1), ap("y", 1)], 0, 10)
            .txn(1, [r("x", [1]), r("y", y)], 5, 15)
            .txn(2, [r("y", [1])], 5, 15)  # y's order is only known if someone saw it
            .check()
        )

    assert_valid(history([1]))
    example = only(history([]), "G-single")
    assert sorted(step["type"] for step in example["steps"]) == ["rw", "wr"]


def test_g_single_realtime_needs_the_realtime_edge() -> None:
    def history(stale_call: int, x: list[int]) -> ElleResult:
        # T0 appends to x and y; T1 sees y's append, completes; T2 then misses x's.
        return (
            H()
            .txn(0, [ap("x", 1), ap("y", 1)], 0, 100)
            .txn(1, [r("y", [1])], 10, 20)
            .txn(2, [r("x", x)], stale_call, 40)
            .txn(3, [r("x", [1])], 5, 200)
            .check()
        )

    assert_valid(history(30, [1]))
    assert_valid(history(15, []))  # T2 overlaps T1: serializable as T2, T0, T1
    example = only(history(30, []), "G-single-realtime")
    types = [step["type"] for step in example["steps"]]
    assert sorted(types) == ["realtime", "rw", "wr"]
    assert "completed at t=20 before" in example["explanation"]
    assert "-rt->" in example["explanation"]


def test_g2_item_write_skew() -> None:
    def history(t1_reads_x: list[int]) -> ElleResult:
        return (
            H()
            .txn(0, [r("x", []), r("y", []), ap("x", 1)], 0, 10)
            .txn(1, [r("x", t1_reads_x), r("y", []), ap("y", 1)], 0, 10)
            .txn(2, [r("x", [1]), r("y", [1])], 20, 30)
            .check()
        )

    assert_valid(history([1]))
    example = only(history([]), "G2-item")
    assert [step["type"] for step in example["steps"]] == ["rw", "rw"]


def test_info_transactions_observed_participate() -> None:
    def history(y: list[int]) -> ElleResult:
        return (
            H()
            .txn(0, [ap("x", 1), ap("y", 1)], 0)  # never completes: INFO
            .txn(1, [r("x", [1]), r("y", y)], 5, 15)
            .txn(2, [r("y", [1])], 5, 15)
            .check()
        )

    assert_valid(history([1]))
    result = history([])
    example = only(result, "G-single")
    assert {t["status"] for t in example["cycle"]} == {"info", "ok"}
    assert result.graph_txns == 3 and result.unknown == 1


def test_info_transaction_invoked_after_its_reader_completed() -> None:
    def history(info_call: int) -> ElleResult:
        return H().txn(0, [r("x", [1])], 0, 10).txn(1, [ap("x", 1)], info_call, 30, "info").check()

    assert_valid(history(5))
    only(history(20), "G1c-realtime")  # read from a transaction not yet invoked


def test_unobserved_info_and_failed_transactions_are_ignored() -> None:
    result = (
        H()
        .txn(0, [ap("x", 1)], 0, 10, "info")
        .txn(1, [ap("x", 2)], 0, 10, "fail")
        .txn(2, [ap("x", 3)], 0)
        .txn(3, [r("x", [])], 50, 60)  # no lost append: none of them certainly happened
        .check()
    )
    assert_valid(result)
    assert (result.ok, result.failed, result.unknown, result.graph_txns) == (1, 1, 2, 1)


def test_cycle_example_names_transactions_and_justifications() -> None:
    result = (
        H()
        .txn(0, [ap("x", 1), ap("y", 1)], 0, 10)
        .txn(1, [r("x", [1]), r("y", [])], 5, 15)
        .txn(2, [r("y", [1])], 5, 15)
        .check()
    )
    (example,) = result.anomalies["G-single"]
    text = example["explanation"]
    assert "op 0 (process 0, line 1)" in text and "op 1 (process 1, line 2)" in text
    assert "ending in 1, which op 0" in text and "appended 1, the next element" in text
    steps = {step["type"]: step for step in example["steps"]}
    assert (steps["rw"]["key"], steps["rw"]["element"], steps["rw"]["next"]) == ("y", None, 1)


# ---- result --------------------------------------------------------------------------------


def test_examples_are_capped_but_counted_and_json_able() -> None:
    h = H().txn(0, [ap("x", 1)], 0, 10)
    for p in range(1, 31):
        h.txn(p, [r("x", [1, 1])], 20, 30)
    result = h.check()
    assert result.anomaly_counts == {"duplicate-elements": 30}
    assert len(result.anomalies["duplicate-elements"]) == MAX_EXAMPLES
    data = json.loads(json.dumps(result.to_json()))
    assert data["valid"] is False and data["anomaly_types"] == ["duplicate-elements"]
    assert data["anomaly_counts"] == {"duplicate-elements": 30}
    text = result.explain()
    assert "INVALID" in text and "duplicate-elements x30" in text


def test_cycle_examples_are_json_able() -> None:
    h = H().txn(1, [ap("x", 1)], 0, 10).txn(0, [r("x", None)], 20, 30)
    result = h.txn(2, [r("x", [1])], 40, 50).check()
    json.dumps(result.to_json())
    assert "G-single-realtime" in result.explain()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.booleans()), max_size=14))
def test_realtime_links_preserve_exactly_the_realtime_order(
    spans: list[tuple[int, int, bool]],
) -> None:
    nodes = [
        (v, min(a, b), max(a, b) if done else math.inf) for v, (a, b, done) in enumerate(spans)
    ]
    adj = _realtime_links(len(nodes), nodes)
    assert sum(map(len, adj)) <= 3 * len(nodes)  # linear, not quadratic
    for u, _, ret in nodes:
        seen, todo = set(), [u]
        while todo:
            for w in adj[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        for v, call, _ in nodes:
            assert (v in seen) == (ret < call), (u, v)


# ---- simulated serial executions ------------------------------------------------------------


def simulate(
    rng: random.Random,
    txns: int,
    keys: int,
    processes: int,
    max_mops: int = 4,
    p_fail: float = 0.05,
    p_crash: float = 0.03,
    p_info: float = 0.04,
    p_stale: float = 0.0,
) -> list[Record]:
    """A correct store: transactions apply atomically, one at a time, each at a point
    between its invoke and its completion, while ``processes`` clients overlap. Some
    fail (not applied), some crash before applying (info), some apply and lose their
    response (info). Ends with a final read of every key by a fresh process. With
    ``p_stale`` > 0 it is not correct: a read may return an older prefix of the list."""
    records: list[Record] = []
    state: dict[str, list[int]] = {}
    last_element: dict[str, int] = {}
    clock = [0]

    def emit(process: int, rtype: RecordType, value: Any) -> None:
        clock[0] += rng.randint(1, 3)
        records.append(
            Record(process=process, type=rtype, f="txn", key="", value=value, time=clock[0])
        )

    def apply(mops: list[list[Any]]) -> list[list[Any]]:
        out = []
        for f, k, v in mops:
            if f == "r":
                seen = state.get(k)
                if seen is not None and rng.random() < p_stale:
                    seen = seen[: rng.randrange(len(seen) + 1)]
                out.append([f, k, None if seen is None else list(seen)])
            else:
                state.setdefault(k, []).append(v)
                out.append([f, k, v])
        return out

    slots: list[dict[str, Any]] = [{"p": p, "phase": "idle"} for p in range(processes)]
    next_process, started = processes, 0
    while True:
        busy = [s for s in slots if s["phase"] != "idle"]
        if started >= txns and not busy:
            break
        s = rng.choice(slots if started < txns else busy)
        if s["phase"] == "idle":
            mops: list[list[Any]] = []
            for _ in range(rng.randint(1, max_mops)):
                k = f"k{rng.randrange(keys)}"
                if rng.random() < 0.5:
                    mops.append(["r", k, None])
                else:
                    last_element[k] = last_element.get(k, 0) + 1
                    mops.append(["append", k, last_element[k]])
            emit(s["p"], RecordType.INVOKE, mops)
            s.update(phase="invoked", mops=mops)
            started += 1
            continue
        roll = rng.random()
        if s["phase"] == "invoked":
            if roll < p_fail:
                emit(s["p"], RecordType.FAIL, s["mops"])
                s["phase"] = "idle"
            elif roll < p_fail + p_crash:
                emit(s["p"], RecordType.INFO, s["mops"])
                s.update(p=next_process, phase="idle")
                next_process += 1
            else:
                s.update(phase="applied", out=apply(s["mops"]))
        elif roll < p_info:
            emit(s["p"], RecordType.INFO, s["mops"])
            s.update(p=next_process, phase="idle")
            next_process += 1
        else:
            emit(s["p"], RecordType.OK, s["out"])
            s["phase"] = "idle"
    final = [["r", f"k{k}", None] for k in range(keys)]
    emit(next_process, RecordType.INVOKE, final)
    emit(next_process, RecordType.OK, apply(final))
    return records


def test_simulated_ten_thousand_transactions_are_valid() -> None:
    records = simulate(random.Random(7), txns=10_000, keys=20, processes=10)
    ops = pair_operations(records)
    result = check_list_append(ops)
    print(f"\n10,000-txn list-append history: {result.elapsed_s:.3f} s; {result.edges}")
    assert_valid(result)
    assert result.txns == 10_001 and result.ok > 8_500 and result.unknown > 0
    assert result.failed > 0 and result.graph_txns > result.ok


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    txns=st.integers(1, 40),
    keys=st.integers(1, 4),
    processes=st.integers(1, 5),
)
def test_simulated_serial_executions_are_valid(
    seed: int, txns: int, keys: int, processes: int
) -> None:
    result = check_list_append(
        pair_operations(simulate(random.Random(seed), txns, keys, processes))
    )
    assert_valid(result)


def _mutated(records: list[Record], at: int, mop: int, value: list[int]) -> list[Record]:
    rec = records[at]
    new_value = [list(m) for m in rec.value]
    new_value[mop][2] = value
    changed = Record(
        process=rec.process, type=rec.type, f=rec.f, key=rec.key, value=new_value, time=rec.time
    )
    return [*records[:at], changed, *records[at + 1 :]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    seed=st.integers(0, 2**32 - 1),
    txns=st.integers(8, 40),
    keys=st.integers(1, 3),
    processes=st.integers(1, 5),
    mutation=st.sampled_from(["drop-middle", "swap", "drop-from-final"]),
)
def test_corrupting_one_read_is_always_caught(
    seed: int, txns: int, keys: int, processes: int, mutation: str
) -> None:
    rng = random.Random(seed)
    records = simulate(rng, txns, keys, processes)
    final = len(records) - 1
    if mutation == "drop-from-final":
        # An element appended by an ok transaction, dropped from the final read (which
        # was invoked after every transaction completed).
        ok_appends = {
            (op.output[i][1], op.output[i][2])
            for op in pair_operations(records)
            if op.status is Status.OK and isinstance(op.output, tuple)
            for i in range(len(op.output))
            if op.output[i][0] == "append"
        }
        choices = [
            (i, j)
            for i, (_, k, lst) in enumerate(records[final].value)
            for j, e in enumerate(lst or [])
            if (k, e) in ok_appends
        ]
        if not choices:
            return
        i, j = rng.choice(choices)
        lst = records[final].value[i][2]
        mutated = _mutated(records, final, i, lst[:j] + lst[j + 1 :])
    else:
        # Any other read: it is a prefix of the final read, so a corrupted copy is not.
        need = 3 if mutation == "drop-middle" else 2
        choices = [
            (at, i)
            for at, rec in enumerate(records[:final])
            if rec.type is RecordType.OK
            for i, (f, _, lst) in enumerate(rec.value)
            if f == "r" and lst is not None and len(lst) >= need
        ]
        if not choices:
            return
        at, i = rng.choice(choices)
        lst = list(records[at].value[i][2])
        if mutation == "drop-middle":
            del lst[rng.randrange(1, len(lst) - 1)]
        else:
            a, b = sorted(rng.sample(range(len(lst)), 2))
            lst[a], lst[b] = lst[b], lst[a]
        mutated = _mutated(records, at, i, lst)
    assert check_list_append(pair_operations(records)).valid is True
    result = check_list_append(pair_operations(mutated))
    assert result.valid is False, mutation


def strictly_serializable(ops: Sequence[Operation]) -> bool:
    """By brute force: is there a set of info transactions and an order of them and the
    ok ones, respecting real time, whose serial execution gives exactly the ok reads?"""
    txns = [op for op in ops if op.f == "txn" and op.status is not Status.FAIL]
    ok = [op for op in txns if op.status is Status.OK]
    info = [op for op in txns if op.status is Status.INFO]

    def run(op: Operation, state: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]] | None:
        state = dict(state)
        mops = op.output if op.status is Status.OK else op.input.value
        assert isinstance(mops, tuple)
        for f, k, v in mops:
            if f == "append":
                state[k] = (*state.get(k, ()), v)
            elif op.status is Status.OK and (v or ()) != state.get(k, ()):
                return None
        return state

    def orderable(left: list[Operation], state: dict[str, tuple[int, ...]]) -> bool:
        for op in left:
            if any(other.ret < op.call for other in left):
                continue  # something that completed before op was invoked must go first
            after = run(op, state)
            if after is not None and orderable([o for o in left if o is not op], after):
                return True
        return not left

    return any(
        orderable(ok + list(chosen), {})
        for n in range(len(info) + 1)
        for chosen in itertools.combinations(info, n)
    )


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    txns=st.integers(1, 6),
    keys=st.integers(1, 3),
    processes=st.integers(1, 4),
    p_stale=st.sampled_from([0.0, 0.3, 0.7]),
    p_info=st.sampled_from([0.0, 0.2, 0.4]),
    final_read=st.booleans(),
)
def test_agrees_with_brute_force_on_small_histories(
    seed: int,
    txns: int,
    keys: int,
    processes: int,
    p_stale: float,
    p_info: float,
    final_read: bool,
) -> None:
    """Sound (never flags a strictly serializable history) and, on these small
    histories of a store that sometimes serves stale reads, complete."""
    records = simulate(
        random.Random(seed),
        txns,
        keys,
        processes,
        max_mops=3,
        p_info=p_info,
        p_crash=p_info / 2,
        p_stale=p_stale,
    )
    ops = pair_operations(records if final_read else records[:-2])
    result = check_list_append(ops)
    assert (result.valid is not False) == strictly_serializable(ops), result.explain()
