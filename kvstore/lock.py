"""Locks with fencing tokens, built from a lease, a key and transactions (the recipe of
etcd's ``concurrency.Mutex``, as a try-lock).

Theory of operation. A lock named ``name`` is held while the key ``name`` exists. To
acquire it, a client creates that key bound to its lease, in a transaction guarded by
"the key does not exist" (``create_revision == 0``). The **fencing token** is the
revision of that transaction, which is the key's ``create_revision``: store revisions
only grow, so every later holder gets a larger token (Kleppmann's fencing tokens).

A lease is not a guarantee of exclusion in real time: a holder that stalls (a GC pause,
a partition) past its lease's TTL has lost the lock without knowing, and another client
may now hold it. So a holder protects each write to the shared resource with the token:
the write is a transaction guarded by "the lock key still has my ``create_revision``",
which the store evaluates atomically with the write, in log order. A stale holder's
write is refused (:class:`Fenced`) instead of interleaving with the new holder's.
Releasing is the same guarded transaction with a delete.
"""

from __future__ import annotations

from kvstore.client import (
    AsyncClient,
    ClientError,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    KeyLike,
    KeyValue,
    PutOp,
    RangeOp,
    RangeResult,
)

__all__ = ["Fenced", "LockHeld", "fenced_put", "release", "try_acquire"]


class LockHeld(ClientError):
    """Somebody else holds the lock (definite: nothing was written)."""

    def __init__(self, holder: KeyValue | None) -> None:
        token = None if holder is None else holder.create_revision
        super().__init__(f"lock held (token {token})")
        self.holder = holder


class Fenced(ClientError):
    """The caller's token is no longer the lock's: the write was refused (definite)."""


def _b(k: KeyLike) -> bytes:
    return k.encode() if isinstance(k, str) else k


def _still_mine(name: bytes, token: int) -> Compare:
    return Compare(name, CompareTarget.CREATE, CompareOp.EQ, token)


async def try_acquire(client: AsyncClient, name: KeyLike, lease: int, owner: KeyLike = b"") -> int:
    """Take the lock if it is free; returns the fencing token. Raises LockHeld, or
    LeaseNotFound if ``lease`` has expired."""
    n = _b(name)
    r = await client.txn(
        [Compare(n, CompareTarget.CREATE, CompareOp.EQ, 0)],
        [PutOp(n, _b(owner), lease)],
        [RangeOp(n, None, None)],
    )
    if r.succeeded:
        return r.revision
    (held,) = r.responses
    assert isinstance(held, RangeResult)
    raise LockHeld(held.kvs[0] if held.kvs else None)


async def fenced_put(
    client: AsyncClient, name: KeyLike, token: int, key: KeyLike, value: KeyLike
) -> int:
    """Write ``key`` only while the lock is still held with ``token``; returns the
    write's revision. Raises Fenced otherwise."""
    r = await client.txn([_still_mine(_b(name), token)], [PutOp(_b(key), _b(value))])
    if not r.succeeded:
        raise Fenced(f"lock {_b(name)!r} is no longer held with token {token}")
    return r.revision


async def release(client: AsyncClient, name: KeyLike, token: int) -> bool:
    """Release the lock if still held with ``token``; False if it was already lost."""
    n = _b(name)
    r = await client.txn([_still_mine(n, token)], [DeleteOp(n)])
    return r.succeeded
