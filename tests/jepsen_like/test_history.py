"""History records: the JSONL gateway's validation, and pairing into operations."""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jepsen_like.history import (
    UNKNOWN,
    HistoryError,
    OpInput,
    Record,
    RecordType,
    Status,
    dump_history,
    freeze,
    load_history,
    load_operations,
    pair_operations,
    read_history,
    read_operations,
    write_history,
)


def rec(process: int, rtype: str, f: str, value: Any, time: int, key: str = "x") -> dict[str, Any]:
    return {"process": process, "type": rtype, "f": f, "key": key, "value": value, "time": time}


def lines(*records: dict[str, Any]) -> list[str]:
    return [json.dumps(r) + "\n" for r in records]


def test_round_trip_through_a_file(tmp_path: Any) -> None:
    records = load_history(
        lines(
            rec(0, "invoke", "write", 1, 0),
            rec(1, "invoke", "cas", [1, 2], 1),
            rec(0, "ok", "write", 1, 2),
            rec(1, "info", "cas", None, 9),
        )
    )
    path = tmp_path / "h.jsonl"
    write_history(records, path)
    assert read_history(path) == records
    stream = io.StringIO()
    write_history(records, stream)
    stream.seek(0)
    assert read_history(stream) == records


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@given(
    st.lists(
        st.builds(
            Record,
            process=st.integers(0, 5),
            type=st.sampled_from(list(RecordType)),
            f=st.sampled_from(["read", "write"]),
            key=st.text(max_size=3),
            value=json_values,
            time=st.integers(0, 10**12),
        ),
        max_size=8,
    )
)
def test_dump_then_parse_gives_the_records_back(records: list[Record]) -> None:
    from jepsen_like.history import _numbered_records

    assert [r for _, r in _numbered_records(dump_history(records))] == records


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "line 1: invalid JSON"),
        ("[1, 2]", "line 1: expected a JSON object, got list"),
        ('{"process": 0, "type": "invoke"}', "line 1: missing field(s) f, key, value, time"),
        (json.dumps(rec(True, "invoke", "read", None, 0)), "process must be an integer"),
        (json.dumps(rec(0, "begin", "read", None, 0)), "type must be one of invoke, ok"),
        (json.dumps(rec(0, "invoke", "", None, 0)), "f must be a non-empty string"),
        (json.dumps(rec(0, "invoke", "read", None, 0, key=3)), "key must be a string"),  # type: ignore[arg-type]
        (json.dumps(rec(0, "invoke", "read", None, -1)), "time must be a non-negative integer"),
        (json.dumps(rec(0, "invoke", "read", None, 1.5)), "time must be a non-negative integer"),  # type: ignore[arg-type]
        (json.dumps(rec(0, "invoke", "cas", 3, 0)), "cas value must be [expected, new]"),
    ],
)
def test_bad_lines_are_rejected_naming_the_line(text: str, message: str) -> None:
    good = json.dumps(rec(9, "invoke", "read", None, 0)) + "\n"
    with pytest.raises(HistoryError, match=re.escape(message)) as exc:
        load_history([text + "\n"])
    assert exc.value.line == 1
    # and the number counts real lines, blank ones included
    with pytest.raises(HistoryError, match="line 3:"):
        load_history([good, "\n", text + "\n"])


def test_a_completion_without_an_invoke_is_rejected() -> None:
    with pytest.raises(
        HistoryError, match=r"line 2: ok completion for process 1 without an invoke"
    ):
        load_history(lines(rec(0, "invoke", "read", None, 0), rec(1, "ok", "read", 3, 1)))


def test_two_outstanding_invokes_of_one_process_are_rejected() -> None:
    with pytest.raises(HistoryError, match=r"line 3: process 0 invokes while its invoke on line 1"):
        load_history(
            lines(
                rec(0, "invoke", "read", None, 0),
                rec(1, "invoke", "read", None, 1),
                rec(0, "invoke", "write", 2, 2),
            )
        )


def test_a_completion_must_match_its_invoke() -> None:
    with pytest.raises(HistoryError, match=r"line 2: completion write on key 'x' does not match"):
        load_history(lines(rec(0, "invoke", "read", None, 0), rec(0, "ok", "write", 3, 1)))
    with pytest.raises(
        HistoryError, match=r"does not match the invoke on line 1 \(read on key 'x'\)"
    ):
        load_history(lines(rec(0, "invoke", "read", None, 0), rec(0, "ok", "read", 3, 1, key="y")))
    with pytest.raises(HistoryError, match=r"line 2: completion at t=4 precedes its invoke at t=5"):
        load_history(lines(rec(0, "invoke", "read", None, 5), rec(0, "ok", "read", 3, 4)))


def test_pairing_gives_one_operation_per_invoke_in_invoke_order() -> None:
    ops = load_operations(
        lines(
            rec(0, "invoke", "write", 1, 10),
            rec(1, "invoke", "read", None, 11),
            rec(2, "invoke", "cas", [1, 2], 12),
            rec(3, "invoke", "cas", [7, 8], 13),
            rec(1, "ok", "read", 1, 20),
            rec(0, "info", "write", None, 30),
            rec(2, "ok", "cas", [1, 2], 31),
            rec(3, "fail", "cas", [7, 8], 32),
            rec(1, "invoke", "write", 5, 40),  # never completes
        )
    )
    assert [op.index for op in ops] == [0, 1, 2, 3, 4]
    assert [op.line for op in ops] == [1, 2, 3, 4, 9]
    write, read, cas, failed_cas, pending = ops
    assert (write.status, write.call, write.ret, write.output) == (
        Status.INFO,
        10,
        math.inf,
        UNKNOWN,
    )
    assert (read.status, read.ret, read.input, read.output) == (
        Status.OK,
        20,
        OpInput("read", None),
        1,
    )
    assert cas.input == OpInput("cas", (1, 2))  # frozen: hashable for model states
    assert failed_cas.status is Status.FAIL
    assert (pending.status, pending.ret, pending.process) == (Status.INFO, math.inf, 1)


def test_pair_operations_validates_records_too() -> None:
    records = [
        Record(process=0, type=RecordType.OK, f="read", key="x", value=None, time=0),
    ]
    with pytest.raises(HistoryError, match="line 1: ok completion for process 0 without an invoke"):
        pair_operations(records)


def test_read_operations_keeps_true_line_numbers(tmp_path: Any) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(
        "".join(lines(rec(0, "invoke", "write", 1, 0)))
        + "\n"
        + "".join(lines(rec(0, "ok", "write", 1, 1), rec(0, "invoke", "read", None, 2)))
    )
    assert [op.line for op in read_operations(path)] == [1, 4]


def test_freeze_makes_json_values_hashable() -> None:
    value = freeze({"b": [1, [2]], "a": None})
    assert value == (("a", None), ("b", (1, (2,))))
    hash(value)
