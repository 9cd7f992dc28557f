"""The linearizability checker: hand-made histories with known verdicts, generated ones
against a real register and a brute-force oracle, published histories, the budget, and
a speed measurement."""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like import checker
from jepsen_like.checker import CheckResult, Verdict, check
from jepsen_like.history import (
    UNKNOWN,
    Operation,
    OpInput,
    Record,
    RecordType,
    Status,
    pair_operations,
    read_operations,
)
from jepsen_like.models import RegisterModel

DATA = Path(__file__).resolve().parent / "data"

# --- a tiny history DSL --------------------------------------------------------------


def op(
    process: int,
    f: str,
    value: Any,
    call: int,
    ret: int | None,
    result: str = "ok",
    output: Any = None,
    key: str = "x",
    error: str | None = None,
) -> list[Record]:
    """An invoke and its completion (none if ``ret`` is None). A read's ``value`` is the
    value read; other functions complete with their input."""
    invoke_value = None if f == "read" else value
    done_value = value if output is None else output
    out = [
        Record(process=process, type=RecordType.INVOKE, f=f, key=key, value=invoke_value, time=call)
    ]
    if ret is not None:
        out.append(
            Record(
                process=process,
                type=RecordType(result),
                f=f,
                key=key,
                value=done_value,
                time=ret,
                error=error,
            )
        )
    return out


def history(*ops: list[Record]) -> list[Record]:
    """Records of all ops in time order (stable, so list same-instant ops as they happen)."""
    return sorted(itertools.chain.from_iterable(ops), key=lambda r: r.time)


def verdict(*ops: list[Record]) -> Verdict:
    return check(RegisterModel(), history(*ops)).verdict


def only_counterexample(result: CheckResult) -> checker.CounterExample:
    (ce,) = result.counterexamples
    return ce


# --- hand-made histories ---------------------------------------------------------------


def test_sequential_history_is_linearizable() -> None:
    assert (
        verdict(
            op(0, "read", None, 0, 1),
            op(0, "write", 1, 2, 3),
            op(1, "read", 1, 4, 5),
            op(1, "write", 2, 6, 7),
            op(0, "read", 2, 8, 9),
        )
        is Verdict.OK
    )


def test_empty_history_is_linearizable() -> None:
    result = check(RegisterModel(), [])
    assert (result.verdict, result.partitions) == (Verdict.OK, ())


@pytest.mark.parametrize("seen", [0, 1])
def test_read_concurrent_with_a_write_may_see_either_value(seen: int) -> None:
    assert (
        verdict(op(0, "write", 0, 0, 1), op(1, "write", 1, 2, 10), op(2, "read", seen, 3, 8))
        is Verdict.OK
    )


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_overlapping_writes_may_take_effect_in_either_order(order: tuple[int, int]) -> None:
    first, second = order
    assert (
        verdict(
            op(0, "write", 1, 0, 10),
            op(1, "write", 2, 1, 11),
            op(2, "read", first, 2, 3),
            op(2, "read", second, 12, 13),
        )
        is Verdict.OK
    )


def test_reads_cannot_flip_back_between_overlapping_writes() -> None:
    assert (
        verdict(
            op(0, "write", 1, 0, 10),
            op(1, "write", 2, 1, 11),
            op(2, "read", 1, 12, 13),
            op(2, "read", 2, 14, 15),
            op(2, "read", 1, 16, 17),
        )
        is Verdict.ILLEGAL
    )


def test_stale_read_is_illegal_and_explained() -> None:
    result = check(
        RegisterModel(),
        history(
            op(0, "write", 1, 0, 1),
            op(0, "write", 2, 2, 3),
            op(1, "read", 1, 4, 5),  # stale: 2 was written before it started
            op(1, "read", 2, 6, 7),
        ),
    )
    assert result.verdict is Verdict.ILLEGAL
    ce = only_counterexample(result)
    assert ce.isolated
    assert ce.blocking.index == 2
    assert [d for d in ce.prefix_descriptions] == ["write(1)", "write(2)"]
    assert ce.state == "2"
    assert ce.possible_states == ("2",)
    assert ce.explanation == (
        "read() -> 1 by process 1 [t=4..5] cannot follow: the latest possible values are {2}"
    )


def test_lost_write_is_illegal() -> None:
    assert (
        verdict(op(0, "write", 1, 0, 1), op(0, "write", 2, 2, 3), op(1, "read", None, 4, 5))
        is Verdict.ILLEGAL
    )


def test_read_of_a_never_written_key_returns_nil() -> None:
    assert verdict(op(0, "read", None, 0, 1)) is Verdict.OK
    assert verdict(op(0, "read", 0, 0, 1)) is Verdict.ILLEGAL


def test_touching_intervals_count_as_concurrent() -> None:
    # the write returns at t=5 and the read is invoked at t=5: either order is fine
    assert verdict(op(0, "write", 1, 0, 5), op(1, "read", None, 5, 6)) is Verdict.OK
    assert verdict(op(0, "write", 1, 0, 5), op(1, "read", None, 6, 7)) is Verdict.ILLEGAL


def test_info_write_that_took_effect() -> None:
    assert (
        verdict(op(0, "write", 1, 0, 1), op(1, "write", 5, 2, 3, "info"), op(2, "read", 5, 10, 11))
        is Verdict.OK
    )


def test_info_write_that_never_took_effect() -> None:
    assert (
        verdict(
            op(0, "write", 1, 0, 1),
            op(1, "write", 5, 2, 3, "info"),
            op(2, "read", 1, 10, 11),
            op(2, "read", 1, 20, 21),
        )
        is Verdict.OK
    )


def test_info_write_may_take_effect_long_after_its_timeout() -> None:
    assert (
        verdict(
            op(0, "write", 1, 0, 1),
            op(1, "write", 5, 2, 3, "info"),
            op(2, "read", 1, 10, 11),
            op(2, "read", 5, 20, 21),
        )
        is Verdict.OK
    )


def test_info_write_seen_then_unseen_is_illegal() -> None:
    assert (
        verdict(
            op(0, "write", 1, 0, 1),
            op(1, "write", 5, 2, 3, "info"),
            op(2, "read", 5, 10, 11),
            op(2, "read", 1, 20, 21),
        )
        is Verdict.ILLEGAL
    )


def test_info_write_cannot_take_effect_before_its_invoke() -> None:
    assert verdict(op(2, "read", 5, 0, 1), op(1, "write", 5, 2, 3, "info")) is Verdict.ILLEGAL


def test_never_completed_invoke_is_an_info() -> None:
    assert verdict(op(1, "write", 5, 0, None), op(2, "read", 5, 10, 11)) is Verdict.OK
    assert verdict(op(1, "write", 5, 0, None), op(2, "read", None, 10, 11)) is Verdict.OK
    assert (
        verdict(op(1, "write", 5, 0, None), op(2, "read", 5, 10, 11), op(2, "read", None, 12, 13))
        is Verdict.ILLEGAL
    )


def test_twin_info_writes_can_each_take_effect() -> None:
    # two timed-out writes of 5, interleaved with a write of 1: 5 must land twice
    assert (
        verdict(
            op(0, "write", 5, 0, 1, "info"),
            op(1, "write", 5, 0, 1, "info"),
            op(2, "read", 5, 2, 3),
            op(2, "write", 1, 4, 5),
            op(2, "read", 1, 6, 7),
            op(2, "read", 5, 8, 9),
        )
        is Verdict.OK
    )
    assert (
        verdict(
            op(0, "write", 5, 0, 1, "info"),
            op(2, "read", 5, 2, 3),
            op(2, "write", 1, 4, 5),
            op(2, "read", 5, 8, 9),
        )
        is Verdict.ILLEGAL
    )


def test_a_failed_compare_is_evidence_and_other_failures_are_not() -> None:
    """A cas completed ``fail`` without an error ran its compare, and it failed: the
    register differed from the expected value at some point in the cas's interval. Here
    it certainly held the expected value throughout, so the history is not linearizable
    (porcupine's etcd model reads a failed cas so). With an error code the cas was
    refused for another reason, never happened, and constrains nothing (issue 10)."""
    compare_failed = op(1, "cas", [0, 9], 2, 3, "fail")
    refused = op(1, "cas", [0, 9], 2, 3, "fail", error="UNAVAILABLE")
    before, after = op(0, "write", 0, 0, 1), op(2, "read", 0, 4, 5)
    assert verdict(before, compare_failed, after) is Verdict.ILLEGAL
    assert verdict(before, refused, after) is Verdict.OK
    # concurrent with a write that changed the value, a failed compare is fine
    racing = op(3, "write", 7, 2, 6)
    assert verdict(before, racing, op(1, "cas", [0, 9], 3, 5, "fail")) is Verdict.OK
    result = check(RegisterModel(), history(before, refused))
    assert (result.ops, result.failed, result.partitions[0].ops) == (2, 1, 1)
    result = check(RegisterModel(), history(before, compare_failed))
    assert (result.ops, result.failed, result.partitions[0].ops) == (2, 0, 2)


def test_cas_chain() -> None:
    assert (
        verdict(
            op(0, "write", 0, 0, 1),
            op(1, "cas", [0, 1], 2, 3),
            op(2, "cas", [1, 2], 4, 5),
            op(0, "read", 2, 6, 7),
        )
        is Verdict.OK
    )
    # a concurrent pair can only succeed in one order
    assert (
        verdict(
            op(0, "write", 0, 0, 1),
            op(1, "cas", [1, 2], 2, 10),
            op(2, "cas", [0, 1], 3, 11),
            op(0, "read", 2, 12, 13),
        )
        is Verdict.OK
    )
    # two successful cas from the same expected value, one after the other
    assert (
        verdict(op(0, "write", 0, 0, 1), op(1, "cas", [0, 1], 2, 3), op(2, "cas", [0, 2], 4, 5))
        is Verdict.ILLEGAL
    )


def test_info_cas_chain() -> None:
    assert (
        verdict(
            op(0, "write", 0, 0, 1),
            op(1, "cas", [0, 1], 2, 3, "info"),
            op(2, "read", 1, 4, 5),
            op(2, "cas", [1, 2], 6, 7),
            op(2, "read", 2, 8, 9),
        )
        is Verdict.OK
    )
    # an unknown cas only applies if its comparison holds where it lands
    assert (
        verdict(op(0, "write", 0, 0, 1), op(1, "cas", [3, 1], 2, 3, "info"), op(2, "read", 1, 4, 5))
        is Verdict.ILLEGAL
    )


def test_multiple_keys_only_one_bad() -> None:
    result = check(
        RegisterModel(),
        history(
            op(0, "write", 1, 0, 1, key="a"),
            op(1, "write", 1, 0, 1, key="b"),
            op(2, "write", 1, 0, 1, key="c"),
            op(0, "read", 1, 2, 3, key="a"),
            op(1, "read", 7, 2, 3, key="b"),
            op(2, "read", 1, 2, 3, key="c"),
        ),
    )
    assert result.verdict is Verdict.ILLEGAL
    assert [(p.key, p.verdict) for p in result.partitions] == [
        ("a", Verdict.OK),
        ("b", Verdict.ILLEGAL),
        ("c", Verdict.OK),
    ]
    ce = only_counterexample(result)
    assert ce.key == "b" and ce.blocking.process == 1


def test_rethink_minimal_counterexample_blames_the_read_not_what_follows() -> None:
    # Knossos' rethink-fail-minimal: the op after the bad read used to be blamed. Nobody
    # writes 3, so the model refutes the read without a search.
    result = check(RegisterModel(), read_operations(DATA / "rethink-fail-minimal.jsonl"))
    ce = only_counterexample(result)
    assert ce.isolated
    assert ce.blocking.line == 3 and ce.blocking.output == 3  # the invoke's line
    assert ce.explanation == (
        "read() -> 3 by process 1 [t=2..4] cannot be linearized: no operation that may have "
        "taken effect writes 3"
    )
    assert ce.to_json()["blocking"]["line"] == 3


def test_concurrent_stale_read_counterexample() -> None:
    # rethink-fail-minimal's shape with a read of a value that was written, but earlier
    result = check(
        RegisterModel(),
        history(
            op(0, "write", 3, 0, 1),
            op(0, "write", 0, 2, 3),
            op(1, "read", 3, 4, 6),
            op(2, "write", 4, 5, 7),
            op(3, "read", 4, 8, 9),
        ),
    )
    ce = only_counterexample(result)
    assert ce.isolated
    assert ce.prefix_descriptions == ("write(3)", "write(0)", "write(4)")
    assert ce.state == "4"
    assert [(c.description, c.legal) for c in ce.candidates] == [("read() -> 3", False)]
    assert ce.possible_states == ("0", "4")
    assert ce.explanation == (
        "read() -> 3 by process 1 [t=4..6] cannot follow: the latest possible values are {0, 4}"
    )


def test_read_of_a_failed_write_is_refuted_without_search() -> None:
    result = check(
        RegisterModel(),
        history(op(0, "write", 1, 0, 1), op(0, "write", 7, 2, 3, "fail"), op(1, "read", 7, 4, 5)),
    )
    ce = only_counterexample(result)
    assert ce.explanation == (
        "read() -> 7 by process 1 [t=4..5] cannot be linearized: no operation that may have "
        "taken effect writes 7"
    )
    assert result.partitions[0].explored == 0


# --- published histories with known verdicts --------------------------------------------


def _convert_module() -> Any:
    spec = importlib.util.spec_from_file_location("convert", DATA / "convert.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixtures_are_converted_from_their_sources() -> None:
    converted = _convert_module().converted()
    assert len(converted) == 6
    for target, text in converted.items():
        assert target.read_text() == text, f"{target.name} is stale: run data/convert.py"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("etcd_000", Verdict.ILLEGAL),
        ("etcd_001", Verdict.ILLEGAL),
        ("etcd_002", Verdict.OK),
        ("etcd_005", Verdict.OK),
        ("etcd_007", Verdict.OK),
        ("rethink-fail-minimal", Verdict.ILLEGAL),
    ],
)
def test_published_history(name: str, expected: Verdict) -> None:
    result = check(RegisterModel(), read_operations(DATA / f"{name}.jsonl"), time_budget_s=60)
    assert result.verdict is expected
    if expected is Verdict.ILLEGAL:
        assert only_counterexample(result).isolated


def test_etcd_001_counterexample() -> None:
    ce = only_counterexample(check(RegisterModel(), read_operations(DATA / "etcd_001.jsonl")))
    assert ce.explanation == (
        "read() -> 4 by process 7 [t=72..73] cannot follow: the latest possible values are {1}"
    )


# --- the budget --------------------------------------------------------------------------


class _FakeClock:
    """time.monotonic advancing one second per call: the budget runs out on schedule."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1
        return self.now


def test_budget_exhausted_mid_search_gives_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checker, "time", _FakeClock())
    monkeypatch.setattr(checker, "_CLOCK_EVERY", 1)
    # clock reads: check start (1), before the partition (2), partition start (3), then
    # one per search step: the 2nd step reads 5 > deadline 4.5
    ops = history(*(op(0, "write", v, 2 * v, 2 * v + 1) for v in range(5)))
    result = check(RegisterModel(), ops, time_budget_s=3.5)
    assert result.verdict is Verdict.UNKNOWN
    (part,) = result.partitions
    assert part.note == "time budget exhausted after 1 search states"
    assert result.counterexamples == []


def test_tiny_budget_leaves_keys_unchecked_and_unknown() -> None:
    result = check(
        RegisterModel(),
        history(op(0, "write", 1, 0, 1, key="a"), op(0, "write", 1, 2, 3, key="b")),
        time_budget_s=1e-12,
    )
    assert result.verdict is Verdict.UNKNOWN
    assert {p.note for p in result.partitions} == {"not checked: time budget exhausted"}


def test_illegal_beats_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    # key "a" (1 op, checked first) is illegal; key "b" runs out of budget
    monkeypatch.setattr(checker, "time", _FakeClock())
    monkeypatch.setattr(checker, "_CLOCK_EVERY", 1)
    ops = history(
        op(0, "read", 9, 0, 1, key="a"),
        *(op(1, "write", v, 2 * v, 2 * v + 1, key="b") for v in range(50)),
    )
    result = check(RegisterModel(), ops, time_budget_s=12)
    assert [p.verdict for p in result.partitions] == [Verdict.ILLEGAL, Verdict.UNKNOWN]
    assert result.verdict is Verdict.ILLEGAL


# --- generated histories -------------------------------------------------------------------


def generate(
    rng: random.Random,
    n_ops: int,
    keys: int,
    processes: int,
    p_info: float = 0.0,
    values: int = 5,
    spread: int = 40,
) -> list[Record]:
    """A history of a real register executed one operation at a time.

    Each operation takes effect at a distinct instant (10, 20, ...), inside an interval
    [call, ret] reaching up to ``spread`` either side of it, with each process's
    intervals disjoint. An
    ``info`` operation took effect or not at random; some never complete at all.
    """
    owner = [rng.randrange(processes) for _ in range(n_ops)]
    points = [10 * (n + 1) for n in range(n_ops)]
    calls, rets = [0] * n_ops, [0] * n_ops
    last_ret = [-1] * processes
    horizon = [10 * (n_ops + 10)] * processes  # the process's next point, going backwards
    next_point = [0] * n_ops
    for n in reversed(range(n_ops)):  # each op's window ends before its process's next
        next_point[n] = horizon[owner[n]]
        horizon[owner[n]] = points[n]
    for n in range(n_ops):
        p = owner[n]
        calls[n] = rng.randint(max(last_ret[p] + 1, points[n] - spread), points[n])
        rets[n] = rng.randint(points[n], min(points[n] + spread, next_point[n] - 1))
        last_ret[p] = rets[n]
    state: dict[str, int | None] = {}
    events: list[tuple[int, int, Record]] = []
    pids = list(range(processes))
    for n in range(n_ops):
        key = f"k{rng.randrange(keys)}"
        f = rng.choice(["read", "write", "cas"])
        info = rng.random() < p_info
        happened = not info or rng.random() < 0.5
        current = state.get(key)
        arg: Any = None
        result: str = "ok"
        out: Any = None
        if f == "read":
            out = current
        elif f == "write":
            arg = out = rng.randrange(values)
            if happened:
                state[key] = arg
        else:
            arg = out = [rng.choice([None, *range(values)]), rng.randrange(values)]
            if current != arg[0]:
                result = "fail"
            elif happened:
                state[key] = arg[1]
        if info:
            result, out = "info", None
        p = pids[owner[n]]
        events.append((calls[n], 0, _record(p, RecordType.INVOKE, f, key, arg, calls[n])))
        if info and rng.random() < 0.3:
            # never completes at all: like Jepsen, the thread goes on as a new process
            pids[owner[n]] += processes
        else:
            events.append((rets[n], 1, _record(p, RecordType(result), f, key, out, rets[n])))
    events.sort(key=lambda e: (e[0], e[1]))
    return [r for _, _, r in events]


def _record(process: int, rtype: RecordType, f: str, key: str, value: Any, t: int) -> Record:
    return Record(process=process, type=rtype, f=f, key=key, value=value, time=t)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n_ops=st.integers(1, 40),
    keys=st.integers(1, 3),
    processes=st.integers(1, 6),
    p_info=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_histories_of_a_real_register_are_linearizable(
    seed: int, n_ops: int, keys: int, processes: int, p_info: float
) -> None:
    records = generate(random.Random(seed), n_ops, keys, processes, p_info)
    assert check(RegisterModel(), records).verdict is Verdict.OK


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n_ops=st.integers(1, 40),
    keys=st.integers(1, 3),
    processes=st.integers(1, 6),
    p_info=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_a_read_of_a_value_never_written_is_illegal_and_blamed(
    seed: int, n_ops: int, keys: int, processes: int, p_info: float
) -> None:
    rng = random.Random(seed)
    records = generate(rng, n_ops, keys, processes, p_info)
    reads = [n for n, r in enumerate(records) if r.f == "read" and r.type is RecordType.OK]
    if not reads:
        return
    n = rng.choice(reads)
    records[n] = Record(**{**records[n].to_json(), "type": RecordType.OK, "value": 999})
    result = check(RegisterModel(), records)
    assert result.verdict is Verdict.ILLEGAL
    ce = only_counterexample(result)
    assert ce.isolated
    assert (ce.blocking.output, ce.blocking.process, ce.blocking.ret) == (
        999,
        records[n].process,
        records[n].time,
    )
    assert ce.explanation.startswith("read() -> 999 by process")


# --- against a brute-force oracle ---------------------------------------------------------


def linearizable_by_brute_force(ops: Sequence[Operation]) -> bool:
    """Try every subset of unknown-outcome ops with every order: the definition, slowly."""
    model = RegisterModel()
    known = [o for o in ops if o.status is Status.OK]
    unknown = [o for o in ops if o.status is Status.INFO]
    for r in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, r):
            for order in itertools.permutations([*known, *chosen]):
                if any(b.ret < a.call for a, b in itertools.combinations(order, 2)):
                    continue  # b returned before a was called, yet a is placed first
                state: Hashable = model.init()
                for o in order:
                    ok, state = model.step(state, o.input, o.output)
                    if not ok:
                        break
                else:
                    return True
    return False


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for n in range(draw(st.integers(1, 6))):
        f = draw(st.sampled_from(["read", "write", "cas"]))
        call = draw(st.integers(0, 8))
        info = draw(st.integers(0, 3)) == 0
        value: Hashable = None
        if f == "write":
            value = draw(st.integers(0, 2))
        elif f == "cas":
            value = (draw(st.sampled_from([None, 0, 1, 2])), draw(st.integers(0, 2)))
        output: Hashable = UNKNOWN if info else value
        if f == "read" and not info:
            output = draw(st.sampled_from([None, 0, 1, 2]))
        ops.append(
            Operation(
                index=n,
                line=n + 1,
                process=n,
                f=f,
                key="x",
                call=call,
                ret=math.inf if info else call + draw(st.integers(0, 6)),
                input=OpInput(f, value),
                output=output,
                status=Status.INFO if info else Status.OK,
            )
        )
    return ops


@settings(max_examples=400, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    expected = Verdict.OK if linearizable_by_brute_force(ops) else Verdict.ILLEGAL
    result = check(RegisterModel(), ops)
    assert result.verdict is expected
    if expected is Verdict.OK:
        return
    # The culprit: the history cut at its return is not linearizable, and (when found by
    # search) the history cut at the return just before it is.
    ce = only_counterexample(result)
    assert ce.isolated
    part = RegisterModel().partition(ops)["x"]
    cuts = sorted((o.ret, n) for n, o in enumerate(part) if o.status is Status.OK)
    at = next(c for c, (_, n) in enumerate(cuts) if part[n].index == ce.blocking.index)
    assert not linearizable_by_brute_force(checker._prefix(part, cuts[at]))
    if "cannot be linearized" not in ce.explanation and at > 0:
        assert linearizable_by_brute_force(checker._prefix(part, cuts[at - 1]))


# --- speed (measured and printed, never asserted) -------------------------------------------


def test_speed_10k_ops_5_keys_20_processes(capsys: pytest.CaptureFixture[str]) -> None:
    records = generate(random.Random(42), 10_000, keys=5, processes=20, p_info=0.05)
    ops = pair_operations(records)
    started = time.perf_counter()
    result = check(RegisterModel(), ops, time_budget_s=300)
    elapsed = time.perf_counter() - started
    assert result.verdict is Verdict.OK
    with capsys.disabled():
        print(
            f"\n[speed] check(): {len(ops)} ops, 5 keys, 20 processes, "
            f"{sum(o.status is Status.INFO for o in ops)} info: {elapsed:.3f}s"
        )
