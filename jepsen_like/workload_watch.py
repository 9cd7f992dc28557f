"""The ``watch`` workload: watchers on every node must see one gap-free event sequence.

Theory of operation
-------------------
Writer processes put unique integers to a few keys under ``watch/`` (``f = "put"``; an
ok completion records ``[value, revision]``, the revision the put created). Meanwhile
one *watcher* per node, pinned to that node, watches the prefix from revision 1. A
watcher's stream breaks when its node dies or its connection does; each stream is one
history operation (``f = "watch"``, key = the watcher's name, value ``{"from": R}``),
completed ``ok`` with every event it delivered (``[revision, type, key, value]``) and
why it ended, or ``fail`` when the watch could not be opened. The watcher then
reconnects to its *same* node from the revision after the last one it received: a
follower must serve the same history as the leader, and a restarted node the same as
before it died (the history is in its snapshot and log).

After the faults heal, a linearizable read gives the head revision (``f = "head"``)
and every watcher must reach it; then the streams are closed. The cluster is the
workload's alone, so every revision from 1 to the head is a put under the prefix and
every watcher must deliver each of them, in order, identically
(:func:`jepsen_like.watch_check.check_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from typing import Any

from jepsen_like.history import Operation, RecordType
from jepsen_like.watch_check import check_watch
from jepsen_like.workloads import Outcome, Recorder, Workload, WorkloadOptions, _perform, _Process
from kvstore.client import AsyncClient, Compacted, Watch

__all__ = ["WATCHER_PROCESS_BASE", "WatchWorkload"]

WATCHER_PROCESS_BASE = 1_000_000
"""Watchers' process numbers (one each, far above the writers')."""
_RECONNECT_S = 0.3


class WatchWorkload(Workload):
    """Writers and one watcher per node; see the module docstring."""

    name = "watch"
    PREFIX = "watch/"

    def __init__(self, opts: WorkloadOptions, recorder: Recorder) -> None:
        super().__init__(opts, recorder)
        self._next_value = 0
        self._watchers: list[asyncio.Task[None]] = []
        self._streams: dict[str, Watch] = {}
        self.received: dict[str, int] = {}  # watcher -> last revision delivered
        self._target: int | None = None  # the head revision, once read
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for i, endpoint in enumerate(self.opts.endpoints):
            name = f"n{i + 1}"  # endpoints are in node order
            self.received[name] = 0
            self._watchers.append(loop.create_task(self._watch_node(i, name, endpoint)))
        await super().run(stop)

    async def step(self, proc: _Process, rng: random.Random) -> Outcome:
        key = f"{self.PREFIX}k{rng.randrange(self.opts.keys)}"
        value = self._next_value
        self._next_value += 1

        async def put() -> list[int]:
            r = await proc.writes.put(key, str(value))
            return [value, r.revision]

        return await _perform(self.rec, proc, "put", key, value, put, self.op_timeout, returns=True)

    # ---- watchers ------------------------------------------------------------------

    def _done(self, name: str) -> bool:
        if self._stopping.is_set():
            return True
        return self._target is not None and self.received[name] >= self._target

    async def _watch_node(self, index: int, name: str, endpoint: str) -> None:
        process = WATCHER_PROCESS_BASE + index
        client = AsyncClient(
            [endpoint],
            timeout=self.opts.attempt_timeout,
            deadline=self.opts.op_deadline,
            tls=self.opts.tls,
        )
        try:
            while not self._done(name):
                start = self.received[name] + 1
                self.rec.add(process, RecordType.INVOKE, "watch", name, {"from": start})
                try:
                    async with asyncio.timeout(self.opts.attempt_timeout):
                        watch = await client.watch(
                            self.PREFIX, prefix=True, start_revision=start, endpoint=endpoint
                        )
                except (OSError, TimeoutError, ConnectionError) as exc:
                    error = {"from": start, "error": f"cannot open: {exc!r}"}
                    self.rec.add(process, RecordType.FAIL, "watch", name, error)
                    await self._pause()
                    continue
                self._streams[name] = watch
                events, end, compacted = await self._consume(name, watch)
                self._streams.pop(name, None)
                await watch.close()
                if compacted is not None:
                    error = {"from": start, "error": f"COMPACTED: {compacted}"}
                    self.rec.add(process, RecordType.FAIL, "watch", name, error)
                    return  # the history it needs is gone: it can only lag (and be reported)
                done = {"from": start, "events": events, "end": end}
                self.rec.add(process, RecordType.OK, "watch", name, done)
                if not self._done(name):
                    await self._pause()
        finally:
            await client.close()

    async def _consume(self, name: str, watch: Watch) -> tuple[list[list[Any]], str, str | None]:
        """Events until the stream ends or the watcher is done: (events, why, compacted)."""
        events: list[list[Any]] = []
        try:
            async for batch in watch:
                for ev in batch:
                    value = None if ev.type == "delete" else int(ev.kv.value)
                    events.append([ev.kv.mod_revision, ev.type, ev.kv.key.decode(), value])
                if events:
                    self.received[name] = max(self.received[name], events[-1][0])
                if self._done(name):
                    return events, "caught up", None
            return events, "closed", None
        except Compacted as exc:
            return events, "compacted", str(exc)
        except Exception as exc:  # WatchEnded, a protocol error: the stream is over
            return events, f"{type(exc).__name__}: {exc}", None

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), _RECONNECT_S)

    # ---- end of run ---------------------------------------------------------------------

    async def final(self) -> None:
        """Read the head revision, then wait until every watcher has delivered it."""
        deadline = time.monotonic() + self.opts.final_read_timeout
        head: int | None = None
        while head is None and time.monotonic() < deadline:
            proc = self.slots.fresh()

            async def read_head(proc: _Process = proc) -> int:
                return (await proc.reads.txn()).revision

            rtype, value = await _perform(
                self.rec, proc, "head", "", None, read_head, self.op_timeout, returns=True
            )
            if rtype is RecordType.OK:
                head = value
            else:
                await asyncio.sleep(0.5)
        if head is not None:
            self._target = head
            while time.monotonic() < deadline and not all(
                r >= head or t.done()
                for r, t in zip(self.received.values(), self._watchers, strict=True)
            ):
                await asyncio.sleep(0.1)
        await self._stop_watchers()

    async def _stop_watchers(self) -> None:
        self._stopping.set()
        for watch in list(self._streams.values()):
            await watch.close()
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=self.opts.op_deadline + 2)
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def close(self) -> None:
        await self._stop_watchers()
        await super().close()

    def check(self, ops: Sequence[Operation], time_budget_s: float) -> dict[str, Any]:
        result = check_watch(ops)
        return {"checker": "watch", "valid": result.valid, "result": result}
