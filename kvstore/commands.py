"""The replicated command format: the only bytes the KV state machine ever applies.

Theory of operation. A command is one msgpack array::

    [format_version, tag, header, *args]
    header = [client_id, seq, ack_seq, user, auth_revision]   (format 4)
    header = [client_id, seq, ack_seq]                        (format 3)
    header = [client_id, seq, ack_seq, now_ms]                (formats 1 and 2)

``format_version`` (currently :data:`FORMAT_VERSION`) lets a later release change the
layout wholesale; ``tag`` names the command kind from the explicit :data:`COMMAND_TAGS`
table, whose numbers are never reused. Arguments follow in dataclass field order; an
absent optional argument is msgpack nil. A ``Txn`` nests arrays: compares
``[key, target, op, operand]`` and operations ``[kind, ...fields]``.

``ExpireLease`` is the one command outside the session rules: the leader's lessor
(kvstore/lessor.py) proposes it when a lease has run out on the leader's monotonic
clock, and applying it twice is the same as once (lease ids are never reused).
``OpenSession`` is the only command that creates a session (as its request seq 1);
``CloseSession`` ends one. ``RaiseAlarm`` and ``DisarmAlarm`` (kvstore/quota.py) are
sessionless and idempotent too: raising a raised alarm, or disarming none, changes
nothing.

The header carries the client session of dissertation §6.3 (exactly-once): ``client_id``
names the session, ``seq`` numbers the request within it, and ``ack_seq`` tells the
state machine that every ``seq <= ack_seq`` has been answered so its cached result may
go. Format 3 carries no time at all: no replicated decision reads a clock (issue 9).
Formats 1 and 2 carried the proposing leader's wall clock (``now_ms``), which drove
lease expiry (``Tick``) and session eviction; entries of those formats still decode, and
the state machine replays their lease expiry by that clock so an old log rebuilds the
state it had. ``Tick`` and ``LeaseKeepAlive`` exist only in formats 1 and 2.

Format 4 adds who asked (kvstore/auth.py): ``user`` (UTF-8 bytes, nil for a request
made without authentication, as every request is while auth is off) and the
``auth_revision`` of the auth state the proposing node checked the request's
permissions against. The state machine re-checks at apply whenever its auth revision
is newer (etcd's rule), so a write from a user whose permission was revoked while it
was in flight does not land. The auth commands (users, roles, permissions, enable and
disable) exist only in format 4. Names (users, roles) travel as UTF-8 bytes; a
password never does: :class:`UserAdd` and :class:`UserChangePassword` carry the hash
the proposer computed (kvstore/password.py), and :class:`AuthEnable` the token key
the proposer drew. Those random parts are left out of :func:`command_digest`, so a
retry, which the proposer hashes again with a new salt, is still the same command.

Decoding is the gateway (the etcd ``valid()`` discipline, as in raft/codec.py): log
bytes either become a well-typed ``(Header, Command)`` or raise :class:`CommandError`
-- never another exception type, never an allocation beyond the limits below. Types
are checked exactly (``True`` is not an int, ``str`` is not ``bytes``). Encoding runs
the same checks, so a request the server accepts is one every replica can decode
(REFERENCES: size limits that differ between layers fail only under load).
"""

from __future__ import annotations

import enum
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

from .password import PasswordHash, check_hash

__all__ = [
    "ALARM_MEMBER_MAX",
    "AUTH_FORMATS",
    "CLIENT_ID_LEN",
    "CLOCKED_FORMATS",
    "COMMAND_TAGS",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "MAX_COMMAND_BYTES",
    "MAX_INT",
    "MAX_KEY_LEN",
    "MAX_NAME_BYTES",
    "MAX_TTL_MS",
    "MAX_TXN_OPS",
    "MAX_VALUE_LEN",
    "AlarmType",
    "AuthDisable",
    "AuthEnable",
    "Cas",
    "CloseSession",
    "Command",
    "CommandError",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Delete",
    "DeleteOp",
    "DisarmAlarm",
    "ExpireLease",
    "Header",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseRevoke",
    "Noop",
    "OpenSession",
    "Permission",
    "Put",
    "PutOp",
    "RaiseAlarm",
    "RangeOp",
    "RoleAdd",
    "RoleDelete",
    "RoleGrantPermission",
    "RoleRevokePermission",
    "Tick",
    "Txn",
    "TxnOp",
    "UserAdd",
    "UserChangePassword",
    "UserDelete",
    "UserGrantRole",
    "UserRevokeRole",
    "check_branch",
    "command_digest",
    "decode_command",
    "encode_command",
    "name_problem",
    "read_only",
]

FORMAT_VERSION = 4
"""4: the header names the user and the auth revision the request was checked at;
auth commands. 3: no clock in the header; leases expire by ``ExpireLease`` from the leader's lessor,
keep-alives are not replicated. 2: sessions are opened only by OpenSession, and a cached
seq answers only its own command. Commands of older formats, still in the logs of older
data directories, keep the rules they were applied under (format 1: a data command with
seq 1 opened its session; formats 1 and 2: the header's clock expired leases)."""
FORMAT_VERSIONS = (1, 2, 3, 4)
CLOCKED_FORMATS = (1, 2)
"""Formats whose header carries the proposing leader's wall clock."""
AUTH_FORMATS = (4,)
"""Formats whose header carries the user and auth revision."""
MAX_NAME_BYTES = 256
"""Longest user or role name (UTF-8)."""
TOKEN_KEY_BYTES = 32
CLIENT_ID_LEN = 16
MAX_KEY_LEN = 4096
MAX_VALUE_LEN = 1 << 20
MAX_INT = 1 << 63
"""Exclusive upper bound of every integer field (seqs, clocks, versions)."""

MAX_TXN_OPS = 128
"""Most compares, and most operations per branch, in one Txn (etcd's --max-txn-ops)."""
MAX_COMMAND_BYTES = 4 * MAX_VALUE_LEN + 64 * 1024
"""Largest encoded command: a client request frame (4 MiB by default) plus slack; a Txn
of many large values beyond it is refused at the gateway, before it can reach a log."""
MAX_TTL_MS = 1 << 40
"""Longest lease TTL (about 35 years): bounds ``clock + ttl`` far below MAX_INT."""

ALARM_MEMBER_MAX = 255
"""Longest member id an alarm names (bytes; config ids are at most 63 characters)."""

_MAX_ARRAY_LEN = MAX_TXN_OPS  # widest array: a Txn branch


class CommandError(ValueError):
    """Bytes (or a value) that are not a valid command. The only error decoding raises."""


@dataclass(frozen=True, slots=True)
class Header:
    """Client session of the request (dissertation §6.3).

    Invariant (checked at the gateway): ``0 <= ack_seq < seq``. ``format`` is the
    command format the entry was written in (not a header field on the wire: the
    command's first element). ``now_ms`` is the leader's wall clock of formats 1 and 2;
    formats 3 and 4 have none (always 0). ``user`` (None: not authenticated) and
    ``auth_revision`` exist in format 4 only (None and 0 in the others)."""

    client_id: bytes
    seq: int
    ack_seq: int
    now_ms: int = 0
    format: int = FORMAT_VERSION
    user: str | None = None
    auth_revision: int = 0


@dataclass(frozen=True, slots=True)
class Noop:
    """Header only: keeps a session alive and carries its ``ack_seq`` forward."""


@dataclass(frozen=True, slots=True)
class OpenSession:
    """Creates the header's session (request seq 1); a retry finds it open. Data
    commands never create sessions: a session evicted before a retry of its first
    write must not come back and apply that write twice (issue 9)."""


@dataclass(frozen=True, slots=True)
class CloseSession:
    """Ends the header's session and forgets its cached results (a client that exits)."""


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set: set ``key`` to ``new_value`` only if every given expectation holds.

    ``expected_value`` compares the current value (an absent key never matches);
    ``expected_version`` compares the etcd ``version`` of the key, where 0 means "the key
    must not exist" (etcd's ``version == 0`` compare), so ``expected_version=0`` is
    create-if-absent. At least one expectation must be given: a Cas without one would
    be a Put in disguise."""

    key: bytes
    expected_value: bytes | None
    expected_version: int | None
    new_value: bytes


class CompareTarget(enum.IntEnum):
    """What a Txn compare looks at (etcd ``Compare.CompareTarget``)."""

    VALUE = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    LEASE = 4


class CompareOp(enum.IntEnum):
    EQ = 0
    NE = 1
    LT = 2
    GT = 3


@dataclass(frozen=True, slots=True)
class Compare:
    """One Txn guard: ``target(key) op operand``. ``operand`` is bytes for VALUE and an
    int otherwise. An absent key has version, create, mod and lease 0, and no value: a
    VALUE compare on it is false whatever the op (etcd's rule)."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class RangeOp:
    """Read ``key`` (``end`` None), or ``[key, end)`` as in ``MVCCStore.range``."""

    key: bytes
    end: bytes | None
    limit: int | None


@dataclass(frozen=True, slots=True)
class PutOp:
    """Write ``key``; ``lease`` (0: none) attaches it to a lease, which must exist."""

    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: bytes


TxnOp = RangeOp | PutOp | DeleteOp


@dataclass(frozen=True, slots=True)
class Txn:
    """etcd's mini-transaction: if every compare holds, run ``success``, else ``failure``;
    atomically, at one revision. A branch writes each key at most once."""

    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...]

    @property
    def read_only(self) -> bool:
        return read_only(self.success, self.failure)


def read_only(*branches: tuple[TxnOp, ...]) -> bool:
    """No put or delete in any of ``branches``: a transaction that is only a read."""
    return all(isinstance(op, RangeOp) for branch in branches for op in branch)


def check_branch(ops: tuple[TxnOp, ...]) -> None:
    """The one rule on a branch's contents the types do not carry: it writes each key
    at most once (so a revision has one event per key). Raises CommandError."""
    written = [op.key for op in ops if not isinstance(op, RangeOp)]
    if len(set(written)) != len(written):
        raise CommandError("a Txn branch writes the same key twice")


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A new lease of ``ttl_ms``, timed by the leader's lessor (formats 1 and 2: by the
    replicated clock); the state machine picks its id."""

    ttl_ms: int


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """End a lease now, deleting every key attached to it (one revision)."""

    lease: int


@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    """Formats 1 and 2 only: restarted a lease's TTL from the replicated clock. Since
    format 3 a keep-alive is answered by the leader's lessor and never logged."""

    lease: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Formats 1 and 2 only: carried the leader's clock into the log (sessionless)."""


@dataclass(frozen=True, slots=True)
class ExpireLease:
    """The leader's lessor found ``lease`` run out (format 3): revoke it. Sessionless
    and idempotent; a lease already gone is NOT_FOUND, nothing changes."""

    lease: int


class AlarmType(enum.IntEnum):
    """A cluster alarm (etcd's ``AlarmType``; the numbers are etcd's and stable)."""

    NOSPACE = 1  # the data reached a member's storage quota: growing writes are refused


@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    """``member`` raised ``alarm`` (its proposer found a write past its quota).
    Sessionless and idempotent: a raised alarm stays raised once."""

    alarm: AlarmType
    member: bytes


@dataclass(frozen=True, slots=True)
class DisarmAlarm:
    """Clear ``alarm`` for every member that raised it (``kv alarm disarm``).
    Sessionless and idempotent."""

    alarm: AlarmType


class Permission(enum.IntEnum):
    """What a role's permission on a key prefix allows (etcd's ``Permission.Type``)."""

    READ = 1
    WRITE = 2
    READWRITE = 3


@dataclass(frozen=True, slots=True)
class AuthEnable:
    """Turn authentication on (refused unless user root exists with role root).
    ``token_key`` signs login tokens; drawn by the proposer, fresh at every enable, so
    tokens issued before a disable never work again."""

    token_key: bytes


@dataclass(frozen=True, slots=True)
class AuthDisable:
    """Turn authentication off: every client may do everything again."""


@dataclass(frozen=True, slots=True)
class UserAdd:
    name: str
    password: PasswordHash


@dataclass(frozen=True, slots=True)
class UserDelete:
    name: str


@dataclass(frozen=True, slots=True)
class UserChangePassword:
    """Set a new password hash; the user's tokens stop working."""

    name: str
    password: PasswordHash


@dataclass(frozen=True, slots=True)
class UserGrantRole:
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class UserRevokeRole:
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class RoleAdd:
    name: str


@dataclass(frozen=True, slots=True)
class RoleDelete:
    name: str


@dataclass(frozen=True, slots=True)
class RoleGrantPermission:
    """Grant ``perm`` on every key starting with ``prefix`` (empty: every key); a
    grant on a prefix the role already has replaces that permission."""

    name: str
    perm: Permission
    prefix: bytes


@dataclass(frozen=True, slots=True)
class RoleRevokePermission:
    name: str
    prefix: bytes


AuthCommand = (
    AuthEnable
    | AuthDisable
    | UserAdd
    | UserDelete
    | UserChangePassword
    | UserGrantRole
    | UserRevokeRole
    | RoleAdd
    | RoleDelete
    | RoleGrantPermission
    | RoleRevokePermission
)
AUTH_COMMANDS: tuple[type, ...] = AuthCommand.__args__  # type: ignore[attr-defined]

Command = (
    Noop
    | Put
    | Delete
    | Cas
    | Txn
    | LeaseGrant
    | LeaseRevoke
    | LeaseKeepAlive
    | Tick
    | OpenSession
    | CloseSession
    | ExpireLease
    | RaiseAlarm
    | DisarmAlarm
    | AuthCommand
)

COMMAND_TAGS: dict[type, int] = {
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
    # 23-24, 27-29: free.
    RaiseAlarm: 25,
    DisarmAlarm: 26,
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
}
"""Wire tag of each command class. Append only: a retired tag stays retired."""

_ARITY: dict[type, int] = {
    Noop: 0,
    Put: 2,
    Delete: 1,
    Cas: 4,
    Txn: 3,
    LeaseGrant: 1,
    LeaseRevoke: 1,
    LeaseKeepAlive: 1,
    Tick: 0,
    OpenSession: 0,
    CloseSession: 0,
    ExpireLease: 1,
    RaiseAlarm: 2,
    DisarmAlarm: 1,
    AuthEnable: 1,
    AuthDisable: 0,
    UserAdd: 2,
    UserDelete: 1,
    UserChangePassword: 2,
    UserGrantRole: 2,
    UserRevokeRole: 2,
    RoleAdd: 1,
    RoleDelete: 1,
    RoleGrantPermission: 3,
    RoleRevokePermission: 2,
}
_FORMATS_OF: dict[type, tuple[int, ...]] = {
    Tick: CLOCKED_FORMATS,
    LeaseKeepAlive: CLOCKED_FORMATS,
    ExpireLease: (3, 4),
    RaiseAlarm: (3, 4),
    DisarmAlarm: (3, 4),
    **{cls: AUTH_FORMATS for cls in AUTH_COMMANDS},
}
"""Commands that exist only in some formats (the rest exist in all)."""
_TARGETS = frozenset(int(t) for t in CompareTarget)
_ALARMS = frozenset(int(a) for a in AlarmType)
_PERMISSIONS = frozenset(int(p) for p in Permission)
_COMPARE_OPS = frozenset(int(o) for o in CompareOp)

_TAG_TYPES: dict[int, type] = {tag: cls for cls, tag in COMMAND_TAGS.items()}

Obj = Any  # what msgpack hands back: validated field by field before use


# ---- field validators ---------------------------------------------------------------


def _fail(what: str, value: Obj) -> NoReturn:
    # Only scalars are shown: repr of a 1 MiB value would cost more than the input.
    shown = repr(value) if value is None or type(value) in (int, bool, float) else ""
    if type(value) is bytes:
        shown = f"of {len(value)} bytes"
    raise CommandError(f"bad {what}: {type(value).__name__} {shown}".rstrip())


def _int(v: Obj, what: str, low: int = 0) -> int:
    if type(v) is not int or not low <= v < MAX_INT:
        _fail(what, v)
    return v


def _bytes(v: Obj, what: str, low: int, high: int) -> bytes:
    if type(v) is not bytes or not low <= len(v) <= high:
        _fail(what, v)
    return v


def _key(v: Obj) -> bytes:
    return _bytes(v, "key", 1, MAX_KEY_LEN)


def _value(v: Obj, what: str = "value") -> bytes:
    return _bytes(v, what, 0, MAX_VALUE_LEN)


def name_problem(name: object) -> str | None:
    """What is wrong with a user or role name (None: nothing): 1 to
    :data:`MAX_NAME_BYTES` bytes of UTF-8, no control characters."""
    if type(name) is not str or not name:
        return "a name must be a non-empty string"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"a name must be at most {MAX_NAME_BYTES} bytes"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        return "a name must not contain control characters"
    return None


def _name(v: Obj, what: str = "name") -> str:
    if type(v) is not bytes:
        _fail(what, v)
    try:
        name = v.decode()
    except UnicodeDecodeError:
        _fail(f"{what} (not UTF-8)", v)
    problem = name_problem(name)
    if problem is not None:
        raise CommandError(f"bad {what}: {problem}")
    return name


def _password(v: Obj) -> PasswordHash:
    if type(v) is not tuple or len(v) != 5:
        _fail("password hash (want [salt, log_n, r, p, hash])", v)
    h = PasswordHash(*v)
    problem = check_hash(h)
    if problem is not None:
        raise CommandError(f"bad password hash: {problem}")
    return h


_HEADER_WIDTH = {1: 4, 2: 4, 3: 3, 4: 5}


def _header(v: Obj, version: int) -> Header:
    width = _HEADER_WIDTH[version]
    if type(v) is not tuple or len(v) != width:
        _fail(f"header (want array of {width})", v)
    user, auth_revision, now_ms = None, 0, 0
    if version in AUTH_FORMATS:
        client_id, seq, ack_seq, user_obj, revision = v
        user = None if user_obj is None else _name(user_obj, "user")
        auth_revision = _int(revision, "auth_revision")
    elif version in CLOCKED_FORMATS:
        client_id, seq, ack_seq, clock = v
        now_ms = _int(clock, "now_ms")
    else:
        client_id, seq, ack_seq = v
    h = Header(
        _bytes(client_id, "client_id", CLIENT_ID_LEN, CLIENT_ID_LEN),
        _int(seq, "seq", low=1),
        _int(ack_seq, "ack_seq"),
        now_ms,
        version,
        user,
        auth_revision,
    )
    if h.ack_seq >= h.seq:
        # A client cannot have been answered for the request it is only now sending.
        raise CommandError(f"ack_seq {h.ack_seq} must be below seq {h.seq}")
    return h


def _command(tag: Obj, args: tuple[Obj, ...], version: int) -> Command:
    if type(tag) is not int:
        _fail("tag", tag)
    cls = _TAG_TYPES.get(tag)
    if cls is None:
        _fail("tag", tag)
    if version not in _FORMATS_OF.get(cls, FORMAT_VERSIONS):
        raise CommandError(f"{cls.__name__} does not exist in command format {version}")
    arity = _ARITY[cls]
    if len(args) != arity:
        raise CommandError(f"{cls.__name__} takes {arity} arguments, got {len(args)}")
    if cls is Noop:
        return Noop()
    if cls is Tick:
        return Tick()
    if cls is OpenSession:
        return OpenSession()
    if cls is CloseSession:
        return CloseSession()
    if cls is Put:
        return Put(_key(args[0]), _value(args[1]))
    if cls is Delete:
        return Delete(_key(args[0]))
    if cls is Txn:
        return _txn(*args)
    if cls is LeaseGrant:
        ttl = _int(args[0], "ttl_ms", low=1)
        if ttl > MAX_TTL_MS:
            _fail("ttl_ms (too long)", ttl)
        return LeaseGrant(ttl)
    if cls is LeaseRevoke:
        return LeaseRevoke(_int(args[0], "lease", low=1))
    if cls is LeaseKeepAlive:
        return LeaseKeepAlive(_int(args[0], "lease", low=1))
    if cls is ExpireLease:
        return ExpireLease(_int(args[0], "lease", low=1))
    if cls is RaiseAlarm:
        return RaiseAlarm(_alarm(args[0]), _bytes(args[1], "member", 1, ALARM_MEMBER_MAX))
    if cls is DisarmAlarm:
        return DisarmAlarm(_alarm(args[0]))
    if cls in AUTH_COMMANDS:
        return _auth_command(cls, args)
    key, exp_value, exp_version, new_value = args
    cas = Cas(
        _key(key),
        None if exp_value is None else _value(exp_value, "expected_value"),
        None if exp_version is None else _int(exp_version, "expected_version"),
        _value(new_value, "new_value"),
    )
    if cas.expected_value is None and cas.expected_version is None:
        raise CommandError("Cas needs expected_value or expected_version")
    return cas


def _auth_command(cls: type, args: tuple[Obj, ...]) -> Command:
    if cls is AuthEnable:
        return AuthEnable(_bytes(args[0], "token_key", TOKEN_KEY_BYTES, 64))
    if cls is AuthDisable:
        return AuthDisable()
    if cls in (UserAdd, UserChangePassword):
        return cls(_name(args[0]), _password(args[1]))  # type: ignore[no-any-return]
    if cls in (UserGrantRole, UserRevokeRole):
        return cls(_name(args[0]), _name(args[1], "role"))  # type: ignore[no-any-return]
    if cls is RoleGrantPermission:
        perm = args[1]
        if type(perm) is not int or perm not in _PERMISSIONS:
            _fail("permission", perm)
        prefix = _bytes(args[2], "prefix", 0, MAX_KEY_LEN)
        return RoleGrantPermission(_name(args[0]), Permission(perm), prefix)
    if cls is RoleRevokePermission:
        return RoleRevokePermission(_name(args[0]), _bytes(args[1], "prefix", 0, MAX_KEY_LEN))
    return cls(_name(args[0]))  # type: ignore[no-any-return]  # UserDelete, RoleAdd/Delete


def _alarm(v: Obj) -> AlarmType:
    if type(v) is not int or v not in _ALARMS:
        _fail("alarm", v)
    return AlarmType(v)


def _array(v: Obj, what: str) -> tuple[Obj, ...]:
    if type(v) is not tuple or len(v) > MAX_TXN_OPS:
        _fail(f"{what} (want array of at most {MAX_TXN_OPS})", v)
    return v


def _txn(compares: Obj, success: Obj, failure: Obj) -> Txn:
    txn = Txn(
        tuple(_compare(c) for c in _array(compares, "compares")),
        tuple(_txn_op(o) for o in _array(success, "success")),
        tuple(_txn_op(o) for o in _array(failure, "failure")),
    )
    check_branch(txn.success)
    check_branch(txn.failure)
    return txn


def _compare(v: Obj) -> Compare:
    if type(v) is not tuple or len(v) != 4:
        _fail("compare (want [key, target, op, operand])", v)
    key, target, op, operand = v
    if type(target) is not int or target not in _TARGETS:
        _fail("compare target", target)
    if type(op) is not int or op not in _COMPARE_OPS:
        _fail("compare op", op)
    t, o = CompareTarget(target), CompareOp(op)
    if t is CompareTarget.VALUE:
        return Compare(_key(key), t, o, _value(operand, "compare value"))
    return Compare(_key(key), t, o, _int(operand, "compare operand"))


def _txn_op(v: Obj) -> TxnOp:
    if type(v) is not tuple or not v or type(v[0]) is not int:
        _fail("txn operation (want [kind, ...])", v)
    kind, *rest = v
    if kind == 0 and len(rest) == 3:
        key, end, limit = rest
        return RangeOp(
            _key(key),
            None if end is None else _bytes(end, "range end", 1, MAX_KEY_LEN),
            None if limit is None else _int(limit, "range limit", low=1),
        )
    if kind == 1 and len(rest) == 3:
        key, value, lease = rest
        return PutOp(_key(key), _value(value), _int(lease, "lease"))
    if kind == 2 and len(rest) == 1:
        return DeleteOp(_key(rest[0]))
    raise CommandError(f"bad txn operation kind {kind} with {len(rest)} fields")


def _args(cmd: Command) -> list[Obj]:
    match cmd:
        case Noop() | Tick() | OpenSession() | CloseSession():
            return []
        case Put(key, value):
            return [key, value]
        case Delete(key):
            return [key]
        case Cas(key, expected_value, expected_version, new_value):
            return [key, expected_value, expected_version, new_value]
        case Txn(compares, success, failure):
            return [
                [[c.key, int(c.target), int(c.op), c.operand] for c in compares],
                [_op_obj(op) for op in success],
                [_op_obj(op) for op in failure],
            ]
        case LeaseGrant(ttl_ms):
            return [ttl_ms]
        case LeaseRevoke(lease) | LeaseKeepAlive(lease) | ExpireLease(lease):
            return [lease]
        case RaiseAlarm(alarm, member):
            return [int(alarm), member]
        case DisarmAlarm(alarm):
            return [int(alarm)]
        case AuthEnable(token_key):
            return [token_key]
        case AuthDisable():
            return []
        case UserAdd(name, h) | UserChangePassword(name, h):
            return [name.encode(), [h.salt, h.log_n, h.r, h.p, h.hash]]
        case UserGrantRole(name, role) | UserRevokeRole(name, role):
            return [name.encode(), role.encode()]
        case UserDelete(name) | RoleAdd(name) | RoleDelete(name):
            return [name.encode()]
        case RoleGrantPermission(name, perm, prefix):
            return [name.encode(), int(perm), prefix]
        case RoleRevokePermission(name, prefix):
            return [name.encode(), prefix]
    raise CommandError(f"not a command: {type(cmd).__name__}")  # pragma: no cover


def _op_obj(op: TxnOp) -> list[Obj]:
    match op:
        case RangeOp(key, end, limit):
            return [0, key, end, limit]
        case PutOp(key, value, lease):
            return [1, key, value, lease]
        case DeleteOp(key):
            return [2, key]
    raise CommandError(f"not a txn operation: {type(op).__name__}")  # pragma: no cover


def _tuples(v: Obj) -> Obj:
    """Lists as the decoder sees them (msgpack arrays come back as tuples)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _header_obj(h: Header) -> list[Obj]:
    if h.format in AUTH_FORMATS:
        user = None if h.user is None else h.user.encode("utf-8", "surrogatepass")
        head = [h.client_id, h.seq, h.ack_seq, user, h.auth_revision]
    elif h.user is not None or h.auth_revision:
        raise CommandError(f"command format {h.format} carries no user")
    elif h.format in CLOCKED_FORMATS:
        return [h.client_id, h.seq, h.ack_seq, h.now_ms]
    else:
        head = [h.client_id, h.seq, h.ack_seq]
    if h.now_ms:
        raise CommandError(f"command format {h.format} carries no clock (now_ms {h.now_ms})")
    return head


def _unpack(data: bytes) -> Obj:
    """msgpack → Python objects, sizes bounded, every failure a CommandError.

    Maps, strings and ext types (timestamps included) are not part of the format and are
    refused by the unpacker itself, which bounds the work before validation starts."""
    if type(data) is not bytes:
        raise CommandError(f"command must be bytes, not {type(data).__name__}")
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            timestamp=0,
            ext_hook=_reject_ext,
            max_bin_len=MAX_VALUE_LEN,
            max_str_len=0,
            max_array_len=_MAX_ARRAY_LEN,
            max_map_len=0,
            max_ext_len=0,
        )
    except CommandError:
        raise
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise CommandError(f"malformed msgpack: {exc}") from exc


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise CommandError(f"msgpack ext type {code} is not part of the command format")


# ---- public API -----------------------------------------------------------------------


def decode_command(data: bytes) -> tuple[Header, Command]:
    """Log bytes → ``(Header, Command)``; raises only :class:`CommandError`."""
    obj = _unpack(data)
    if type(obj) is not tuple or len(obj) < 3:
        _fail("command (want array [version, tag, header, ...])", obj)
    version, tag, header, *args = obj
    if type(version) is not int or version not in FORMAT_VERSIONS:
        _fail("format version", version)
    # Tag before header: an unknown kind is the more useful error.
    cmd = _command(tag, tuple(args), version)
    return _header(header, version), cmd


def command_digest(cmd: Command) -> int:
    """A checksum of what a command does (its kind and arguments, not its header, which
    changes between retries): a retry must carry the same command as the request its
    seq first named. What the proposer draws afresh for every attempt (a password's
    salted hash, a token key) is left out: a retry of the same request differs there."""
    match cmd:
        case AuthEnable():
            args: list[Obj] = []
        case UserAdd(name) | UserChangePassword(name):
            args = [name.encode()]
        case _:
            args = _args(cmd)
    packed = msgpack.packb([COMMAND_TAGS[type(cmd)], *args], use_bin_type=True)
    return zlib.crc32(packed)


def encode_command(header: Header, cmd: Command) -> bytes:
    """``(Header, Command)`` → log bytes. Validates exactly as :func:`decode_command` does,
    raising :class:`CommandError`, so nothing the server proposes can be rejected later."""
    tag = COMMAND_TAGS.get(type(cmd))
    if tag is None:
        raise CommandError(f"not a command: {type(cmd).__name__}")
    if type(header) is not Header:
        raise CommandError(f"not a header: {type(header).__name__}")
    if header.format not in FORMAT_VERSIONS:
        raise CommandError(f"unknown command format {header.format!r}")
    _header(tuple(_header_obj(header)), header.format)
    args = _args(cmd)
    _command(tag, _tuples(args), header.format)
    data: bytes = msgpack.packb([header.format, tag, _header_obj(header), *args], use_bin_type=True)
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    return data
