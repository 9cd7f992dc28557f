"""A deterministic asyncio event loop: virtual time, no I/O, no threads.

The real runtime (RaftEngine, ClientServer, the lessor) is asyncio code. Run on this
loop, it becomes a deterministic simulation: ``time()`` is a virtual clock that jumps
straight to the next timer whenever nothing is ready (the selector "waits" by moving
the clock, never by sleeping), and work the runtime hands to a thread pool
(``run_in_executor``: WAL writes and fsyncs, snapshot encoding) runs on the loop itself
after a simulated latency chosen by ``work_delay``. Everything then happens in an order
fixed by the seeds that drive the callers, so a run replays exactly.

``WORK_OWNER`` (a context variable, inherited by every task and callback the owner
starts) says whose work it is: the owner says how long it takes (its disk's latency)
and whether the owner still lives. Work of a process that crashed while it was queued
is never run, as a write a killed process had not issued yet never reaches the disk.
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["WORK_OWNER", "Stalled", "VirtualTimeLoop", "WorkOwner"]


class WorkOwner(Protocol):
    def alive(self) -> bool: ...

    def work_delay(self) -> float:
        """Virtual seconds one unit of executor work takes now."""
        ...


WORK_OWNER: contextvars.ContextVar[WorkOwner | None] = contextvars.ContextVar(
    "WORK_OWNER", default=None
)


class Stalled(RuntimeError):
    """Nothing ready and no timer: the simulation can never move again."""


class _NoIO(selectors.BaseSelector):
    """Registers the loop's self-pipe and never reports it ready; ``select(timeout)``
    advances virtual time by ``timeout`` instead of waiting."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        self._advance = advance
        self._keys: dict[int, selectors.SelectorKey] = {}

    @staticmethod
    def _fd(fileobj: Any) -> int:
        return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, self._fd(fileobj), events, data)
        self._keys[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(self._fd(fileobj))

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise Stalled("no task is ready and no timer is set")
        if timeout > 0:
            self._advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._keys


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_NoIO(self._advance))

    def _advance(self, seconds: float) -> None:
        self._now += seconds

    def time(self) -> float:
        return self._now

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.create_future()
        owner = WORK_OWNER.get()

        def run() -> None:
            if fut.done() or (owner is not None and not owner.alive()):
                return  # the caller gave up, or its process died before the work ran
            try:
                result = func(*args)
            except Exception as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        self.call_later(0.0 if owner is None else owner.work_delay(), run)
        return fut
