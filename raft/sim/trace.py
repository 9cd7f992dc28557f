"""The simulator's flight recorder: the last N events, rendered only when needed.

A failing seed is only useful if the report shows what led up to the failure, so
every simulator event and every line the core traces lands here. Rendering a
message with ``describe_message`` on every hop would dominate the run time, so the
ring stores the (immutable) objects and renders them when a report is printed. With
``keep_all`` the whole history is kept, which the determinism test compares.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from raft.core.ready import Ready
from raft.describe import describe_message, describe_ready
from raft.messages import MESSAGE_TYPES

_Record = tuple[int, str, str, Any]


def _one_line(text: str) -> str:
    """Fold a multi-line ``describe_ready`` into ``A: x, y | B: z``."""
    return text.replace(":\n  ", ": ").replace("\n  ", ", ").replace("\n", " | ")


def _render(rec: _Record) -> str:
    now, who, verb, obj = rec
    if obj is None:
        text = verb
    elif isinstance(obj, str):
        text = f"{verb} {obj}" if verb else obj
    elif isinstance(obj, Ready):  # one line per event: fold describe_ready's sections
        text = f"{verb} " + _one_line(describe_ready(obj))
    elif isinstance(obj, MESSAGE_TYPES):
        text = f"{verb} {describe_message(obj)}"  # type: ignore[arg-type]
    else:
        text = f"{verb} {obj!r}"
    return f"{now:>8}ms {who:<6} {text}"


class Trace:
    """Ring buffer of ``(virtual ms, who, verb, object)`` records."""

    def __init__(self, capacity: int = 200, keep_all: bool = False) -> None:
        self._ring: deque[_Record] = deque(maxlen=capacity)
        self._all: list[_Record] | None = [] if keep_all else None

    def add(self, now: int, who: str, verb: str, obj: Any = None) -> None:
        """Record one event; ``obj`` (a str, Message or Ready) is rendered lazily."""
        rec = (now, who, verb, obj)
        self._ring.append(rec)
        if self._all is not None:
            self._all.append(rec)

    def lines(self) -> list[str]:
        """The most recent records, oldest first, rendered."""
        return [_render(r) for r in self._ring]

    def full(self) -> list[str]:
        """Every record of the run (only with ``keep_all``)."""
        if self._all is None:
            raise RuntimeError("trace was not created with keep_all=True")
        return [_render(r) for r in self._all]


def replay_command(seed: int, nodes: int, steps: int) -> str:
    return f"python -m raft.sim --seed {seed} --nodes {nodes} --steps {steps}"


def failure_report(
    seed: int, nodes: int, steps: int, invariant: str, message: str, lines: list[str]
) -> str:
    """The text printed for a failing seed: what broke, what led up to it, and the
    exact command that replays it."""
    out = [
        f"seed={seed} nodes={nodes} steps={steps}",
        f"VIOLATION [{invariant}]: {message}",
        f"--- last {len(lines)} events ---",
        *lines,
        "--- replay ---",
        replay_command(seed, nodes, steps),
    ]
    return "\n".join(out)
