"""Sequential specifications for the linearizability checker, porcupine-style.

A model is a pure state machine: ``step(state, input, output)`` says whether an operation
with that input could have returned that output in that state, and what the state becomes.
The checker only ever compares states for equality and hashes them (memoisation), so a
state must be an immutable, hashable value; ``step`` must be a pure function.

``partition`` splits a history into independent sub-histories (one per key for a
key-value store). Linearizability is compositional (Herlihy & Wing's locality): a history
is linearizable iff each per-object sub-history is, so checking keys apart turns one
exponential search into several small ones.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Final, Protocol, cast

from jepsen_like.history import COMPARE_FAILED, UNKNOWN, Operation, OpInput, Status

__all__ = ["MODELS", "Model", "RegisterModel", "get_model"]


class Model(Protocol):
    """What the checker needs of a sequential specification."""

    #: Model name, as chosen on the command line.
    name: str
    #: What a state is called in explanations ("values" for a register).
    state_noun: str

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def step(
        self, state: Hashable, op_input: OpInput, op_output: Hashable
    ) -> tuple[bool, Hashable]:
        """(whether the operation is legal in ``state``, the state after it).

        ``op_output`` is ``UNKNOWN`` for an operation whose response was never seen: the
        step must then accept every outcome the input allows.
        """
        ...

    def is_read_only(self, op_input: OpInput) -> bool:
        """True if ``step`` never changes the state for this input, in any state. The
        checker then places such an operation as soon as it is legal, without branching
        (placing an observer early never hurts), which tames concurrent reads."""
        ...

    def never_legal(self, ops: Sequence[Operation]) -> dict[int, str]:
        """Known-outcome operations (by position in ``ops``) that are illegal in every
        state any of ``ops`` could produce, each with a reason. A cheap, sound refutation
        run before the search, whose exhaustive proof of the same could take forever."""
        ...

    def partition(self, ops: Sequence[Operation]) -> dict[str, list[Operation]]:
        """Independent sub-histories by name (key). May drop operations that can neither
        be illegal nor change the state, which only cost search time."""
        ...

    def describe(self, op: Operation) -> str:
        """A short human description such as ``cas(1, 2)`` or ``read() -> 3``."""
        ...

    def describe_state(self, state: Hashable) -> str:
        """A short human description of a state."""
        ...


def _show(value: Hashable) -> str:
    return "nil" if value is None else repr(value)


def _is_noop_cas(value: Hashable) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]


class RegisterModel:
    """One read/write/cas register per key, initially None.

    - ``read``: legal iff the value read equals the state; an unknown read is always legal
      (and is dropped by ``partition``, as is an unknown ``cas [v, v]``: neither can
      change the state, so neither constrains anything).
    - ``write``: always legal; the state becomes the value.
    - ``cas [expected, new]``: an ok cas succeeded, so it is legal iff the state equals
      ``expected``, and the state becomes ``new``. A cas whose compare failed (``fail``
      without an ``error``; output ``COMPARE_FAILED``) is legal iff the state differs
      from ``expected`` and changes nothing; one that failed for another reason is
      excluded by the checker. An unknown cas is always legal: it takes effect iff the
      comparison holds at the point where it is linearized.

    NB: values compare with Python ``==``, so JSON ``1``, ``1.0`` and ``true`` are equal.
    """

    name = "register"
    state_noun = "values"

    def init(self) -> Hashable:
        return None

    def step(
        self, state: Hashable, op_input: OpInput, op_output: Hashable
    ) -> tuple[bool, Hashable]:
        f, value = op_input
        if f == "read":
            return (op_output is UNKNOWN or op_output == state), state
        if f == "write":
            return True, value
        if f == "cas":
            expected, new = cast(tuple[Hashable, Hashable], value)
            if op_output is UNKNOWN:
                return True, (new if state == expected else state)
            if op_output is COMPARE_FAILED:  # the compare ran and did not hold
                return state != expected, state
            return state == expected, new
        raise ValueError(f"register model: unsupported operation {f!r}")

    def is_read_only(self, op_input: OpInput) -> bool:
        return op_input.f == "read" or (op_input.f == "cas" and _is_noop_cas(op_input.value))

    def never_legal(self, ops: Sequence[Operation]) -> dict[int, str]:
        # every value the register can ever hold: nil, and what may have been written
        values: set[Hashable] = {None}
        for op in ops:
            if op.f == "write":
                values.add(op.input.value)
            elif op.f == "cas" and isinstance(op.input.value, tuple):
                values.add(op.input.value[1])
        found: dict[int, str] = {}
        for n, op in enumerate(ops):
            if op.status is not Status.OK:
                continue
            nobody = "no operation that may have taken effect writes"
            value = op.input.value
            if op.f == "read" and op.output not in values:
                found[n] = f"{nobody} {_show(op.output)}"
            elif op.f == "cas" and isinstance(value, tuple) and value[0] not in values:
                found[n] = f"{nobody} {_show(value[0])}, the value it expected"
        return found

    def partition(self, ops: Sequence[Operation]) -> dict[str, list[Operation]]:
        parts: dict[str, list[Operation]] = {}
        for op in ops:
            if op.f not in ("read", "write", "cas"):
                raise ValueError(
                    f"register model: unsupported operation {op.f!r} (line {op.line}); "
                    "supported: read, write, cas"
                )
            if op.status is Status.INFO and (
                op.f == "read" or (op.f == "cas" and _is_noop_cas(op.input.value))
            ):
                continue  # unknown and state-preserving: it constrains nothing
            parts.setdefault(op.key, []).append(op)
        return parts

    def describe(self, op: Operation) -> str:
        value = op.input.value
        if op.f == "read":
            out = "?" if op.output is UNKNOWN else _show(op.output)
            return f"read() -> {out}"
        suffix = " ?" if op.status is Status.INFO else ""
        if op.output is COMPARE_FAILED:
            suffix = " -> compare failed"
        if op.f == "cas" and isinstance(value, tuple) and len(value) == 2:
            return f"cas({_show(value[0])}, {_show(value[1])}){suffix}"
        return f"{op.f}({_show(value)}){suffix}"

    def describe_state(self, state: Hashable) -> str:
        return _show(state)


MODELS: Final[dict[str, Callable[[], Model]]] = {"register": RegisterModel}


def get_model(name: str) -> Model:
    """The model registered under ``name``; ValueError naming the choices otherwise."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}"
        ) from None
    return factory()
