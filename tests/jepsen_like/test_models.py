"""The register model: its step table, partitioning, descriptions."""

from __future__ import annotations

import math
from collections.abc import Hashable

import pytest

from jepsen_like.history import UNKNOWN, Operation, OpInput, Status
from jepsen_like.models import MODELS, Model, RegisterModel, get_model


def op(
    f: str,
    value: Hashable = None,
    output: Hashable = None,
    *,
    key: str = "x",
    status: Status = Status.OK,
    index: int = 0,
) -> Operation:
    return Operation(
        index=index,
        line=index + 1,
        process=0,
        f=f,
        key=key,
        call=0,
        ret=math.inf if status is Status.INFO else 1,
        input=OpInput(f, value),
        output=UNKNOWN if status is Status.INFO else output,
        status=status,
    )


@pytest.mark.parametrize(
    ("state", "f", "value", "output", "expected"),
    [
        # reads: legal iff they return the state; None is the never-written value
        (None, "read", None, None, (True, None)),
        (None, "read", None, 0, (False, None)),
        (3, "read", None, 3, (True, 3)),
        (3, "read", None, 4, (False, 3)),
        (3, "read", None, UNKNOWN, (True, 3)),
        # writes: always legal
        (3, "write", 5, 5, (True, 5)),
        (None, "write", 5, UNKNOWN, (True, 5)),
        # an ok cas succeeded: legal only if the comparison held
        (1, "cas", (1, 2), (1, 2), (True, 2)),
        (3, "cas", (1, 2), (1, 2), (False, 2)),
        # an unknown cas applies iff the comparison holds where it lands
        (1, "cas", (1, 2), UNKNOWN, (True, 2)),
        (3, "cas", (1, 2), UNKNOWN, (True, 3)),
        (None, "cas", (None, 2), UNKNOWN, (True, 2)),
    ],
)
def test_register_step(
    state: Hashable, f: str, value: Hashable, output: Hashable, expected: tuple[bool, Hashable]
) -> None:
    assert RegisterModel().step(state, OpInput(f, value), output) == expected


def test_register_starts_unwritten_and_rejects_unknown_functions() -> None:
    model = RegisterModel()
    assert model.init() is None
    with pytest.raises(ValueError, match="unsupported operation 'append'"):
        model.step(None, OpInput("append", 1), None)


def test_register_states_are_hashable_values() -> None:
    model = RegisterModel()
    ok, state = model.step(model.init(), OpInput("write", (1, (2, 3))), None)
    assert ok
    assert {state, state} == {(1, (2, 3))}


def test_partition_splits_by_key_and_drops_what_constrains_nothing() -> None:
    ops = [
        op("write", 1, key="a", index=0),
        op("read", None, 1, key="b", index=1),
        op("read", key="a", status=Status.INFO, index=2),  # unknown read: no information
        op("cas", (2, 2), key="a", status=Status.INFO, index=3),  # unknown no-op cas
        op("cas", (2, 3), key="b", status=Status.INFO, index=4),
        op("cas", (2, 2), (2, 2), key="b", index=5),  # an ok cas(2, 2) still says "was 2"
    ]
    parts = RegisterModel().partition(ops)
    assert {k: [o.index for o in v] for k, v in parts.items()} == {"a": [0], "b": [1, 4, 5]}


def test_partition_rejects_functions_the_model_does_not_know() -> None:
    with pytest.raises(ValueError, match=r"unsupported operation 'append' \(line 1\)"):
        RegisterModel().partition([op("append", "x")])


@pytest.mark.parametrize(
    ("operation", "text"),
    [
        (op("read", None, 3), "read() -> 3"),
        (op("read", None, None), "read() -> nil"),
        (op("read", status=Status.INFO), "read() -> ?"),
        (op("write", "v"), "write('v')"),
        (op("write", 2, status=Status.INFO), "write(2) ?"),
        (op("cas", (None, 2), (None, 2)), "cas(nil, 2)"),
        (op("cas", (1, 2), status=Status.INFO), "cas(1, 2) ?"),
    ],
)
def test_describe(operation: Operation, text: str) -> None:
    assert RegisterModel().describe(operation) == text


def test_models_are_found_by_name() -> None:
    model: Model = get_model("register")
    assert isinstance(model, RegisterModel)
    assert model.name == "register" and "register" in MODELS
    with pytest.raises(ValueError, match="unknown model 'set'; choose from register"):
        get_model("set")
