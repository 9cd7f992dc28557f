"""Independent observations that a fault took effect, and the evidence they make.

Theory of operation
-------------------
A nemesis that *says* it killed a node proves nothing: the harness once logged "wiped"
while the node came back with its whole log, because the harness and the node disagreed
about where the data lived. So every fault, once applied, is checked by looking at the
world from another side than the one that made the fault:

- a process's fate from the kernel (``/proc/PID/stat``: absent or a zombie after a
  kill, state ``T`` after SIGSTOP, anything else after SIGCONT or a restart);
- the files a node really has open (``/proc/PID/fd``), which say where *it* keeps its
  Raft state and its log, whatever the harness believes;
- what a restarted node says it recovered from disk (its own ``started at term T,
  snapshot S, N log entries`` log line, attributed to the new process by the
  ``serving (pid P)`` line that follows it);
- a probe through a cut link: a connection to the address the *node's own config* says
  it dials, a malformed hello written into it. An open link ends it at once (the
  receiver refuses the hello, or the proxy cannot reach a dead receiver: EOF either
  way); a cut link gives silence;
- the proxies' counters (chunks actually held back by latency, connections reset and
  redialled).

Each observation is a :class:`Check` (what was looked at, whether it showed the fault in
effect, what was seen). An :class:`Evidence` gathers a fault's checks: ``verified``
when there is at least one and all hold, ``unverified`` otherwise, ``not-applied`` when
the fault itself says it injected nothing (no leader to transfer from, no running node
to pause) or found nothing to act on (a delay while no traffic crossed any link: what
could be checked, that every link was set, holds), ``superseded`` when it was applied
but another fault kept anyone from seeing it (the node it acted on killed or paused
by another group for the whole wait, said in the notes), ``error`` when the fault
raised. The
runner makes a run whose faults are not all verified or not-applied end ``unknown``,
never ``valid``.

The functions take the ``/proc`` root as a parameter, so tests feed them fake trees.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

__all__ = [
    "PROC",
    "Check",
    "Evidence",
    "Startup",
    "dir_listing",
    "eventually",
    "open_paths",
    "probe_link",
    "proc_state",
    "startups",
    "terms_led",
]

PROC: Final = Path("/proc")
DEAD_STATES: Final = frozenset({None, "Z", "X", "x"})
"""/proc states of a process that no longer runs (None: no /proc entry at all)."""
PROBE_HELLO: Final = struct.pack(">I", 5) + b"probe"
"""One length-prefixed frame that is no peer's hello: a receiver refuses it and closes."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Check:
    """One observation: ``ok`` when it shows the fault (or its heal) in effect."""

    check: str
    ok: bool
    observed: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "observed": self.observed}


@dataclass(slots=True)
class Evidence:
    """The checks of one fault's start (or stop)."""

    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be looked at, and why
    not_applied: str | None = None  # the fault's own word that it injected nothing
    # Applied, but another fault (named in the notes) kept anyone from seeing it: a
    # node down or paused by another group for the whole wait (--nemesis all).
    superseded: str | None = None
    error: str | None = None
    took_ms: float = 0.0

    def add(self, check: str, ok: bool, observed: Any = None) -> bool:
        self.checks.append(Check(check, bool(ok), observed))
        return bool(ok)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.not_applied is not None and all(c.ok for c in self.checks):
            return "not-applied"  # what could be checked holds; nothing to act on
        if self.superseded is not None and all(c.ok for c in self.checks):
            return "superseded"
        if self.checks and all(c.ok for c in self.checks):
            return "verified"
        return "unverified"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "checks": [c.to_json() for c in self.checks]}
        if self.notes:
            out["notes"] = self.notes
        if self.not_applied is not None:
            out["not_applied"] = self.not_applied
        if self.superseded is not None:
            out["superseded"] = self.superseded
        if self.error is not None:
            out["error"] = self.error
        out["took_ms"] = self.took_ms
        return out

    @classmethod
    def nothing(cls, reason: str) -> Evidence:
        return cls(not_applied=reason)


# ---- processes ----------------------------------------------------------------------


def proc_state(pid: int, proc: Path = PROC) -> str | None:
    """The state letter of ``pid`` in ``proc/PID/stat`` (``R``, ``S``, ``T``, ``Z``...), or
    None when there is no such entry (the process is gone and reaped)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses, so split at the last ")".
    rest = stat[stat.rfind(")") + 1 :].split()
    return rest[0] if rest else None


def open_paths(pid: int, proc: Path = PROC) -> list[str]:
    """The files ``pid`` has open (``proc/PID/fd/*`` link targets), sorted; [] if none
    can be read."""
    try:
        fds = list((proc / str(pid) / "fd").iterdir())
    except OSError:
        return []
    out = set()
    for fd in fds:
        try:
            out.add(os.readlink(fd))
        except OSError:
            continue
    return sorted(p for p in out if p.startswith("/"))


def dir_listing(path: Path) -> list[str] | None:
    """Names in ``path`` (sorted), or None when it does not exist."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None


# ---- a node's own account of its start ------------------------------------------------

_STARTED = re.compile(r": started at term (\d+), snapshot (\d+), (\d+) log entries")
_SERVING = re.compile(r": serving \(pid (\d+)\)")
_LEADING = re.compile(r": lessor promoted in term (\d+)")


@dataclass(frozen=True, slots=True)
class Startup:
    """What a node process logged recovering from disk: the Raft state it found."""

    pid: int | None  # from the "serving (pid P)" line that follows; None if not yet logged
    term: int
    snapshot: int
    entries: int

    @property
    def recovered_index(self) -> int:
        """The last log index it recovered (0: nothing at all on disk)."""
        return self.snapshot + self.entries

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "term": self.term,
            "snapshot": self.snapshot,
            "entries": self.entries,
            "recovered_index": self.recovered_index,
        }


def startups(text: str) -> list[Startup]:
    """Every start a node's log records, in order, each with the pid that then served."""
    found: list[Startup] = []
    pending: tuple[int, int, int] | None = None
    for line in text.splitlines():
        if m := _STARTED.search(line):
            if pending is not None:
                found.append(Startup(None, *pending))
            pending = (int(m[1]), int(m[2]), int(m[3]))
        elif (m := _SERVING.search(line)) and pending is not None:
            found.append(Startup(int(m[1]), *pending))
            pending = None
    if pending is not None:
        found.append(Startup(None, *pending))
    return found


def terms_led(text: str) -> list[int]:
    """The terms a node's log says it led (its lessor is promoted once per term it
    leads): evidence of leadership that a later election cannot take back."""
    return [int(m[1]) for line in text.splitlines() if (m := _LEADING.search(line))]


# ---- links --------------------------------------------------------------------------


async def probe_link(address: tuple[str, int], timeout: float) -> dict[str, Any]:
    """Dial ``address`` (where a node dials a peer), write a malformed hello and wait up
    to ``timeout`` s. ``reached``: something came back or the connection ended or was
    refused (an open path: the receiver refused the hello, or nothing listens). Not
    reached: silence, as through a cut link (or to a SIGSTOPped receiver, whose kernel
    still accepts: callers must not probe a paused node)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    except TimeoutError:
        return {"reached": False, "observed": f"connect silent for {timeout * 1000:.0f} ms"}
    except OSError as exc:
        return {"reached": True, "observed": f"connect refused: {exc.strerror or exc!r}"}
    try:
        writer.write(PROBE_HELLO)
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(64), timeout)
        except TimeoutError:
            return {"reached": False, "observed": f"silence for {timeout * 1000:.0f} ms"}
        except OSError as exc:
            data, reset = b"", exc
        else:
            reset = None
        ms = (time.monotonic() - started) * 1000
        what = "reset" if reset is not None else ("reply" if data else "EOF")
        return {"reached": True, "observed": f"{what} after {ms:.0f} ms"}
    finally:
        writer.transport.abort()


async def eventually(
    observe: Callable[[], T | Awaitable[T]],
    holds: Callable[[T], bool],
    timeout: float,
    every: float = 0.02,
) -> tuple[bool, T]:
    """Observe until ``holds`` or ``timeout`` s pass; returns (held, last observation).
    Signals and restarts take effect asynchronously: a SIGSTOP is delivered, a restarted
    node logs its start, a little after the call that caused them returns."""
    deadline = time.monotonic() + timeout
    while True:
        value = observe()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if holds(value):  # type: ignore[arg-type]
            return True, value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            return False, value  # type: ignore[return-value]
        await asyncio.sleep(every)
