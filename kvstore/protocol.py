"""The client protocol's values and their msgpack encoding: the single gateway for
client bytes (docs/PROTOCOL.md is the normative description; this module is its code).

Theory of operation. After the 4-byte length prefix (raft.framing) every payload is one
msgpack map with string keys. A connection opens with a hello exchange, then carries
requests ``{"id", "op", ...}`` and responses ``{"id", "code", ...}``.

Decoding trusts nothing: bytes either become a well-typed value or raise
:class:`ProtocolError` carrying the error code the peer should get -- never another
exception type, never an allocation beyond the unpack limits. Types are checked exactly
(``True`` is not an int, a str is not bytes), integers lie in ``[0, 2**63)``, and
unknown fields are rejected rather than ignored: a misspelt ``expected_version`` on a
cas must not silently turn it into an unconditional write. Encoding trusts its input,
which comes from our own server or client code.

Nothing here touches a socket or a clock, so the server, the client and the fuzz tests
share it unchanged (h11's sans-I/O split).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

from .commands import (
    MAX_TTL_MS,
    MAX_TXN_OPS,
    AlarmType,
    CommandError,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    Permission,
    PutOp,
    RangeOp,
    TxnOp,
    check_branch,
    name_problem,
    read_only,
)
from .password import MAX_PASSWORD_BYTES

__all__ = [
    "ALARM_NAMES",
    "AUTH_CHANGE_OPS",
    "AUTH_QUERY_OPS",
    "CLIENT_ID_BYTES",
    "MAX_INT",
    "MAX_TOKEN_BYTES",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "AlarmDisarm",
    "AlarmInfo",
    "AlarmList",
    "AlarmsResponse",
    "AuthChange",
    "AuthQuery",
    "AuthStatusResponse",
    "AuthToken",
    "Authenticate",
    "Cas",
    "Code",
    "CompareFailedResponse",
    "Consistency",
    "Delete",
    "ErrorResponse",
    "Get",
    "GetResponse",
    "Hello",
    "HelloOk",
    "KeyValue",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseResponse",
    "LeaseRevoke",
    "LeaseTimeToLive",
    "Limits",
    "MemberAdd",
    "MemberList",
    "MemberRemove",
    "MembersResponse",
    "NamesResponse",
    "OkResponse",
    "Op",
    "ProtocolError",
    "Put",
    "RangeResult",
    "Request",
    "Response",
    "RoleResponse",
    "Scan",
    "ScanResponse",
    "Session",
    "SessionClose",
    "SessionOpen",
    "Status",
    "StatusResponse",
    "TokenResponse",
    "TransferLeader",
    "TransferLeaderResponse",
    "Txn",
    "TxnResponse",
    "UserResponse",
    "Watch",
    "WatchCancel",
    "WatchEvent",
    "WatchEvents",
    "WriteOpResult",
    "WriteResponse",
    "decode_hello",
    "decode_hello_reply",
    "decode_request",
    "decode_response",
    "encode_hello",
    "encode_hello_reply",
    "encode_request",
    "encode_response",
    "is_definite",
    "prefix_end",
]

PROTOCOL_NAME = "raftkv"
PROTOCOL_VERSION = 2
"""2: sessions are opened by ``session_open`` (a version-1 client, which opened them with
its first write, would only ever get SESSION_EXPIRED: it is refused at the hello)."""
SUPPORTED_VERSIONS: tuple[int, ...] = (2,)
CLIENT_ID_BYTES = 16
MAX_TOKEN_BYTES = 1024
MAX_INT = 1 << 63
"""Exclusive upper bound of every integer on the wire (ids, seqs, revisions)."""

_MAX_STR = 4096  # op names, consistency, node ids, addresses, error messages
_MAX_MAP = 32  # the widest map in the protocol (a status answer) has 15 fields


class Code(enum.StrEnum):
    """Response codes. Whether a failure is definite depends on the op: see
    :func:`is_definite`."""

    OK = "OK"
    NOT_FOUND = "NOT_FOUND"
    COMPARE_FAILED = "COMPARE_FAILED"
    NOT_LEADER = "NOT_LEADER"
    UNAVAILABLE = "UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    STALE_SEQ = "STALE_SEQ"
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_OP = "UNKNOWN_OP"
    TOO_LARGE = "TOO_LARGE"
    INTERNAL = "INTERNAL"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    CONFLICT = "CONFLICT"
    LEASE_NOT_FOUND = "LEASE_NOT_FOUND"
    COMPACTED = "COMPACTED"
    CANCELED = "CANCELED"
    SEQ_REUSED = "SEQ_REUSED"
    NOSPACE = "NOSPACE"
    AUTH_REQUIRED = "AUTH_REQUIRED"  # auth is on and the connection has no token
    AUTH_FAILED = "AUTH_FAILED"  # wrong user or password; a token invalid or expired
    PERMISSION_DENIED = "PERMISSION_DENIED"  # the user may not do this
    FAILED_PRECONDITION = "FAILED_PRECONDITION"  # an auth change the state refuses


class Op(enum.StrEnum):
    GET = "get"
    SCAN = "scan"
    PUT = "put"
    DELETE = "delete"
    CAS = "cas"
    STATUS = "status"
    TRANSFER_LEADER = "transfer_leader"
    MEMBER_ADD = "member_add"
    MEMBER_REMOVE = "member_remove"
    MEMBER_LIST = "member_list"
    TXN = "txn"
    LEASE_GRANT = "lease_grant"
    LEASE_KEEPALIVE = "lease_keepalive"
    LEASE_REVOKE = "lease_revoke"
    LEASE_TTL = "lease_ttl"
    WATCH = "watch"
    WATCH_CANCEL = "watch_cancel"
    SESSION_OPEN = "session_open"
    SESSION_CLOSE = "session_close"
    ALARM_LIST = "alarm_list"
    ALARM_DISARM = "alarm_disarm"
    AUTHENTICATE = "authenticate"
    AUTH_TOKEN = "auth_token"
    AUTH_STATUS = "auth_status"
    AUTH_ENABLE = "auth_enable"
    AUTH_DISABLE = "auth_disable"
    USER_ADD = "user_add"
    USER_DELETE = "user_delete"
    USER_PASSWD = "user_passwd"
    USER_GRANT_ROLE = "user_grant_role"
    USER_REVOKE_ROLE = "user_revoke_role"
    USER_LIST = "user_list"
    USER_GET = "user_get"
    ROLE_ADD = "role_add"
    ROLE_DELETE = "role_delete"
    ROLE_GRANT_PERMISSION = "role_grant_permission"
    ROLE_REVOKE_PERMISSION = "role_revoke_permission"
    ROLE_LIST = "role_list"
    ROLE_GET = "role_get"


AUTH_CHANGE_FIELDS: dict[Op, tuple[str, ...]] = {
    Op.AUTH_ENABLE: (),
    Op.AUTH_DISABLE: (),
    Op.USER_ADD: ("name", "password"),
    Op.USER_DELETE: ("name",),
    Op.USER_PASSWD: ("name", "password"),
    Op.USER_GRANT_ROLE: ("name", "role"),
    Op.USER_REVOKE_ROLE: ("name", "role"),
    Op.ROLE_ADD: ("name",),
    Op.ROLE_DELETE: ("name",),
    Op.ROLE_GRANT_PERMISSION: ("name", "perm", "prefix"),
    Op.ROLE_REVOKE_PERMISSION: ("name", "prefix"),
}
"""Auth changes (writes through the log, with a session) and their fields."""
AUTH_CHANGE_OPS = frozenset(AUTH_CHANGE_FIELDS)
AUTH_QUERY_FIELDS: dict[Op, tuple[str, ...]] = {
    Op.AUTH_STATUS: (),
    Op.USER_LIST: (),
    Op.USER_GET: ("name",),
    Op.ROLE_LIST: (),
    Op.ROLE_GET: ("name",),
}
AUTH_QUERY_OPS = frozenset(AUTH_QUERY_FIELDS)
PERMISSION_NAMES: dict[str, Permission] = {
    "read": Permission.READ,
    "write": Permission.WRITE,
    "readwrite": Permission.READWRITE,
}
PERMISSION_OF = {v: k for k, v in PERMISSION_NAMES.items()}


WRITE_OPS = frozenset(
    {
        Op.PUT,
        Op.DELETE,
        Op.CAS,
        Op.TXN,
        Op.LEASE_GRANT,
        Op.LEASE_REVOKE,
        Op.SESSION_OPEN,
        Op.SESSION_CLOSE,
        *AUTH_CHANGE_OPS,
    }
)
"""Ops that go through the log with a session. A read-only ``txn`` carries no session
and is a read; :func:`is_definite` cannot tell, and errs on the indefinite side. A
``lease_keepalive`` is not one: the leader answers it without the log, and repeating it
is harmless."""
ADMIN_OPS = frozenset({Op.TRANSFER_LEADER, Op.MEMBER_ADD, Op.MEMBER_REMOVE, Op.ALARM_DISARM})
"""Ops that change the cluster rather than the data; like writes, they can time out
with an unknown outcome."""

_ALWAYS_DEFINITE = frozenset(
    {
        Code.OK,
        Code.NOT_FOUND,
        Code.COMPARE_FAILED,
        Code.NOT_LEADER,
        Code.UNAVAILABLE,
        Code.SESSION_EXPIRED,
        Code.BAD_REQUEST,
        Code.UNKNOWN_OP,
        Code.TOO_LARGE,
        Code.UNSUPPORTED_VERSION,
        Code.CONFLICT,
        Code.LEASE_NOT_FOUND,
        Code.COMPACTED,
        Code.CANCELED,
        Code.SEQ_REUSED,
        Code.NOSPACE,
        Code.AUTH_REQUIRED,
        Code.AUTH_FAILED,
        Code.PERMISSION_DENIED,
        Code.FAILED_PRECONDITION,
    }
)


def is_definite(code: Code, op: Op) -> bool:
    """True when a write answered with ``code`` certainly did (OK, NOT_FOUND,
    COMPARE_FAILED: it was applied and this is its outcome) or certainly did not happen.
    TIMEOUT, INTERNAL and STALE_SEQ on a write may hide an applied command (Maelstrom's
    rule: when in doubt, indefinite), and so may SESSION_EXPIRED on a retry, which this
    function cannot see: it answers for a first attempt. Admin ops follow the same rule
    (a transfer that timed out may still happen). Reads never change anything."""
    return op not in WRITE_OPS | ADMIN_OPS or code in _ALWAYS_DEFINITE


class Consistency(enum.StrEnum):
    LINEARIZABLE = "linearizable"
    SERIALIZABLE = "serializable"


class ProtocolError(Exception):
    """Input that is not a valid protocol value. ``code`` is what the peer gets back;
    ``request_id`` is set when the request's id could be read, so the server can answer
    that request instead of dropping the connection."""

    def __init__(self, code: Code, message: str, request_id: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Sizes both sides must agree on; the server announces its own in the hello reply so
    a client fails fast and the same way under load as at rest (REFERENCES, item 10)."""

    max_frame_bytes: int = 4 << 20
    max_key_bytes: int = 4096
    max_value_bytes: int = 1 << 20
    max_scan_limit: int = 1000
    # Requests of one connection the server serves at once (None: not announced, an
    # older server). A client keeps no more in flight, so none waits unread.
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_key_bytes, self.max_scan_limit) < 1:
            raise ValueError("limits must be positive")
        # A put of a maximal key and value plus envelope must fit in one frame.
        if self.max_key_bytes + self.max_value_bytes + 512 > self.max_frame_bytes:
            raise ValueError("max_frame_bytes too small for max_key_bytes + max_value_bytes")


# ---- values ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyValue:
    """One key's current version (etcd's mvccpb.KeyValue): ``version`` counts writes
    since the key was (re)created; revisions are store-wide and only grow."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """Exactly-once bookkeeping (dissertation §6.3): ``seq`` numbers this client's
    writes from 1; a retry reuses it; every seq <= ``ack`` has had its response."""

    client: bytes
    seq: int
    ack: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Get:
    id: int
    key: bytes
    consistency: Consistency = Consistency.LINEARIZABLE


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan:
    """Keys in ``[start, end)`` in byte order; ``end=None`` means no upper bound."""

    id: int
    start: bytes
    end: bytes | None = None
    limit: int | None = None
    consistency: Consistency = Consistency.LINEARIZABLE


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    id: int
    key: bytes
    value: bytes
    session: Session


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    id: int
    key: bytes
    session: Session


@dataclass(frozen=True, slots=True, kw_only=True)
class Cas:
    """Write ``new_value`` iff every given expectation holds. ``expected_version=0``
    means "the key does not exist"; giving neither expectation is a BAD_REQUEST."""

    id: int
    key: bytes
    new_value: bytes
    session: Session
    expected_value: bytes | None = None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferLeader:
    """Admin: hand leadership to voter ``to`` (answered by the leader only)."""

    id: int
    to: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberAdd:
    """Admin: add ``node`` as a voter (promoting it if it is a learner) or, with
    ``learner``, as a learner (which replicates but neither votes nor counts)."""

    id: int
    node: str
    learner: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRemove:
    id: int
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberList:
    """The voters and learners. Linearizable by default, as a read: answered after a
    read barrier, so a lagging follower cannot report a membership the cluster has
    left; ``serializable`` answers from the node's own log at once (a node that is
    joining, or one cut off from the leader, says what it knows)."""

    id: int
    consistency: Consistency = Consistency.LINEARIZABLE


@dataclass(frozen=True, slots=True, kw_only=True)
class Txn:
    """etcd's mini-transaction (kvstore/commands.py ``Txn``). ``session`` is required
    when a branch writes and absent when none does (a read-only txn is a read: it is
    served after a read barrier without entering the log)."""

    id: int
    compares: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()
    session: Session | None = None

    @property
    def read_only(self) -> bool:
        return read_only(self.success, self.failure)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseGrant:
    id: int
    ttl_ms: int
    session: Session


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseKeepAlive:
    """Answered by the leader after a ReadIndex round, never logged: no session (the
    session fields protocol 2 clients send are accepted and ignored)."""

    id: int
    lease: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTimeToLive:
    """The leader's view of how long ``lease`` has left (etcd's LeaseTimeToLive)."""

    id: int
    lease: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRevoke:
    id: int
    lease: int
    session: Session


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpen:
    """Open the session ``session.client`` (its request ``seq`` 1). The only request
    that creates a session: every write needs one, opened and answered first."""

    id: int
    session: Session


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClose:
    """End the session (a client that exits): its cached results are forgotten."""

    id: int
    session: Session


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmList:
    """The raised alarms, as the cluster has committed them (a linearizable read)."""

    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmDisarm:
    """Clear ``alarm`` (None: every alarm) for every member that raised it; the answer
    lists the alarms left. Through the log, without a session (it is idempotent)."""

    id: int
    alarm: AlarmType | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Watch:
    """Stream every change to keys in ``(key, end)`` (as for a range; ``end=None``: the
    key alone) from ``start_revision`` (None: from the next write). The answers are
    ``WatchEvents`` frames carrying this request's id until the stream ends with an
    error frame, COMPACTED (history gone; ``compact_revision`` says how far) or
    CANCELED (``watch_cancel``), or the connection closes (the node shut down)."""

    id: int
    key: bytes
    end: bytes | None = None
    start_revision: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchCancel:
    """End the watch whose request id is ``watch`` (on this connection)."""

    id: int
    watch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticate:
    """Log in: the answer is a token every node accepts (``TokenResponse``), bound to
    this connection at once."""

    id: int
    user: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthToken:
    """Bind ``token`` (from ``authenticate`` on any node) to this connection: later
    requests on it act as its user."""

    id: int
    token: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthChange:
    """An auth change (``op`` in :data:`AUTH_CHANGE_OPS`), a write through the log with
    a session. Which of ``name``, ``password``, ``role``, ``perm``, ``prefix`` it
    carries is fixed by the op (:data:`AUTH_CHANGE_FIELDS`); the others are None."""

    id: int
    op: Op
    session: Session
    name: str | None = None
    password: str | None = None
    role: str | None = None
    perm: Permission | None = None
    prefix: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthQuery:
    """A read of the auth state (``op`` in :data:`AUTH_QUERY_OPS`; ``name`` for the
    ``*_get`` ops), answered from the node's applied state."""

    id: int
    op: Op
    name: str | None = None


Request = (
    Get
    | Scan
    | Put
    | Delete
    | Cas
    | Status
    | TransferLeader
    | MemberAdd
    | MemberRemove
    | MemberList
    | Txn
    | LeaseGrant
    | LeaseKeepAlive
    | LeaseRevoke
    | LeaseTimeToLive
    | Watch
    | WatchCancel
    | SessionOpen
    | SessionClose
    | AlarmList
    | AlarmDisarm
    | Authenticate
    | AuthToken
    | AuthChange
    | AuthQuery
)

_OP_OF: dict[type, Op] = {
    SessionOpen: Op.SESSION_OPEN,
    SessionClose: Op.SESSION_CLOSE,
    Get: Op.GET,
    Scan: Op.SCAN,
    Put: Op.PUT,
    Delete: Op.DELETE,
    Cas: Op.CAS,
    Status: Op.STATUS,
    TransferLeader: Op.TRANSFER_LEADER,
    MemberAdd: Op.MEMBER_ADD,
    MemberRemove: Op.MEMBER_REMOVE,
    MemberList: Op.MEMBER_LIST,
    Txn: Op.TXN,
    LeaseGrant: Op.LEASE_GRANT,
    LeaseKeepAlive: Op.LEASE_KEEPALIVE,
    LeaseRevoke: Op.LEASE_REVOKE,
    LeaseTimeToLive: Op.LEASE_TTL,
    Watch: Op.WATCH,
    WatchCancel: Op.WATCH_CANCEL,
    AlarmList: Op.ALARM_LIST,
    AlarmDisarm: Op.ALARM_DISARM,
    Authenticate: Op.AUTHENTICATE,
    AuthToken: Op.AUTH_TOKEN,
}


def op_of(request: Request) -> Op:
    if isinstance(request, AuthChange | AuthQuery):
        return request.op
    return _OP_OF[type(request)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorResponse:
    """Any failure but COMPARE_FAILED. ``id`` is None only for a connection-level error
    sent just before the server closes. ``leader``/``leader_addr`` accompany NOT_LEADER
    (and UNAVAILABLE never, by definition)."""

    id: int | None
    code: Code
    message: str = ""
    leader: str | None = None
    leader_addr: str | None = None
    compact_revision: int | None = None  # with COMPACTED


@dataclass(frozen=True, slots=True, kw_only=True)
class GetResponse:
    id: int
    kv: KeyValue
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanResponse:
    id: int
    kvs: tuple[KeyValue, ...]
    more: bool
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteResponse:
    """A put, delete or cas that was applied: ``revision`` is the store revision after
    it, ``prev`` the key's value before it (None if absent)."""

    id: int
    revision: int
    prev: KeyValue | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareFailedResponse:
    """A cas whose expectation did not hold: nothing was written; ``current`` is what
    the key held when the cas was applied (None if absent)."""

    id: int
    revision: int
    current: KeyValue | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmInfo:
    """One raised alarm: its name (``"NOSPACE"``) and the member that raised it."""

    alarm: str
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmsResponse:
    """The raised alarms (``alarm_list``; after ``alarm_disarm``, those left)."""

    id: int
    alarms: tuple[AlarmInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResponse:
    id: int
    node: str
    role: str
    term: int
    leader: str | None
    leader_addr: str | None
    commit: int
    applied: int
    # The node's own clocks when it answered (ms; absent from older servers): what a
    # clock fault did to it can be read back. ``mono_ms`` has an arbitrary origin.
    wall_ms: int | None = None
    mono_ms: int | None = None
    pid: int | None = None
    # The raised alarms as this node has applied them, its data size and its quota
    # (absent from older servers).
    alarms: tuple[AlarmInfo, ...] | None = None
    data_bytes: int | None = None
    quota_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferLeaderResponse:
    """Leadership moved: ``leader`` now leads in ``term``."""

    id: int
    leader: str
    leader_addr: str | None
    term: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MembersResponse:
    """The membership as the answering node has applied it (after a change: including
    that change)."""

    id: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    leader: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeResult:
    """A txn range operation's answer."""

    kvs: tuple[KeyValue, ...]
    more: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteOpResult:
    """A txn put or delete operation's answer: the key before it (None: absent)."""

    prev: KeyValue | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnResponse:
    """Which branch ran (``succeeded``: the compares held) and one result per
    operation of that branch; ``revision`` is the store revision after the txn."""

    id: int
    succeeded: bool
    responses: tuple[RangeResult | WriteOpResult, ...]
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseResponse:
    """A granted or kept-alive lease and its TTL (restarted now); for ``lease_ttl``, the
    milliseconds it has left."""

    id: int
    lease: int
    ttl_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """``type`` "put" (``kv`` after the write) or "delete" (``kv`` carries the key and
    the deleting revision as ``mod_revision``; the rest is empty/0)."""

    type: str
    kv: KeyValue


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvents:
    """One frame of a watch stream: events in revision order (possibly none: the
    first frame confirms the watch), and ``revision``, the revision through which the
    stream is complete (the watcher resumes from ``revision + 1``)."""

    id: int
    events: tuple[WatchEvent, ...]
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OkResponse:
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenResponse:
    """``authenticate`` succeeded: present ``token`` (opaque) to any node."""

    id: int
    token: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthStatusResponse:
    id: int
    enabled: bool
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NamesResponse:
    """``user_list`` or ``role_list``: every name, sorted."""

    id: int
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UserResponse:
    id: int
    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleResponse:
    """A role's permissions as (``"read"|"write"|"readwrite"``, key prefix), by prefix."""

    id: int
    name: str
    permissions: tuple[tuple[str, bytes], ...]


Response = (
    ErrorResponse
    | TxnResponse
    | AlarmsResponse
    | LeaseResponse
    | WatchEvents
    | OkResponse
    | GetResponse
    | ScanResponse
    | WriteResponse
    | CompareFailedResponse
    | StatusResponse
    | TransferLeaderResponse
    | MembersResponse
    | TokenResponse
    | AuthStatusResponse
    | NamesResponse
    | UserResponse
    | RoleResponse
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """``token`` (optional): a token from ``authenticate``, bound to the connection as
    by ``auth_token``, so a client carries its login to every node it connects to."""

    version: int = PROTOCOL_VERSION
    token: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloOk:
    version: int
    node: str
    leader: str | None
    leader_addr: str | None
    limits: Limits = field(default_factory=Limits)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (etcd's
    GetPrefixRangeEnd), or None when there is none (empty or all-0xff prefix)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


# ---- msgpack -----------------------------------------------------------------------

Obj = Any  # what msgpack hands back: validated field by field before use


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise ProtocolError(Code.BAD_REQUEST, f"msgpack ext type {code} is not part of the protocol")


def _unpack(data: bytes, *, max_bin: int, max_array: int) -> dict[str, Obj]:
    """msgpack → a map with str keys, every size bounded, every failure a ProtocolError."""
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            timestamp=0,
            ext_hook=_reject_ext,
            max_bin_len=max_bin,
            max_str_len=_MAX_STR,
            max_array_len=max_array,
            max_map_len=_MAX_MAP,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise ProtocolError(Code.BAD_REQUEST, f"malformed msgpack: {exc}") from exc
    if type(obj) is not dict:
        raise ProtocolError(Code.BAD_REQUEST, f"payload is a {type(obj).__name__}, not a map")
    for k in obj:
        if type(k) is not str:
            raise ProtocolError(Code.BAD_REQUEST, "map keys must be strings")
    return obj


def _pack(obj: Obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


class _Fields:
    """Typed access to one decoded map; every failure names the field and carries the
    request id, so the server can answer instead of hanging up."""

    def __init__(self, m: dict[str, Obj], allowed: frozenset[str], rid: int | None) -> None:
        self.m = m
        self.rid = rid
        extra = m.keys() - allowed
        if extra:
            self.fail(Code.BAD_REQUEST, f"unknown field(s) {sorted(extra)}")

    def fail(self, code: Code, message: str) -> NoReturn:
        raise ProtocolError(code, message, self.rid)

    def _get(self, name: str, optional: bool) -> Obj:
        if name not in self.m:
            if optional:
                return None
            self.fail(Code.BAD_REQUEST, f"missing field {name!r}")
        return self.m[name]

    def _bad(self, name: str, want: str, v: Obj) -> NoReturn:
        self.fail(Code.BAD_REQUEST, f"field {name!r} must be {want}, got {type(v).__name__}")

    def int_(self, name: str) -> int:
        v = self._get(name, False)
        if type(v) is not int or not 0 <= v < MAX_INT:
            self._bad(name, "an integer in [0, 2**63)", v)
        return v

    def opt_int(self, name: str) -> int | None:
        return None if self.m.get(name) is None else self.int_(name)

    def bool_(self, name: str) -> bool:
        v = self._get(name, False)
        if type(v) is not bool:
            self._bad(name, "a boolean", v)
        return v

    def bytes_(self, name: str) -> bytes:
        v = self._get(name, False)
        if type(v) is not bytes:
            self._bad(name, "binary", v)
        return v

    def opt_bytes(self, name: str) -> bytes | None:
        return None if self.m.get(name) is None else self.bytes_(name)

    def str_(self, name: str) -> str:
        v = self._get(name, False)
        if type(v) is not str:
            self._bad(name, "a string", v)
        return v

    def opt_str(self, name: str) -> str | None:
        return None if self.m.get(name) is None else self.str_(name)

    def map_(self, name: str) -> dict[str, Obj]:
        v = self._get(name, False)
        if type(v) is not dict or any(type(k) is not str for k in v):
            self._bad(name, "a map with string keys", v)
        return v

    def opt_map(self, name: str) -> dict[str, Obj] | None:
        return None if self.m.get(name) is None else self.map_(name)


# ---- hello -------------------------------------------------------------------------

_HELLO_FIELDS = frozenset({"hello", "version", "token"})
_HELLO_REPLY_FIELDS = frozenset(
    {"hello", "version", "node", "leader", "leader_addr", "limits", "code", "message", "versions"}
)
_LIMIT_FIELDS = frozenset(
    {"max_frame_bytes", "max_key_bytes", "max_value_bytes", "max_scan_limit", "max_in_flight"}
)


def encode_hello(hello: Hello) -> bytes:
    m: dict[str, Obj] = {"hello": PROTOCOL_NAME, "version": hello.version}
    if hello.token is not None:
        m["token"] = hello.token
    return _pack(m)


def decode_hello(data: bytes) -> Hello:
    """The client's first frame. Any version number decodes; the server decides whether
    it speaks it (UNSUPPORTED_VERSION), so a newer client learns which versions exist."""
    f = _Fields(_unpack(data, max_bin=MAX_TOKEN_BYTES, max_array=0), _HELLO_FIELDS, None)
    if f.str_("hello") != PROTOCOL_NAME:
        f.fail(Code.BAD_REQUEST, f"not a {PROTOCOL_NAME} hello")
    version = f.int_("version")
    return Hello(version=version, token=_token(f) if f.m.get("token") is not None else None)


def encode_hello_reply(reply: HelloOk | ErrorResponse) -> bytes:
    if isinstance(reply, ErrorResponse):
        m: dict[str, Obj] = {"hello": PROTOCOL_NAME, "code": str(reply.code)}
        m["message"] = reply.message
        m["versions"] = list(SUPPORTED_VERSIONS)
        return _pack(m)
    lim = reply.limits
    return _pack(
        {
            "hello": PROTOCOL_NAME,
            "version": reply.version,
            "node": reply.node,
            "leader": reply.leader,
            "leader_addr": reply.leader_addr,
            "limits": {
                "max_frame_bytes": lim.max_frame_bytes,
                "max_key_bytes": lim.max_key_bytes,
                "max_value_bytes": lim.max_value_bytes,
                "max_scan_limit": lim.max_scan_limit,
                "max_in_flight": lim.max_in_flight,
            },
        }
    )


def decode_hello_reply(data: bytes) -> HelloOk | ErrorResponse:
    f = _Fields(_unpack(data, max_bin=0, max_array=64), _HELLO_REPLY_FIELDS, None)
    if f.str_("hello") != PROTOCOL_NAME:
        f.fail(Code.BAD_REQUEST, f"not a {PROTOCOL_NAME} hello reply")
    if "code" in f.m:
        return ErrorResponse(id=None, code=_code(f), message=f.opt_str("message") or "")
    lm = _Fields(f.map_("limits"), _LIMIT_FIELDS, None)
    try:
        limits = Limits(
            max_frame_bytes=lm.int_("max_frame_bytes"),
            max_key_bytes=lm.int_("max_key_bytes"),
            max_value_bytes=lm.int_("max_value_bytes"),
            max_scan_limit=lm.int_("max_scan_limit"),
            max_in_flight=lm.opt_int("max_in_flight"),
        )
    except ValueError as exc:
        raise ProtocolError(Code.BAD_REQUEST, f"bad limits: {exc}") from exc
    return HelloOk(
        version=f.int_("version"),
        node=f.str_("node"),
        leader=f.opt_str("leader"),
        leader_addr=f.opt_str("leader_addr"),
        limits=limits,
    )


# ---- requests ----------------------------------------------------------------------

_SESSION = ("client", "seq", "ack")
_REQUEST_FIELDS: dict[Op, frozenset[str]] = {
    Op.GET: frozenset({"id", "op", "key", "consistency"}),
    Op.SCAN: frozenset({"id", "op", "start", "end", "limit", "consistency"}),
    Op.PUT: frozenset({"id", "op", "key", "value", *_SESSION}),
    Op.DELETE: frozenset({"id", "op", "key", *_SESSION}),
    Op.CAS: frozenset(
        {"id", "op", "key", "new_value", "expected_value", "expected_version", *_SESSION}
    ),
    Op.STATUS: frozenset({"id", "op"}),
    Op.TRANSFER_LEADER: frozenset({"id", "op", "to"}),
    Op.MEMBER_ADD: frozenset({"id", "op", "node", "learner"}),
    Op.MEMBER_REMOVE: frozenset({"id", "op", "node"}),
    Op.MEMBER_LIST: frozenset({"id", "op", "consistency"}),
    Op.TXN: frozenset({"id", "op", "compare", "success", "failure", *_SESSION}),
    Op.LEASE_GRANT: frozenset({"id", "op", "ttl_ms", *_SESSION}),
    Op.LEASE_KEEPALIVE: frozenset({"id", "op", "lease", *_SESSION}),
    Op.LEASE_REVOKE: frozenset({"id", "op", "lease", *_SESSION}),
    Op.LEASE_TTL: frozenset({"id", "op", "lease"}),
    Op.WATCH: frozenset({"id", "op", "key", "end", "start_revision"}),
    Op.WATCH_CANCEL: frozenset({"id", "op", "watch"}),
    Op.SESSION_OPEN: frozenset({"id", "op", *_SESSION}),
    Op.SESSION_CLOSE: frozenset({"id", "op", *_SESSION}),
    Op.ALARM_LIST: frozenset({"id", "op"}),
    Op.ALARM_DISARM: frozenset({"id", "op", "alarm"}),
    Op.AUTHENTICATE: frozenset({"id", "op", "user", "password"}),
    Op.AUTH_TOKEN: frozenset({"id", "op", "token"}),
    **{op: frozenset({"id", "op", *names, *_SESSION}) for op, names in AUTH_CHANGE_FIELDS.items()},
    **{op: frozenset({"id", "op", *names}) for op, names in AUTH_QUERY_FIELDS.items()},
}
ALARM_NAMES: dict[str, AlarmType] = {a.name: a for a in AlarmType}
"""Alarm names on the wire (``"NOSPACE"``), by the alarm type they stand for."""
_TARGET_NAMES: dict[str, CompareTarget] = {
    "value": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "create": CompareTarget.CREATE,
    "mod": CompareTarget.MOD,
    "lease": CompareTarget.LEASE,
}
_TARGET_OF = {t: n for n, t in _TARGET_NAMES.items()}
_COMPARE_OP_NAMES: dict[str, CompareOp] = {
    "=": CompareOp.EQ,
    "!=": CompareOp.NE,
    "<": CompareOp.LT,
    ">": CompareOp.GT,
}
_COMPARE_OP_OF = {o: n for n, o in _COMPARE_OP_NAMES.items()}
_OPS: dict[str, Op] = {o.value: o for o in Op}
_CONSISTENCIES: dict[str, Consistency] = {c.value: c for c in Consistency}


def _session_map(s: Session) -> dict[str, Obj]:
    return {"client": s.client, "seq": s.seq, "ack": s.ack}


def encode_request(req: Request) -> bytes:
    m: dict[str, Obj] = {"id": req.id, "op": str(op_of(req))}
    match req:
        case Get():
            m.update(key=req.key, consistency=str(req.consistency))
        case Scan():
            m.update(start=req.start, end=req.end, limit=req.limit)
            m["consistency"] = str(req.consistency)
        case Put():
            m.update(key=req.key, value=req.value, **_session_map(req.session))
        case Delete():
            m.update(key=req.key, **_session_map(req.session))
        case Cas():
            m.update(key=req.key, new_value=req.new_value, **_session_map(req.session))
            m.update(expected_value=req.expected_value, expected_version=req.expected_version)
        case Status():
            pass
        case TransferLeader():
            m.update(to=req.to)
        case MemberAdd():
            m.update(node=req.node, learner=req.learner)
        case MemberRemove():
            m.update(node=req.node)
        case MemberList():
            m["consistency"] = str(req.consistency)
        case Txn():
            m["compare"] = [_compare_map(c) for c in req.compares]
            m["success"] = [_txn_op_map(o) for o in req.success]
            m["failure"] = [_txn_op_map(o) for o in req.failure]
            if req.session is not None:
                m.update(_session_map(req.session))
        case LeaseGrant():
            m.update(ttl_ms=req.ttl_ms, **_session_map(req.session))
        case LeaseRevoke():
            m.update(lease=req.lease, **_session_map(req.session))
        case LeaseKeepAlive() | LeaseTimeToLive():
            m.update(lease=req.lease)
        case Watch():
            m.update(key=req.key, end=req.end, start_revision=req.start_revision)
        case WatchCancel():
            m.update(watch=req.watch)
        case SessionOpen() | SessionClose():
            m.update(_session_map(req.session))
        case AlarmList():
            pass
        case AlarmDisarm():
            m.update(alarm=None if req.alarm is None else req.alarm.name)
        case Authenticate():
            m.update(user=req.user, password=req.password)
        case AuthToken():
            m.update(token=req.token)
        case AuthChange():
            m.update(_session_map(req.session))
            for name in AUTH_CHANGE_FIELDS[req.op]:
                v = getattr(req, name)
                m[name] = PERMISSION_OF[v] if name == "perm" else v
        case AuthQuery():
            if req.name is not None:
                m.update(name=req.name)
    return _pack(m)


def _compare_map(c: Compare) -> dict[str, Obj]:
    return {
        "key": c.key,
        "target": _TARGET_OF[c.target],
        "op": _COMPARE_OP_OF[c.op],
        "value": c.operand,
    }


def _txn_op_map(op: TxnOp) -> dict[str, Obj]:
    match op:
        case RangeOp():
            return {"op": "range", "key": op.key, "end": op.end, "limit": op.limit}
        case PutOp():
            return {"op": "put", "key": op.key, "value": op.value, "lease": op.lease}
        case DeleteOp():
            return {"op": "delete", "key": op.key}


def decode_request(data: bytes, limits: Limits) -> Request:
    """A request frame → a validated request, or ProtocolError.

    ``request_id`` is set on the error whenever the id was readable. Order matters:
    the id is read first, so even a request with an unknown op or bad field can be
    answered rather than costing the client its connection."""
    m = _unpack(data, max_bin=limits.max_frame_bytes, max_array=MAX_TXN_OPS)
    rid = m.get("id")
    if type(rid) is not int or not 0 <= rid < MAX_INT:
        raise ProtocolError(Code.BAD_REQUEST, "missing or invalid request id")
    op_name = m.get("op")
    if type(op_name) is not str:
        raise ProtocolError(Code.BAD_REQUEST, "missing or invalid field 'op'", rid)
    op = _OPS.get(op_name)
    if op is None:
        raise ProtocolError(Code.UNKNOWN_OP, f"unknown op {op_name[:64]!r}", rid)
    f = _Fields(m, _REQUEST_FIELDS[op], rid)
    match op:
        case Op.GET:
            return Get(id=rid, key=_key(f, limits), consistency=_consistency(f))
        case Op.SCAN:
            return _scan(f, rid, limits)
        case Op.PUT:
            key = _key(f, limits)
            return Put(id=rid, key=key, value=_value(f, "value", limits), session=_session(f))
        case Op.DELETE:
            return Delete(id=rid, key=_key(f, limits), session=_session(f))
        case Op.CAS:
            return _cas(f, rid, limits)
        case Op.STATUS:
            return Status(id=rid)
        case Op.TRANSFER_LEADER:
            return TransferLeader(id=rid, to=_node_id(f, "to"))
        case Op.MEMBER_ADD:
            learner = False if f.m.get("learner") is None else f.bool_("learner")
            return MemberAdd(id=rid, node=_node_id(f, "node"), learner=learner)
        case Op.MEMBER_REMOVE:
            return MemberRemove(id=rid, node=_node_id(f, "node"))
        case Op.MEMBER_LIST:
            return MemberList(id=rid, consistency=_consistency(f))
        case Op.TXN:
            return _txn(f, rid, limits)
        case Op.LEASE_GRANT:
            ttl = f.int_("ttl_ms")
            if not 1 <= ttl <= MAX_TTL_MS:
                f.fail(Code.BAD_REQUEST, f"ttl_ms must be in [1, {MAX_TTL_MS}]")
            return LeaseGrant(id=rid, ttl_ms=ttl, session=_session(f))
        case Op.LEASE_KEEPALIVE:
            return LeaseKeepAlive(id=rid, lease=_lease_id(f))
        case Op.LEASE_REVOKE:
            return LeaseRevoke(id=rid, lease=_lease_id(f), session=_session(f))
        case Op.LEASE_TTL:
            return LeaseTimeToLive(id=rid, lease=_lease_id(f))
        case Op.SESSION_OPEN:
            session = _session(f)
            if session.seq != 1:
                f.fail(Code.BAD_REQUEST, "session_open is the session's request seq 1")
            return SessionOpen(id=rid, session=session)
        case Op.SESSION_CLOSE:
            return SessionClose(id=rid, session=_session(f))
        case Op.WATCH:
            key = _key(f, limits)
            end = f.opt_bytes("end")
            if end is not None and len(end) > limits.max_key_bytes:
                f.fail(Code.TOO_LARGE, f"end of {len(end)} bytes exceeds {limits.max_key_bytes}")
            start = f.opt_int("start_revision")
            return Watch(id=rid, key=key, end=end, start_revision=start)
        case Op.WATCH_CANCEL:
            return WatchCancel(id=rid, watch=f.int_("watch"))
        case Op.ALARM_LIST:
            return AlarmList(id=rid)
        case Op.ALARM_DISARM:
            name = f.opt_str("alarm")
            alarm = None if name is None else ALARM_NAMES.get(name)
            if name is not None and alarm is None:
                f.fail(Code.BAD_REQUEST, f"alarm must be one of {sorted(ALARM_NAMES)}")
            return AlarmDisarm(id=rid, alarm=alarm)
        case Op.AUTHENTICATE:
            return Authenticate(id=rid, user=_name(f, "user"), password=_password(f))
        case Op.AUTH_TOKEN:
            return AuthToken(id=rid, token=_token(f))
    if op in AUTH_CHANGE_OPS:
        return _auth_change(f, op, rid, limits)
    named = "name" in AUTH_QUERY_FIELDS[op]
    return AuthQuery(id=rid, op=op, name=_name(f, "name") if named else None)


def _auth_change(f: _Fields, op: Op, rid: int, limits: Limits) -> AuthChange:
    fields: dict[str, Obj] = {}
    for name in AUTH_CHANGE_FIELDS[op]:
        if name in ("name", "role"):
            fields[name] = _name(f, name)
        elif name == "password":
            fields[name] = _password(f)
        elif name == "perm":
            perm = PERMISSION_NAMES.get(f.str_("perm"))
            if perm is None:
                f.fail(Code.BAD_REQUEST, f"perm must be one of {sorted(PERMISSION_NAMES)}")
            fields[name] = perm
        else:
            prefix = f.bytes_("prefix")
            if len(prefix) > limits.max_key_bytes:
                f.fail(Code.TOO_LARGE, f"prefix of {len(prefix)} bytes exceeds the key limit")
            fields[name] = prefix
    return AuthChange(id=rid, op=op, session=_session(f), **fields)


def _name(f: _Fields, field_name: str) -> str:
    name = f.str_(field_name)
    problem = name_problem(name)
    if problem is not None:
        f.fail(Code.BAD_REQUEST, f"field {field_name!r}: {problem}")
    return name


def _password(f: _Fields) -> str:
    password = f.str_("password")
    if not password or len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        f.fail(Code.BAD_REQUEST, f"password must be 1 to {MAX_PASSWORD_BYTES} bytes")
    return password


def _token(f: _Fields) -> bytes:
    token = f.bytes_("token")
    if not 0 < len(token) <= MAX_TOKEN_BYTES:
        f.fail(Code.BAD_REQUEST, f"token must be 1 to {MAX_TOKEN_BYTES} bytes")
    return token


def _lease_id(f: _Fields) -> int:
    lease = f.int_("lease")
    if lease < 1:
        f.fail(Code.BAD_REQUEST, "lease ids start at 1")
    return lease


def _maps(f: _Fields, name: str) -> tuple[dict[str, Obj], ...]:
    v = f.m.get(name)
    if v is None:  # absent and nil mean the same (§1)
        return ()
    if type(v) is not tuple or any(type(x) is not dict for x in v):
        f.fail(Code.BAD_REQUEST, f"field {name!r} must be an array of maps")
    return v


_COMPARE_FIELDS = frozenset({"key", "target", "op", "value"})
_TXN_OP_FIELDS = {
    "range": frozenset({"op", "key", "end", "limit"}),
    "put": frozenset({"op", "key", "value", "lease"}),
    "delete": frozenset({"op", "key"}),
}


def _txn(f: _Fields, rid: int, limits: Limits) -> Txn:
    compares = tuple(
        _compare(_Fields(m, _COMPARE_FIELDS, rid), limits) for m in _maps(f, "compare")
    )
    branches = []
    for name in ("success", "failure"):
        ops = tuple(_txn_op(m, rid, limits) for m in _maps(f, name))
        try:
            check_branch(ops)
        except CommandError as exc:
            f.fail(Code.BAD_REQUEST, f"{name}: {exc}")
        branches.append(ops)
    success, failure = branches
    writes = not read_only(success, failure)
    has_session = any(f.m.get(name) is not None for name in _SESSION)
    if writes != has_session:
        f.fail(Code.BAD_REQUEST, "a txn carries a session if and only if it writes")
    return Txn(
        id=rid,
        compares=compares,
        success=success,
        failure=failure,
        session=_session(f) if writes else None,
    )


def _compare(g: _Fields, limits: Limits) -> Compare:
    key = _key(g, limits)
    target = _TARGET_NAMES.get(g.str_("target"))
    if target is None:
        g.fail(Code.BAD_REQUEST, f"compare target must be one of {sorted(_TARGET_NAMES)}")
    op = _COMPARE_OP_NAMES.get(g.str_("op"))
    if op is None:
        g.fail(Code.BAD_REQUEST, f"compare op must be one of {sorted(_COMPARE_OP_NAMES)}")
    if target is CompareTarget.VALUE:
        return Compare(key, target, op, _value(g, "value", limits))
    return Compare(key, target, op, g.int_("value"))


def _txn_op(m: dict[str, Obj], rid: int, limits: Limits) -> TxnOp:
    kind = m.get("op")
    if type(kind) is not str or kind not in _TXN_OP_FIELDS:
        raise ProtocolError(
            Code.BAD_REQUEST, f"txn op must be one of {sorted(_TXN_OP_FIELDS)}", rid
        )
    g = _Fields(m, _TXN_OP_FIELDS[kind], rid)
    key = _key(g, limits)
    if kind == "range":
        end = g.opt_bytes("end")
        if end is not None and len(end) > limits.max_key_bytes:
            g.fail(Code.TOO_LARGE, f"end of {len(end)} bytes exceeds {limits.max_key_bytes}")
        limit = g.opt_int("limit")
        if limit is not None and not 1 <= limit <= limits.max_scan_limit:
            g.fail(Code.BAD_REQUEST, f"limit must be in [1, {limits.max_scan_limit}]")
        return RangeOp(key, end, limit)
    if kind == "put":
        lease = 0 if g.m.get("lease") is None else g.int_("lease")
        return PutOp(key, _value(g, "value", limits), lease)
    return DeleteOp(key)


def _node_id(f: _Fields, name: str) -> str:
    node = f.str_(name)
    if not node:
        f.fail(Code.BAD_REQUEST, f"field {name!r} must be a non-empty node id")
    return node


def _key(f: _Fields, limits: Limits) -> bytes:
    key = f.bytes_("key")
    if not key:
        f.fail(Code.BAD_REQUEST, "key must not be empty")
    if len(key) > limits.max_key_bytes:
        f.fail(Code.TOO_LARGE, f"key of {len(key)} bytes exceeds {limits.max_key_bytes}")
    return key


def _value(f: _Fields, name: str, limits: Limits) -> bytes:
    value = f.bytes_(name)
    if len(value) > limits.max_value_bytes:
        f.fail(Code.TOO_LARGE, f"{name} of {len(value)} bytes exceeds {limits.max_value_bytes}")
    return value


def _consistency(f: _Fields) -> Consistency:
    name = f.opt_str("consistency")
    if name is None:
        return Consistency.LINEARIZABLE
    c = _CONSISTENCIES.get(name)
    if c is None:
        f.fail(Code.BAD_REQUEST, f"consistency must be one of {sorted(_CONSISTENCIES)}")
    return c


def _session(f: _Fields) -> Session:
    client, seq, ack = f.bytes_("client"), f.int_("seq"), f.int_("ack")
    if len(client) != CLIENT_ID_BYTES:
        f.fail(Code.BAD_REQUEST, f"client id must be {CLIENT_ID_BYTES} bytes")
    if seq < 1 or ack >= seq:
        f.fail(Code.BAD_REQUEST, "session needs seq >= 1 and ack < seq")
    return Session(client=client, seq=seq, ack=ack)


def _scan(f: _Fields, rid: int, limits: Limits) -> Scan:
    start, end = f.bytes_("start"), f.opt_bytes("end")
    for name, k in (("start", start), ("end", end)):
        if k is not None and len(k) > limits.max_key_bytes:
            f.fail(Code.TOO_LARGE, f"{name} of {len(k)} bytes exceeds {limits.max_key_bytes}")
    limit = f.opt_int("limit")
    if limit == 0:
        f.fail(Code.BAD_REQUEST, "limit must be >= 1 (or nil for the server's maximum)")
    return Scan(id=rid, start=start, end=end, limit=limit, consistency=_consistency(f))


def _cas(f: _Fields, rid: int, limits: Limits) -> Cas:
    key = _key(f, limits)
    new_value = _value(f, "new_value", limits)
    expected_value = (
        None if f.m.get("expected_value") is None else _value(f, "expected_value", limits)
    )
    expected_version = f.opt_int("expected_version")
    if expected_value is None and expected_version is None:
        f.fail(Code.BAD_REQUEST, "cas needs expected_value and/or expected_version")
    return Cas(
        id=rid,
        key=key,
        new_value=new_value,
        session=_session(f),
        expected_value=expected_value,
        expected_version=expected_version,
    )


# ---- responses ---------------------------------------------------------------------

_KV_FIELDS = frozenset({"key", "value", "create_revision", "mod_revision", "version", "lease"})
_CODES: dict[str, Code] = {c.value: c for c in Code}


def _kv_map(kv: KeyValue | None) -> dict[str, Obj] | None:
    if kv is None:
        return None
    return {
        "key": kv.key,
        "value": kv.value,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def encode_response(resp: Response) -> bytes:
    m: dict[str, Obj] = {"id": resp.id}
    match resp:
        case ErrorResponse():
            m.update(code=str(resp.code), message=resp.message)
            if resp.code is Code.NOT_LEADER:
                m.update(leader=resp.leader, leader_addr=resp.leader_addr)
            if resp.compact_revision is not None:
                m.update(compact_revision=resp.compact_revision)
        case GetResponse():
            m.update(code="OK", kv=_kv_map(resp.kv), revision=resp.revision)
        case ScanResponse():
            m.update(code="OK", kvs=[_kv_map(kv) for kv in resp.kvs], more=resp.more)
            m["revision"] = resp.revision
        case WriteResponse():
            m.update(code="OK", revision=resp.revision, prev=_kv_map(resp.prev))
        case CompareFailedResponse():
            m.update(code="COMPARE_FAILED", revision=resp.revision, current=_kv_map(resp.current))
        case StatusResponse():
            m.update(code="OK", node=resp.node, role=resp.role, term=resp.term)
            m.update(leader=resp.leader, leader_addr=resp.leader_addr)
            m.update(commit=resp.commit, applied=resp.applied)
            m.update(wall_ms=resp.wall_ms, mono_ms=resp.mono_ms, pid=resp.pid)
            if resp.alarms is not None:
                m["alarms"] = [_alarm_map(a) for a in resp.alarms]
            m.update(data_bytes=resp.data_bytes, quota_bytes=resp.quota_bytes)
        case TransferLeaderResponse():
            m.update(code="OK", leader=resp.leader, leader_addr=resp.leader_addr)
            m["term"] = resp.term
        case MembersResponse():
            m.update(code="OK", voters=list(resp.voters), learners=list(resp.learners))
            m["leader"] = resp.leader
        case TxnResponse():
            m.update(code="OK", succeeded=resp.succeeded, revision=resp.revision)
            m["responses"] = [_op_result_map(r) for r in resp.responses]
        case LeaseResponse():
            m.update(code="OK", lease=resp.lease, ttl_ms=resp.ttl_ms)
        case AlarmsResponse():
            m.update(code="OK", alarms=[_alarm_map(a) for a in resp.alarms])
        case WatchEvents():
            m.update(code="OK", revision=resp.revision)
            m["events"] = [{"type": e.type, "kv": _kv_map(e.kv)} for e in resp.events]
        case OkResponse():
            m.update(code="OK")
        case TokenResponse():
            m.update(code="OK", token=resp.token)
        case AuthStatusResponse():
            m.update(code="OK", enabled=resp.enabled, revision=resp.revision)
        case NamesResponse():
            m.update(code="OK", names=list(resp.names))
        case UserResponse():
            m.update(code="OK", name=resp.name, roles=list(resp.roles))
        case RoleResponse():
            m.update(code="OK", name=resp.name)
            m["permissions"] = [{"perm": k, "prefix": pfx} for k, pfx in resp.permissions]
    return _pack(m)


def _alarm_map(a: AlarmInfo) -> dict[str, Obj]:
    return {"alarm": a.alarm, "node": a.node}


def _alarms(f: _Fields) -> tuple[AlarmInfo, ...]:
    """An array of alarm maps. Any alarm name decodes: a newer server may know more."""
    out = []
    for m in _maps(f, "alarms"):
        g = _Fields(m, frozenset({"alarm", "node"}), f.rid)
        out.append(AlarmInfo(alarm=g.str_("alarm"), node=g.str_("node")))
    return tuple(out)


def _op_result_map(r: RangeResult | WriteOpResult) -> dict[str, Obj]:
    if isinstance(r, RangeResult):
        return {"kvs": [_kv_map(kv) for kv in r.kvs], "more": r.more}
    return {"prev": _kv_map(r.prev)}


def _code(f: _Fields) -> Code:
    name = f.str_("code")
    code = _CODES.get(name)
    if code is None:
        f.fail(Code.BAD_REQUEST, f"unknown response code {name[:64]!r}")
    return code


def _kv(f: _Fields, name: str) -> KeyValue:
    return _kv_of(f.map_(name), f.rid)


def _kv_of(m: dict[str, Obj], rid: int | None) -> KeyValue:
    g = _Fields(m, _KV_FIELDS, rid)
    return KeyValue(
        key=g.bytes_("key"),
        value=g.bytes_("value"),
        create_revision=g.int_("create_revision"),
        mod_revision=g.int_("mod_revision"),
        version=g.int_("version"),
        lease=g.opt_int("lease") or 0,
    )


def _opt_kv(f: _Fields, name: str) -> KeyValue | None:
    m = f.opt_map(name)
    return None if m is None else _kv_of(m, f.rid)


_MEMBERS_FIELDS = frozenset({"id", "code", "voters", "learners", "leader"})
_ERROR_FIELDS = frozenset({"id", "code", "message", "leader", "leader_addr", "compact_revision"})
_OK_FIELDS: dict[Op, frozenset[str]] = {
    Op.GET: frozenset({"id", "code", "kv", "revision"}),
    Op.SCAN: frozenset({"id", "code", "kvs", "more", "revision"}),
    Op.PUT: frozenset({"id", "code", "revision", "prev"}),
    Op.DELETE: frozenset({"id", "code", "revision", "prev"}),
    Op.CAS: frozenset({"id", "code", "revision", "prev"}),
    Op.STATUS: frozenset(
        {"id", "code", "node", "role", "term", "leader", "leader_addr", "commit", "applied"}
        | {"wall_ms", "mono_ms", "pid", "alarms", "data_bytes", "quota_bytes"}
    ),
    Op.TRANSFER_LEADER: frozenset({"id", "code", "leader", "leader_addr", "term"}),
    Op.MEMBER_ADD: _MEMBERS_FIELDS,
    Op.MEMBER_REMOVE: _MEMBERS_FIELDS,
    Op.MEMBER_LIST: _MEMBERS_FIELDS,
    Op.TXN: frozenset({"id", "code", "succeeded", "responses", "revision"}),
    Op.LEASE_GRANT: frozenset({"id", "code", "lease", "ttl_ms"}),
    Op.LEASE_KEEPALIVE: frozenset({"id", "code", "lease", "ttl_ms"}),
    Op.LEASE_TTL: frozenset({"id", "code", "lease", "ttl_ms"}),
    Op.LEASE_REVOKE: frozenset({"id", "code", "revision", "prev"}),
    Op.WATCH: frozenset({"id", "code", "events", "revision"}),
    Op.WATCH_CANCEL: frozenset({"id", "code"}),
    Op.SESSION_OPEN: frozenset({"id", "code", "revision", "prev"}),
    Op.SESSION_CLOSE: frozenset({"id", "code", "revision", "prev"}),
    Op.ALARM_LIST: frozenset({"id", "code", "alarms"}),
    Op.ALARM_DISARM: frozenset({"id", "code", "alarms"}),
    Op.AUTHENTICATE: frozenset({"id", "code", "token"}),
    Op.AUTH_TOKEN: frozenset({"id", "code"}),
    Op.AUTH_STATUS: frozenset({"id", "code", "enabled", "revision"}),
    Op.USER_LIST: frozenset({"id", "code", "names"}),
    Op.ROLE_LIST: frozenset({"id", "code", "names"}),
    Op.USER_GET: frozenset({"id", "code", "name", "roles"}),
    Op.ROLE_GET: frozenset({"id", "code", "name", "permissions"}),
    **{op: frozenset({"id", "code", "revision", "prev"}) for op in AUTH_CHANGE_OPS},
}
_COMPARE_FAILED_FIELDS = frozenset({"id", "code", "revision", "current"})


def decode_response(
    data: bytes, op_for: Callable[[int], Op | None], limits: Limits
) -> Response | None:
    """A response frame → a validated response, or ProtocolError (the client should
    then drop the connection: the server is not speaking the protocol).

    The shape of an OK response depends on the request's op, which only the caller knows
    (``op_for(id)``). None means a well-formed response to an id that is no longer
    pending: the late answer to a request the caller already gave up on."""
    m = _unpack(data, max_bin=limits.max_frame_bytes, max_array=limits.max_scan_limit)
    rid = m.get("id")
    if rid is not None and (type(rid) is not int or not 0 <= rid < MAX_INT):
        raise ProtocolError(Code.BAD_REQUEST, "invalid response id")
    code = _code(_Fields(m, frozenset(m.keys()), rid))
    if rid is None and code is Code.OK:
        raise ProtocolError(Code.BAD_REQUEST, "an OK response must carry an id")
    op = None if rid is None else op_for(rid)
    if rid is not None and op is None:
        return None
    if code is Code.COMPARE_FAILED and op is Op.CAS:
        assert rid is not None
        f = _Fields(m, _COMPARE_FAILED_FIELDS, rid)
        return CompareFailedResponse(
            id=rid, revision=f.int_("revision"), current=_opt_kv(f, "current")
        )
    if code is not Code.OK or op is None:
        f = _Fields(m, _ERROR_FIELDS, rid)
        return ErrorResponse(
            id=rid,
            code=code,
            message=f.opt_str("message") or "",
            leader=f.opt_str("leader"),
            leader_addr=f.opt_str("leader_addr"),
            compact_revision=f.opt_int("compact_revision"),
        )
    assert rid is not None
    f = _Fields(m, _OK_FIELDS[op], rid)
    match op:
        case Op.GET:
            return GetResponse(id=rid, kv=_kv(f, "kv"), revision=f.int_("revision"))
        case Op.SCAN:
            kvs = f.m.get("kvs")
            if type(kvs) is not tuple or any(type(x) is not dict for x in kvs):
                f.fail(Code.BAD_REQUEST, "field 'kvs' must be an array of maps")
            return ScanResponse(
                id=rid,
                kvs=tuple(_kv_of(x, rid) for x in kvs),
                more=f.bool_("more"),
                revision=f.int_("revision"),
            )
        case Op.PUT | Op.DELETE | Op.CAS | Op.LEASE_REVOKE | Op.SESSION_OPEN | Op.SESSION_CLOSE:
            return WriteResponse(id=rid, revision=f.int_("revision"), prev=_opt_kv(f, "prev"))
        case _ if op in AUTH_CHANGE_OPS:
            return WriteResponse(id=rid, revision=f.int_("revision"), prev=_opt_kv(f, "prev"))
        case Op.STATUS:
            return StatusResponse(
                id=rid,
                node=f.str_("node"),
                role=f.str_("role"),
                term=f.int_("term"),
                leader=f.opt_str("leader"),
                leader_addr=f.opt_str("leader_addr"),
                commit=f.int_("commit"),
                applied=f.int_("applied"),
                wall_ms=f.opt_int("wall_ms"),
                mono_ms=f.opt_int("mono_ms"),
                pid=f.opt_int("pid"),
                alarms=None if f.m.get("alarms") is None else _alarms(f),
                data_bytes=f.opt_int("data_bytes"),
                quota_bytes=f.opt_int("quota_bytes"),
            )
        case Op.TRANSFER_LEADER:
            return TransferLeaderResponse(
                id=rid,
                leader=f.str_("leader"),
                leader_addr=f.opt_str("leader_addr"),
                term=f.int_("term"),
            )
        case Op.MEMBER_ADD | Op.MEMBER_REMOVE | Op.MEMBER_LIST:
            return MembersResponse(
                id=rid,
                voters=_str_tuple(f, "voters"),
                learners=_str_tuple(f, "learners"),
                leader=f.opt_str("leader"),
            )
        case Op.TXN:
            return TxnResponse(
                id=rid,
                succeeded=f.bool_("succeeded"),
                responses=tuple(_op_result(m, rid) for m in _maps(f, "responses")),
                revision=f.int_("revision"),
            )
        case Op.LEASE_GRANT | Op.LEASE_KEEPALIVE | Op.LEASE_TTL:
            return LeaseResponse(id=rid, lease=f.int_("lease"), ttl_ms=f.int_("ttl_ms"))
        case Op.WATCH:
            return WatchEvents(
                id=rid,
                events=tuple(_event(m, rid) for m in _maps(f, "events")),
                revision=f.int_("revision"),
            )
        case Op.WATCH_CANCEL | Op.AUTH_TOKEN:
            return OkResponse(id=rid)
        case Op.ALARM_LIST | Op.ALARM_DISARM:
            return AlarmsResponse(id=rid, alarms=_alarms(f))
        case Op.AUTHENTICATE:
            return TokenResponse(id=rid, token=f.bytes_("token"))
        case Op.AUTH_STATUS:
            return AuthStatusResponse(
                id=rid, enabled=f.bool_("enabled"), revision=f.int_("revision")
            )
        case Op.USER_LIST | Op.ROLE_LIST:
            return NamesResponse(id=rid, names=_str_tuple(f, "names"))
        case Op.USER_GET:
            return UserResponse(id=rid, name=f.str_("name"), roles=_str_tuple(f, "roles"))
        case Op.ROLE_GET:
            return RoleResponse(
                id=rid,
                name=f.str_("name"),
                permissions=tuple(_permission(m, rid) for m in _maps(f, "permissions")),
            )
    raise ProtocolError(Code.BAD_REQUEST, f"no OK response shape for {op}", rid)  # pragma: no cover


def _op_result(m: dict[str, Obj], rid: int) -> RangeResult | WriteOpResult:
    if "kvs" in m:
        g = _Fields(m, frozenset({"kvs", "more"}), rid)
        return RangeResult(kvs=tuple(_kv_of(x, rid) for x in _maps(g, "kvs")), more=g.bool_("more"))
    g = _Fields(m, frozenset({"prev"}), rid)
    return WriteOpResult(prev=_opt_kv(g, "prev"))


def _permission(m: dict[str, Obj], rid: int) -> tuple[str, bytes]:
    g = _Fields(m, frozenset({"perm", "prefix"}), rid)
    perm = g.str_("perm")
    if perm not in PERMISSION_NAMES:
        g.fail(Code.BAD_REQUEST, f"perm must be one of {sorted(PERMISSION_NAMES)}")
    return perm, g.bytes_("prefix")


_EVENT_TYPES = frozenset({"put", "delete"})


def _event(m: dict[str, Obj], rid: int) -> WatchEvent:
    g = _Fields(m, frozenset({"type", "kv"}), rid)
    kind = g.str_("type")
    if kind not in _EVENT_TYPES:
        g.fail(Code.BAD_REQUEST, f"event type must be one of {sorted(_EVENT_TYPES)}")
    return WatchEvent(type=kind, kv=_kv(g, "kv"))


def _str_tuple(f: _Fields, name: str) -> tuple[str, ...]:
    v = f.m.get(name)
    if type(v) is not tuple or any(type(x) is not str for x in v):
        f.fail(Code.BAD_REQUEST, f"field {name!r} must be an array of strings")
    return v
