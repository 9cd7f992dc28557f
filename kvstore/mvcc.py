"""Versioned key space with etcd's revision semantics, leases on keys, and a bounded history.

Theory of operation. The store has one global ``revision``: it starts at 0 (the empty
store) and every successful *write batch* -- a put, a delete that removed a key, a
transaction's writes, a lease's expiry -- advances it by exactly one. A batch writing
several keys gives them all the same revision, as an etcd transaction does; a key is
written at most once per revision (the command gateway refuses a transaction writing a
key twice). Each live key carries, as in etcd's ``mvccpb.KeyValue``:

- ``create_revision``: the revision that created the key (since its last delete);
- ``mod_revision``: the revision of its last change;
- ``version``: the number of changes since creation (1 after the creating put); a
  delete drops the key, so a later put starts again at version 1;
- ``lease``: the lease the key is attached to (0: none); revoking or expiring the lease
  deletes the key. The lease table itself lives in the state machine.

NB: etcd's first write gets revision 2 (revision 1 is the empty cluster); ours gets 1.
Either way 0 means "never / absent", which is what compares rely on.

Range scans follow etcd's ``RangeRequest``: ``end=None`` reads the single key ``start``;
otherwise the half-open interval ``[start, end)``; and ``end == b"\\x00"`` means "every
key >= start" (with :func:`prefix_end` giving the end of a prefix scan). Keys are held in
a sorted dict so scans cost O(log n + returned), not a sort per query.

History. Every write also appends an :class:`Event` (etcd's ``mvccpb.Event``) to an in-
memory log ordered by revision, from which watches are served gap-free
(:meth:`MVCCStore.events_since`). Once the log grows past 9/8 of ``history_limit``
events it drops whole revisions from its front down to at most ``history_limit``, so a
revision is either entirely present or entirely *compacted*: ``compacted_revision`` is
the highest revision dropped, and a watch from at or below it fails (etcd's
``ErrCompacted``) rather than silently skipping. Trimming depends only on the sequence
of writes and ``history_limit``, and the history is part of the snapshot, so every
replica -- including one restored from a snapshot or restarted -- holds the same events
for the same applied index.

Snapshot capture. :meth:`MVCCStore.capture` freezes the store as of now for an encoder
running in another thread while writes go on (kvstore/snapshot.py). It copies only
the sorted key list and the history (both C-level copies: ~10 ms for a million keys);
the values stay in the live dict, kept right by copy-on-write: until the capture is
released, every write first records the key's value as of the capture (``_saved``,
first write wins) and only then changes the dict. The encoder reads the live value
first and then prefers a saved one, so a write after the capture is never seen: if the
live read came after a write, that write had already saved the old value. (Each dict
operation is atomic under the GIL, and per object in free-threaded builds.) Values
are immutable ``KeyValue``s, and a restore replaces the dict instead of changing it.
Size. The store keeps ``data_bytes``, the logical size of what it holds -- every live
key-value record and every event retained in the history, each counted as its key and
value plus a fixed overhead (:func:`kv_bytes`; a tombstone event counts its key and
:data:`TOMBSTONE_OVERHEAD`) -- for the storage quota (etcd's ``--quota-backend-bytes``;
kvstore/quota.py). It is kept up to date by every write and every trim, in O(1) per
write (a trim subtracts what it drops, amortised as the trim itself), and recomputed
once on restore: it is a function of the state, so every replica agrees on it. The
overheads approximate a record's encoded size in the snapshot; they make a delete
always shrink the size (its tombstone is smaller than the record it removes).
TODO(mvcc-history): old *values* are not kept (only events); ``range(..., revision=r)``
and an explicit ``compact(revision)`` are the next step.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedDict  # type: ignore[import-untyped]  # no stubs upstream

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "END_OF_KEYSPACE",
    "KV_OVERHEAD",
    "TOMBSTONE_OVERHEAD",
    "Compacted",
    "Event",
    "EventType",
    "KeyValue",
    "MVCCStore",
    "StoreCapture",
    "WriteBatch",
    "event_bytes",
    "kv_bytes",
    "prefix_end",
]

END_OF_KEYSPACE = b"\x00"
"""etcd's ``range_end`` of ``"\\0"``: scan to the end of the key space. Unambiguous:
every key is non-empty, so no key sorts below it and ``[k, b"\\x00")`` is otherwise empty."""

DEFAULT_HISTORY_LIMIT = 10_000
"""Events kept for watches, at least. Must be equal on every replica (it shapes the
snapshot)."""


KV_OVERHEAD = 32
"""Bytes counted for a key-value record (live, or in a PUT event) beyond its key and
value: its revisions, version and lease, about as the snapshot encodes them."""
TOMBSTONE_OVERHEAD = 16
"""Bytes counted for a DELETE event beyond its key (its revision)."""


def kv_bytes(key_len: int, value_len: int) -> int:
    """The size a key-value record of these lengths counts for (live or as an event)."""
    return key_len + value_len + KV_OVERHEAD


class Compacted(Exception):
    """The revision asked for has been dropped from the history."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision {compacted_revision} and below are compacted")
        self.compacted_revision = compacted_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key at one revision (etcd ``mvccpb.KeyValue``)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    def to_obj(self) -> list[Any]:
        """Plain msgpack-able form: ``[key, value, create, mod, version, lease]``."""
        return [
            self.key,
            self.value,
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
        ]

    @classmethod
    def from_obj(cls, obj: Any) -> KeyValue:
        """Inverse of :meth:`to_obj` (a 5-item row from format 1 has no lease); raises
        ValueError on anything else."""
        if not isinstance(obj, (list, tuple)) or len(obj) not in (5, 6):
            raise ValueError("key-value must be an array of 5 or 6")
        key, value, create, mod, version, *rest = obj
        lease = rest[0] if rest else 0
        if type(key) is not bytes or not key or type(value) is not bytes:
            raise ValueError("key-value key/value must be bytes (key non-empty)")
        if not all(type(n) is int for n in (create, mod, version, lease)):
            raise ValueError("key-value revisions and lease must be ints")
        if not 1 <= create <= mod or version < 1 or lease < 0:
            raise ValueError(f"key-value revisions out of order: {create}/{mod}/{version}")
        return cls(key, value, create, mod, version, lease)


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One change (etcd ``mvccpb.Event``): for PUT, ``kv`` is the key after the write;
    for DELETE, ``kv`` holds only the key and the deleting revision (etcd's
    tombstone: value empty, create_revision and version 0)."""

    type: EventType
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision

    def to_obj(self) -> list[Any]:
        if self.type is EventType.DELETE:
            return [int(self.type), self.kv.key, self.kv.mod_revision]
        return [int(self.type), self.kv.to_obj()]

    @classmethod
    def from_obj(cls, obj: Any) -> Event:
        if not isinstance(obj, (list, tuple)) or not obj:
            raise ValueError("event must be a non-empty array")
        kind = EventType(obj[0])
        if kind is EventType.PUT:
            if len(obj) != 2:
                raise ValueError("put event must be [0, kv]")
            return cls(kind, KeyValue.from_obj(obj[1]))
        if len(obj) != 3 or type(obj[1]) is not bytes or not obj[1] or type(obj[2]) is not int:
            raise ValueError("delete event must be [1, key, revision]")
        return cls.tombstone(obj[1], obj[2])

    @classmethod
    def tombstone(cls, key: bytes, revision: int) -> Event:
        return cls(EventType.DELETE, KeyValue(key, b"", 0, revision, 0))


def event_bytes(ev: Event) -> int:
    """The size one retained event counts for (see the module docstring)."""
    if ev.type is EventType.DELETE:
        return len(ev.kv.key) + TOMBSTONE_OVERHEAD
    return kv_bytes(len(ev.kv.key), len(ev.kv.value))


def prefix_end(prefix: bytes) -> bytes:
    """The ``end`` that makes ``range(prefix, end)`` return exactly the keys starting with
    ``prefix`` (etcd ``clientv3.GetPrefixRangeEnd``): the prefix with its last non-0xff
    byte incremented and what follows dropped. A prefix of only 0xff bytes (or empty)
    has no such bound, so the scan runs to :data:`END_OF_KEYSPACE`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return END_OF_KEYSPACE
    return stripped[:-1] + bytes([stripped[-1] + 1])


def in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    """Whether ``key`` lies in the etcd range ``(start, end)`` (see :meth:`MVCCStore.range`)."""
    if end is None:
        return key == start
    if end == END_OF_KEYSPACE:
        return key >= start
    return start <= key < end


class WriteBatch:
    """The writes of one revision. Obtain with :meth:`MVCCStore.batch`; every write
    through it gets the same revision, which is taken (and the store's revision
    advanced) at the first write only, so a batch that writes nothing costs nothing.
    Reads through the store see the batch's earlier writes (a transaction reads its own
    writes, as in etcd)."""

    __slots__ = ("_keys", "_store", "revision")

    def __init__(self, store: MVCCStore) -> None:
        self._store = store
        self._keys: set[bytes] = set()
        self.revision = store.revision + 1

    @property
    def wrote(self) -> bool:
        return bool(self._keys)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> KeyValue:
        """Set ``key``; always a write (etcd bumps revision and version even when the
        value is unchanged)."""
        if not key:
            raise ValueError("key must be non-empty")
        rev = self.revision
        prev = self._store.get(key)
        if prev is None:
            kv = KeyValue(key, value, rev, rev, 1, lease)
        else:
            kv = KeyValue(key, value, prev.create_revision, rev, prev.version + 1, lease)
        self._write(key, kv)
        return kv

    def delete(self, key: bytes) -> KeyValue | None:
        """Remove ``key``; returns the removed record, or None (and no write, as in
        etcd's DeleteRange that deletes nothing) when it was absent."""
        prev = self._store.get(key)
        if prev is not None:
            self._write(key, None)
        return prev

    def _write(self, key: bytes, kv: KeyValue | None) -> None:
        if key in self._keys:
            raise ValueError(f"key {key!r} written twice in one revision")
        self._keys.add(key)
        self._store._commit(self.revision, key, kv)


class MVCCStore:
    """Current values, the revision counter and the event history. Pure,
    deterministic, single-threaded."""

    __slots__ = (
        "_bytes",
        "_captures",
        "_compacted",
        "_events",
        "_kvs",
        "_lease_keys",
        "_revision",
        "history_limit",
    )

    def __init__(self, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be >= 1")
        self.history_limit = history_limit
        # Invariant: every KeyValue has mod_revision <= self._revision.
        self._kvs: Any = SortedDict()  # SortedDict[bytes, KeyValue]
        self._revision = 0
        # Invariant: events sorted by revision, holding every event of every revision in
        # (compacted, revision]; nothing at or below compacted.
        self._events: list[Event] = []
        self._compacted = 0
        # lease id -> keys attached to it (sorted when used, for determinism)
        self._lease_keys: dict[int, set[bytes]] = {}
        # Captures still encoding (see the module docstring); only this thread changes
        # the tuple, an encoder only flags its capture done.
        self._captures: tuple[StoreCapture, ...] = ()
        # Invariant: the sum of kv_bytes over the live records and event_bytes over
        # the events (see Size in the module docstring).
        self._bytes = 0

    @property
    def data_bytes(self) -> int:
        """The logical size of the live records and the retained history (O(1))."""
        return self._bytes

    @property
    def revision(self) -> int:
        """Revision of the last successful write; 0 for a store never written."""
        return self._revision

    @property
    def compacted_revision(self) -> int:
        """Highest revision whose events are gone (0: none)."""
        return self._compacted

    def __len__(self) -> int:
        return len(self._kvs)

    def get(self, key: bytes) -> KeyValue | None:
        kv: KeyValue | None = self._kvs.get(key)
        return kv

    def batch(self) -> WriteBatch:
        """Start the writes of the next revision (call :meth:`end_batch` after)."""
        return WriteBatch(self)

    def end_batch(self, batch: WriteBatch) -> None:
        """Close a batch: trims the history, never inside a revision."""
        if batch.wrote:
            self._trim()

    def put(self, key: bytes, value: bytes, lease: int = 0) -> KeyValue:
        """A one-write revision; see :meth:`WriteBatch.put`."""
        b = self.batch()
        kv = b.put(key, value, lease)
        self.end_batch(b)
        return kv

    def delete(self, key: bytes) -> KeyValue | None:
        """A one-write revision; see :meth:`WriteBatch.delete`."""
        b = self.batch()
        prev = b.delete(key)
        self.end_batch(b)
        return prev

    def keys_of_lease(self, lease: int) -> list[bytes]:
        """Keys attached to ``lease``, in key order."""
        return sorted(self._lease_keys.get(lease, ()))

    def _commit(self, rev: int, key: bytes, kv: KeyValue | None) -> None:
        """The single write path: installs ``kv`` (None = delete) at ``rev`` and records
        the event. ``rev`` is the current revision (a later write of the same batch)
        or the next one."""
        assert rev in (self._revision, self._revision + 1), "one revision per batch"
        self._revision = rev
        prev = self._kvs.get(key)
        if self._captures:
            self._preserve(key, prev)  # before the dict changes: see capture()
        if prev is not None:
            self._bytes -= kv_bytes(len(key), len(prev.value))
            if prev.lease:
                self._detach(prev.lease, key)
        if kv is None:
            del self._kvs[key]
            self._events.append(Event.tombstone(key, rev))
            self._bytes += len(key) + TOMBSTONE_OVERHEAD
        else:
            self._kvs[key] = kv
            if kv.lease:
                self._lease_keys.setdefault(kv.lease, set()).add(key)
            self._events.append(Event(EventType.PUT, kv))
            self._bytes += 2 * kv_bytes(len(key), len(kv.value))  # the record and its event

    def _preserve(self, key: bytes, prev: KeyValue | None) -> None:
        """Copy-on-write for live captures: remember ``key``'s value as of each capture
        (the first write after it wins), and forget captures that finished encoding."""
        live = tuple(c for c in self._captures if not c.done)
        self._captures = live
        for cap in live:
            cap._saved.setdefault(key, prev)

    def _detach(self, lease: int, key: bytes) -> None:
        keys = self._lease_keys.get(lease)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._lease_keys[lease]

    def _trim(self) -> None:
        """Drop the oldest whole revisions once the log exceeds its limit by 1/8 (so the
        copy is amortised), down to at most ``history_limit`` events."""
        events = self._events
        if len(events) <= self.history_limit + self.history_limit // 8:
            return
        cut = len(events) - self.history_limit
        # Never split a revision: advance the cut past every event of the last one cut.
        last = events[cut - 1].revision
        while cut < len(events) and events[cut].revision == last:
            cut += 1
        self._compacted = last
        self._bytes -= sum(map(event_bytes, events[:cut]))
        del events[:cut]

    # ---- history ------------------------------------------------------------------------

    def events_since(
        self, revision: int, start: bytes, end: bytes | None, limit: int = 1000
    ) -> tuple[list[Event], int]:
        """Events at ``revision`` or later on keys in the range ``(start, end)`` (as for
        :meth:`range`), at most about ``limit`` of them (a revision is never split, so
        one revision's events may exceed it). Returns ``(events, through)``: every
        revision up to ``through`` has been scanned, so a watcher continues from
        ``through + 1``. Raises :class:`Compacted` if ``revision`` is compacted."""
        if revision <= self._compacted:
            raise Compacted(self._compacted)
        events = self._events
        i = bisect.bisect_left(events, revision, key=lambda e: e.revision)
        out: list[Event] = []
        through = self._revision
        while i < len(events):
            ev = events[i]
            if len(out) >= limit and ev.revision != out[-1].revision:
                through = out[-1].revision
                break
            if in_range(ev.kv.key, start, end):
                out.append(ev)
            i += 1
        return out, max(through, revision - 1)

    # ---- reads --------------------------------------------------------------------------

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

    def capture(self) -> StoreCapture:
        """Freeze the state as of now, cheaply, for an encoder in another thread; see
        :class:`StoreCapture` and the module docstring. Writes may continue at once."""
        cap = StoreCapture(self)
        self._captures = (*(c for c in self._captures if not c.done), cap)
        return cap

    def snapshot_state(self) -> list[Any]:
        """Plain msgpack-able state ``[revision, [kv, ...], compacted, [event, ...]]``,
        keys in sorted order so equal stores give equal bytes."""
        cap = self.capture()
        try:
            return [
                cap.revision,
                [row for rows in cap.kv_rows(len(cap) or 1) for row in rows],
                cap.compacted,
                [ev.to_obj() for ev in cap.events],
            ]
        finally:
            cap.release()

    def restore_state(self, obj: Any) -> None:
        """Replace the whole state with one produced by :meth:`snapshot_state` (or by
        format 1, ``[revision, kvs]``, which had no history: everything up to its
        revision counts as compacted).

        Raises ValueError (leaving this store unchanged) if ``obj`` is not such a state."""
        if not isinstance(obj, (list, tuple)) or len(obj) not in (2, 4):
            raise ValueError("mvcc state must be [revision, kvs, compacted, events]")
        revision, rows = obj[0], obj[1]
        compacted, event_rows = (obj[2], obj[3]) if len(obj) == 4 else (revision, ())
        if type(revision) is not int or revision < 0 or not isinstance(rows, (list, tuple)):
            raise ValueError("bad mvcc revision or kvs")
        if type(compacted) is not int or not 0 <= compacted <= revision:
            raise ValueError("bad compacted revision")
        kvs = SortedDict()
        lease_keys: dict[int, set[bytes]] = {}
        for row in rows:
            kv = KeyValue.from_obj(row)
            if kv.key in kvs or kv.mod_revision > revision:
                raise ValueError("duplicate key or mod_revision beyond revision")
            kvs[kv.key] = kv
            if kv.lease:
                lease_keys.setdefault(kv.lease, set()).add(kv.key)
        events = [Event.from_obj(e) for e in event_rows]
        revs = [e.revision for e in events]
        if revs != sorted(revs) or (revs and not compacted < revs[0] <= revs[-1] <= revision):
            raise ValueError("history out of order or outside (compacted, revision]")
        self._kvs = kvs
        self._revision = revision
        self._compacted = compacted
        self._events = events
        self._lease_keys = lease_keys
        self._bytes = sum(kv_bytes(len(k), len(kv.value)) for k, kv in kvs.items()) + sum(
            map(event_bytes, events)
        )
        # Captures hold the old dict, which nothing changes any more: they need no
        # copy-on-write from writes to the new one (which would record wrong values).
        self._captures = ()


class StoreCapture:
    """An :class:`MVCCStore` frozen at one revision, readable from another thread while
    the store takes writes (copy-on-write; see the module docstring). Call
    :meth:`release` when done: until then every write to the store pays a dict insert.

    The revision, compacted revision and history are plain copies; the key-value rows
    come from :meth:`kv_rows`, in key order."""

    __slots__ = ("_keys", "_live", "_saved", "compacted", "done", "events", "revision")

    def __init__(self, store: MVCCStore) -> None:
        self.revision = store._revision
        self.compacted = store._compacted
        self.events: list[Event] = list(store._events)
        self._live: Any = store._kvs
        self._keys: list[bytes] = list(store._kvs)  # sorted: SortedDict iterates in order
        # key -> its value at capture time (None: absent), for keys written since.
        self._saved: dict[bytes, KeyValue | None] = {}
        self.done = False

    def __len__(self) -> int:
        return len(self._keys)

    def kv_rows(self, chunk: int) -> Iterator[list[list[Any]]]:
        """``KeyValue.to_obj`` rows in key order, ``chunk`` per list. Safe in another
        thread while the store takes writes, until :meth:`release`."""
        get, saved, keys = self._live.get, self._saved, self._keys
        for lo in range(0, len(keys), chunk):
            rows = []
            for key in keys[lo : lo + chunk]:
                # The live value first, then the saved one if the key was written
                # since: this order makes a concurrent write invisible (module docstring).
                kv = get(key)
                kv = saved.get(key, kv)
                assert kv is not None, "a captured key had a value at capture time"
                rows.append(kv.to_obj())
            yield rows

    def release(self) -> None:
        """The encoder is done (safe from any thread): the store stops saving values."""
        self.done = True
