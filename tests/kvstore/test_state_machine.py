"""KVStateMachine: commands, exactly-once sessions (dissertation §6.3), deterministic
expiry and eviction, malformed entries, snapshots, and replica determinism."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.commands import (
    FORMAT_VERSION,
    Cas,
    CloseSession,
    Command,
    CommandError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteOp,
    ExpireLease,
    Header,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Noop,
    OpenSession,
    Put,
    PutOp,
    RangeOp,
    Tick,
    Txn,
    decode_command,
    encode_command,
)
from kvstore.mvcc import KeyValue
from kvstore.state_machine import KVStateMachine, Result, ResultCode, SnapshotError
from raft.engine import StateMachine
from raft.errors import InvariantViolation
from tests.kvstore.txn_strategies import one_write_per_key

OK = ResultCode.OK


def cid(n: int) -> bytes:
    return bytes([n]) * 16


@dataclass
class Client:
    """A well-behaved client: consecutive seqs, acks what it has been answered. Seq 1
    is its session's OpenSession (:meth:`open`), so its first command is seq 2."""

    id: bytes
    now_ms: int = 0  # the leader's clock, in command formats 1 and 2
    seq: int = 1
    ack: int = 0
    fmt: int = FORMAT_VERSION

    def open(self) -> bytes:
        return encode_command(Header(self.id, 1, 0, self.now_ms, self.fmt), OpenSession())

    def cmd(self, cmd: Command, *, ack: int | None = None) -> bytes:
        self.seq += 1
        return self.at(self.seq, cmd, ack=ack)

    def at(self, seq: int, cmd: Command, *, ack: int | None = None) -> bytes:
        return encode_command(
            Header(self.id, seq, self.ack if ack is None else ack, self.now_ms, self.fmt), cmd
        )


@dataclass
class Replica:
    """Applies commands in order. The first time a client id shows up it opens that
    client's session first (seq 1), as the client library does; a session evicted
    later is not reopened."""

    sm: KVStateMachine = field(default_factory=KVStateMachine)
    index: int = 0
    opened: set[bytes] = field(default_factory=set)

    def apply(self, data: bytes) -> Result:
        try:
            header, cmd = decode_command(data)
        except CommandError:
            header, cmd = None, None
        if header is not None and header.client_id not in self.opened:
            self.opened.add(header.client_id)
            if not isinstance(cmd, OpenSession | Tick | ExpireLease):
                self.index += 1
                opening = encode_command(replace(header, seq=1, ack_seq=0), OpenSession())
                assert self.sm.apply(self.index, opening).code is OK
        self.index += 1
        return self.sm.apply(self.index, data)


def state_without_index(sm: KVStateMachine) -> Any:
    _, _, *rest = msgpack.unpackb(sm.snapshot())
    return rest


# ---- commands -------------------------------------------------------------------------


def test_implements_the_engine_protocol() -> None:
    kv = KVStateMachine()
    sm: StateMachine = kv  # the structural check is mypy's
    sm.restore(sm.snapshot())
    assert sm.apply(1, b"") == Result(
        ResultCode.BAD_COMMAND, None, None, 0, kv.apply(2, b"").message
    )


def test_put_get_delete() -> None:
    r, c = Replica(), Client(cid(1))
    res = r.apply(c.cmd(Put(b"k", b"v")))
    assert res == Result(OK, KeyValue(b"k", b"v", 1, 1, 1), None, 1)
    res2 = r.apply(c.cmd(Put(b"k", b"w")))
    assert res2 == Result(OK, KeyValue(b"k", b"w", 1, 2, 2), res.kv, 2)
    assert r.apply(c.cmd(Delete(b"k"))) == Result(OK, None, res2.kv, 3)
    assert r.apply(c.cmd(Delete(b"k"))) == Result(ResultCode.NOT_FOUND, None, None, 3)
    assert r.sm.get(b"k") is None and r.sm.revision == 3
    assert r.apply(c.cmd(Noop())) == Result(OK, None, None, 3)


def test_range_reads_through_the_state_machine() -> None:
    r, c = Replica(), Client(cid(1))
    for k in (b"a/1", b"a/2", b"b"):
        r.apply(c.cmd(Put(k, b"")))
    kvs, more = r.sm.range(b"a/", b"a0", limit=1)
    assert [kv.key for kv in kvs] == [b"a/1"] and more
    assert r.sm.range(b"b") == ([KeyValue(b"b", b"", 3, 3, 1)], False)


@pytest.mark.parametrize(
    ("existing", "cas", "code"),
    [
        (None, Cas(b"k", None, 0, b"new"), OK),  # version 0: create if absent
        (b"old", Cas(b"k", None, 0, b"new"), ResultCode.COMPARE_FAILED),
        (b"old", Cas(b"k", b"old", None, b"new"), OK),
        (b"old", Cas(b"k", b"other", None, b"new"), ResultCode.COMPARE_FAILED),
        (None, Cas(b"k", b"", None, b"new"), ResultCode.COMPARE_FAILED),  # absent != b""
        (b"old", Cas(b"k", None, 1, b"new"), OK),
        (b"old", Cas(b"k", None, 2, b"new"), ResultCode.COMPARE_FAILED),
        (b"old", Cas(b"k", b"old", 1, b"new"), OK),
        (b"old", Cas(b"k", b"old", 2, b"new"), ResultCode.COMPARE_FAILED),
        (b"old", Cas(b"k", b"nope", 1, b"new"), ResultCode.COMPARE_FAILED),
    ],
)
def test_cas(existing: bytes | None, cas: Cas, code: ResultCode) -> None:
    r, c = Replica(), Client(cid(1))
    if existing is not None:
        r.apply(c.cmd(Put(b"k", existing)))
    before = r.sm.get(b"k")
    res = r.apply(c.cmd(cas))
    assert res.code is code
    if code is OK:
        assert res.prev == before and res.kv == r.sm.get(b"k")
        assert res.kv is not None and res.kv.value == b"new"
        assert res.revision == (2 if existing else 1)
    else:
        assert res.kv == before and res.prev is None  # current record, to retry from
        assert r.sm.get(b"k") == before and r.sm.revision == (1 if existing else 0)


def test_cas_version_zero_after_delete_creates_again() -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"1")))
    r.apply(c.cmd(Delete(b"k")))
    res = r.apply(c.cmd(Cas(b"k", None, 0, b"2")))
    assert res.code is OK and res.kv == KeyValue(b"k", b"2", 3, 3, 1)


# ---- exactly once ---------------------------------------------------------------------


def test_duplicate_is_not_reapplied_and_gets_the_same_result() -> None:
    r, c, other = Replica(), Client(cid(1)), Client(cid(2))
    put = c.cmd(Put(b"k", b"v"))
    first = r.apply(put)
    r.apply(other.cmd(Put(b"x", b"y")))
    again = r.apply(put)  # e.g. the client retried through a new leader
    assert again == first and again.revision == 1
    assert r.sm.revision == 2 and r.sm.get(b"k") == KeyValue(b"k", b"v", 1, 1, 1)


def test_pipelined_seqs_and_ack_trimming() -> None:
    r, c = Replica(), Client(cid(1))
    sent = [c.cmd(Put(b"k", bytes([i]))) for i in range(5)]  # seqs 2..6, ack 0
    results = [r.apply(d) for d in sent]
    assert r.sm.revision == 5
    assert r.apply(sent[1]) == results[1]  # not yet acknowledged: still cached
    r.apply(c.cmd(Noop(), ack=4))  # seq 7: answers 1..4 received
    stale = r.apply(sent[1])  # seq 3
    assert stale.code is ResultCode.STALE_SEQ and r.sm.revision == 5
    assert r.apply(sent[3]) == results[3]  # seq 5 still cached
    # An older ack (a delayed duplicate proposal) never lowers the floor.
    assert r.apply(c.at(8, Noop(), ack=1)).code is OK
    assert r.apply(sent[2]).code is ResultCode.STALE_SEQ  # seq 4


def test_cached_results_are_bounded_per_session() -> None:
    r, c = Replica(KVStateMachine(max_results_per_session=3)), Client(cid(1))
    sent = [c.cmd(Put(b"k", bytes([i]))) for i in range(5)]
    results = [r.apply(d) for d in sent]
    # seqs 1 and 2 were dropped (lowest first): their retries must not re-apply.
    for d in sent[:2]:
        assert r.apply(d).code is ResultCode.STALE_SEQ
    assert [r.apply(d) for d in sent[2:]] == results[2:]
    assert r.sm.revision == 5


def test_out_of_order_seqs_within_a_session_apply_once_each() -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.at(1, Noop()))
    r3 = r.apply(c.at(3, Put(b"k", b"3")))
    r2 = r.apply(c.at(2, Put(b"k", b"2")))
    assert r.apply(c.at(3, Put(b"k", b"3"))) == r3 and r.apply(c.at(2, Put(b"k", b"2"))) == r2
    assert r.sm.revision == 2


def test_only_open_session_opens_a_session() -> None:
    """A data command never opens a session, not even with seq 1 (issue 9, item 2)."""
    c = Client(cid(1))
    r = Replica(opened={c.id})  # no automatic open
    for seq in (1, 2):
        res = r.apply(c.at(seq, Put(b"k", b"v"), ack=0))
        assert res.code is ResultCode.SESSION_EXPIRED
        assert r.sm.session_count == 0 and r.sm.revision == 0
    assert r.apply(c.open()).code is OK and r.sm.session_count == 1
    assert r.apply(c.open()).code is OK and r.sm.session_count == 1  # a retry: still open
    assert r.apply(c.cmd(Put(b"k", b"v"))).code is OK and r.sm.revision == 1


def test_first_write_is_not_applied_twice_after_eviction() -> None:
    """The bug: seq 1 opened a session for an unknown client and was the client's first
    write; evicted before a retry of that write arrived, the retry reopened the session
    and applied the write again. Now the write (seq 2) finds no session: refused."""
    c = Client(cid(1))
    r = Replica(KVStateMachine(max_sessions=1), opened={c.id})
    assert r.apply(c.open()).code is OK
    first = c.cmd(Put(b"k", b"v"))
    assert r.apply(first).code is OK and r.sm.revision == 1
    r.apply(Client(cid(2)).cmd(Noop()))  # another session opens: c is evicted
    assert r.apply(first).code is ResultCode.SESSION_EXPIRED and r.sm.revision == 1
    old_style = encode_command(Header(c.id, 1, 0, 0, 2), Put(b"k", b"v"))
    assert r.apply(old_style).code is ResultCode.SESSION_EXPIRED and r.sm.revision == 1


def test_a_reused_seq_with_another_command_is_refused() -> None:
    """A retry must carry the command its seq first named: another command under a
    cached seq is SEQ_REUSED (definite, nothing applied), not the other's result."""
    r, c = Replica(), Client(cid(1))
    put_a = c.cmd(Put(b"a", b"1"))
    assert r.apply(put_a).code is OK
    reused = r.apply(c.at(c.seq, Put(b"b", b"2")))
    assert reused.code is ResultCode.SEQ_REUSED and r.sm.get(b"b") is None
    assert r.apply(put_a).code is OK and r.sm.revision == 1  # the true retry: cached


def test_close_session_forgets_it() -> None:
    r, c = Replica(), Client(cid(1))
    assert r.apply(c.cmd(Put(b"k", b"v"))).code is OK and r.sm.session_count == 1
    assert r.apply(c.cmd(CloseSession())).code is OK and r.sm.session_count == 0
    assert r.apply(c.cmd(Put(b"k", b"w"))).code is ResultCode.SESSION_EXPIRED


def test_no_clock_evicts_a_session() -> None:
    """Issue 9, item 4: a leader whose wall clock was an hour ahead evicted every
    session (formats 1 and 2 expired sessions idle for ten minutes of the replicated
    clock). Format 3 has no clock: sessions are bounded by count alone. (An old log
    still replays its own rule: test_replicas_upgraded_from_different_snapshots_agree.)"""
    fresh = Replica()
    x, y = Client(cid(1)), Client(cid(2))
    fresh.apply(x.cmd(Put(b"k", b"v")))
    for _ in range(50):
        fresh.apply(y.cmd(Noop()))
    assert fresh.apply(x.cmd(Put(b"k", b"w"))).code is OK and fresh.sm.session_count == 2
    assert fresh.sm.clock_ms == 0  # no format-3 command carries or moves a clock


def test_the_old_clock_never_runs_backwards_and_format_3_leaves_it() -> None:
    r = Replica()
    a, b = Client(cid(1), now_ms=5000, fmt=2), Client(cid(2), now_ms=100, fmt=2)
    r.apply(a.cmd(Noop()))
    r.apply(b.cmd(Noop()))  # a new leader whose wall clock lags
    assert r.sm.clock_ms == 5000
    r.apply(Client(cid(3)).cmd(Noop()))
    assert r.sm.clock_ms == 5000 and r.sm.session_count == 3


def test_session_count_is_bounded_evicting_least_recently_active() -> None:
    """The least recently active session by log order goes first."""
    r = Replica(KVStateMachine(max_sessions=2))
    a, b, c, d = (Client(cid(n)) for n in (1, 2, 3, 4))
    r.apply(b.cmd(Noop()))
    r.apply(a.cmd(Noop()))
    r.apply(c.cmd(Noop()))  # evicts b, whose last command is the oldest
    assert r.apply(b.cmd(Noop())).code is ResultCode.SESSION_EXPIRED
    r.apply(a.cmd(Noop()))  # a is now more recent than c
    r.apply(d.cmd(Noop()))  # evicts c
    assert r.apply(c.cmd(Noop())).code is ResultCode.SESSION_EXPIRED
    assert r.apply(a.cmd(Noop())).code is OK and r.sm.session_count == 2


# ---- malformed entries, indexes, snapshots --------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"garbage", msgpack.packb([1, 4, [cid(1), 1, 0, 0]]), msgpack.packb([9])],
)
def test_malformed_entry_is_bad_command_and_changes_nothing(data: bytes) -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"v")))
    before = state_without_index(r.sm)
    res = r.apply(data)
    assert res.code is ResultCode.BAD_COMMAND and res.message and res.revision == 1
    assert state_without_index(r.sm) == before and r.sm.applied_index == 3  # open, put, bad


def test_apply_requires_increasing_index() -> None:
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Noop()))
    with pytest.raises(InvariantViolation):
        r.sm.apply(1, c.cmd(Noop()))


def test_snapshot_restore_round_trip_behaves_identically() -> None:
    r, a, b = Replica(KVStateMachine(max_sessions=2)), Client(cid(1)), Client(cid(2))
    put = a.cmd(Put(b"k", b"v"))
    r.apply(put)
    r.apply(b.cmd(Cas(b"k", b"v", None, b"w")))
    r.apply(b.cmd(Delete(b"missing")))
    snap = r.sm.snapshot()
    twin = Replica(KVStateMachine(max_sessions=2), index=r.index, opened=set(r.opened))
    twin.sm.restore(snap)
    assert twin.sm.snapshot() == snap and twin.sm.applied_index == 5  # with two opens
    c = Client(cid(3))  # evicts the least recently active (a) on both
    follow = [put, c.cmd(Noop()), b.cmd(Put(b"k", b"z")), b"bad", put]
    assert [r.apply(d) for d in follow] == [twin.apply(d) for d in follow]
    assert twin.sm.snapshot() == r.sm.snapshot()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93\x01\x02\x03",
        msgpack.packb([9, 0, 0, [0, []], []]),  # unknown format version
        msgpack.packb([1, 0, 0, [0, []], [[b"short", 0, 0, []]]]),
        msgpack.packb([1, 0, 0, [0, []], [[cid(1), 0, 5, [[5, [0, None, None, 0, ""]]]]]]),
        msgpack.packb([1, 0, 0, [0, []], [[cid(1), 0, 0, [[1, [99, None, None, 0, ""]]]]]]),
        msgpack.packb([1, 0, 0, [0, []], [[cid(1), 0, 0, []], [cid(2), 0, 0, []]]]),
    ],
)
def test_restore_rejects_bad_snapshots_and_keeps_state(data: bytes) -> None:
    r, c = Replica(KVStateMachine(max_sessions=1)), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"v")))
    before = r.sm.snapshot()
    with pytest.raises(SnapshotError):
        r.sm.restore(data)
    assert r.sm.snapshot() == before


# ---- determinism ----------------------------------------------------------------------

CLIENTS = [cid(n) for n in range(4)]
KEYS = [b"a", b"b", b"c"]
small_values = st.sampled_from([b"", b"1", b"2"])
commands: st.SearchStrategy[Command] = st.one_of(
    st.just(Noop()),
    st.builds(Put, st.sampled_from(KEYS), small_values),
    st.builds(Delete, st.sampled_from(KEYS)),
    st.builds(
        Cas,
        st.sampled_from(KEYS),
        st.none() | small_values,
        st.sampled_from([None, 0, 1, 2]),
        small_values,
    ).filter(lambda c: c.expected_value is not None or c.expected_version is not None),
)


compares = st.builds(
    Compare,
    st.sampled_from(KEYS),
    st.sampled_from(list(CompareTarget)),
    st.sampled_from(list(CompareOp)),
    st.sampled_from([0, 1, 2, 3]),
).map(lambda c: Compare(c.key, c.target, c.op, b"1") if c.target is CompareTarget.VALUE else c)
leases = st.integers(1, 4)
txn_ops = st.one_of(
    st.builds(RangeOp, st.sampled_from(KEYS), st.sampled_from([None, b"\x00"]), st.none()),
    st.builds(PutOp, st.sampled_from(KEYS), small_values, st.just(0) | leases),
    st.builds(DeleteOp, st.sampled_from(KEYS)),
)


branches = st.lists(txn_ops, max_size=3).map(one_write_per_key)
# Everything the state machine applies: transactions, leases granted and revoked, and
# expired by the lessor's ExpireLease (format 3) ...
rich_commands: st.SearchStrategy[Command] = st.one_of(
    commands,
    st.builds(Txn, st.lists(compares, max_size=2).map(tuple), branches, branches),
    st.builds(LeaseGrant, st.sampled_from([200, 1000, 5000])),
    st.builds(LeaseRevoke, leases),
    st.builds(ExpireLease, leases),
)
# ... or, in an old log (formats 1 and 2), kept alive and expired by the leader's clock.
rich_old_commands: st.SearchStrategy[Command] = st.one_of(
    commands,
    st.builds(Txn, st.lists(compares, max_size=2).map(tuple), branches, branches),
    st.builds(LeaseGrant, st.sampled_from([200, 1000, 5000])),
    st.builds(LeaseKeepAlive, leases),
    st.builds(LeaseRevoke, leases),
    st.just(Tick()),
)


@st.composite
def logs(
    draw: st.DrawFn,
    cmds: st.SearchStrategy[Command] = commands,
    old_cmds: st.SearchStrategy[Command] = commands,
) -> list[bytes]:
    """A log: mostly well-formed commands with small seqs (so duplicates, gaps, stale
    acks and reopened sessions are common) from more clients than ``max_sessions``, and
    some garbage. It may start as an old log (format 2, ``old_cmds``, with a leader
    clock that creeps, jumps and sometimes lags) and go on in format 3 after an upgrade."""
    log, base, last = [], 0, [0] * len(CLIENTS)
    upgrade = draw(st.integers(0, 60))
    for n in range(draw(st.integers(0, 60))):
        if draw(st.integers(0, 19)) == 0:
            log.append(draw(st.binary(max_size=8)))
            continue
        base += draw(st.sampled_from([0] * 6 + [100, 100, 400, 400, 1600]))
        client = draw(st.integers(0, len(CLIENTS) - 1))
        move = draw(st.sampled_from(["next"] * 5 + ["retry", "retry", "restart"]))
        if move == "restart" or last[client] == 0:
            last[client] = 1
        elif move == "next":
            last[client] += 1
        seq = draw(st.integers(1, last[client])) if move == "retry" else last[client]
        old = n < upgrade
        header = Header(
            CLIENTS[client],
            seq,
            draw(st.integers(max(0, seq - 3), seq - 1)),
            max(0, base - draw(st.sampled_from([0, 0, 0, 300]))) if old else 0,
            2 if old else FORMAT_VERSION,
        )
        # A session's seq 1 is its OpenSession (a restart opens anew, as a client does).
        cmd = OpenSession() if seq == 1 else draw(old_cmds if old else cmds)
        log.append(encode_command(header, cmd))
    return log


def new_sm() -> KVStateMachine:
    return KVStateMachine(max_sessions=3, max_results_per_session=3, history_limit=6)


@settings(max_examples=300, deadline=None)
@given(logs(rich_commands, rich_old_commands), st.data())
def test_replicas_are_deterministic_across_snapshot_restore(
    log: list[bytes], data: st.DataObject
) -> None:
    a, b = new_sm(), new_sm()
    results = []
    for i, e in enumerate(log, 1):
        ra, rb = a.apply(i, e), b.apply(i, e)
        assert ra == rb
        results.append(ra)
    assert a.snapshot() == b.snapshot()

    # A replica restored from a snapshot at any point continues exactly as one that
    # applied the whole log (dict insertion order differs; nothing may depend on it).
    cut = data.draw(st.integers(0, len(log)))
    c = new_sm()
    for i, e in enumerate(log[:cut], 1):
        c.apply(i, e)
    d = new_sm()
    d.restore(c.snapshot())
    assert d.snapshot() == c.snapshot()
    for i, e in enumerate(log[cut:], cut + 1):
        assert d.apply(i, e) == results[i - 1]
    assert d.snapshot() == a.snapshot()
    # The restored replica serves watches from the same history.
    start = a.compacted_revision + 1
    assert d.events_since(start, b"\x01", b"\x00") == a.events_since(start, b"\x01", b"\x00")


@settings(max_examples=200, deadline=None)
@given(logs())
def test_exactly_once_writes_match_a_session_model(log: list[bytes]) -> None:
    """Every successful write advances the revision by one, and no request -- a
    (client, seq) pair within one incarnation of a session -- ever writes twice.

    NB: across incarnations seq 1 may write again (a retry of seq 1 reaching an evicted
    session reopens it): the documented reason clients open sessions with a Noop."""
    sm = new_sm()
    incarnation: dict[bytes, int] = {}
    writes: set[tuple[bytes, int, int]] = set()
    for i, e in enumerate(log, 1):
        before = sm.revision
        try:
            client_id, seq = msgpack.unpackb(e)[2][:2]
        except Exception:
            client_id, seq = b"", 0  # garbage: must not write
        session = sm._sessions.get(client_id)
        sm.apply(i, e)
        if sm._sessions.get(client_id) not in (None, session):  # opened (again)
            incarnation[client_id] = incarnation.get(client_id, 0) + 1
        if sm.revision != before:
            assert sm.revision == before + 1
            request = (client_id, incarnation.get(client_id, 0), seq)
            assert request not in writes
            writes.add(request)


def test_snapshot_bytes_do_not_depend_on_hash_seed() -> None:
    """Replicas run in different processes: iteration order of dicts and sets keyed by
    bytes must never leak into state. Two hash seeds, same log, same bytes."""
    script = textwrap.dedent(
        """
        import hashlib
        from kvstore.commands import Header, OpenSession, Put, Delete, encode_command
        from kvstore.state_machine import KVStateMachine
        sm = KVStateMachine(max_sessions=20, max_results_per_session=4)
        for i in range(1, 400):
            cid = bytes([i % 37]) * 16
            cmd = Put(b"k%d" % (i % 23), b"v") if i % 5 else Delete(b"k%d" % (i % 23))
            seq = 1 + i // 37
            sm.apply(i, encode_command(Header(cid, seq, 0), OpenSession() if seq == 1 else cmd))
        print(hashlib.sha256(sm.snapshot()).hexdigest())
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_format_2_snapshot_restores_and_its_cached_results_answer_retries() -> None:
    """Format 2 kept no command digests: such a cached result answers a retry of its
    seq as before (the format-3 check starts with results cached after the upgrade)."""
    r, c = Replica(), Client(cid(1))
    put = c.cmd(Put(b"k", b"v"))
    first = r.apply(put)
    obj = msgpack.unpackb(r.sm.snapshot(), use_list=True)
    assert obj[0] == 5
    obj[0] = 2
    del obj[7:]  # format 3 added the ended session ids, format 5 the sections
    obj[4] = [[cid_, ms, floor, [row[:2] for row in rows]] for cid_, ms, floor, rows in obj[4]]
    old = KVStateMachine()
    old.restore(msgpack.packb(obj, use_bin_type=True))
    twin = Replica(old, index=r.index, opened=set(r.opened))
    assert twin.apply(put) == first and old.revision == 1
    assert twin.apply(c.at(c.seq, Put(b"k", b"other"))) == first  # no digest: as before


def test_a_format_3_snapshot_keeps_its_eviction_order() -> None:
    """Format 3 gave each session its last activity by the old clock; restored, the
    least recently active (ties: lowest client_id) is the first evicted, as before."""
    r = Replica(KVStateMachine(max_sessions=3))
    clients = [Client(cid(n)) for n in (1, 2, 3)]
    for c in clients:
        r.apply(c.cmd(Noop()))
    obj = msgpack.unpackb(r.sm.snapshot(), use_list=True)
    obj[0] = 3
    del obj[8]  # format 5 added the named sections
    active = {cid(1): 700, cid(2): 500, cid(3): 500}  # cid(2) the oldest, by id
    obj[4] = [[c, active[c], floor, rows] for c, _, floor, rows in obj[4]]
    obj[2] = 700  # the old clock, at least every last activity
    old = KVStateMachine(max_sessions=3)
    old.restore(msgpack.packb(obj, use_bin_type=True))
    twin = Replica(old, index=r.index, opened=set(r.opened))
    twin.apply(Client(cid(4)).cmd(Noop()))
    assert twin.apply(clients[1].cmd(Noop())).code is ResultCode.SESSION_EXPIRED
    assert twin.apply(clients[2].cmd(Noop())).code is OK


def test_format_1_commands_replay_under_their_own_rules() -> None:
    """Logs written before format 2 opened a session with a data command's seq 1: such
    an entry, replayed from an old data directory, must rebuild the state the old
    version built, or a restarted node would diverge from its own history."""
    r = Replica(opened={cid(1), cid(2)})  # no automatic opens
    old = Header(cid(1), 1, 0, 0, format=1)
    assert r.apply(encode_command(old, Put(b"k", b"v"))).code is OK and r.sm.revision == 1
    new = Header(cid(2), 1, 0, 0)  # format 3 (as 2): no session, no write
    assert r.apply(encode_command(new, Put(b"k", b"w"))).code is ResultCode.SESSION_EXPIRED
    assert decode_command(encode_command(old, Noop()))[0].format == 1


def test_an_ended_session_is_never_reopened() -> None:
    """A delayed duplicate of a session's OpenSession, applied after the session was
    evicted, used to recreate it empty: a retry of a write it had applied then applied
    again (found in review). Ended ids are remembered (bounded) and refused."""
    c = Client(cid(1))
    r = Replica(KVStateMachine(max_sessions=1), opened={c.id})
    opening = c.open()
    assert r.apply(opening).code is OK
    put = c.cmd(Put(b"k", b"v"))
    assert r.apply(put).code is OK and r.sm.revision == 1
    other = Client(cid(2))
    r.apply(other.open())  # max_sessions=1: evicts c's session
    assert r.apply(opening).code is ResultCode.SESSION_EXPIRED  # the late duplicate
    assert r.apply(put).code is ResultCode.SESSION_EXPIRED and r.sm.revision == 1
    closed = Client(cid(3))
    r.apply(closed.open())
    r.apply(closed.cmd(CloseSession()))
    assert r.apply(closed.open()).code is ResultCode.SESSION_EXPIRED
    twin = KVStateMachine(max_sessions=1)
    twin.restore(r.sm.snapshot())
    assert twin.snapshot() == r.sm.snapshot()
    assert twin.apply(r.index + 1, closed.open()).code is ResultCode.SESSION_EXPIRED
    # At most max_sessions ended ids are kept: c's (the oldest) is forgotten by now.
    assert twin.apply(r.index + 2, opening).code is OK


def test_a_format_1_reopen_of_an_ended_id_keeps_snapshots_restorable() -> None:
    """Old logs may reopen an evicted id with a seq-1 data command (their rules): the
    id then is open, not ended, and the snapshot still restores."""
    r = Replica(KVStateMachine(max_sessions=2), opened={cid(1), cid(2), cid(3)})
    old = Header(cid(1), 1, 0, 0, format=1)
    assert r.apply(encode_command(old, Put(b"k", b"v"))).code is OK
    r.apply(Client(cid(2)).open())
    r.apply(Client(cid(3)).open())  # evicts cid(1): ended
    assert r.apply(encode_command(old, Put(b"k", b"w"))).code is OK  # reopened, format 1
    assert r.sm.session_count == 2
    twin = KVStateMachine(max_sessions=2)
    twin.restore(r.sm.snapshot())
    assert twin.snapshot() == r.sm.snapshot()


def test_validate_checks_a_snapshot_without_touching_the_state() -> None:
    """The engine asks before it adopts a leader's snapshot (issue 11): a bad one is
    refused with the state as it was; a good one restores from the decode validate did."""
    r, c = Replica(), Client(cid(1))
    r.apply(c.cmd(Put(b"k", b"v")))
    before = r.sm.snapshot()
    for bad in (b"", b"garbage", msgpack.packb([4, 0, 0, [0, [], 0, []], [], [], 1, []])[:-3]):
        with pytest.raises(SnapshotError):
            r.sm.validate(bad)
    assert r.sm.snapshot() == before
    other = Replica()
    other.apply(Client(cid(2)).cmd(Put(b"x", b"y")))
    data = other.sm.snapshot()
    with pytest.raises(SnapshotError, match="sent as index 99"):
        r.sm.validate(data, 99)  # its applied index is another
    r.sm.validate(data, other.sm.applied_index)
    assert r.sm.snapshot() == before  # validated, not restored
    r.sm.restore(data)
    assert r.sm.snapshot() == data and r.sm.get(b"k") is None


def test_replicas_upgraded_from_different_snapshots_agree() -> None:
    """Review of issue 9: an old log (format 2) must replay under its own rules -- a
    session idle for ten minutes of the old clock is evicted, and eviction by count
    picks by that clock -- or two replicas that restart from snapshots at different
    indexes of the same old log diverge."""
    a, b, c = Client(cid(1), fmt=2), Client(cid(2), fmt=2), Client(cid(3), fmt=2)
    log: list[bytes] = [a.cmd(Put(b"k", b"1")), b.cmd(Noop())]
    b.now_ms = c.now_ms = 11 * 60 * 1000  # a idles past ten minutes of the old clock
    log += [b.cmd(Noop()), c.cmd(Noop())]
    a.now_ms = 11 * 60 * 1000
    log += [a.cmd(Put(b"k", b"2"))]  # the old rules: SESSION_EXPIRED, not applied
    whole = Replica(KVStateMachine(max_sessions=2))
    results = [whole.apply(e) for e in log]
    assert results[-1].code is ResultCode.SESSION_EXPIRED and whole.sm.get(b"k").value == b"1"  # type: ignore[union-attr]
    for cut in range(1, len(log) + 1):
        first = Replica(KVStateMachine(max_sessions=2))
        for e in log[:cut]:
            first.apply(e)
        restarted = KVStateMachine(max_sessions=2)
        restarted.restore(first.sm.snapshot())
        twin = Replica(restarted, index=first.index, opened=set(first.opened))
        for e in log[cut:]:
            twin.apply(e)
        assert twin.sm.snapshot() == whole.sm.snapshot(), f"diverged after a snapshot at {cut}"
