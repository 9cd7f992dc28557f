"""The ``append`` workload: Elle's list-append transactions against etcd-style txns.

Theory of operation
-------------------
Each operation is a transaction of 1-4 micro-ops over a few active keys: ``["r", k,
None]`` reads the list stored at ``k``, ``["append", k, e]`` appends ``e`` (unique per
key) to it. The history records it as ``f = "txn"`` with the micro-ops as value; an ok
completion fills in what each read returned. Elle (:mod:`jepsen_like.elle`) then infers
the order of every key's versions from the reads and looks for dependency cycles,
checking strict serializability.

The store has no "append" operation, so a transaction runs optimistically, as
Jepsen's etcd test does: one read-only txn reads every key involved (a linearizable
read, which is also the whole transaction when it only reads); the micro-ops are then
played against those lists locally; and one write txn installs the new lists, guarded by
``mod_revision == seen`` on every key read or written. If a guard fails, nothing was
written and the operation is a definite ``fail``; the store evaluates the guards and the
writes atomically in log order, so a committed transaction's reads are exactly what the
store held at its revision. A list is stored as its elements in decimal, comma-separated.

Keys retire after ``ops_per_key`` micro-ops (lists stay short, as in Elle's tests), and
after the faults heal one final read-only transaction per batch of keys reads every key
ever used, so an acknowledged append that no later read shows is visible as lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

from jepsen_like.elle import check_list_append
from jepsen_like.history import Operation, RecordType
from jepsen_like.workloads import (
    KeyPool,
    Outcome,
    Recorder,
    Workload,
    WorkloadOptions,
    _perform,
    _Process,
)
from kvstore.client import (
    AsyncClient,
    ClientError,
    Compare,
    CompareOp,
    CompareTarget,
    PutOp,
    RangeOp,
    RangeResult,
)

__all__ = ["AppendWorkload", "decode_list", "encode_list"]

_FINAL_BATCH = 100  # keys per final read txn (a txn holds at most 128 operations)


class TxnConflict(ClientError):
    """A guard failed: another transaction changed a key in between (nothing written)."""


def encode_list(elements: Sequence[int]) -> bytes:
    return ",".join(str(e) for e in elements).encode()


def decode_list(value: bytes) -> list[int]:
    return [int(x) for x in value.split(b",")] if value else []


class AppendWorkload(Workload):
    """List-append transactions; see the module docstring."""

    name = "append"
    PREFIX = "append/"

    def __init__(self, opts: WorkloadOptions, recorder: Recorder) -> None:
        super().__init__(opts, recorder)
        self.keys = KeyPool("a", opts.keys, opts.ops_per_key)

    def _store_key(self, key: str) -> bytes:
        return f"{self.PREFIX}{key}".encode()

    def _micro_ops(self, rng: random.Random) -> list[list[Any]]:
        ops: list[list[Any]] = []
        for _ in range(rng.randint(1, 4)):
            key = self.keys.pick(rng)
            if rng.random() < 0.5:
                ops.append(["r", key, None])
            else:
                ops.append(["append", key, self.keys.unique_value(key)])
        return ops

    async def step(self, proc: _Process, rng: random.Random) -> Outcome:
        mops = self._micro_ops(rng)
        writes = any(f == "append" for f, _, _ in mops)
        return await _perform(
            self.rec,
            proc,
            "txn",
            "",
            mops,
            # A read-only txn goes to the process's home node, like the register's
            # reads, so a node that wrongly serves it locally is seen doing so.
            lambda: self._transact(proc.writes if writes else proc.reads, mops),
            self.op_timeout,
            returns=True,
            definite=(TxnConflict,),
        )

    async def _transact(self, client: AsyncClient, mops: list[list[Any]]) -> list[list[Any]]:
        keys = sorted({k for _, k, _ in mops})
        seen = await client.txn([], [RangeOp(self._store_key(k), None, None) for k in keys])
        lists: dict[str, list[int]] = {}
        mods: dict[str, int] = {}
        for key, resp in zip(keys, seen.responses, strict=True):
            assert isinstance(resp, RangeResult)
            kv = resp.kvs[0] if resp.kvs else None
            lists[key] = decode_list(kv.value) if kv else []
            mods[key] = kv.mod_revision if kv else 0
        out: list[list[Any]] = []
        written: set[str] = set()
        for f, key, value in mops:
            if f == "r":
                out.append(["r", key, list(lists[key])])
            else:
                lists[key].append(value)
                written.add(key)
                out.append(["append", key, value])
        if not written:
            return out  # the read was the whole transaction
        guards = [
            Compare(self._store_key(k), CompareTarget.MOD, CompareOp.EQ, mods[k]) for k in keys
        ]
        puts = [PutOp(self._store_key(k), encode_list(lists[k])) for k in sorted(written)]
        result = await client.txn(guards, puts)
        if not result.succeeded:
            raise TxnConflict("a key changed between the read and the commit")
        return out

    async def final(self) -> None:
        """Read every key ever used, in read-only txns, by fresh processes, until each
        batch succeeds or the final-read time runs out."""
        deadline = time.monotonic() + self.opts.final_read_timeout
        keys = self.keys.used()
        for i in range(0, len(keys), _FINAL_BATCH):
            mops: list[list[Any]] = [["r", k, None] for k in keys[i : i + _FINAL_BATCH]]
            while time.monotonic() < deadline:
                proc = self.slots.fresh()
                rtype, _ = await _perform(
                    self.rec,
                    proc,
                    "txn",
                    "",
                    mops,
                    lambda proc=proc, mops=mops: self._transact(proc.reads, mops),  # type: ignore[misc]
                    self.op_timeout,
                    returns=True,
                )
                if rtype is RecordType.OK:
                    break
                await asyncio.sleep(0.2)

    def check(self, ops: Sequence[Operation], time_budget_s: float) -> dict[str, Any]:
        result = check_list_append(ops)
        return {"checker": "elle-list-append", "valid": result.valid, "result": result}
