"""Per-node clocks under libfaketime, and reading a node's clocks back.

Theory of operation
-------------------
Clock faults need no root: each node process runs under libfaketime (Debian's
``faketime`` package), ``LD_PRELOAD``-ed by an ``env`` wrapper that execs the node (so
the pid is still the node's), with

- ``FAKETIME_TIMESTAMP_FILE=<run>/clock/<node>.faketime`` and ``FAKETIME_NO_CACHE=1``:
  every clock call re-reads that node's file, so the harness moves one node's clock by
  rewriting one file (atomically: a temporary file renamed over it);
- ``DONT_FAKE_MONOTONIC=1``: only the wall clock (CLOCK_REALTIME) moves. With the
  monotonic clock faked too, an offset written to the file steps ``time.monotonic()``
  with it, backwards as well, which no real clock does. Steps, offsets and strobes
  therefore move the wall clock only, as a real clock step does; so does drift (see
  below). The price: ``time.sleep`` fails with EINVAL in such a process (libfaketime
  intercepts its clock_nanosleep). The node never calls it: asyncio's timers sleep in
  epoll_wait. libfaketime's own preload would also break ``kv node`` if it did;
- ``FAKETIME_DISABLE_SHM=1``: no shared-memory segment per process (a SIGKILLed node
  would leave one in /dev/shm, and a later process given the same pid would fail);
- ``NO_FAKE_STAT=1``: file timestamps are left alone (faking them re-reads the clock
  file on every stat);
- ``FAKETIME_FORCE_MONOTONIC_FIX=0``: timed waits on monotonic condition variables,
  the GIL's among them, wait as asked (see **Cost**).

The file always holds ``<offset seconds> x<rate>``, explicit rate included: libfaketime
keeps the previous rate when a line has none. Measured (0.9.10), for one process that
started at real time ``S``, with that line the wall clock reads
``real + offset + (real - S) * (rate - 1)``: a pure function of the line, so a paused
or restarted node picks up whatever the file says when it next reads the clock. A rate
therefore applies from the process's start, and starting drift at ``t0`` without a
step needs ``offset = -(t0 - S) * (rate - 1)``; ``S`` is read from ``/proc/PID/stat``
(its start, in clock ticks since boot, against CLOCK_BOOTTIME: 10 ms resolution, 0.1 ms
of error at 1% drift). ``FAKETIME_XRESET`` was tried and rejected: its rate changes
depend on which lines the process happened to read, and a line with an offset and an
unchanged rate was ignored.

**Drift moves the wall clock only**, at most 1% fast or slow. Faking the monotonic
clock for drift would make every step and offset move it too (the variables are read
once, at the process's start), so a node cannot have both; the lessor's tolerance of a
monotonic clock 1% fast is exercised by the KV simulation instead (docs/TESTING.md).

**Cost.** libfaketime also wraps ``pthread_cond_timedwait``, and by default (0.9.10 on
this glibc) it "fixes" monotonic condition variables in a way that makes every timed
wait on one return at once. CPython's GIL is such a wait (5 ms, CLOCK_MONOTONIC): a
thread waiting for the GIL spun, forcing the event loop to drop it every few
instructions, and a node served ~12 puts/s instead of ~450 (one client; strace showed
the waiting thread in a loop of clock-file reads and futex wakes, never a futex wait).
``FAKETIME_FORCE_MONOTONIC_FIX=0`` turns that off; timed waits then wait as long as
asked. With it a node serves about half its plain rate (one client: 222 puts/s against
457; 16 clients: 1,824 against 2,686; ``kv bench --duration 5``), the rest being the
clock-file read on every faked call: with ``FAKETIME_NO_CACHE=1`` ``time.time()`` costs
~1.5-4 µs instead of ~50 ns (``time.monotonic()``, not faked, is unchanged). The cache
(10 s by default) would delay every fault by up to its duration, so it stays off.

**Read-back.** :func:`read_clocks` asks the node for its ``status``, whose answer holds
the node's own ``time.time()`` and ``time.monotonic()`` in ms, and compares each with
the harness's own clocks, read just before and after (the midpoint; half the round
trip is the error). CLOCK_MONOTONIC is one clock for the whole machine, so a node's
monotonic reading equals the harness's when it is not faked.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = [
    "LIBFAKETIME",
    "ClockRead",
    "NodeClocks",
    "Setting",
    "available",
    "process_start",
    "read_clocks",
]

LIBFAKETIME: Final = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
MAX_DRIFT: Final = 0.01
"""The largest rate error a clock fault gives a wall clock (1%)."""


def available(lib: Path = LIBFAKETIME) -> bool:
    return lib.is_file()


def process_start(pid: int, proc: Path = Path("/proc")) -> float:
    """The real wall-clock time (s) at which ``pid`` started."""
    stat = (proc / str(pid) / "stat").read_text()
    start_ticks = int(stat[stat.rfind(")") + 2 :].split()[19])  # field 22: starttime
    since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - since_start


@dataclass(frozen=True, slots=True)
class Setting:
    """What a node's wall clock is told: ``offset`` s from true time now, running at
    ``rate`` (1.0: true rate) from ``since`` (harness wall time) on."""

    offset: float = 0.0
    rate: float = 1.0
    since: float = 0.0

    def expected_offset(self, at: float) -> float:
        return self.offset + (at - self.since) * (self.rate - 1)


class NodeClocks:
    """The clock files of a run's nodes: the wrapper that starts a node under
    libfaketime, and :meth:`set` to move its wall clock."""

    def __init__(self, root: Path, nodes: Sequence[str], lib: Path = LIBFAKETIME) -> None:
        self.root = root.resolve()
        self.lib = lib
        self.nodes = list(nodes)
        self.settings: dict[str, Setting] = {n: Setting() for n in self.nodes}
        self.root.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self._write(node, "+0 x1")

    def path(self, node: str) -> Path:
        return self.root / f"{node}.faketime"

    def wrapper(self, node: str) -> list[str]:
        """A command prefix that execs the node under libfaketime (same pid)."""
        return [
            "env",
            f"LD_PRELOAD={self.lib}",
            f"FAKETIME_TIMESTAMP_FILE={self.path(node)}",
            "FAKETIME_NO_CACHE=1",
            "DONT_FAKE_MONOTONIC=1",
            "FAKETIME_DISABLE_SHM=1",
            "NO_FAKE_STAT=1",
            "FAKETIME_FORCE_MONOTONIC_FIX=0",
        ]

    def set(self, node: str, pid: int | None, offset: float, rate: float = 1.0) -> Setting:
        """From now on, ``node``'s wall clock is ``offset`` s off true time and runs at
        ``rate``; the line written accounts for its process's start (see the module
        docstring). Returns the setting, for the verifier."""
        if not 1 - MAX_DRIFT <= rate <= 1 + MAX_DRIFT:
            raise ValueError(f"rate {rate} drifts more than {MAX_DRIFT:.0%}")
        now = time.time()
        base = offset
        if rate != 1.0:
            start = now if pid is None else _start_or_now(pid)
            base -= (now - start) * (rate - 1)
        self._write(node, f"{base:+.6f} x{rate:.6f}")
        setting = self.settings[node] = Setting(offset, rate, now)
        return setting

    def process_starting(self, node: str) -> None:
        """``node``'s process is about to start (a restart, during a drift). A rate
        applies from the process's start, so the line written for the old process
        would step the new one's wall clock by (start' - start) x (rate - 1); the line
        is rewritten for a process starting now, continuing the drift where it is (a
        machine's clock does not reset when a process restarts)."""
        setting = self.settings[node]
        if setting.rate != 1.0:
            now = time.time()
            self._write(node, f"{setting.expected_offset(now):+.6f} x{setting.rate:.6f}")

    def reset(self, node: str) -> Setting:
        self._write(node, "+0 x1")
        setting = self.settings[node] = Setting(0.0, 1.0, time.time())
        return setting

    def line(self, node: str) -> str:
        return self.path(node).read_text().strip()

    def _write(self, node: str, line: str) -> None:
        path = self.path(node)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(line + "\n")
        os.replace(tmp, path)  # atomic: a node never reads half a line


def _start_or_now(pid: int) -> float:
    try:
        return process_start(pid)
    except (OSError, ValueError, IndexError):
        return time.time()  # not running: a new process starts its rate from now


class Status(Protocol):
    wall_ms: int | None
    mono_ms: int | None
    pid: int | None


@dataclass(frozen=True, slots=True)
class ClockRead:
    """One read-back: the node's clocks minus the harness's (s), at harness wall time
    ``at``, with ``error`` s of uncertainty (half the round trip)."""

    wall_offset: float
    mono_offset: float
    at: float
    error: float
    pid: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "wall_offset_ms": round(self.wall_offset * 1000, 1),
            "mono_offset_ms": round(self.mono_offset * 1000, 1),
            "rtt_ms": round(2 * self.error * 1000, 1),
            "pid": self.pid,
        }


class StatusSource(Protocol):
    async def status(self, node: str) -> Any: ...


async def read_clocks(db: StatusSource, node: str) -> ClockRead:
    """``node``'s wall and monotonic clocks against the harness's (its status answer)."""
    w0, m0 = time.time(), time.monotonic()
    st: Status = await db.status(node)
    w1, m1 = time.time(), time.monotonic()
    if st.wall_ms is None or st.mono_ms is None:
        raise ValueError(f"{node}'s status answer carries no clocks")
    return ClockRead(
        wall_offset=st.wall_ms / 1000 - (w0 + w1) / 2,
        mono_offset=st.mono_ms / 1000 - (m0 + m1) / 2,
        at=(w0 + w1) / 2,
        error=max(w1 - w0, m1 - m0) / 2 + 0.001,  # + the answer's ms truncation
        pid=st.pid,
    )
