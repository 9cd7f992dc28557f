"""The storage quota's state-machine half (kvstore/quota.py): the data size kept
incrementally and exactly, the replicated NOSPACE alarm refusing growth at apply while
admitting every way out, and the alarms in the snapshot (format 5's "alarms" section)."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.commands import (
    AlarmType,
    Cas,
    CloseSession,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteOp,
    DisarmAlarm,
    ExpireLease,
    Header,
    LeaseGrant,
    LeaseRevoke,
    Noop,
    Put,
    PutOp,
    RaiseAlarm,
    RangeOp,
    Txn,
    encode_command,
)
from kvstore.mvcc import KV_OVERHEAD, TOMBSTONE_OVERHEAD, event_bytes, kv_bytes
from kvstore.quota import write_growth
from kvstore.state_machine import KVStateMachine, ResultCode, SnapshotError
from tests.kvstore.test_state_machine import Client, Replica, cid

OK, NOSPACE = ResultCode.OK, ResultCode.NOSPACE
SYSTEM = Header(bytes(16), 1, 0)  # sessionless commands carry a header nobody looks up
RAISE = encode_command(SYSTEM, RaiseAlarm(AlarmType.NOSPACE, b"n1"))
DISARM = encode_command(SYSTEM, DisarmAlarm(AlarmType.NOSPACE))


def recount(sm: KVStateMachine) -> int:
    """The oracle: the size counted from scratch over the live records and the events."""
    store = sm._store
    live = sum(kv_bytes(len(k), len(kv.value)) for k, kv in store._kvs.items())
    return live + sum(map(event_bytes, store._events))


# ---- size accounting --------------------------------------------------------------------


def test_each_write_counts_its_record_and_its_event() -> None:
    r, c = Replica(), Client(cid(1))
    assert r.sm.data_bytes == 0
    r.apply(c.cmd(Put(b"k", b"abc")))
    one = 1 + 3 + KV_OVERHEAD
    assert r.sm.data_bytes == 2 * one  # the live record and its PUT event
    r.apply(c.cmd(Put(b"k", b"abcde")))  # the old record goes, its event stays
    assert r.sm.data_bytes == one + 2 * (one + 2)
    r.apply(c.cmd(Delete(b"k")))  # the record goes, a tombstone comes
    assert r.sm.data_bytes == one + (one + 2) + 1 + TOMBSTONE_OVERHEAD
    assert r.sm.data_bytes == recount(r.sm)


def test_a_delete_always_shrinks_the_size() -> None:
    """The way out of NOSPACE must make progress: a tombstone counts less than the
    smallest record (empty value) it removes."""
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"")))
    before = r.sm.data_bytes
    r.apply(c.cmd(Delete(b"k")))
    assert r.sm.data_bytes < before


def test_history_trimming_subtracts_the_dropped_events() -> None:
    r, c = Replica(KVStateMachine(history_limit=8)), Client(cid(1))
    for i in range(40):
        r.apply(c.cmd(Put(b"k", b"v" * i)))
        assert r.sm.data_bytes == recount(r.sm)
    assert r.sm.compacted_revision > 0  # trimmed several times
    # One live record, and at most 9 events of the most recent (largest) values.
    assert r.sm.data_bytes <= 10 * kv_bytes(1, 39)


def test_lease_expiry_counts_its_deletes() -> None:
    r, c = Replica(), Client(cid(1))
    lease = r.apply(c.cmd(LeaseGrant(10_000))).data[0]
    txn = Txn((), (PutOp(b"a", b"1", lease), PutOp(b"b", b"22", lease)), ())
    assert r.apply(c.cmd(txn)).code is OK
    grown = r.sm.data_bytes
    assert r.apply(encode_command(SYSTEM, ExpireLease(lease))).code is OK
    assert r.sm.get(b"a") is None and r.sm.data_bytes < grown
    assert r.sm.data_bytes == recount(r.sm)


keys = st.sampled_from([b"a", b"b", b"cc", b"ddd"])
values = st.binary(max_size=40)
ops = st.one_of(
    st.builds(Put, keys, values),
    st.builds(Delete, keys),
    st.builds(Cas, keys, st.none(), st.just(0), values),
    st.builds(
        Txn,
        st.lists(
            st.builds(
                Compare,
                keys,
                st.just(CompareTarget.VERSION),
                st.sampled_from(CompareOp),
                st.just(1),
            ),
            max_size=2,
        ).map(tuple),
        st.sampled_from(
            [(PutOp(b"a", b"x"), DeleteOp(b"b")), (DeleteOp(b"a"), PutOp(b"ddd", b"yy" * 9))]
        ),
        st.sampled_from([(), (RangeOp(b"a", None, None),), (PutOp(b"cc", b"z"),)]),
    ),
    st.builds(LeaseGrant, st.just(10_000)),
    st.builds(LeaseRevoke, st.integers(1, 3)),
    st.builds(ExpireLease, st.integers(1, 3)),
    st.sampled_from([RaiseAlarm(AlarmType.NOSPACE, b"n1"), DisarmAlarm(AlarmType.NOSPACE)]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(ops, max_size=40), st.integers(2, 12))
def test_the_size_is_exact_after_any_writes_and_survives_a_restore(
    cmds: list[Command], history: int
) -> None:
    r, c = Replica(KVStateMachine(history_limit=history)), Client(cid(1))
    for cmd in cmds:
        sessionless = isinstance(cmd, (ExpireLease, RaiseAlarm, DisarmAlarm))
        r.apply(encode_command(SYSTEM, cmd) if sessionless else c.cmd(cmd))
        assert r.sm.data_bytes == recount(r.sm)
    twin = KVStateMachine(history_limit=history)
    twin.restore(r.sm.snapshot())
    assert twin.data_bytes == r.sm.data_bytes and twin.alarms() == r.sm.alarms()


def test_write_growth_bounds_what_a_write_adds() -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"a" * 50)))
    for cmd in (
        Put(b"k", b"b" * 10),
        Put(b"new", b"c" * 99),
        Cas(b"k", None, 2, b"d" * 7),
        Txn((), (PutOp(b"x", b"1"), PutOp(b"y", b"22"), DeleteOp(b"k")), (PutOp(b"z", b""),)),
    ):
        before = r.sm.data_bytes
        assert r.apply(c.cmd(cmd)).code is OK
        assert r.sm.data_bytes - before <= write_growth(cmd)
    assert write_growth(Delete(b"k")) == write_growth(LeaseRevoke(1)) == 0


# ---- the alarm at apply -----------------------------------------------------------------


def test_the_alarm_refuses_growth_and_changes_nothing() -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"v")))
    lease = r.apply(c.cmd(LeaseGrant(10_000))).data[0]
    assert r.apply(RAISE).code is OK and r.sm.nospace
    before, size = r.sm.revision, r.sm.data_bytes
    puts_in_success = Txn((), (PutOp(b"t", b"1"),), ())
    puts_in_failure = Txn(
        (Compare(b"k", CompareTarget.VERSION, CompareOp.EQ, 9),), (), (PutOp(b"t", b"1"),)
    )
    for cmd in (
        Put(b"k", b"w"),
        Put(b"new", b""),
        Cas(b"k", b"v", None, b"w"),
        LeaseGrant(10_000),
        puts_in_success,
        puts_in_failure,
    ):
        res = r.apply(c.cmd(cmd))
        assert res.code is NOSPACE, cmd
        assert "kv alarm disarm" in res.message
    assert r.sm.revision == before and r.sm.data_bytes == size
    assert r.sm.get(b"k").value == b"v" and r.sm.lease_count == 1  # type: ignore[union-attr]
    # The ways out are always admitted.
    assert r.apply(c.cmd(Noop())).code is OK
    other = Client(cid(2))
    assert r.apply(other.open()).code is OK  # session open
    assert r.apply(other.cmd(CloseSession())).code is OK
    deletes_only = Txn(
        (Compare(b"k", CompareTarget.VERSION, CompareOp.EQ, 9),),
        (PutOp(b"x", b"1"),),
        (DeleteOp(b"k"), RangeOp(b"k", None, None)),
    )
    assert r.apply(c.cmd(deletes_only)).code is OK and r.sm.get(b"k") is None
    assert r.apply(c.cmd(Put(b"k2", b"v"))).code is NOSPACE
    assert r.apply(c.cmd(LeaseRevoke(lease))).code is OK
    assert r.sm.read_txn(Txn((), (RangeOp(b"a", b"\x00", None),), ())).code is OK
    assert r.sm.data_bytes < size
    # Disarmed, the same writes go through again.
    assert r.apply(DISARM).code is OK and not r.sm.nospace and r.sm.alarms() == []
    assert r.apply(c.cmd(Put(b"k", b"w"))).code is OK


def test_a_refused_write_is_answered_nospace_again_on_retry() -> None:
    """Exactly once: the NOSPACE is that seq's outcome, cached; a retry after the
    disarm gets it again rather than applying the write late."""
    r, c = Replica(), Client(cid(1))
    r.apply(RAISE)
    put = c.cmd(Put(b"k", b"v"))
    assert r.apply(put).code is NOSPACE
    r.apply(DISARM)
    assert r.apply(put).code is NOSPACE and r.sm.get(b"k") is None


def test_alarms_are_idempotent_per_member_and_disarm_clears_every_member() -> None:
    r = Replica()
    r.apply(RAISE)
    r.apply(RAISE)
    r.apply(encode_command(SYSTEM, RaiseAlarm(AlarmType.NOSPACE, b"n3")))
    assert r.sm.alarms() == [(AlarmType.NOSPACE, b"n1"), (AlarmType.NOSPACE, b"n3")]
    assert r.apply(DISARM).code is OK and r.sm.alarms() == [] and not r.sm.nospace
    assert r.apply(DISARM).code is OK  # nothing to disarm: no change, no error


def test_replicas_agree_on_the_alarm_and_the_size() -> None:
    log: list[bytes] = []
    c = Client(cid(1))
    log += [c.open(), c.cmd(Put(b"a", b"1" * 30)), RAISE, c.cmd(Put(b"b", b"2"))]
    log += [c.cmd(Delete(b"a")), DISARM, c.cmd(Put(b"b", b"3"))]
    states = []
    for _ in range(2):
        sm = KVStateMachine()
        codes = [sm.apply(i, e).code for i, e in enumerate(log, 1)]
        states.append((codes, sm.snapshot(), sm.data_bytes))
    assert states[0] == states[1]
    assert states[0][0] == [OK, OK, OK, NOSPACE, OK, OK, OK]


# ---- snapshots --------------------------------------------------------------------------


def test_the_alarm_survives_a_snapshot_round_trip() -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"v")))
    r.apply(RAISE)
    data = r.sm.snapshot()
    obj = msgpack.unpackb(data)
    assert obj[0] == 5 and obj[-1]["alarms"] == [[1, b"n1"]]
    twin = KVStateMachine()
    twin.restore(data)
    assert twin.nospace and twin.alarms() == [(AlarmType.NOSPACE, b"n1")]
    assert twin.snapshot() == data and twin.data_bytes == r.sm.data_bytes
    # The restored replica refuses what the original refuses.
    twin_r = Replica(twin, index=r.index, opened=set(r.opened))
    assert twin_r.apply(c.cmd(Put(b"x", b"y"))).code is NOSPACE


def test_a_format_4_snapshot_restores_with_no_alarm() -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"v")))
    obj = msgpack.unpackb(r.sm.snapshot(), use_list=True)
    obj[0] = 4
    del obj[8]
    old = KVStateMachine()
    old.restore(msgpack.packb(obj, use_bin_type=True))
    assert not old.nospace and old.alarms() == [] and old.get(b"k") is not None
    assert old.data_bytes == r.sm.data_bytes


def test_a_format_5_snapshot_without_an_alarms_section_has_no_alarm() -> None:
    r = Replica()
    r.apply(RAISE)
    obj = msgpack.unpackb(r.sm.snapshot(), use_list=True)
    obj[8] = {}
    sm = KVStateMachine()
    sm.restore(msgpack.packb(obj, use_bin_type=True))
    assert sm.alarms() == [] and not sm.nospace


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ([], "sections must be a map"),
        ({"alarms": [], "mystery": 1}, "unknown snapshot section"),
        ({"alarms": {}}, "alarms section must be an array"),
        ({"alarms": [[1]]}, r"alarm must be \[type, member\]"),
        ({"alarms": [[0, b"n1"]]}, "unknown alarm type"),
        ({"alarms": [[9, b"n1"]]}, "unknown alarm type"),
        ({"alarms": [[True, b"n1"]]}, "unknown alarm type"),
        ({"alarms": [[1, b""]]}, "1-255 bytes"),
        ({"alarms": [[1, "n1"]]}, "1-255 bytes"),
        ({"alarms": [[1, b"x" * 256]]}, "1-255 bytes"),
        ({"alarms": [[1, b"n1"], [1, b"n1"]]}, "duplicate alarm"),
    ],
)
def test_a_bad_alarms_section_is_refused_and_changes_nothing(section: object, match: str) -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"v")))
    obj = msgpack.unpackb(r.sm.snapshot(), use_list=True)
    obj[8] = section
    bad = msgpack.packb(obj, use_bin_type=True)
    target = Replica()
    target.apply(RAISE)
    before = target.sm.snapshot()
    with pytest.raises(SnapshotError, match=match):
        target.sm.validate(bad)
    with pytest.raises(SnapshotError, match=match):
        target.sm.restore(bad)
    assert target.sm.snapshot() == before and target.sm.nospace
