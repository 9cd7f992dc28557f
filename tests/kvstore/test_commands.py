"""The replicated command format: round trips, and the gateway's fuzz invariant (any
bytes decode or raise CommandError, never anything else)."""

from __future__ import annotations

import contextlib

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.commands import (
    AUTH_COMMANDS,
    CLIENT_ID_LEN,
    COMMAND_TAGS,
    FORMAT_VERSION,
    MAX_COMMAND_BYTES,
    MAX_INT,
    MAX_KEY_LEN,
    MAX_TTL_MS,
    MAX_TXN_OPS,
    MAX_VALUE_LEN,
    AlarmType,
    AuthDisable,
    AuthEnable,
    Cas,
    CloseSession,
    Command,
    CommandError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteOp,
    DisarmAlarm,
    ExpireLease,
    Header,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Noop,
    OpenSession,
    Permission,
    Put,
    PutOp,
    RaiseAlarm,
    RangeOp,
    RoleAdd,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
    Tick,
    Txn,
    UserAdd,
    UserChangePassword,
    UserDelete,
    UserGrantRole,
    UserRevokeRole,
    command_digest,
    decode_command,
    encode_command,
)
from kvstore.password import PasswordHash
from tests.kvstore.txn_strategies import one_write_per_key

keys = st.binary(min_size=1, max_size=64)
values = st.binary(max_size=256)
ints = st.integers(min_value=0, max_value=MAX_INT - 1)


@st.composite
def headers(draw: st.DrawFn, fmt: int = FORMAT_VERSION) -> Header:
    """A header of command format ``fmt``: formats 1 and 2 carry a clock, 3 none, 4 a
    user and an auth revision."""
    seq = draw(st.integers(min_value=1, max_value=MAX_INT - 1))
    ack = draw(st.integers(min_value=0, max_value=seq - 1))
    cid = draw(st.binary(min_size=CLIENT_ID_LEN, max_size=CLIENT_ID_LEN))
    if fmt < 4:
        return Header(cid, seq, ack, draw(ints) if fmt < 3 else 0, fmt)
    return Header(cid, seq, ack, 0, fmt, draw(st.none() | names), draw(ints))


cas = st.builds(Cas, keys, st.none() | values, st.none() | ints, values).filter(
    lambda c: c.expected_value is not None or c.expected_version is not None
)
int_targets = st.sampled_from([t for t in CompareTarget if t is not CompareTarget.VALUE])
compares = st.builds(
    Compare, keys, st.just(CompareTarget.VALUE), st.sampled_from(CompareOp), values
) | st.builds(Compare, keys, int_targets, st.sampled_from(CompareOp), ints)
range_ops = st.builds(RangeOp, keys, st.none() | keys, st.none() | st.integers(1, 1000))
write_ops = st.builds(PutOp, keys, values, ints) | st.builds(DeleteOp, keys)


branches = st.lists(range_ops | write_ops, max_size=6).map(one_write_per_key)
txns = st.builds(Txn, st.lists(compares, max_size=4).map(tuple), branches, branches)
leases = st.integers(min_value=1, max_value=MAX_INT - 1)
names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20)
hashes = st.builds(
    PasswordHash,
    st.binary(min_size=16, max_size=64),
    st.integers(10, 20),
    st.integers(1, 16),
    st.integers(1, 4),
    st.binary(min_size=32, max_size=64),
)
auth_commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(AuthEnable, st.binary(min_size=32, max_size=64)),
    st.just(AuthDisable()),
    st.builds(UserAdd, names, hashes),
    st.builds(UserDelete, names),
    st.builds(UserChangePassword, names, hashes),
    st.builds(UserGrantRole, names, names),
    st.builds(UserRevokeRole, names, names),
    st.builds(RoleAdd, names),
    st.builds(RoleDelete, names),
    st.builds(RoleGrantPermission, names, st.sampled_from(Permission), st.binary(max_size=64)),
    st.builds(RoleRevokePermission, names, st.binary(max_size=64)),
)
commands: st.SearchStrategy[Command] = st.one_of(
    st.just(Noop()),
    st.just(OpenSession()),
    st.just(CloseSession()),
    st.builds(Put, keys, values),
    st.builds(Delete, keys),
    cas,
    txns,
    st.builds(LeaseGrant, st.integers(1, MAX_TTL_MS)),
    st.builds(LeaseRevoke, leases),
    st.builds(ExpireLease, leases),
    st.builds(RaiseAlarm, st.sampled_from(AlarmType), st.binary(min_size=1, max_size=255)),
    st.builds(DisarmAlarm, st.sampled_from(AlarmType)),
    auth_commands,
)
"""Commands of the current format."""
old_commands: st.SearchStrategy[Command] = commands.filter(
    lambda c: not isinstance(c, (ExpireLease, RaiseAlarm, DisarmAlarm, *AUTH_COMMANDS))
) | st.sampled_from([Tick(), LeaseKeepAlive(1), LeaseKeepAlive(MAX_INT - 1)])
"""Commands of formats 1 and 2."""
any_format = st.tuples(headers(), commands) | st.tuples(
    st.sampled_from([1, 2]).flatmap(headers), old_commands
)

H = Header(b"c" * CLIENT_ID_LEN, 1, 0, 0)


def raw(*items: object) -> bytes:
    data: bytes = msgpack.packb(list(items), use_bin_type=True)
    return data


HDR = [H.client_id, 1, 0, None, 0]


@given(any_format)
def test_round_trip(framed: tuple[Header, Command]) -> None:
    header, cmd = framed
    assert decode_command(encode_command(header, cmd)) == (header, cmd)


@pytest.mark.parametrize("fmt", [1, 2])
def test_old_formats_keep_their_clock_and_their_commands(fmt: int) -> None:
    old = Header(b"c" * CLIENT_ID_LEN, 1, 0, 1234, fmt)
    for cmd in (Tick(), LeaseKeepAlive(3), Put(b"k", b"v")):
        assert decode_command(encode_command(old, cmd)) == (old, cmd)
    with pytest.raises(CommandError, match="ExpireLease does not exist in command format"):
        encode_command(old, ExpireLease(1))
    with pytest.raises(CommandError, match="header"):
        decode_command(raw(fmt, 0, HDR[:3]))


def test_format_3_has_no_clock_tick_or_replicated_keepalive() -> None:
    """Issue 9: no replicated decision reads a clock, so the current format has none."""
    with pytest.raises(CommandError, match="carries no clock"):
        encode_command(Header(b"c" * CLIENT_ID_LEN, 1, 0, 5), Noop())
    for fmt in (3, 4):
        for cmd in (Tick(), LeaseKeepAlive(1)):
            with pytest.raises(CommandError, match=f"does not exist in command format {fmt}"):
                encode_command(Header(H.client_id, 1, 0, 0, fmt), cmd)
    with pytest.raises(CommandError, match="header"):
        decode_command(raw(3, 0, [*HDR[:3], 0]))


def test_format_4_names_the_user_and_older_formats_cannot() -> None:
    alice = Header(H.client_id, 3, 1, user="alice", auth_revision=7)
    assert decode_command(encode_command(alice, Put(b"k", b"v"))) == (alice, Put(b"k", b"v"))
    with pytest.raises(CommandError, match="carries no user"):
        encode_command(Header(H.client_id, 1, 0, 0, 3, "alice"), Noop())
    for bad_user in (b"", b"\xff", b"a\nb", b"x" * 257, 5):
        with pytest.raises(CommandError, match="user"):
            decode_command(raw(4, 0, [H.client_id, 1, 0, bad_user, 0]))
    with pytest.raises(CommandError, match="max_str_len"):  # names travel as bytes
        decode_command(raw(4, 0, [H.client_id, 1, 0, "alice", 0]))
    with pytest.raises(CommandError, match="auth_revision"):
        decode_command(raw(4, 0, [H.client_id, 1, 0, None, -1]))
    with pytest.raises(CommandError, match="header"):
        decode_command(raw(4, 0, [H.client_id, 1, 0]))  # a format-3 header


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_auth_commands_exist_only_in_format_4(fmt: int) -> None:
    with pytest.raises(CommandError, match="does not exist in command format"):
        encode_command(Header(H.client_id, 1, 0, 0, fmt), RoleAdd("r"))


@pytest.mark.parametrize(
    ("tag", "args", "match"),
    [
        (12, [b"short"], "token_key"),
        (14, [b"u", [b"s" * 16, 30, 8, 1, b"h" * 32]], "log_n"),  # 2**30: a gigabyte a login
        (14, [b"u", [b"s" * 4, 14, 8, 1, b"h" * 32]], "salt"),
        (14, [b"u", [b"s" * 16, 14, 8, 1]], "password hash"),
        (15, [b""], "name"),
        (17, [b"u", b"\x00"], "role"),
        (21, [b"r", 4, b"k"], "permission"),
        (21, [b"r", True, b"k"], "permission"),
        (22, [b"r", b"k" * (MAX_KEY_LEN + 1)], "prefix"),
    ],
)
def test_bad_auth_commands_are_refused(tag: int, args: list[object], match: str) -> None:
    with pytest.raises(CommandError, match=match):
        decode_command(raw(4, tag, HDR, *args))


def test_the_digest_leaves_out_what_the_proposer_draws_afresh() -> None:
    """A retried user_add is hashed again with a new salt, a retried auth_enable draws
    a new key: still the same request for the session's seq check."""
    h1 = PasswordHash(b"a" * 16, 14, 8, 1, b"x" * 32)
    h2 = PasswordHash(b"b" * 16, 14, 8, 1, b"y" * 32)
    assert command_digest(UserAdd("u", h1)) == command_digest(UserAdd("u", h2))
    assert command_digest(UserAdd("u", h1)) != command_digest(UserAdd("v", h1))
    assert command_digest(UserAdd("u", h1)) != command_digest(UserChangePassword("u", h1))
    assert command_digest(AuthEnable(b"k" * 32)) == command_digest(AuthEnable(b"j" * 32))
    assert command_digest(RoleAdd("r")) != command_digest(RoleDelete("r"))


@given(headers(), commands)
def test_encoding_is_deterministic_and_tagged(header: Header, cmd: Command) -> None:
    data = encode_command(header, cmd)
    assert data == encode_command(header, cmd)
    version, tag, *_ = msgpack.unpackb(data)
    assert (version, tag) == (FORMAT_VERSION, COMMAND_TAGS[type(cmd)])


def test_tags_are_explicit() -> None:
    assert {
        Noop: 0,
        Put: 1,
        Delete: 2,
        Cas: 3,
        Txn: 4,
        LeaseGrant: 5,
        LeaseRevoke: 6,
        LeaseKeepAlive: 7,
        Tick: 8,
        OpenSession: 9,
        CloseSession: 10,
        ExpireLease: 11,
        AuthEnable: 12,
        AuthDisable: 13,
        UserAdd: 14,
        UserDelete: 15,
        UserChangePassword: 16,
        UserGrantRole: 17,
        UserRevokeRole: 18,
        RoleAdd: 19,
        RoleDelete: 20,
        RoleGrantPermission: 21,
        RoleRevokePermission: 22,
        RaiseAlarm: 25,
        DisarmAlarm: 26,
    } == COMMAND_TAGS
    for unused in (23, 24, 27, 28, 29):  # free (24 and below: auth; 27-29: alarms)
        with pytest.raises(CommandError, match="tag"):
            decode_command(raw(FORMAT_VERSION, unused, HDR))


def test_alarm_commands_are_validated_and_exist_from_format_3_on() -> None:
    raised = RaiseAlarm(AlarmType.NOSPACE, b"n1")
    assert decode_command(raw(FORMAT_VERSION, 25, HDR, 1, b"n1")) == (H, raised)
    assert decode_command(raw(FORMAT_VERSION, 26, HDR, 1)) == (H, DisarmAlarm(AlarmType.NOSPACE))
    for args, match in [
        ((0, b"n1"), "bad alarm"),  # etcd's NONE is not an alarm
        ((2, b"n1"), "bad alarm"),  # not one this release knows
        ((True, b"n1"), "bad alarm"),
        ((1, b""), "bad member"),
        ((1, b"x" * 256), "bad member"),
        ((1, "n1"), "malformed msgpack"),  # the format has no strings
        ((1,), "takes 2 arguments"),
    ]:
        with pytest.raises(CommandError, match=match):
            decode_command(raw(FORMAT_VERSION, 25, HDR, *args))
    with pytest.raises(CommandError, match="bad alarm"):
        decode_command(raw(FORMAT_VERSION, 26, HDR, 3))
    h3 = Header(H.client_id, 1, 0, 0, 3)
    assert decode_command(raw(3, 26, HDR[:3], 1)) == (h3, DisarmAlarm(AlarmType.NOSPACE))
    old = Header(b"c" * CLIENT_ID_LEN, 1, 0, 7, 2)
    with pytest.raises(CommandError, match="does not exist in command format 2"):
        encode_command(old, DisarmAlarm(AlarmType.NOSPACE))


@pytest.mark.parametrize(
    ("txn_args", "match"),
    [
        ([[], [[1, b"k", b"v", 0], [2, b"k"]], []], "same key twice"),
        ([[], [], [[1, b"k", b"v", 0], [1, b"k", b"w", 0]]], "same key twice"),
        ([[[b"k", 9, 0, 1]], [], []], "compare target"),
        ([[[b"k", 1, 7, 1]], [], []], "compare op"),
        ([[[b"k", 0, 0, 5]], [], []], "compare value"),  # VALUE compares bytes
        ([[[b"k", 1, 0, b"x"]], [], []], "compare operand"),  # others compare ints
        ([[[b"k", True, 0, 1]], [], []], "compare target"),
        ([[], [[3, b"k"]], []], "kind 3"),
        ([[], [[0, b"k", None, 0]], []], "range limit"),
        ([[], [[1, b"k", b"v", -1]], []], "lease"),
        ([[], [[1, b"", b"v", 0]], []], "key"),
        ([[], [[0, b"k", None, None]] * (MAX_TXN_OPS + 1), []], "malformed|at most"),
    ],
)
def test_bad_txns_are_refused(txn_args: list[object], match: str) -> None:
    with pytest.raises(CommandError, match=match):
        decode_command(raw(FORMAT_VERSION, 4, HDR, *txn_args))


def test_a_branch_may_read_and_write_one_key_and_branches_are_independent() -> None:
    txn = Txn(
        (Compare(b"k", CompareTarget.MOD, CompareOp.EQ, 3),),
        (RangeOp(b"k", None, None), PutOp(b"k", b"v"), RangeOp(b"k", None, None)),
        (PutOp(b"k", b"w"),),
    )
    assert decode_command(encode_command(H, txn)) == (H, txn)
    assert not txn.read_only
    assert Txn((), (RangeOp(b"a", b"b", 5),), ()).read_only


@pytest.mark.parametrize("ttl", [0, MAX_TTL_MS + 1])
def test_lease_ttl_bounds(ttl: int) -> None:
    with pytest.raises(CommandError, match="ttl"):
        decode_command(raw(FORMAT_VERSION, 5, HDR, ttl))


def test_lease_zero_is_not_a_lease() -> None:
    with pytest.raises(CommandError, match="lease"):
        decode_command(raw(FORMAT_VERSION, 6, HDR, 0))


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_command_error(data: bytes) -> None:
    with contextlib.suppress(CommandError):
        decode_command(data)


junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.binary(max_size=20)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=20,
)


@given(st.lists(junk, max_size=8))
def test_arbitrary_msgpack_arrays_raise_only_command_error(items: list[object]) -> None:
    with contextlib.suppress(CommandError):
        decode_command(raw(*items))


@given(any_format, st.data())
def test_truncated_or_extended_encodings_are_rejected(
    framed: tuple[Header, Command], data: st.DataObject
) -> None:
    header, cmd = framed
    enc = encode_command(header, cmd)
    cut = data.draw(st.integers(min_value=0, max_value=len(enc) - 1))
    with pytest.raises(CommandError):
        decode_command(enc[:cut])
    with pytest.raises(CommandError):
        decode_command(enc + b"\x00")


@pytest.mark.parametrize(
    "cmd",
    [
        Put(b"", b"v"),
        Put(b"k" * (MAX_KEY_LEN + 1), b"v"),
        Put(b"k", b"v" * (MAX_VALUE_LEN + 1)),
        Delete(b""),
        Cas(b"k", b"v" * (MAX_VALUE_LEN + 1), None, b""),
        Cas(b"k", None, None, b"v"),  # no expectation: a Put in disguise
        Cas(b"k", None, -1, b"v"),
    ],
)
def test_invalid_commands_rejected_on_encode(cmd: Command) -> None:
    with pytest.raises(CommandError):
        encode_command(H, cmd)


def test_size_limits_are_inclusive() -> None:
    big = Put(b"k" * MAX_KEY_LEN, b"v" * MAX_VALUE_LEN)
    assert decode_command(encode_command(H, big)) == (H, big)
    both = Cas(b"k" * MAX_KEY_LEN, b"v" * MAX_VALUE_LEN, 7, b"w" * MAX_VALUE_LEN)
    assert decode_command(encode_command(H, both)) == (H, both)


@pytest.mark.parametrize(
    "header",
    [
        Header(b"c" * 15, 1, 0, 0),
        Header(b"c" * 17, 1, 0, 0),
        Header(b"c" * 16, 0, 0, 0),  # seq starts at 1
        Header(b"c" * 16, 3, 3, 0),  # ack_seq < seq
        Header(b"c" * 16, 3, -1, 0),
        Header(b"c" * 16, 1, 0, -5, 2),
        Header(b"c" * 16, 1, 0, 5),  # format 3 has no clock
        Header(b"c" * 16, MAX_INT, 0, 0),
        Header(b"c" * 16, True, 0, 0),
    ],
)
def test_invalid_headers_rejected(header: Header) -> None:
    with pytest.raises(CommandError):
        encode_command(header, Noop())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw(5, 1, HDR, b"k", b"v"), "format version"),
        (raw(True, 1, HDR, b"k", b"v"), "format version"),
        (raw(1, 99, HDR), "tag"),
        (raw(1, 1, HDR, b"k"), "Put takes 2"),
        (raw(1, 1, HDR, "k", b"v"), "malformed msgpack"),  # strings are not in the format
        (raw(1, 1, HDR, b"k", None), "value"),
        (raw(1, 0, [HDR[0], 1, 0]), "header"),
        (raw(1, 0, [HDR[0], 1.0, 0, 0]), "seq"),
        (raw(3, 0, [HDR[0], 1.0, 0]), "seq"),
        (msgpack.packb({"a": 1}), "malformed msgpack"),
        (b"", "malformed msgpack"),
        (raw(1, 0), "want array"),
    ],
)
def test_malformed_commands_name_the_problem(data: bytes, match: str) -> None:
    with pytest.raises(CommandError, match=match):
        decode_command(data)


def test_oversize_input_rejected_before_unpacking() -> None:
    with pytest.raises(CommandError, match="exceeds"):
        decode_command(b"\x00" * (MAX_COMMAND_BYTES + 1))
    bin32_header_claiming_4gib = b"\xc6\xff\xff\xff\xff"
    with pytest.raises(CommandError):
        decode_command(bin32_header_claiming_4gib)


def test_non_bytes_input_is_a_command_error() -> None:
    with pytest.raises(CommandError):
        decode_command("text")  # type: ignore[arg-type]


def test_encoding_refuses_a_command_no_replica_would_decode() -> None:
    big = b"v" * MAX_VALUE_LEN
    txn = Txn((), tuple(PutOp(b"k%d" % i, big) for i in range(5)), ())
    with pytest.raises(CommandError, match="exceeds"):
        encode_command(H, txn)


@given(headers(), headers(), commands)
def test_digest_ignores_the_header_and_names_the_command(
    a: Header, b: Header, cmd: Command
) -> None:
    """A retry (another ack, another leader clock) has the digest of the first try; a
    different command under the same seq has another (issue 9, item 2)."""
    assert command_digest(cmd) == command_digest(decode_command(encode_command(b, cmd))[1])
    assert command_digest(Put(b"k", b"1")) != command_digest(Put(b"k", b"2"))
    assert command_digest(OpenSession()) != command_digest(CloseSession())
