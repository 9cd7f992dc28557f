"""The libfaketime wrapper keeps timed waits honest.

libfaketime wraps ``pthread_cond_timedwait``; with its default monotonic "fix" (0.9.10
on this glibc) a timed wait on a CLOCK_MONOTONIC condition variable returned at once.
CPython's GIL waits that way, so a thread waiting for the GIL spun and a node under the
wrapper served ~12 puts/s instead of ~450 (jepsen_like/clock.py, "Cost"). The check here
is not a speed: a timed wait that nobody signals must not return before its deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from jepsen_like.clock import NodeClocks, Setting

# Runs under the wrapper: a CLOCK_MONOTONIC condition variable, waited on for 200 ms
# with nobody to signal it; prints the return code and how early it came back (ms).
CHILD = r"""
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
CLOCK_MONOTONIC = 1
class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
attr = ctypes.create_string_buffer(64)
cond = ctypes.create_string_buffer(128)
mutex = ctypes.create_string_buffer(128)
assert libc.pthread_condattr_init(attr) == 0
assert libc.pthread_condattr_setclock(attr, CLOCK_MONOTONIC) == 0
assert libc.pthread_cond_init(cond, attr) == 0
assert libc.pthread_mutex_init(mutex, None) == 0
deadline_ns = time.monotonic_ns() + 200_000_000
when = Timespec(deadline_ns // 10**9, deadline_ns % 10**9)
assert libc.pthread_mutex_lock(mutex) == 0
rc = libc.pthread_cond_timedwait(cond, mutex, ctypes.byref(when))
early_ms = (deadline_ns - time.monotonic_ns()) / 1e6
print(rc, round(early_ms, 3))
"""
ETIMEDOUT = 110


@pytest.mark.parametrize("offset", [30.0, -30.0, -0.1])
def test_a_timed_wait_under_the_wrapper_waits_until_its_deadline(
    tmp_path: Path, libfaketime: Path, offset: float
) -> None:
    clocks = NodeClocks(tmp_path / "clock", ["n1"], lib=libfaketime)
    clocks.set("n1", None, offset=offset)  # a stepped wall clock must not matter either
    out = subprocess.run(
        [*clocks.wrapper("n1"), sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    rc, early_ms = int(out[0]), float(out[1])
    assert rc == ETIMEDOUT
    assert early_ms <= 0, f"the 200 ms wait returned {early_ms} ms before its deadline"
    assert early_ms > -5000, f"the 200 ms wait overslept by {-early_ms} ms (a stepped clock?)"


def test_a_node_restarted_during_a_drift_goes_on_drifting_where_it_was(
    tmp_path: Path, libfaketime: Path
) -> None:
    """A rate applies from the process's start: a node restarted 50 s into a 1% drift
    would come back at offset 0 (a 0.5 s step back) under the old process's line. The
    harness rewrites the line before the new process starts."""
    clocks = NodeClocks(tmp_path / "clock", ["n1"], lib=libfaketime)
    clocks.set("n1", None, offset=0.0, rate=1.01)  # the line for a process starting now
    clocks.settings["n1"] = Setting(0.0, 1.01, time.time() - 50)  # ...as if set 50 s ago
    clocks.process_starting("n1")
    read = "import time; print(time.time())"
    before = time.time()
    out = subprocess.run(
        [*clocks.wrapper("n1"), sys.executable, "-c", read],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    after = time.time()
    offset = float(out) - (before + after) / 2
    expected = clocks.settings["n1"].expected_offset((before + after) / 2)
    assert abs(offset - expected) < 0.05 + (after - before) / 2, (offset, expected)
