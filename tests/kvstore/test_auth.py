"""Auth in the replicated state machine (kvstore/auth.py): permissions by prefix, root,
the re-check at apply against the auth revision, sessions bound to their user, tokens,
and the auth section of the snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.auth import ROOT, AuthBehind, AuthError, AuthState, key_range
from kvstore.commands import (
    AuthDisable,
    AuthEnable,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    Header,
    LeaseGrant,
    LeaseRevoke,
    OpenSession,
    Permission,
    Put,
    PutOp,
    RangeOp,
    RoleAdd,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
    Txn,
    UserAdd,
    UserChangePassword,
    UserDelete,
    UserGrantRole,
    UserRevokeRole,
    encode_command,
)
from kvstore.password import PasswordHash, hash_password, verify_password
from kvstore.protocol import prefix_end
from kvstore.state_machine import KVStateMachine, Result, ResultCode, SnapshotError

OK = ResultCode.OK
DENIED = ResultCode.PERMISSION_DENIED
HASH = PasswordHash(b"s" * 16, 10, 8, 1, b"h" * 32)  # never checked against a password
KEY = b"k" * 32


class Cluster:
    """One state machine and the clients that propose to it. ``propose`` stamps each
    command with the auth revision the proposer would check it at: the current one,
    unless the test says it was checked earlier (``checked_at``)."""

    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0
        self.seqs: dict[bytes, int] = {}

    def apply_raw(self, data: bytes) -> Result:
        self.index += 1
        return self.sm.apply(self.index, data)

    def header(self, client: bytes, user: str | None, checked_at: int | None = None) -> Header:
        seq = self.seqs.get(client, 0) + 1
        self.seqs[client] = seq
        rev = self.sm.auth.revision if checked_at is None else checked_at
        return Header(client, seq, seq - 1, user=user, auth_revision=rev)

    def propose(
        self, client: bytes, user: str | None, cmd: Command, checked_at: int | None = None
    ) -> bytes:
        return encode_command(self.header(client, user, checked_at), cmd)

    def run(
        self, client: bytes, user: str | None, cmd: Command, checked_at: int | None = None
    ) -> Result:
        return self.apply_raw(self.propose(client, user, cmd, checked_at))

    def open(self, client: bytes, user: str | None) -> None:
        assert self.run(client, user, OpenSession()).code is OK

    def bootstrap(self) -> None:
        """Root, and alice with role ``rw`` on prefix ``a/`` and ``ro`` on ``pub/``,
        set up while auth is off (anyone may), then auth enabled."""
        admin = b"A" * 16
        self.open(admin, None)
        for cmd in (
            UserAdd(ROOT, HASH),
            UserGrantRole(ROOT, ROOT),
            UserAdd("alice", HASH),
            UserAdd("bob", HASH),
            RoleAdd("rw"),
            RoleAdd("ro"),
            RoleGrantPermission("rw", Permission.READWRITE, b"a/"),
            RoleGrantPermission("ro", Permission.READ, b"pub/"),
            UserGrantRole("alice", "rw"),
            UserGrantRole("alice", "ro"),
            UserGrantRole("bob", "ro"),
            AuthEnable(KEY),
        ):
            assert self.run(admin, None, cmd).code is OK, cmd


ALICE, BOB, ROOTC = b"a" * 16, b"b" * 16, b"r" * 16


@pytest.fixture
def c() -> Cluster:
    c = Cluster()
    c.bootstrap()
    for client, user in ((ALICE, "alice"), (BOB, "bob"), (ROOTC, ROOT)):
        c.open(client, user)
    return c


# ---- AuthState alone ------------------------------------------------------------------


def state(*perms: tuple[Permission, bytes]) -> AuthState:
    s = AuthState()
    s.apply(UserAdd(ROOT, HASH))
    s.apply(UserGrantRole(ROOT, ROOT))
    s.apply(UserAdd("u", HASH))
    s.apply(RoleAdd("r"))
    for perm, prefix in perms:
        s.apply(RoleGrantPermission("r", perm, prefix))
    s.apply(UserGrantRole("u", "r"))
    s.apply(AuthEnable(KEY))
    return s


@pytest.mark.parametrize(
    ("perms", "rng", "need", "allowed"),
    [
        ([(Permission.READ, b"a/")], key_range(b"a/x"), Permission.READ, True),
        ([(Permission.READ, b"a/")], key_range(b"a/x"), Permission.WRITE, False),
        ([(Permission.READWRITE, b"a/")], key_range(b"a/x"), Permission.WRITE, True),
        ([(Permission.READ, b"a/")], key_range(b"a"), Permission.READ, False),
        ([(Permission.READ, b"a/")], key_range(b"a/", b"a0"), Permission.READ, True),
        ([(Permission.READ, b"a/")], key_range(b"a/", b"a1"), Permission.READ, False),
        ([(Permission.READ, b"a/")], key_range(b"a/", unbounded=True), Permission.READ, False),
        ([(Permission.READ, b"")], key_range(b"", unbounded=True), Permission.READ, True),
        ([(Permission.WRITE, b"")], key_range(b"zz"), Permission.READ, False),
        # Adjacent and overlapping prefixes merge: [a/, a0) + [a0, a1) covers [a/, a1).
        (
            [(Permission.READ, b"a/"), (Permission.READ, b"a0")],
            (b"a/", b"a1"),
            Permission.READ,
            True,
        ),
        (
            [(Permission.READ, b"a"), (Permission.READ, b"ab")],
            (b"aa", b"ac"),
            Permission.READ,
            True,
        ),
        (
            [(Permission.READ, b"a/"), (Permission.READ, b"a1")],
            (b"a/", b"a2"),
            Permission.READ,
            False,
        ),
    ],
)
def test_permissions_cover_ranges_by_prefix(
    perms: list[tuple[Permission, bytes]], rng: Any, need: Permission, allowed: bool
) -> None:
    assert state(*perms).permits("u", need, [rng]) is allowed


small_keys = st.binary(max_size=3).map(lambda b: bytes(x % 3 * 127 for x in b))  # 0, 127, 254


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(Permission), small_keys), max_size=5), small_keys)
def test_coverage_agrees_with_a_naive_oracle(grants: list[Any], probe: bytes) -> None:
    """A key is covered iff some granted prefix of the right kind starts it; a prefix
    range [Q, prefix_end(Q)) iff some granted prefix starts Q (Q itself is in the range
    and only a prefix of Q covers it, and that prefix then covers the whole range)."""
    s = state(*grants)
    for need in (Permission.READ, Permission.WRITE):
        mine = {prefix: perm for perm, prefix in grants}  # a later grant replaces
        given_ = [g for g, perm in mine.items() if perm & need]
        expect = any(probe.startswith(g) for g in given_)
        if probe:
            assert s.permits("u", need, [key_range(probe)]) is expect
        end = prefix_end(probe)
        rng = key_range(probe, end, unbounded=end is None)
        assert s.permits("u", need, [rng]) is expect


def test_root_may_do_everything_and_nobody_is_checked_while_auth_is_off() -> None:
    s = state()
    assert s.permits(ROOT, Permission.WRITE, [key_range(b"", unbounded=True)])
    assert not s.permits("u", Permission.READ, [key_range(b"x")])
    assert not s.permits(None, Permission.READ, [key_range(b"x")])
    assert not s.permits("ghost", Permission.READ, [key_range(b"x")])
    s.apply(AuthDisable())
    assert s.permits(None, Permission.WRITE, [key_range(b"x")])


def test_a_command_kind_without_a_rule_is_roots_alone() -> None:
    """Default deny: a command kind added later (another feature's) needs root until
    kvstore/auth.py gives it a rule; the bookkeeping kinds need only a user."""

    @dataclass(frozen=True)
    class Disarm:
        pass

    s = state()
    assert s.denial("u", Disarm(), lambda _: []) == "Disarm needs role root"  # type: ignore[arg-type]
    assert s.denial(ROOT, Disarm(), lambda _: []) is None  # type: ignore[arg-type]
    for cmd in (OpenSession(), LeaseGrant(1000)):
        assert s.denial("u", cmd, lambda _: []) is None
        assert s.denial(None, cmd, lambda _: []) == "authentication required"


def test_enable_needs_root_with_role_root_and_root_keeps_it() -> None:
    s = AuthState()
    with pytest.raises(AuthError, match="root"):
        s.apply(AuthEnable(KEY))
    s.apply(UserAdd(ROOT, HASH))
    with pytest.raises(AuthError, match="root"):
        s.apply(AuthEnable(KEY))
    s.apply(UserGrantRole(ROOT, ROOT))
    before = s.revision
    s.apply(AuthEnable(KEY))
    assert s.enabled and s.revision == before + 1
    for cmd in (UserRevokeRole(ROOT, ROOT), UserDelete(ROOT), RoleDelete(ROOT), RoleAdd(ROOT)):
        with pytest.raises(AuthError):
            s.apply(cmd)
    assert s.is_root(ROOT) and s.revision == before + 1  # refusals change nothing


def test_every_change_bumps_the_revision_and_role_delete_leaves_its_users() -> None:
    s = state((Permission.READ, b"p"))
    r0 = s.revision
    s.apply(RoleGrantPermission("r", Permission.WRITE, b"p"))  # replaces READ on b"p"
    assert s.roles["r"].perms == ((b"p", Permission.WRITE),)
    s.apply(RoleRevokePermission("r", b"p"))
    with pytest.raises(AuthError, match="no permission"):
        s.apply(RoleRevokePermission("r", b"p"))
    s.apply(RoleDelete("r"))
    assert s.users["u"].roles == frozenset() and s.revision == r0 + 3


def test_tokens_every_way_they_stop_working() -> None:
    s = state()
    token = s.issue_token("u", issued_ms=1000)
    assert s.check_token(token, now_ms=2000, ttl_ms=5000) == "u"
    with pytest.raises(AuthError, match="expired"):
        s.check_token(token, now_ms=7001, ttl_ms=5000)
    forged = token[:-1] + bytes([token[-1] ^ 1])
    with pytest.raises(AuthError, match="invalid"):
        s.check_token(forged, now_ms=2000, ttl_ms=5000)
    with pytest.raises(AuthError, match="malformed"):
        s.check_token(b"x", now_ms=2000, ttl_ms=5000)
    s.apply(UserChangePassword("u", HASH))
    with pytest.raises(AuthError, match="password changed"):
        s.check_token(token, now_ms=2000, ttl_ms=5000)
    token = s.issue_token("u", issued_ms=1000)
    s.apply(AuthDisable())
    with pytest.raises(AuthError, match="not enabled"):
        s.check_token(token, now_ms=2000, ttl_ms=5000)
    s.apply(AuthEnable(b"n" * 32))  # a new key: tokens of before the disable are void
    with pytest.raises(AuthError, match="invalid"):
        s.check_token(token, now_ms=2000, ttl_ms=5000)
    token = s.issue_token("u", issued_ms=1000)
    s.apply(UserDelete("u"))
    s.apply(UserAdd("u", HASH))  # same name, new password revision
    with pytest.raises(AuthError, match="no longer valid"):
        s.check_token(token, now_ms=2000, ttl_ms=5000)


def test_a_token_newer_than_a_lagging_replica_is_not_refused_for_good() -> None:
    """A follower that has not yet applied a user's creation answers 'not yet'
    (UNAVAILABLE at the server: retry), not 'invalid' (AUTH_FAILED)."""
    leader, follower = state(), state()
    leader.apply(UserAdd("new", HASH))
    token = leader.issue_token("new", issued_ms=1000)
    with pytest.raises(AuthBehind):
        follower.check_token(token, now_ms=2000, ttl_ms=5000)
    follower.apply(UserAdd("new", HASH))
    assert follower.check_token(token, now_ms=2000, ttl_ms=5000) == "new"


def test_password_hash_verifies_only_its_password() -> None:
    h = hash_password("s3cret", log_n=10)
    assert verify_password("s3cret", h) and not verify_password("s3cret ", h)
    assert hash_password("s3cret", log_n=10).salt != h.salt  # a fresh salt every time


# ---- the state machine ----------------------------------------------------------------


def test_auth_changes_apply_through_the_log_and_refusals_are_definite() -> None:
    c = Cluster()
    admin = b"A" * 16
    c.open(admin, None)
    assert c.run(admin, None, AuthEnable(KEY)).code is ResultCode.FAILED_PRECONDITION
    assert c.run(admin, None, UserGrantRole("nobody", "r")).code is ResultCode.NOT_FOUND
    assert c.run(admin, None, UserAdd("u", HASH)).code is OK
    assert c.run(admin, None, UserAdd("u", HASH)).code is ResultCode.FAILED_PRECONDITION
    assert c.sm.auth.revision == 1 and not c.sm.auth.enabled


def test_a_write_checked_before_a_revoke_does_not_land(c: Cluster) -> None:
    """issue 11: permissions are re-checked at apply against the auth revision."""
    checked = c.sm.auth.revision
    in_flight = c.propose(ALICE, "alice", Put(b"a/1", b"v"), checked_at=checked)
    assert c.run(ROOTC, ROOT, UserRevokeRole("alice", "rw")).code is OK
    r = c.apply_raw(in_flight)
    assert r.code is DENIED and c.sm.get(b"a/1") is None
    assert c.apply_raw(in_flight).code is DENIED  # a retry: the same definite answer
    # Checked at the current revision, the proposer's check stands (etcd's rule).
    assert c.run(ALICE, "alice", Put(b"pub/x", b"v")).code is OK  # the server vouched


def test_a_stale_check_is_redone_for_every_kind_of_request(c: Cluster) -> None:
    stale = 0  # checked before anything existed: every request is re-checked
    assert c.run(ALICE, "alice", Put(b"a/1", b"v"), stale).code is OK
    assert c.run(ALICE, "alice", Put(b"b/1", b"v"), stale).code is DENIED
    assert c.run(BOB, "bob", Put(b"pub/1", b"v"), stale).code is DENIED  # read-only
    txn = Txn(
        (Compare(b"pub/x", CompareTarget.VERSION, CompareOp.EQ, 0),),
        (PutOp(b"a/2", b"v"),),
        (RangeOp(b"a/", b"a0", None),),
    )
    assert c.run(ALICE, "alice", txn, stale).code is OK
    # Every key a txn touches counts, the branch not taken too.
    txn = Txn((), (PutOp(b"a/3", b"v"),), (RangeOp(b"secret", None, None),))
    assert c.run(ALICE, "alice", txn, stale).code is DENIED and c.sm.get(b"a/3") is None
    assert c.run(ALICE, "alice", RoleAdd("mine"), stale).code is DENIED
    assert c.run(ROOTC, ROOT, RoleAdd("mine"), stale).code is OK
    assert c.run(ALICE, None, Put(b"a/4", b"v"), stale).code is DENIED  # anonymous


def test_lease_revoke_needs_write_on_every_key_of_the_lease(c: Cluster) -> None:
    lease = c.run(ROOTC, ROOT, LeaseGrant(60_000)).data[0]
    txn = Txn((), (PutOp(b"a/l", b"v", lease), PutOp(b"z/l", b"v", lease)), ())
    assert c.run(ROOTC, ROOT, txn).code is OK
    assert c.run(ALICE, "alice", LeaseRevoke(lease), checked_at=0).code is DENIED
    assert c.sm.get(b"z/l") is not None
    assert c.run(ROOTC, ROOT, LeaseRevoke(lease), checked_at=0).code is OK


def test_a_session_is_bound_to_the_user_who_opened_it(c: Cluster) -> None:
    """issue 11: reusing another client's session id got the victim's write answered
    OK and never applied. Now the thief is refused and the victim's session goes on."""
    victim_seq = c.seqs[ALICE] + 1
    stolen = encode_command(
        Header(ALICE, victim_seq, victim_seq - 1, 0, 4, "bob", 99), Put(b"a/x", b"bob")
    )
    assert c.run(ROOTC, ROOT, Put(b"z/1", b"1")).code is OK  # alice's is not the newest
    order = list(c.sm._sessions)
    assert order[-1] != ALICE
    assert c.apply_raw(stolen).code is DENIED
    # Untouched: a stranger's refused commands do not count as the victim's activity
    # (they would keep it from being evicted).
    assert list(c.sm._sessions) == order
    assert c.run(ALICE, "alice", Put(b"a/x", b"alice")).code is OK  # the same seq, unharmed
    assert c.sm.get(b"a/x").value == b"alice"  # type: ignore[union-attr]
    # Root is no exception: the session is alice's.
    assert (
        c.apply_raw(encode_command(Header(ALICE, 50, 0, 0, 4, ROOT, 99), Put(b"a/y", b"r"))).code
        is DENIED
    )
    assert c.sm.session_user(ALICE) == (True, "alice")


def test_an_anonymous_open_session_refused_at_apply_opens_nothing(c: Cluster) -> None:
    anon = b"n" * 16
    assert c.run(anon, None, OpenSession(), checked_at=0).code is DENIED
    assert c.sm.session_user(anon) == (False, None)


# ---- snapshot --------------------------------------------------------------------------


def test_auth_state_and_session_owners_survive_a_snapshot(c: Cluster) -> None:
    twin = KVStateMachine()
    twin.restore(c.sm.snapshot())
    assert twin.snapshot() == c.sm.snapshot()
    assert twin.auth.to_obj() == c.sm.auth.to_obj() and twin.auth.enabled
    assert twin.session_user(BOB) == (True, "bob")
    # The restored state enforces as the original does.
    stolen = encode_command(Header(ALICE, 9, 0, 0, 4, "bob", 99), Put(b"a/x", b"bob"))
    assert twin.apply(c.index + 1, stolen).code is DENIED


def sections(c: Cluster) -> tuple[list[Any], dict[str, Any]]:
    obj = msgpack.unpackb(c.sm.snapshot(), raw=False, use_list=True)
    assert obj[0] == 5
    return obj, obj[8]


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (lambda s: s.update(watches={}), "unknown snapshot section"),
        (lambda s: s["auth"].update(extra=1), "five fields"),
        (lambda s: s["auth"]["users"].pop(), "without root"),  # sorted: root last
        (lambda s: s["auth"]["users"][0][1].__setitem__(1, 40), "log_n"),
        (lambda s: s["auth"]["users"][0][2].append("nope"), "role that does not exist"),
        (lambda s: s["auth"]["users"][0].__setitem__(3, 10**6), "password revision"),
        (lambda s: s["auth"]["roles"][0][1].append([b"a/", 9]), "Permission"),
        (lambda s: s["auth"]["sessions"].append([b"z" * 16, "bob"]), "not open"),
        (lambda s: s["auth"].update(token_key=b"short"), "token key"),
        (lambda s: s["auth"].update(enabled=1), "enabled"),
    ],
)
def test_a_bad_auth_section_is_refused_and_changes_nothing(
    c: Cluster, spoil: Any, match: str
) -> None:
    obj, secs = sections(c)
    spoil(secs)
    data = msgpack.packb(obj, use_bin_type=True)
    other = KVStateMachine()
    before = other.snapshot()
    with pytest.raises(SnapshotError, match=match):
        other.validate(data)
    with pytest.raises(SnapshotError, match=match):
        other.restore(data)
    assert other.snapshot() == before


def test_a_format_4_snapshot_restores_with_auth_off(c: Cluster) -> None:
    obj, _ = sections(c)
    obj[0] = 4
    del obj[8]
    old = KVStateMachine()
    old.restore(msgpack.packb(obj, use_bin_type=True))
    assert not old.auth.enabled and old.auth.users == {}
    assert old.session_user(ALICE) == (True, None)


def test_replicas_applying_one_log_with_auth_reach_the_same_bytes() -> None:
    """Everything random (salts, the token key) came from the proposer, in the log."""
    log = []
    twin = KVStateMachine()
    other = Cluster()
    orig_apply = other.sm.apply

    def recording(index: int, data: bytes) -> Result:
        log.append((index, data))
        return orig_apply(index, data)

    other.sm.apply = recording  # type: ignore[method-assign]
    other.bootstrap()
    other.open(ALICE, "alice")
    other.run(ALICE, "alice", Put(b"a/1", b"v"))
    other.run(ALICE, "alice", Put(b"b/1", b"v"), checked_at=0)  # refused at apply
    for index, data in log:
        twin.apply(index, data)
    assert twin.snapshot() == other.sm.snapshot()
    assert twin.auth.to_obj() == other.sm.auth.to_obj() and twin.get(b"b/1") is None
