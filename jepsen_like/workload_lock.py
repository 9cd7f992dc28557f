"""The ``lock`` workload: lock holders' critical sections never overlap (fencing tokens).

Theory of operation
-------------------
Processes compete for a few locks (:mod:`kvstore.lock`: a key bound to the process's
lease, created only if absent; the fencing token is its create revision). A process:

1. keeps a lease (granted once, kept alive before each attempt; not recorded);
2. tries to acquire a lock (``f = "acquire"``; ok with the token, fail when held);
3. in the critical section writes to the lock's shared resource twice, ``enter`` then
   ``exit`` (``f = "fenced"``, value ``[token, phase]``, ok with the revision), each a
   transaction guarded by "the lock key still has my token";
4. releases it (``f = "release"``; ok if it still held the lock, fail if not).

Sometimes (``stall_probability``) a holder stalls between enter and exit for 1.5 lease
TTLs without keeping its lease alive -- the GC pause of Kleppmann's argument. Its lease
expires (the store deletes the lock key), another process takes the lock, and the
stalled holder's ``exit`` must be refused by the fence. After the faults heal, the
whole history of each resource key is read back from the store (``f = "resource"``, a
watch from revision 1 up to the head revision), and
:func:`jepsen_like.lock_check.check_lock` checks that the writes the store *applied*
never interleave and that holders whose release succeeded never overlapped in time.

``fencing=False`` (``jepsen-like run --unsafe no-fencing``) makes the resource writes
plain puts: the harness's self-test that the checker sees overlapping critical sections
when stalled holders are not fenced.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

from jepsen_like.history import Operation, RecordType
from jepsen_like.lock_check import check_lock
from jepsen_like.workloads import Outcome, Recorder, Workload, WorkloadOptions, _perform, _Process
from kvstore.client import AsyncClient, ClientError, LeaseNotFound, NotFound
from kvstore.lock import Fenced, LockHeld, fenced_put, release, try_acquire

__all__ = ["LockWorkload"]


class LockLost(ClientError):
    """The release found the lock no longer ours (definite: nothing was deleted)."""


class LockWorkload(Workload):
    """Acquire, two fenced writes, release; see the module docstring."""

    name = "lock"

    def __init__(self, opts: WorkloadOptions, recorder: Recorder) -> None:
        super().__init__(opts, recorder)
        self.locks = [f"lock/{i}" for i in range(opts.keys)]
        self._leases: dict[int, int] = {}  # process -> its lease

    @staticmethod
    def resource_key(lock: str) -> str:
        return f"{lock}/resource"

    async def _lease(self, proc: _Process) -> int:
        client = proc.writes
        lease = self._leases.get(proc.number)
        if lease is not None:
            try:
                await client.lease_keepalive(lease)
                return lease
            except NotFound:
                pass
        lease = (await client.lease_grant(self.opts.lease_ttl_ms)).id
        self._leases[proc.number] = lease
        return lease

    async def step(self, proc: _Process, rng: random.Random) -> Outcome:
        lock = rng.choice(self.locks)
        try:
            async with asyncio.timeout(self.op_timeout):
                lease = await self._lease(proc)
        except (ClientError, TimeoutError, OSError):
            return (RecordType.FAIL, None)  # no lease, no attempt: nothing recorded
        acquired = await _perform(
            self.rec,
            proc,
            "acquire",
            lock,
            None,
            lambda: try_acquire(proc.writes, lock, lease, owner=str(proc.number)),
            self.op_timeout,
            returns=True,
            definite=(LockHeld, LeaseNotFound),
        )
        if acquired[0] is not RecordType.OK:
            return acquired
        token: int = acquired[1]
        for phase in ("enter", "exit"):
            wrote = await _perform(
                self.rec,
                proc,
                "fenced",
                lock,
                [token, phase],
                lambda phase=phase: self._write(proc.writes, lock, token, phase),  # type: ignore[misc]
                self.op_timeout,
                returns=True,
                definite=(Fenced,),
            )
            if wrote[0] is not RecordType.OK:
                return wrote  # the lock is lost (or may be): nothing more to protect
            if phase == "enter" and rng.random() < self.opts.stall_probability:
                await asyncio.sleep(1.5 * self.opts.lease_ttl_ms / 1000)
        return await _perform(
            self.rec,
            proc,
            "release",
            lock,
            token,
            lambda: self._release(proc.writes, lock, token),
            self.op_timeout,
            returns=True,
            definite=(LockLost,),
        )

    async def _write(self, client: AsyncClient, lock: str, token: int, phase: str) -> list[Any]:
        key, value = self.resource_key(lock), f"{token}:{phase}"
        if self.opts.fencing:
            revision = await fenced_put(client, lock, token, key, value)
        else:
            revision = (await client.put(key, value)).revision
        return [token, phase, revision]

    async def _release(self, client: AsyncClient, lock: str, token: int) -> int:
        if not await release(client, lock, token):
            raise LockLost(f"{lock} was no longer held with token {token}")
        return token

    # ---- end of run ---------------------------------------------------------------------

    async def final(self) -> None:
        """Read every resource's full write history back, one lock at a time."""
        deadline = time.monotonic() + self.opts.final_read_timeout
        for lock in self.locks:
            while time.monotonic() < deadline:
                proc = self.slots.fresh()
                rtype, _ = await _perform(
                    self.rec,
                    proc,
                    "resource",
                    lock,
                    None,
                    lambda proc=proc, lock=lock: self._resource_log(proc, lock),  # type: ignore[misc]
                    self.opts.final_read_timeout,
                    returns=True,
                )
                if rtype is RecordType.OK:
                    break
                await asyncio.sleep(0.5)

    async def _resource_log(self, proc: _Process, lock: str) -> list[list[Any]]:
        """Every write the store applied to the resource, from its history: a watch
        from revision 1 read up to the head revision (a linearizable read)."""
        head = (await proc.reads.txn()).revision
        status = await proc.reads.status()
        endpoint = status.leader_addr or self.opts.endpoints[0]
        watch = await proc.reads.watch(self.resource_key(lock), start_revision=1, endpoint=endpoint)
        entries: list[list[Any]] = []
        try:
            async for batch in watch:
                for ev in batch:
                    token, _, phase = ev.kv.value.decode().partition(":")
                    entries.append([ev.kv.mod_revision, int(token), phase])
                if watch.revision >= head:
                    return entries
        finally:
            await watch.close()
        raise ClientError("the resource history stream ended early")

    def check(self, ops: Sequence[Operation], time_budget_s: float) -> dict[str, Any]:
        result = check_lock(ops)
        return {"checker": "lock", "valid": result.valid, "result": result}
