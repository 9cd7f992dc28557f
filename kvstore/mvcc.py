"""Versioned key space with etcd's revision semantics (current values only, for now).

Theory of operation. The store has one global ``revision``: it starts at 0 (the empty
store) and every successful write -- a put, or a delete that removed a key -- advances
it by exactly one. Each live key carries, as in etcd's ``mvccpb.KeyValue``:

- ``create_revision``: the revision that created the key (since its last delete);
- ``mod_revision``: the revision of its last change;
- ``version``: the number of changes since creation (1 after the creating put); a
  delete drops the key, so a later put starts again at version 1.

NB: etcd's first write gets revision 2 (revision 1 is the empty cluster); ours gets 1.
Either way 0 means "never / absent", which is what compares rely on.

Range scans follow etcd's ``RangeRequest``: ``end=None`` reads the single key ``start``;
otherwise the half-open interval ``[start, end)``; and ``end == b"\\x00"`` means "every
key >= start" (with :func:`prefix_end` giving the end of a prefix scan). Keys are held in
a sorted dict so scans cost O(log n + returned), not a sort per query.

History seam. Today a write overwrites the current value and the old one is gone.
TODO(mvcc-history): keep every revision (etcd's ``(main, sub)`` revision keyspace plus a
per-key generation index), answer ``range(..., revision=r)`` and watch-from-revision
from it, and add ``compact(revision)`` with a ``compacted_revision`` that reads and
watches below it fail against. All writes funnel through :meth:`MVCCStore._commit`, the
one place that must also append the change to the history; the snapshot format is
versioned by the state machine, so adding history is a format bump, not a rewrite.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedDict  # type: ignore[import-untyped]  # no stubs upstream

__all__ = ["END_OF_KEYSPACE", "KeyValue", "MVCCStore", "prefix_end"]

END_OF_KEYSPACE = b"\x00"
"""etcd's ``range_end`` of ``"\\0"``: scan to the end of the key space. Unambiguous:
every key is non-empty, so no key sorts below it and ``[k, b"\\x00")`` is otherwise empty."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key at one revision (etcd ``mvccpb.KeyValue`` without lease, for now)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int

    def to_obj(self) -> list[Any]:
        """Plain msgpack-able form: ``[key, value, create, mod, version]``."""
        return [self.key, self.value, self.create_revision, self.mod_revision, self.version]

    @classmethod
    def from_obj(cls, obj: Any) -> KeyValue:
        """Inverse of :meth:`to_obj`; raises ValueError on anything else."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 5:
            raise ValueError("key-value must be an array of 5")
        key, value, create, mod, version = obj
        if type(key) is not bytes or not key or type(value) is not bytes:
            raise ValueError("key-value key/value must be bytes (key non-empty)")
        if not all(type(n) is int for n in (create, mod, version)):
            raise ValueError("key-value revisions must be ints")
        if not 1 <= create <= mod or version < 1:
            raise ValueError(f"key-value revisions out of order: {create}/{mod}/{version}")
        return cls(key, value, create, mod, version)


def prefix_end(prefix: bytes) -> bytes:
    """The ``end`` that makes ``range(prefix, end)`` return exactly the keys starting with
    ``prefix`` (etcd ``clientv3.GetPrefixRangeEnd``): the prefix with its last non-0xff
    byte incremented and what follows dropped. A prefix of only 0xff bytes (or empty)
    has no such bound, so the scan runs to :data:`END_OF_KEYSPACE`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return END_OF_KEYSPACE
    return stripped[:-1] + bytes([stripped[-1] + 1])


class MVCCStore:
    """Current values and the revision counter. Pure, deterministic, single-threaded."""

    __slots__ = ("_kvs", "_revision")

    def __init__(self) -> None:
        # Invariant: every KeyValue has mod_revision <= self._revision, and the
        # mod_revisions of distinct live keys are distinct (one write per revision).
        self._kvs: Any = SortedDict()  # SortedDict[bytes, KeyValue]
        self._revision = 0

    @property
    def revision(self) -> int:
        """Revision of the last successful write; 0 for a store never written."""
        return self._revision

    def __len__(self) -> int:
        return len(self._kvs)

    def get(self, key: bytes) -> KeyValue | None:
        kv: KeyValue | None = self._kvs.get(key)
        return kv

    def put(self, key: bytes, value: bytes) -> KeyValue:
        """Set ``key``; always a write (etcd bumps revision and version even when the value
        is unchanged). Returns the new record; the caller reads the old one first if it
        needs it (``prev_kv``)."""
        if not key:
            raise ValueError("key must be non-empty")
        rev = self._revision + 1
        prev = self.get(key)
        if prev is None:
            kv = KeyValue(key, value, rev, rev, 1)
        else:
            kv = KeyValue(key, value, prev.create_revision, rev, prev.version + 1)
        self._commit(rev, key, kv)
        return kv

    def delete(self, key: bytes) -> KeyValue | None:
        """Remove ``key``; returns the removed record, or None (and no new revision, as in
        etcd's DeleteRange that deletes nothing) when it was absent."""
        prev = self.get(key)
        if prev is None:
            return None
        self._commit(self._revision + 1, key, None)
        return prev

    def _commit(self, rev: int, key: bytes, kv: KeyValue | None) -> None:
        """The single write path: advances the revision and installs ``kv`` (None =
        tombstone). TODO(mvcc-history): append ``(rev, key, kv)`` to the history here."""
        assert rev == self._revision + 1, "one revision per write"
        self._revision = rev
        if kv is None:
            del self._kvs[key]
        else:
            self._kvs[key] = kv

    def range(
        self, start: bytes, end: bytes | None = None, limit: int | None = None
    ) -> tuple[list[KeyValue], bool]:
        """Keys in ``[start, end)`` in key order, at most ``limit`` of them (None: all).

        ``end=None`` reads only ``start``; ``end == END_OF_KEYSPACE`` reads every key
        ``>= start``; ``end <= start`` is empty. Returns ``(kvs, more)``, ``more`` telling
        whether keys beyond ``limit`` remained (etcd ``RangeResponse.more``)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, not {limit}")
        if end is None:
            kv = self.get(start)
            return ([] if kv is None else [kv]), False
        it = self._scan(start, None if end == END_OF_KEYSPACE else end)
        if limit is None:
            return list(it), False
        out = list(itertools.islice(it, limit + 1))
        more = len(out) > limit
        return out[:limit], more

    def _scan(self, start: bytes, end: bytes | None) -> Iterator[KeyValue]:
        if end is not None and end <= start:
            return iter(())
        kvs = self._kvs
        keys = kvs.irange(start, end, inclusive=(True, False))
        return (kvs[k] for k in keys)

    # ---- snapshot ---------------------------------------------------------------------

    def snapshot_state(self) -> list[Any]:
        """Plain msgpack-able state ``[revision, [kv, ...]]``, keys in sorted order so
        equal stores give equal bytes."""
        return [self._revision, [kv.to_obj() for kv in self._kvs.values()]]

    def restore_state(self, obj: Any) -> None:
        """Replace the whole state with one produced by :meth:`snapshot_state`.

        Raises ValueError (leaving this store unchanged) if ``obj`` is not such a state."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 2:
            raise ValueError("mvcc state must be [revision, kvs]")
        revision, rows = obj
        if type(revision) is not int or revision < 0 or not isinstance(rows, (list, tuple)):
            raise ValueError("bad mvcc revision or kvs")
        kvs = SortedDict()
        for row in rows:
            kv = KeyValue.from_obj(row)
            if kv.key in kvs or kv.mod_revision > revision:
                raise ValueError("duplicate key or mod_revision beyond revision")
            kvs[kv.key] = kv
        self._kvs = kvs
        self._revision = revision
