"""The ``lease`` workload: leases end neither before their TTL nor long after.

Theory of operation
-------------------
Each process holds one lease at a time. It grants it (``grant``; TTL at least 1.5
election timeouts, as etcd requires: 4 by default), attaches a key of its own to it
(``attach``: a txn put of ``lease/<name>`` with the lease), and then either

- keeps it alive (plan ``keep``, most leases) for 3-6 TTLs after the grant returns: a
  ``keepalive`` whenever a quarter TTL has passed since the last one was invoked, and
  between them it looks at
  the lease (``ttl``: ``lease_ttl``; ``read``: a linearizable get of the key), then
  abandons it too; or
- abandons it at once (plan ``abandon``), and looks until it sees it gone;

and in both cases, once it stops renewing, it looks until it observes the revocation
(the key gone, or NOT_FOUND), then grants a new lease. A lease whose keep-alive is
answered NOT_FOUND, or whose key is found gone while kept, is replaced at once. Every
invoke and completion is recorded with the harness's monotonic clock; the checker
(:mod:`jepsen_like.lease_check`) derives early and late expiries from them and from the
runner's status polling (leader changes, leaderless time).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jepsen_like.history import Operation, RecordType
from jepsen_like.lease_check import NodeTimeline, check_leases
from jepsen_like.workloads import (
    Outcome,
    Recorder,
    Workload,
    WorkloadOptions,
    _error_code,
    _Process,
)
from kvstore.client import (
    ClientError,
    Indeterminate,
    LeaseNotFound,
    NotFound,
    PutOp,
)

__all__ = ["LeaseWorkload"]

MIN_TTL_ELECTION_TIMEOUTS = 1.5
"""etcd's (and the store's) shortest TTL, in election timeouts."""


@dataclass
class _Held:
    name: str
    plan: str  # "keep" or "abandon"
    lease: int | None = None
    ttl_s: float = 0.0
    attached: bool = False
    keep_until: float = 0.0  # loop time after which a kept lease is abandoned
    last_keepalive: float = 0.0
    gone: bool = False


class LeaseWorkload(Workload):
    """Grant, attach, keep alive or abandon, observe; see the module docstring."""

    name = "lease"

    def __init__(self, opts: WorkloadOptions, recorder: Recorder) -> None:
        super().__init__(opts, recorder)
        et = opts.election_timeout_s
        ttl_s = opts.lease_ttl_s if opts.lease_ttl_s is not None else 4 * et
        self.ttl_ms = max(math.ceil(ttl_s * 1000), math.ceil(MIN_TTL_ELECTION_TIMEOUTS * et * 1000))
        self._held: dict[int, _Held] = {}
        self._count = 0
        self._samples: list[tuple[int, str, str, int | None]] = []
        self._every = 0.5

    def observe_nodes(self, samples: list[tuple[int, str, str, int | None]], every: float) -> None:
        self._samples, self._every = list(samples), every

    async def step(self, proc: _Process, rng: random.Random) -> Outcome:
        loop = asyncio.get_running_loop()
        held = self._held.get(proc.number)
        if held is None or held.gone:
            self._count += 1
            plan = "abandon" if rng.random() < 0.3 else "keep"
            held = self._held[proc.number] = _Held(f"L{self._count}", plan)
            return await self._grant(proc, held, rng)
        if held.lease is None:
            return await self._grant(proc, held, rng)
        if not held.attached:
            return await self._attach(proc, held)
        now = loop.time()
        keeping = held.plan == "keep" and now < held.keep_until
        if keeping and now - held.last_keepalive >= held.ttl_s / 4:
            return await self._keepalive(proc, held)
        if rng.random() < 0.5:
            return await self._ttl(proc, held)
        return await self._read(proc, held)

    # ---- operations --------------------------------------------------------------------

    async def _op(
        self,
        proc: _Process,
        f: str,
        held: _Held,
        value: Any,
        call: Callable[[], Awaitable[Any]],
        gone: tuple[type[BaseException], ...] = (),
    ) -> Outcome:
        """Invoke, call, complete. ``gone``: errors that *observe* the lease ended
        (recorded as an ok ``null``, or for attach a fail ``null``)."""
        self.rec.add(proc.number, RecordType.INVOKE, f, held.name, value)
        error: str | None = None
        try:
            async with asyncio.timeout(self.op_timeout):
                out: Any = await call()
            rtype = RecordType.OK
        except gone:
            held.gone = True
            rtype, out = (RecordType.FAIL, None) if f == "attach" else (RecordType.OK, None)
            error = "LEASE_NOT_FOUND" if f == "attach" else None
        except (Indeterminate, TimeoutError, OSError) as exc:
            rtype, out = RecordType.INFO, value
            del exc
        except ClientError as exc:
            # Definite refusals (UNAVAILABLE, NOT_LEADER...): for a grant or an attach
            # it never happened; anything else is as good as unknown.
            definite = type(exc).__name__ in ("Unavailable", "BadRequest", "SessionExpired")
            rtype, out = (RecordType.FAIL, value) if definite else (RecordType.INFO, value)
            error = _error_code(exc) if definite else None
        self.rec.add(proc.number, rtype, f, held.name, out, error=error)
        return rtype, out

    async def _grant(self, proc: _Process, held: _Held, rng: random.Random) -> Outcome:
        async def call() -> list[int]:
            lease = await proc.writes.lease_grant(self.ttl_ms)
            return [lease.id, lease.ttl_ms]

        start = asyncio.get_running_loop().time()
        rtype, out = await self._op(
            proc, "grant", held, {"ttl_ms": self.ttl_ms, "plan": held.plan}, call
        )
        if rtype is RecordType.OK:
            held.lease, held.ttl_s = out[0], out[1] / 1000
            held.last_keepalive = start  # the grant's invoke starts the TTL
            # Kept for a while from now (a slow grant must not eat the keeping).
            now = asyncio.get_running_loop().time()
            held.keep_until = now + rng.uniform(3, 6) * held.ttl_s
        elif rtype is RecordType.INFO:
            held.gone = True  # a lease we may hold but cannot name: start afresh
        return rtype, out

    async def _attach(self, proc: _Process, held: _Held) -> Outcome:
        assert held.lease is not None
        lease = held.lease

        async def call() -> int:
            put = PutOp(f"lease/{held.name}".encode(), str(lease).encode(), lease)
            return (await proc.writes.txn(success=[put])).revision

        rtype, out = await self._op(proc, "attach", held, lease, call, gone=(LeaseNotFound,))
        if rtype is RecordType.OK:
            held.attached = True
        elif rtype is RecordType.INFO:
            held.attached = True  # maybe attached: reads still tell, the checker ignores misses
        return rtype, out

    async def _keepalive(self, proc: _Process, held: _Held) -> Outcome:
        assert held.lease is not None
        lease = held.lease
        held.last_keepalive = asyncio.get_running_loop().time()

        async def call() -> int:
            return (await proc.writes.lease_keepalive(lease)).ttl_ms

        return await self._op(proc, "keepalive", held, lease, call, gone=(NotFound,))

    async def _ttl(self, proc: _Process, held: _Held) -> Outcome:
        assert held.lease is not None
        lease = held.lease

        async def call() -> int:
            return (await proc.reads.lease_ttl(lease)).ttl_ms

        return await self._op(proc, "ttl", held, lease, call, gone=(NotFound,))

    async def _read(self, proc: _Process, held: _Held) -> Outcome:
        async def call() -> int:
            return (await proc.reads.get(f"lease/{held.name}")).lease

        rtype, out = await self._op(proc, "read", held, None, call, gone=(NotFound,))
        if rtype is RecordType.OK and out is None and held.plan == "keep":
            held.gone = True
        return rtype, out

    def check(self, ops: Sequence[Operation], time_budget_s: float) -> dict[str, Any]:
        result = check_leases(
            ops,
            election_timeout_s=self.opts.election_timeout_s,
            timeline=NodeTimeline(self._samples, self._every),
        )
        return {"checker": "lease", "valid": result.valid, "result": result}
