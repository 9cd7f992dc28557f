"""kvstore.protocol: every value round-trips, and no input raises anything but
ProtocolError (h11's fuzz invariant), with the code a client would get back."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs upstream
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import protocol as p
from kvstore.commands import (
    MAX_TTL_MS,
    AlarmType,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    PutOp,
    RangeOp,
    read_only,
)
from kvstore.protocol import (
    _HELLO_REPLY_FIELDS,
    _LIMIT_FIELDS,
    _OK_FIELDS,
    _REQUEST_FIELDS,
    Code,
    Consistency,
    Limits,
    Op,
    ProtocolError,
)
from raft.framing import FrameDecoder, FrameTooLarge, encode_frame
from tests.kvstore.txn_strategies import one_write_per_key

LIMITS = Limits(max_frame_bytes=64 << 10, max_key_bytes=64, max_value_bytes=1024)
CLIENT = bytes(range(16))

# ---- strategies ------------------------------------------------------------------------

uint = st.integers(0, p.MAX_INT - 1)
rid = uint
key = st.binary(min_size=1, max_size=LIMITS.max_key_bytes)
value = st.binary(max_size=64)
consistency = st.sampled_from(list(Consistency))


@st.composite
def sessions(draw: st.DrawFn) -> p.Session:
    seq = draw(st.integers(1, p.MAX_INT - 1))
    ack = draw(st.integers(0, seq - 1))
    return p.Session(client=draw(st.binary(min_size=16, max_size=16)), seq=seq, ack=ack)


@st.composite
def cas_requests(draw: st.DrawFn) -> p.Cas:
    ev = draw(st.none() | value)
    ever = draw(st.none() | uint) if ev is not None else draw(uint)
    return p.Cas(
        id=draw(rid),
        key=draw(key),
        new_value=draw(value),
        session=draw(sessions()),
        expected_value=ev,
        expected_version=ever,
    )


compares = st.builds(
    Compare, key, st.just(CompareTarget.VALUE), st.sampled_from(CompareOp), value
) | st.builds(
    Compare,
    key,
    st.sampled_from([t for t in CompareTarget if t is not CompareTarget.VALUE]),
    st.sampled_from(CompareOp),
    uint,
)
range_ops = st.builds(
    RangeOp, key, st.none() | key, st.none() | st.integers(1, LIMITS.max_scan_limit)
)
write_ops = st.builds(PutOp, key, value, uint) | st.builds(DeleteOp, key)


@st.composite
def txn_requests(draw: st.DrawFn) -> p.Txn:
    branch = st.lists(range_ops | write_ops, max_size=4).map(one_write_per_key)
    success, failure = draw(branch), draw(branch)
    writes = not read_only(success, failure)
    return p.Txn(
        id=draw(rid),
        compares=tuple(draw(st.lists(compares, max_size=3))),
        success=success,
        failure=failure,
        session=draw(sessions()) if writes else None,
    )


requests = st.one_of(
    txn_requests(),
    st.builds(p.LeaseGrant, id=rid, ttl_ms=st.integers(1, MAX_TTL_MS), session=sessions()),
    st.builds(p.LeaseKeepAlive, id=rid, lease=st.integers(1, p.MAX_INT - 1)),
    st.builds(p.LeaseTimeToLive, id=rid, lease=st.integers(1, p.MAX_INT - 1)),
    st.builds(p.LeaseRevoke, id=rid, lease=st.integers(1, p.MAX_INT - 1), session=sessions()),
    st.builds(p.Watch, id=rid, key=key, end=st.none() | key, start_revision=st.none() | uint),
    st.builds(p.WatchCancel, id=rid, watch=uint),
    st.builds(p.Get, id=rid, key=key, consistency=consistency),
    st.builds(
        p.Scan,
        id=rid,
        start=st.binary(max_size=LIMITS.max_key_bytes),
        end=st.none() | st.binary(max_size=LIMITS.max_key_bytes),
        limit=st.none() | st.integers(1, 10_000),
        consistency=consistency,
    ),
    st.builds(p.Put, id=rid, key=key, value=value, session=sessions()),
    st.builds(p.Delete, id=rid, key=key, session=sessions()),
    cas_requests(),
    st.builds(p.Status, id=rid),
    st.builds(p.TransferLeader, id=rid, to=st.text(min_size=1, max_size=16)),
    st.builds(p.MemberAdd, id=rid, node=st.text(min_size=1, max_size=16), learner=st.booleans()),
    st.builds(p.MemberRemove, id=rid, node=st.text(min_size=1, max_size=16)),
    st.builds(p.MemberList, id=rid),
    st.builds(p.AlarmList, id=rid),
    st.builds(p.AlarmDisarm, id=rid, alarm=st.none() | st.sampled_from(AlarmType)),
    st.builds(
        p.Authenticate,
        id=rid,
        user=st.sampled_from(["root", "ü"]),
        password=st.text(min_size=1, max_size=20),
    ),
    st.builds(p.AuthToken, id=rid, token=st.binary(min_size=1, max_size=p.MAX_TOKEN_BYTES)),
    st.builds(
        p.AuthQuery, id=rid, op=st.sampled_from([Op.AUTH_STATUS, Op.USER_LIST, Op.ROLE_LIST])
    ),
    st.builds(
        p.AuthQuery, id=rid, op=st.sampled_from([Op.USER_GET, Op.ROLE_GET]), name=st.just("r")
    ),
    st.builds(
        p.AuthChange,
        id=rid,
        op=st.sampled_from([Op.AUTH_ENABLE, Op.AUTH_DISABLE]),
        session=sessions(),
    ),
    st.builds(
        p.AuthChange,
        id=rid,
        op=st.sampled_from([Op.USER_ADD, Op.USER_PASSWD]),
        session=sessions(),
        name=st.just("u"),
        password=st.text(min_size=1, max_size=20),
    ),
    st.builds(
        p.AuthChange,
        id=rid,
        op=st.sampled_from([Op.USER_DELETE, Op.ROLE_ADD, Op.ROLE_DELETE]),
        session=sessions(),
        name=st.just("u"),
    ),
    st.builds(
        p.AuthChange,
        id=rid,
        op=st.sampled_from([Op.USER_GRANT_ROLE, Op.USER_REVOKE_ROLE]),
        session=sessions(),
        name=st.just("u"),
        role=st.just("r"),
    ),
    st.builds(
        p.AuthChange,
        id=rid,
        op=st.just(Op.ROLE_GRANT_PERMISSION),
        session=sessions(),
        name=st.just("r"),
        perm=st.sampled_from(list(p.PERMISSION_OF)),
        prefix=st.binary(max_size=8),
    ),
    st.builds(
        p.AuthChange,
        id=rid,
        op=st.just(Op.ROLE_REVOKE_PERMISSION),
        session=sessions(),
        name=st.just("r"),
        prefix=st.binary(max_size=8),
    ),
)

kvs = st.builds(
    p.KeyValue,
    key=key,
    value=value,
    create_revision=uint,
    mod_revision=uint,
    version=uint,
    lease=uint,
)
node = st.text(min_size=1, max_size=16)
alarm_infos = st.lists(
    st.builds(p.AlarmInfo, alarm=st.sampled_from(["NOSPACE", "CORRUPT"]), node=node), max_size=3
).map(tuple)
error_codes = st.sampled_from([c for c in Code if c not in (Code.OK, Code.COMPARE_FAILED)])


@st.composite
def responses(draw: st.DrawFn) -> tuple[p.Response, Op]:
    i = draw(rid)
    kind = draw(
        st.sampled_from(
            [
                "error",
                "get",
                "scan",
                "write",
                "cas_failed",
                "status",
                "transfer",
                "members",
                "txn",
                "lease",
                "watch",
                "ok",
                "alarms",
                "auth",
            ]
        )
    )
    if kind == "auth":
        names = st.lists(node, max_size=4).map(tuple)
        perms = st.lists(
            st.tuples(st.sampled_from(["read", "write", "readwrite"]), st.binary(max_size=8)),
            max_size=3,
        ).map(tuple)
        return draw(
            st.sampled_from(
                [
                    (
                        p.TokenResponse(id=i, token=draw(st.binary(min_size=1, max_size=64))),
                        Op.AUTHENTICATE,
                    ),
                    (p.OkResponse(id=i), Op.AUTH_TOKEN),
                    (
                        p.AuthStatusResponse(
                            id=i, enabled=draw(st.booleans()), revision=draw(uint)
                        ),
                        Op.AUTH_STATUS,
                    ),
                    (p.NamesResponse(id=i, names=draw(names)), Op.USER_LIST),
                    (p.UserResponse(id=i, name=draw(node), roles=draw(names)), Op.USER_GET),
                    (p.RoleResponse(id=i, name=draw(node), permissions=draw(perms)), Op.ROLE_GET),
                    (p.WriteResponse(id=i, revision=draw(uint), prev=None), Op.ROLE_ADD),
                ]
            )
        )
    if kind == "txn":
        results = st.builds(
            p.RangeResult, kvs=st.lists(kvs, max_size=3).map(tuple), more=st.booleans()
        ) | st.builds(p.WriteOpResult, prev=st.none() | kvs)
        resp: p.Response = p.TxnResponse(
            id=i,
            succeeded=draw(st.booleans()),
            responses=tuple(draw(st.lists(results, max_size=4))),
            revision=draw(uint),
        )
        return resp, Op.TXN
    if kind == "lease":
        op = draw(st.sampled_from([Op.LEASE_GRANT, Op.LEASE_KEEPALIVE]))
        return p.LeaseResponse(id=i, lease=draw(uint), ttl_ms=draw(uint)), op
    if kind == "watch":
        events = st.builds(p.WatchEvent, type=st.sampled_from(["put", "delete"]), kv=kvs)
        resp = p.WatchEvents(
            id=i, events=tuple(draw(st.lists(events, max_size=4))), revision=draw(uint)
        )
        return resp, Op.WATCH
    if kind == "ok":
        return p.OkResponse(id=i), Op.WATCH_CANCEL
    if kind == "alarms":
        op = draw(st.sampled_from([Op.ALARM_LIST, Op.ALARM_DISARM]))
        return p.AlarmsResponse(id=i, alarms=draw(alarm_infos)), op
    if kind == "error":
        code = draw(error_codes)
        leader = draw(st.none() | node) if code is Code.NOT_LEADER else None
        addr = draw(st.none() | st.just("127.0.0.1:7001")) if code is Code.NOT_LEADER else None
        compact = draw(st.none() | uint) if code is Code.COMPACTED else None
        resp = p.ErrorResponse(
            id=i,
            code=code,
            message=draw(st.text(max_size=20)),
            leader=leader,
            leader_addr=addr,
            compact_revision=compact,
        )
        return resp, draw(st.sampled_from(list(Op)))
    if kind == "get":
        return p.GetResponse(id=i, kv=draw(kvs), revision=draw(uint)), Op.GET
    if kind == "scan":
        resp = p.ScanResponse(
            id=i,
            kvs=tuple(draw(st.lists(kvs, max_size=5))),
            more=draw(st.booleans()),
            revision=draw(uint),
        )
        return resp, Op.SCAN
    if kind == "write":
        op = draw(st.sampled_from([Op.PUT, Op.DELETE, Op.CAS, Op.LEASE_REVOKE]))
        return p.WriteResponse(id=i, revision=draw(uint), prev=draw(st.none() | kvs)), op
    if kind == "cas_failed":
        resp = p.CompareFailedResponse(id=i, revision=draw(uint), current=draw(st.none() | kvs))
        return resp, Op.CAS
    if kind == "transfer":
        resp = p.TransferLeaderResponse(
            id=i, leader=draw(node), leader_addr=draw(st.none() | st.just("h:1")), term=draw(uint)
        )
        return resp, Op.TRANSFER_LEADER
    if kind == "members":
        names = st.lists(node, max_size=5).map(tuple)
        resp = p.MembersResponse(
            id=i, voters=draw(names), learners=draw(names), leader=draw(st.none() | node)
        )
        op = draw(st.sampled_from([Op.MEMBER_ADD, Op.MEMBER_REMOVE, Op.MEMBER_LIST]))
        return resp, op
    resp = p.StatusResponse(
        id=i,
        node=draw(node),
        role=draw(st.sampled_from(["leader", "follower"])),
        term=draw(uint),
        leader=draw(st.none() | node),
        leader_addr=draw(st.none() | st.just("h:1")),
        commit=draw(uint),
        applied=draw(uint),
        alarms=draw(st.none() | alarm_infos),
        data_bytes=draw(st.none() | uint),
        quota_bytes=draw(st.none() | uint),
    )
    return resp, Op.STATUS


# ---- round trips -----------------------------------------------------------------------


@given(requests)
def test_request_round_trip(req: p.Request) -> None:
    assert p.decode_request(p.encode_request(req), LIMITS) == req


@given(responses())
def test_response_round_trip(case: tuple[p.Response, Op]) -> None:
    resp, op = case
    assert p.decode_response(p.encode_response(resp), lambda _: op, LIMITS) == resp


def test_response_to_abandoned_request_is_none() -> None:
    data = p.encode_response(p.WriteResponse(id=9, revision=1, prev=None))
    assert p.decode_response(data, lambda _: None, LIMITS) is None


def test_connection_level_error_round_trip() -> None:
    resp = p.ErrorResponse(id=None, code=Code.TOO_LARGE, message="frame too large")
    assert p.decode_response(p.encode_response(resp), lambda _: None, LIMITS) == resp


def test_hello_round_trip() -> None:
    assert p.decode_hello(p.encode_hello(p.Hello())) == p.Hello(version=2)
    ok = p.HelloOk(version=2, node="n1", leader="n2", leader_addr="h:1", limits=LIMITS)
    assert p.decode_hello_reply(p.encode_hello_reply(ok)) == ok
    err = p.ErrorResponse(id=None, code=Code.UNSUPPORTED_VERSION, message="no")
    assert p.decode_hello_reply(p.encode_hello_reply(err)) == err


def test_hello_wire_format_is_the_documented_one() -> None:
    """docs/PROTOCOL.md §2 spells these maps out for other-language clients."""
    assert msgpack.unpackb(p.encode_hello(p.Hello())) == {"hello": "raftkv", "version": 2}
    ok = p.HelloOk(version=2, node="n1", leader=None, leader_addr=None)
    m = msgpack.unpackb(p.encode_hello_reply(ok))
    assert m["hello"] == "raftkv" and m["node"] == "n1" and m["leader"] is None
    assert set(m["limits"]) == {"max_frame_bytes", "max_key_bytes", "max_value_bytes"} | {
        "max_scan_limit",
        "max_in_flight",
    }


def test_alarm_ops_wire_format_is_the_documented_one() -> None:
    disarm = p.AlarmDisarm(id=4, alarm=AlarmType.NOSPACE)
    assert msgpack.unpackb(p.encode_request(disarm)) == {
        "id": 4,
        "op": "alarm_disarm",
        "alarm": "NOSPACE",
    }
    assert p.decode_request(_req(id=4, op="alarm_disarm"), LIMITS) == p.AlarmDisarm(id=4)
    answer = p.AlarmsResponse(id=4, alarms=(p.AlarmInfo(alarm="NOSPACE", node="n1"),))
    assert msgpack.unpackb(p.encode_response(answer)) == {
        "id": 4,
        "code": "OK",
        "alarms": [{"alarm": "NOSPACE", "node": "n1"}],
    }


def test_request_wire_format_is_the_documented_one() -> None:
    req = p.Put(id=3, key=b"k", value=b"v", session=p.Session(client=CLIENT, seq=2, ack=1))
    assert msgpack.unpackb(p.encode_request(req)) == {
        "id": 3,
        "op": "put",
        "key": b"k",
        "value": b"v",
        "client": CLIENT,
        "seq": 2,
        "ack": 1,
    }


# ---- strict validation -----------------------------------------------------------------


def _req(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


SESSION = {"client": CLIENT, "seq": 1, "ack": 0}
PUT_K = {"op": "put", "key": b"k", "value": b"v"}
RANGE_K = {"op": "range", "key": b"k"}


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"id": 1, "op": "get", "key": "text-not-bin"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "get"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "get", "key": b""}, Code.BAD_REQUEST),
        ({"id": 1, "op": "get", "key": b"k", "consistency": "eventual"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "get", "key": b"k", "consistancy": "serializable"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "get", "key": b"x" * 65}, Code.TOO_LARGE),
        ({"id": 1, "op": "frobnicate"}, Code.UNKNOWN_OP),
        ({"id": 1, "op": 7}, Code.BAD_REQUEST),
        ({"id": 1, "op": "put", "key": b"k", "value": b"v"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "put", "key": b"k", "value": b"v" * 1025, **SESSION}, Code.TOO_LARGE),
        ({"id": 1, "op": "put", "key": b"k", "value": True, **SESSION}, Code.BAD_REQUEST),
        (
            {"id": 1, "op": "put", "key": b"k", "value": b"", **SESSION, "client": b"short"},
            Code.BAD_REQUEST,
        ),
        ({"id": 1, "op": "put", "key": b"k", "value": b"", **SESSION, "seq": 0}, Code.BAD_REQUEST),
        ({"id": 1, "op": "put", "key": b"k", "value": b"", **SESSION, "ack": 1}, Code.BAD_REQUEST),
        (
            {"id": 1, "op": "put", "key": b"k", "value": b"", **SESSION, "seq": True},
            Code.BAD_REQUEST,
        ),
        ({"id": 1, "op": "cas", "key": b"k", "new_value": b"", **SESSION}, Code.BAD_REQUEST),
        (
            {
                "id": 1,
                "op": "cas",
                "key": b"k",
                "new_value": b"",
                "expected_version": -1,
                **SESSION,
            },
            Code.BAD_REQUEST,
        ),
        ({"id": 1, "op": "scan", "start": b"", "limit": 0}, Code.BAD_REQUEST),
        ({"id": 1, "op": "scan", "start": b"", "end": b"x" * 65}, Code.TOO_LARGE),
        ({"id": 1, "op": "status", "key": b"k"}, Code.BAD_REQUEST),
        # txn: a session if and only if it writes; a branch writes a key once
        ({"id": 1, "op": "txn", "success": [PUT_K]}, Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "success": [RANGE_K], **SESSION}, Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "success": [PUT_K, {"op": "delete", "key": b"k"}], **SESSION},
         Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "compare": [{"key": b"k", "target": "size", "op": "=",
          "value": 1}]}, Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "compare": [{"key": b"k", "target": "version", "op": "=",
          "value": b"1"}]}, Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "compare": [{"key": b"k", "target": "value", "op": "~",
          "value": b"1"}]}, Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "success": [{"op": "increment", "key": b"k"}]}, Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "success": [{"op": "range", "key": b"k", "limit": 0}]},
         Code.BAD_REQUEST),
        ({"id": 1, "op": "txn", "success": [{**PUT_K, "value": b"v" * 1025}], **SESSION},
         Code.TOO_LARGE),
        ({"id": 1, "op": "txn", "success": "not-an-array"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "lease_grant", "ttl_ms": 0, **SESSION}, Code.BAD_REQUEST),
        ({"id": 1, "op": "lease_revoke", "lease": 0, **SESSION}, Code.BAD_REQUEST),
        ({"id": 1, "op": "lease_keepalive", "lease": 0}, Code.BAD_REQUEST),
        ({"id": 1, "op": "lease_ttl", "lease": 0}, Code.BAD_REQUEST),
        ({"id": 1, "op": "lease_ttl", "lease": 1, **SESSION}, Code.BAD_REQUEST),
        ({"id": 1, "op": "watch", "key": b""}, Code.BAD_REQUEST),
        ({"id": 1, "op": "watch", "key": b"k", "start_revision": -1}, Code.BAD_REQUEST),
        ({"id": 1, "op": "watch_cancel"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "alarm_disarm", "alarm": "CORRUPT"}, Code.BAD_REQUEST),
        ({"id": 1, "op": "alarm_disarm", "alarm": "nospace"}, Code.BAD_REQUEST),  # exact name
        ({"id": 1, "op": "alarm_disarm", "alarm": 1}, Code.BAD_REQUEST),
        ({"id": 1, "op": "alarm_disarm", **SESSION}, Code.BAD_REQUEST),
        ({"id": 1, "op": "alarm_list", "alarm": "NOSPACE"}, Code.BAD_REQUEST),
    ],
)  # fmt: skip
def test_bad_request_is_answered_with_its_id(fields: dict[str, Any], code: Code) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_request(_req(**fields), LIMITS)
    assert info.value.code is code
    assert info.value.request_id == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        msgpack.packb([1, "get"]),
        msgpack.packb({1: "int key"}),
        msgpack.packb({"op": "get", "key": b"k"}),  # no id
        msgpack.packb({"id": -1, "op": "get"}),
        msgpack.packb({"id": True, "op": "get"}),
        msgpack.packb({"id": 1 << 63, "op": "get"}),
        msgpack.packb({"id": 1, "op": "get", "key": msgpack.ExtType(5, b"x")}),
        msgpack.packb({"id": 1}) + b"trailing",
    ],
)
def test_unreadable_request_has_no_id(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_request(data, LIMITS)
    assert info.value.code is Code.BAD_REQUEST
    # An ext value hides inside a readable map, but the whole payload is refused.
    assert info.value.request_id is None


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"op": "authenticate", "user": "", "password": "x"}, "name"),
        ({"op": "authenticate", "user": "a\nb", "password": "x"}, "control"),
        ({"op": "authenticate", "user": "u" * 257, "password": "x"}, "at most 256"),
        ({"op": "authenticate", "user": b"root", "password": "x"}, "string"),
        ({"op": "authenticate", "user": "root", "password": ""}, "password"),
        ({"op": "authenticate", "user": "root", "password": "x" * 1025}, "password"),
        ({"op": "authenticate", "user": "root"}, "missing field 'password'"),
        ({"op": "auth_token", "token": b""}, "token"),
        ({"op": "auth_token", "token": "text"}, "binary"),
        ({"op": "auth_token", "token": b"x" * 1025}, "token"),
        ({"op": "user_add", "name": "u", "password": "p"}, "missing field 'client'"),
        ({"op": "user_add", "name": "u", **SESSION}, "missing field 'password'"),
        ({"op": "user_add", "name": "u", "password": "p", "role": "r", **SESSION}, "unknown field"),
        (
            {"op": "role_grant_permission", "name": "r", "perm": "all", "prefix": b"", **SESSION},
            "perm",
        ),
        (
            {"op": "role_grant_permission", "name": "r", "perm": "read", "prefix": "a/", **SESSION},
            "binary",
        ),
        ({"op": "role_revoke_permission", "name": "r", **SESSION}, "missing field 'prefix'"),
        ({"op": "user_get"}, "missing field 'name'"),
        ({"op": "user_list", "name": "x"}, "unknown field"),
    ],
)
def test_bad_auth_fields_are_refused_with_the_request_id(
    fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        p.decode_request(_req(id=5, **fields), LIMITS)
    assert info.value.request_id == 5 and info.value.code is Code.BAD_REQUEST


def test_a_hello_may_carry_a_token() -> None:
    hello = p.Hello(token=b"t" * 40)
    assert p.decode_hello(p.encode_hello(hello)) == hello
    assert msgpack.unpackb(p.encode_hello(hello))["token"] == b"t" * 40
    for bad in ("text", b"", b"x" * (p.MAX_TOKEN_BYTES + 1), 7):
        with pytest.raises(ProtocolError):
            p.decode_hello(_req(hello="raftkv", version=2, token=bad))


def test_auth_errors_are_definite() -> None:
    for code in (Code.AUTH_REQUIRED, Code.AUTH_FAILED, Code.PERMISSION_DENIED):
        for op in (Op.PUT, Op.MEMBER_REMOVE, Op.USER_ADD):
            assert p.is_definite(code, op)
    assert p.is_definite(Code.FAILED_PRECONDITION, Op.AUTH_ENABLE)
    assert not p.is_definite(Code.TIMEOUT, Op.USER_ADD)  # auth changes are writes


def test_bad_hello() -> None:
    with pytest.raises(ProtocolError):
        p.decode_hello(_req(hello="http", version=1))
    with pytest.raises(ProtocolError):
        p.decode_hello(_req(hello="raftkv"))
    assert p.decode_hello(_req(hello="raftkv", version=7)).version == 7  # server decides


def test_prefix_end() -> None:
    assert p.prefix_end(b"a") == b"b"
    assert p.prefix_end(b"a\xff") == b"b"
    assert p.prefix_end(b"\xff\xff") is None
    assert p.prefix_end(b"") is None


def test_definite_codes() -> None:
    assert p.is_definite(Code.TIMEOUT, Op.GET)
    assert not p.is_definite(Code.TIMEOUT, Op.PUT)
    assert not p.is_definite(Code.INTERNAL, Op.CAS)
    assert not p.is_definite(Code.STALE_SEQ, Op.DELETE)
    assert not p.is_definite(Code.TIMEOUT, Op.TRANSFER_LEADER)
    assert not p.is_definite(Code.TIMEOUT, Op.MEMBER_ADD)
    assert p.is_definite(Code.CONFLICT, Op.MEMBER_REMOVE)
    for code in (Code.NOT_LEADER, Code.UNAVAILABLE, Code.COMPARE_FAILED, Code.TOO_LARGE):
        assert p.is_definite(code, Op.PUT)
    assert p.is_definite(Code.NOSPACE, Op.PUT) and p.is_definite(Code.NOSPACE, Op.TXN)
    assert not p.is_definite(Code.TIMEOUT, Op.ALARM_DISARM)


def test_limits_must_fit_a_maximal_put() -> None:
    with pytest.raises(ValueError):
        Limits(max_frame_bytes=1024, max_key_bytes=512, max_value_bytes=512)


# ---- fuzz: only ProtocolError ------------------------------------------------------------

FIELD_NAMES = sorted(
    {"id", "op", "key", "value", "start", "end", "limit", "consistency", "new_value"}
    | {"expected_value", "expected_version", "client", "seq", "ack", "code", "message"}
    | {"kv", "kvs", "more", "revision", "prev", "current", "leader", "leader_addr"}
    | {"hello", "version", "node", "limits", "role", "term", "commit", "applied"}
    | {"alarm", "alarms", "data_bytes", "quota_bytes"}
    | {"user", "password", "token", "name", "perm", "prefix", "roles", "names", "permissions"}
    | {"enabled"}
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=70),
    st.sampled_from([*(o.value for o in Op), *(c.value for c in Code), "linearizable"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=8,
)
maps = st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=9)


def _all_decoders(data: bytes) -> None:
    """Every decoder of the client protocol on ``data``: the server's (requests,
    hellos) and the client's (a response to a request of every op, hello replies)."""
    with contextlib.suppress(ProtocolError):
        p.decode_request(data, LIMITS)
    for op in Op:
        with contextlib.suppress(ProtocolError):
            p.decode_response(data, lambda _, op=op: op, LIMITS)  # type: ignore[misc]
    for decode in (p.decode_hello, p.decode_hello_reply):
        with contextlib.suppress(ProtocolError):
            decode(data)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    _all_decoders(data)


@settings(max_examples=300)
@given(maps)
def test_arbitrary_maps_raise_only_protocol_error(m: dict[str, Any]) -> None:
    _all_decoders(msgpack.packb(m, use_bin_type=True))


@settings(max_examples=300)
@given(requests, st.data())
def test_mutated_requests_raise_only_protocol_error(req: p.Request, data: st.DataObject) -> None:
    m = msgpack.unpackb(p.encode_request(req))
    name = data.draw(st.sampled_from([*m, "extra"]))
    m[name] = data.draw(values)
    _all_decoders(msgpack.packb(m, use_bin_type=True))


def _some_fields(data: st.DataObject, names: frozenset[str]) -> dict[str, Any]:
    """Any subset of ``names``, each holding any msgpack value."""
    chosen = data.draw(st.lists(st.sampled_from(sorted(names)), unique=True)) if names else []
    return {name: data.draw(values) for name in chosen}


@settings(max_examples=300)
@given(st.sampled_from(list(Op)), st.data())
def test_requests_of_any_field_values_decode_or_raise_protocol_error(
    op: Op, data: st.DataObject
) -> None:
    """Structure-aware: a request map of the right op, with any subset of that op's
    fields holding any values. It decodes to a request that round-trips, or raises
    ProtocolError carrying the request's id."""
    names = sorted(_REQUEST_FIELDS[op] - {"id", "op"})
    m = {
        name: data.draw(values)
        for name in data.draw(
            st.lists(st.sampled_from(names) if names else st.nothing(), unique=True)
        )
    }
    m.update(id=7, op=op.value)
    try:
        req = p.decode_request(msgpack.packb(m, use_bin_type=True), LIMITS)
    except ProtocolError as exc:
        assert exc.request_id == 7
        return
    assert p.op_of(req) is op and p.decode_request(p.encode_request(req), LIMITS) == req


@settings(max_examples=300)
@given(st.sampled_from(list(Op)), st.data())
def test_responses_of_any_field_values_decode_or_raise_protocol_error(
    op: Op, data: st.DataObject
) -> None:
    """Structure-aware, for the client: an OK response map of the op's fields, each
    any value: a response that round-trips, or ProtocolError."""
    names = sorted(_OK_FIELDS[op] - {"id", "code"})
    m = {
        name: data.draw(values)
        for name in data.draw(
            st.lists(st.sampled_from(names) if names else st.nothing(), unique=True)
        )
    }
    m.update(id=7, code="OK")
    try:
        resp = p.decode_response(msgpack.packb(m, use_bin_type=True), lambda _: op, LIMITS)
    except ProtocolError:
        return
    assert resp is not None
    assert p.decode_response(p.encode_response(resp), lambda _: op, LIMITS) == resp


@settings(max_examples=200)
@given(
    st.lists(
        st.binary(max_size=64)
        | requests.map(p.encode_request).map(encode_frame)
        | maps.map(lambda m: encode_frame(msgpack.packb(m, use_bin_type=True))),
        max_size=6,
    ).map(b"".join),
    st.lists(st.integers(0, 4096), max_size=8),
)
def test_any_client_byte_stream_yields_requests_or_one_error(
    stream: bytes, cuts: list[int]
) -> None:
    """The path a client connection's bytes take at the server (kvstore/server.py): the
    frame layer at the announced frame limit, then decode_request on every frame. The
    only errors are FrameTooLarge (the stream is lost: the server closes) and
    ProtocolError (answered, with the id when it could be read)."""
    dec = FrameDecoder(LIMITS.max_frame_bytes)
    bounds = [0, *sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    with contextlib.suppress(FrameTooLarge):
        for a, b in itertools.pairwise(bounds):
            dec.feed(stream[a:b])
            for frame in dec.frames():
                with contextlib.suppress(ProtocolError):
                    p.decode_request(frame, LIMITS)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(sorted(_HELLO_REPLY_FIELDS | _LIMIT_FIELDS)), values, max_size=9
    ),
    st.sampled_from([None, "raftkv"]),
)
def test_hello_replies_of_any_field_values_raise_only_protocol_error(
    m: dict[str, Any], magic: str | None
) -> None:
    if magic is not None:
        m["hello"] = magic
    if "limits" in m and isinstance(m["limits"], dict):
        m["limits"] = {k: v for k, v in m["limits"].items() if k in _LIMIT_FIELDS}
    with contextlib.suppress(ProtocolError):
        p.decode_hello_reply(msgpack.packb(m, use_bin_type=True))


def test_nil_means_absent_in_txn_fields() -> None:
    req = p.decode_request(
        _req(id=1, op="txn", compare=None, success=[RANGE_K], failure=None, client=None),
        LIMITS,
    )
    assert isinstance(req, p.Txn) and req.session is None and req.compares == ()


def test_a_keepalive_needs_no_session_and_ignores_an_old_clients() -> None:
    """Keep-alives are answered by the leader's lessor, never logged (issue 9): no
    session; the session fields a protocol-2 client still sends are accepted."""
    for fields in ({}, SESSION):
        req = p.decode_request(_req(id=1, op="lease_keepalive", lease=5, **fields), LIMITS)
        assert req == p.LeaseKeepAlive(id=1, lease=5)
