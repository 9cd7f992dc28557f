"""What the watch and lock checkers share: a bounded collection of anomaly examples and
small helpers for reading frozen history values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, TypeGuard

from jepsen_like.history import Operation

__all__ = ["MAX_EXAMPLES", "Anomalies", "Make", "is_int", "ref"]

MAX_EXAMPLES: Final = 20  # examples kept per anomaly kind (counts are not capped)

Make = Callable[[], dict[str, Any]]


class Anomalies:
    """Counts every anomaly, keeps the first MAX_EXAMPLES examples of each kind; an
    example is built only if kept (``make`` is called lazily), so a badly broken run
    costs counting, not formatting."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = tuple(kinds)
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.counts: dict[str, int] = {}

    def add(self, kind: str, make: Make) -> None:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        if n < MAX_EXAMPLES:
            self.examples.setdefault(kind, []).append(make())

    def ordered(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
        """Examples and counts, kinds in the checker's declared order."""
        order = [k for k in self.kinds if k in self.counts]
        return {k: self.examples[k] for k in order}, {k: self.counts[k] for k in order}


def ref(op: Operation) -> str:
    """How an explanation names an operation: its process and history line."""
    return f"process {op.process}, line {op.line}"


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (JSON's true is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
