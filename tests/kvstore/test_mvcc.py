"""MVCCStore: etcd revision/version semantics, range scans, prefix_end, snapshots."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.mvcc import END_OF_KEYSPACE, KeyValue, MVCCStore, prefix_end


def test_revisions_and_versions_follow_etcd() -> None:
    s = MVCCStore()
    assert s.revision == 0 and s.get(b"a") is None
    assert s.put(b"a", b"1") == KeyValue(b"a", b"1", 1, 1, 1)
    assert s.put(b"b", b"x") == KeyValue(b"b", b"x", 2, 2, 1)
    # Same value again is still a write: new revision, new version.
    assert s.put(b"a", b"1") == KeyValue(b"a", b"1", 1, 3, 2)
    assert s.put(b"a", b"2") == KeyValue(b"a", b"2", 1, 4, 3)
    assert s.revision == 4
    assert s.get(b"a") == KeyValue(b"a", b"2", 1, 4, 3)


def test_delete_resets_version_and_counts_as_a_write() -> None:
    s = MVCCStore()
    s.put(b"a", b"1")
    s.put(b"a", b"2")
    assert s.delete(b"a") == KeyValue(b"a", b"2", 1, 2, 2)
    assert s.revision == 3 and s.get(b"a") is None
    assert s.put(b"a", b"3") == KeyValue(b"a", b"3", 4, 4, 1)


def test_delete_of_absent_key_does_not_advance_revision() -> None:
    s = MVCCStore()
    s.put(b"a", b"1")
    assert s.delete(b"zz") is None
    assert s.revision == 1


def test_empty_key_rejected() -> None:
    with pytest.raises(ValueError):
        MVCCStore().put(b"", b"v")


def filled(*keys: bytes) -> MVCCStore:
    s = MVCCStore()
    for k in keys:
        s.put(k, k.upper())
    return s


def keys_of(result: tuple[list[KeyValue], bool]) -> tuple[list[bytes], bool]:
    kvs, more = result
    return [kv.key for kv in kvs], more


@pytest.mark.parametrize(
    ("start", "end", "limit", "want"),
    [
        (b"b", None, None, ([b"b"], False)),  # single key
        (b"bb", None, None, ([], False)),
        (b"b", b"d", None, ([b"b", b"ba", b"c"], False)),  # half-open
        (b"b", b"d", 2, ([b"b", b"ba"], True)),
        (b"b", b"d", 3, ([b"b", b"ba", b"c"], False)),  # exactly limit: no more
        (b"b", END_OF_KEYSPACE, None, ([b"b", b"ba", b"c", b"d", b"\xff"], False)),
        (b"\x00", END_OF_KEYSPACE, 1, ([b"a"], True)),  # whole key space
        (b"d", b"b", None, ([], False)),  # end <= start
        (b"b", b"b", None, ([], False)),
        (b"a", prefix_end(b"b"), None, ([b"a", b"b", b"ba"], False)),
    ],
)
def test_range(
    start: bytes, end: bytes | None, limit: int | None, want: tuple[list[bytes], bool]
) -> None:
    s = filled(b"a", b"b", b"ba", b"c", b"d", b"\xff")
    assert keys_of(s.range(start, end, limit)) == want


def test_range_rejects_non_positive_limit() -> None:
    with pytest.raises(ValueError):
        MVCCStore().range(b"a", b"b", 0)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"abc", b"abd"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\xfe", b"\xff"),
        (b"\xff", END_OF_KEYSPACE),
        (b"\xff\xff", END_OF_KEYSPACE),
        (b"", END_OF_KEYSPACE),
        (b"\x00", b"\x01"),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


@given(st.sets(st.binary(min_size=1, max_size=4), max_size=30), st.binary(max_size=3))
def test_prefix_scan_returns_exactly_the_prefixed_keys(keys: set[bytes], prefix: bytes) -> None:
    s = filled(*sorted(keys))
    start = prefix or b"\x00"
    got, more = keys_of(s.range(start, prefix_end(prefix)))
    assert got == sorted(k for k in keys if k.startswith(prefix)) and not more


@given(
    st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=2)), max_size=40),
    st.binary(min_size=1, max_size=2),
    st.binary(min_size=1, max_size=2),
    st.integers(min_value=1, max_value=5),
)
def test_range_with_limit_matches_naive_model(
    ops: list[tuple[bool, bytes]], start: bytes, end: bytes, limit: int
) -> None:
    s, model = MVCCStore(), dict[bytes, bytes]()
    for is_put, key in ops:
        if is_put:
            s.put(key, key)
            model[key] = key
        else:
            s.delete(key)
            model.pop(key, None)
    to_end = end == END_OF_KEYSPACE  # etcd's sentinel, not the key b"\x00"
    inside = sorted(k for k in model if start <= k and (to_end or k < end))
    assert keys_of(s.range(start, end, limit)) == (inside[:limit], len(inside) > limit)
    assert len(s) == len(model)


def test_snapshot_round_trip_through_msgpack() -> None:
    s = filled(b"b", b"a", b"c")
    s.delete(b"b")
    obj = msgpack.unpackb(msgpack.packb(s.snapshot_state()), use_list=False)
    r = MVCCStore()
    r.restore_state(obj)
    assert r.snapshot_state() == s.snapshot_state()
    assert r.revision == 4 and r.range(b"\x00", END_OF_KEYSPACE) == s.range(b"\x00", b"\x00")
    assert r.put(b"d", b"D") == s.put(b"d", b"D")


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [1],
        [-1, []],
        [1, [[b"a", b"v", 1, 2, 1]]],  # mod_revision beyond revision
        [2, [[b"a", b"v", 1, 1, 1], [b"a", b"v", 2, 2, 1]]],  # duplicate key
        [1, [[b"", b"v", 1, 1, 1]]],
        [1, [[b"a", b"v", 1, 1, 0]]],
        [1, [["a", b"v", 1, 1, 1]]],
    ],
)
def test_restore_rejects_bad_state_and_keeps_old(bad: object) -> None:
    s = filled(b"x")
    before = s.snapshot_state()
    with pytest.raises(ValueError):
        s.restore_state(bad)
    assert s.snapshot_state() == before


# ---- history --------------------------------------------------------------------------

write_ops = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"c", b"d"]), st.none() | st.binary(max_size=3)),
    min_size=1,
    max_size=4,
    unique_by=lambda op: op[0],
)


@given(st.lists(write_ops, max_size=40), st.integers(1, 12))
def test_history_is_every_write_grouped_by_revision_and_trimmed_whole(
    batches: list[list[tuple[bytes, bytes | None]]], limit: int
) -> None:
    """Model: every batch that changed something is one revision holding one event per
    changed key; the history keeps a suffix of whole revisions of about ``limit`` events."""
    from kvstore.mvcc import Compacted, EventType

    s = MVCCStore(history_limit=limit)
    model: list[tuple[int, EventType, bytes]] = []
    for ops in batches:
        b = s.batch()
        for key, value in ops:
            if value is None:
                if b.delete(key) is not None:
                    model.append((b.revision, EventType.DELETE, key))
            else:
                b.put(key, value)
                model.append((b.revision, EventType.PUT, key))
        s.end_batch(b)
    assert s.revision == (model[-1][0] if model else 0)
    kept = [m for m in model if m[0] > s.compacted_revision]
    assert len(kept) <= limit + limit // 8 or len({m[0] for m in kept}) == 1
    events, through = s.events_since(s.compacted_revision + 1, b"\x01", END_OF_KEYSPACE)
    assert [(e.revision, e.type, e.kv.key) for e in events] == kept
    assert through == s.revision
    if s.compacted_revision:
        with pytest.raises(Compacted):
            s.events_since(s.compacted_revision, b"\x01", END_OF_KEYSPACE)
    copy = MVCCStore(history_limit=limit)
    copy.restore_state(msgpack.unpackb(msgpack.packb(s.snapshot_state()), use_list=False))
    assert copy.snapshot_state() == s.snapshot_state()


def test_events_since_filters_keys_and_never_splits_a_revision() -> None:
    s = MVCCStore()
    for i in range(5):
        b = s.batch()
        b.put(b"w/%d" % i, b"x")
        b.put(b"z/%d" % i, b"y")
        s.end_batch(b)
    events, through = s.events_since(2, b"w/", b"w0", limit=1)
    assert [(e.revision, e.kv.key) for e in events] == [(2, b"w/1")]
    assert through == 2  # the caller continues from 3
    events, through = s.events_since(3, b"z/3", None)
    assert [(e.revision, e.kv.key) for e in events] == [(4, b"z/3")] and through == 5
    assert s.events_since(9, b"a", None) == ([], 8)  # a future start waits


def test_restore_accepts_format_1_state_without_history() -> None:
    from kvstore.mvcc import Compacted

    s = MVCCStore()
    s.restore_state([3, [[b"k", b"v", 1, 3, 2]]])
    assert s.get(b"k") == KeyValue(b"k", b"v", 1, 3, 2) and s.compacted_revision == 3
    with pytest.raises(Compacted):
        s.events_since(3, b"k", None)
    assert s.events_since(4, b"k", None) == ([], 3)
