"""Snapshot capture: the state machine's state frozen on the event loop, encoded elsewhere.

Theory of operation. Encoding a snapshot of a million keys takes seconds; on the event
loop that is longer than an election timeout. So :meth:`KVStateMachine.snapshot_capture`
splits it in two:

1. *Capture*, on the caller's thread, between two applies: copies of references only
   (the history, the session and lease tables as lists of their entries, a few
   integers) and an :class:`~kvstore.mvcc.StoreCapture` of the key space, which copies
   only the key order and keeps the values right by copy-on-write. The state captured
   is exactly the state at the applied index of that moment.
2. *Encode*, by calling the returned :class:`SnapshotCapture`, in any thread, while
   the state machine goes on applying. Nothing it reads is changed after the capture:
   its lists are its own; ``KeyValue``, ``Event``, ``Result`` and leases are immutable;
   and a session held by a capture is copied before it changes (copy-on-write,
   ``KVStateMachine._own_session``).

The bytes are those of format 5 (docs/ARCHITECTURE.md), identical to a single
``msgpack.packb`` of the whole state: a msgpack array is its header followed by its
items, so the long arrays (keys, events, sessions, leases) are written as a header and
then chunks of :data:`CHUNK_ROWS` rows, each packed on its own with its own array
header cut off. Packing in chunks also matters under the GIL: one ``packb`` call of
the whole state would hold the GIL (and so stall the event loop) for its whole
duration, and building every row before packing any would leave millions of live
containers for the garbage collector to walk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

from kvstore.mvcc import StoreCapture
from kvstore.quota import Alarm, alarms_section

__all__ = ["CHUNK_ROWS", "SNAPSHOT_FORMAT_VERSION", "SnapshotCapture"]

SNAPSHOT_FORMAT_VERSION = 5
"""2: leases, lease on keys, event history; 3: digests, ended ids; 4: sessions in LRU
order by the log (issue 9), each still with its last activity by the old formats'
clock; 5: format 4 plus a trailing map of named sections, so a new kind of state is a
new section rather than a new format: ``"alarms"`` (the raised alarms) and ``"auth"``
(users, roles, the auth flag, revision and token key, and the user of each session
opened by one). Formats up to 4 restore with every section empty."""

CHUNK_ROWS = 1024
"""Rows packed per msgpack call: small enough that the encoder lets go of the GIL often."""


class SnapshotCapture:
    """A state frozen by :meth:`KVStateMachine.snapshot_capture`; call it (once, in any
    thread) for the snapshot bytes."""

    __slots__ = (
        "_alarms",
        "_applied",
        "_auth",
        "_clock",
        "_ended",
        "_leases",
        "_next_lease",
        "_sessions",
        "_store",
    )

    def __init__(
        self,
        *,
        applied: int,
        clock_ms: int,
        store: StoreCapture,
        # (client_id, session) and (lease id, lease) pairs, read through attributes
        # (last_active_ms, floor, results, digests; ttl_ms, expiry_ms): nothing changes
        # them. Sessions
        # least recently active first.
        sessions: list[tuple[bytes, Any]],
        leases: list[tuple[int, Any]],
        next_lease_id: int,
        ended: list[bytes],
        alarms: frozenset[Alarm],
        # AuthState.to_obj() at the capture (a fresh container of immutable values).
        auth: dict[str, Any],
    ) -> None:
        self._applied = applied
        self._clock = clock_ms
        self._store = store
        self._sessions = sessions
        self._leases = leases
        self._next_lease = next_lease_id
        self._ended = ended  # ids of ended sessions, oldest first (a copy)
        self._alarms = alarms  # immutable
        self._auth = auth

    def __call__(self) -> bytes:
        try:
            return b"".join(self.parts())
        finally:
            self._store.release()

    def parts(self) -> Iterator[bytes | memoryview]:
        """The snapshot bytes, piece by piece: ``[format, applied_index, clock_ms,
        [revision, kvs, compacted, events], sessions, leases, next_lease_id, ended,
        sections]``, sessions least recently active first (results by seq), leases by
        id and ended session ids oldest first, and ``sections`` a map of every named
        section: ``"alarms"``, ``[[type, member], ...]`` sorted; ``"auth"``, the auth
        state with ``"sessions"``, ``[client_id, user]`` of each session a user opened;
        so equal states give equal bytes on every replica."""
        packer = msgpack.Packer(use_bin_type=True)
        store = self._store
        yield packer.pack_array_header(9)
        yield packer.pack(SNAPSHOT_FORMAT_VERSION)
        yield packer.pack(self._applied)
        yield packer.pack(self._clock)
        yield packer.pack_array_header(4)
        yield packer.pack(store.revision)
        yield from _pack_array(packer, len(store), store.kv_rows(CHUNK_ROWS))
        yield packer.pack(store.compacted)
        events = (ev.to_obj() for ev in store.events)
        yield from _pack_array(packer, len(store.events), _chunks(events))
        sessions = self._sessions
        yield from _pack_array(packer, len(sessions), _chunks(map(_session_obj, sessions)))
        leases = sorted(self._leases, key=lambda item: item[0])
        rows = ([lid, e.ttl_ms, e.expiry_ms] for lid, e in leases)
        yield from _pack_array(packer, len(leases), _chunks(rows))
        yield packer.pack(self._next_lease)
        yield from _pack_array(packer, len(self._ended), _chunks(iter(self._ended)))
        owners = [[cid, s.user] for cid, s in self._sessions if s.user is not None]
        sections = {
            "alarms": alarms_section(self._alarms),
            "auth": {**self._auth, "sessions": owners},
        }
        yield packer.pack(sections)


def _session_obj(item: tuple[bytes, Any]) -> list[Any]:
    client_id, s = item
    results, digests = s.results, s.digests
    rows = [
        [q, results[q].to_obj(), digests[q]] if q in digests else [q, results[q].to_obj()]
        for q in sorted(results)
    ]
    return [client_id, s.last_active_ms, s.floor, rows]


def _chunks(rows: Iterable[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pack_array(packer: Any, n: int, chunks: Iterable[list[Any]]) -> Iterator[bytes | memoryview]:
    """An array of ``n`` items given in chunks: its header, then each chunk packed
    without its own header (the same bytes as packing the whole list at once)."""
    yield packer.pack_array_header(n)
    count = 0
    for chunk in chunks:
        count += len(chunk)
        header = len(packer.pack_array_header(len(chunk)))
        yield memoryview(packer.pack(chunk))[header:]
    if count != n:
        raise AssertionError(f"packed {count} rows of an array of {n}")
