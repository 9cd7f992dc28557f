"""Replicated auth state: users, roles, permissions, and the login tokens they sign.

Theory of operation (etcd's model). Auth is off until ``auth enable``; while it is off
every client may do everything, including managing users and roles (that is how a
cluster is set up). ``auth enable`` is refused unless user ``root`` exists and holds
role ``root``; from then on:

- a user holds roles; a role holds permissions, each READ, WRITE or READWRITE on a key
  prefix (the empty prefix: every key); role ``root`` grants everything, including
  the admin operations (membership, leadership transfer, every auth change);
- a request is allowed if the union of its user's prefixes of the needed kind covers
  every key it reads or writes (a range must be covered whole).

Every auth change bumps :attr:`AuthState.revision`. The server checks a request against
the revision it has applied and the command carries that revision (commands.py format
4); the state machine re-checks whenever its revision is newer, so a permission
revoked while a write was in flight is enforced at apply (etcd's rule).

Tokens. A login yields ``body || HMAC-SHA256(token_key, body)`` with ``body =
msgpack([user, password_revision, issued_ms])``. ``token_key`` is replicated state,
drawn by the proposer of ``auth enable`` (a fresh one each time), so every node checks
every token and a disable/enable cycle voids them all. ``password_revision`` is the
auth revision at which the user's password was last set: a password change or a
delete-and-re-add voids the user's tokens. The expiry (``issued_ms`` plus the node's
token TTL, by the checking node's wall clock) is judged at the gateway, never at apply:
apply reads no clock.

This module is pure: no I/O, no clock, no randomness (callers pass ``now_ms`` and the
random bytes). All state changes go through :meth:`AuthState.apply`, on the apply path.
"""

from __future__ import annotations

import hashlib
import hmac
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

from .commands import (
    AUTH_COMMANDS,
    CLIENT_ID_LEN,
    MAX_KEY_LEN,
    TOKEN_KEY_BYTES,
    AuthCommand,
    AuthDisable,
    AuthEnable,
    Cas,
    CloseSession,
    Command,
    Delete,
    ExpireLease,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Noop,
    OpenSession,
    Permission,
    Put,
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
    name_problem,
)
from .password import PasswordHash, check_hash

__all__ = [
    "ROOT",
    "AuthBehind",
    "AuthError",
    "AuthState",
    "KeyRange",
    "NotFoundError",
    "PreconditionError",
    "Role",
    "User",
    "key_range",
    "session_owners_from_obj",
]

ROOT = "root"
"""The name of the root user and of the root role."""
_MAC_BYTES = 32
_MAX_TOKEN_BYTES = 1024

_ANY_USER = (Noop, OpenSession, CloseSession, LeaseGrant, LeaseKeepAlive, ExpireLease, Tick)
"""Bookkeeping any authenticated user may do (sessions, leases, no keys touched)."""

KeyRange = tuple[bytes, bytes | None]
"""``[start, end)`` of keys; ``end`` None: no upper bound."""


def key_range(start: bytes, end: bytes | None = None, *, unbounded: bool = False) -> KeyRange:
    """The keys a request names: ``start`` alone (``end`` None), or ``[start, end)``, or
    every key from ``start`` on (``unbounded``, or ``end == b"\\x00"``, etcd's rule)."""
    if unbounded or end == b"\x00":
        return start, None
    if end is None:
        return start, start + b"\x00"
    return start, end


def _prefix_range(prefix: bytes) -> KeyRange:
    from .protocol import prefix_end

    return prefix, (prefix_end(prefix) if prefix else None)


class AuthError(Exception):
    """An auth change that cannot apply; nothing changed."""


class AuthBehind(AuthError):
    """A token newer than this replica's auth state (a lagging follower): it may well
    be valid; ask again later or elsewhere."""


class NotFoundError(AuthError):
    """The user, role or permission named does not exist."""


class PreconditionError(AuthError):
    """The change contradicts the state (exists already; root's rules)."""


@dataclass(frozen=True, slots=True)
class User:
    """Replaced, never changed. ``password_revision``: the auth revision at which the
    password was set (tokens carry it)."""

    password: PasswordHash
    roles: frozenset[str]
    password_revision: int


@dataclass(frozen=True, slots=True)
class Role:
    """Replaced, never changed: ``perms`` maps a key prefix to what it grants."""

    perms: tuple[tuple[bytes, Permission], ...] = ()


@dataclass(slots=True)
class AuthState:
    """The replicated auth state. ``users`` and ``roles`` hold immutable values, so a
    snapshot capture may share them (:meth:`to_obj` copies the dicts)."""

    enabled: bool = False
    revision: int = 0
    token_key: bytes = b""
    users: dict[str, User] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    # (user, kind) -> merged ranges; cleared at every change (not replicated state).
    _covers: dict[tuple[str, int], list[KeyRange]] = field(
        default_factory=dict, repr=False, compare=False
    )

    # ---- checks --------------------------------------------------------------------

    def is_root(self, user: str | None) -> bool:
        u = None if user is None else self.users.get(user)
        return u is not None and ROOT in u.roles

    def permits(self, user: str | None, need: Permission, ranges: Iterable[KeyRange]) -> bool:
        """Whether ``user`` may ``need`` (READ or WRITE) every key of every range.
        Always True while auth is off."""
        if not self.enabled:
            return True
        if user is None or user not in self.users:
            return False
        if self.is_root(user):
            return True
        covers = self._covers.get((user, need))
        if covers is None:
            covers = self._covers[(user, need)] = self._merged(user, need)
        return all(_covered(covers, r) for r in ranges)

    def _merged(self, user: str, need: Permission) -> list[KeyRange]:
        spans = sorted(
            _prefix_range(prefix)
            for role in sorted(self.users[user].roles)
            for prefix, perm in self.roles.get(role, Role()).perms
            if perm & need
        )
        merged: list[KeyRange] = []
        for start, end in spans:
            if merged and (merged[-1][1] is None or start <= merged[-1][1]):
                last_start, last_end = merged[-1]
                if last_end is not None and (end is None or end > last_end):
                    merged[-1] = (last_start, end)
                continue
            merged.append((start, end))
        return merged

    def denial(
        self, user: str | None, cmd: Command, lease_keys: Callable[[int], Iterable[bytes]]
    ) -> str | None:
        """Why ``user`` may not run ``cmd`` (None: it may). The one rule for the
        server's check and the re-check at apply. Auth changes need root; a key read
        (a compare, a range, a cas's expectation) needs READ, a key written WRITE, a
        lease revoke WRITE on every key attached to the lease (etcd's rule); session
        and lease bookkeeping needs only a known user."""
        if not self.enabled:
            return None
        if user is None:
            return "authentication required"
        if user not in self.users:
            return f"user {user!r} does not exist"
        if self.is_root(user):
            return None
        reads: list[KeyRange] = []
        writes: list[KeyRange] = []
        match cmd:
            case Put(key) | Delete(key):
                writes.append(key_range(key))
            case Cas(key):
                reads.append(key_range(key))
                writes.append(key_range(key))
            case Txn(compares, success, failure):
                reads.extend(key_range(c.key) for c in compares)
                for op in (*success, *failure):
                    if isinstance(op, RangeOp):
                        reads.append(key_range(op.key, op.end))
                    else:
                        writes.append(key_range(op.key))
            case LeaseRevoke(lease):
                writes.extend(key_range(k) for k in lease_keys(lease))
            case _ if isinstance(cmd, AUTH_COMMANDS):
                return "auth changes need role root"
            case _ if not isinstance(cmd, _ANY_USER):
                # Default deny: a command kind added later is root's until given a rule.
                return f"{type(cmd).__name__} needs role root"
        if not self.permits(user, Permission.READ, reads):
            return f"user {user!r} may not read every key this request reads"
        if not self.permits(user, Permission.WRITE, writes):
            return f"user {user!r} may not write every key this request writes"
        return None

    # ---- tokens --------------------------------------------------------------------

    def issue_token(self, user: str, issued_ms: int) -> bytes:
        """A token for ``user`` (whose password the caller has verified)."""
        body: bytes = msgpack.packb(
            [user, self.users[user].password_revision, issued_ms], use_bin_type=True
        )
        return body + hmac.digest(self.token_key, body, hashlib.sha256)

    def check_token(self, token: bytes, now_ms: int, ttl_ms: int) -> str:
        """The user ``token`` authenticates, or AuthError saying why not (auth off,
        forged, expired, password changed, user gone)."""
        if not self.enabled:
            raise AuthError("authentication is not enabled")
        if not _MAC_BYTES < len(token) <= _MAX_TOKEN_BYTES:
            raise AuthError("malformed token")
        body, mac = token[:-_MAC_BYTES], token[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, hmac.digest(self.token_key, body, hashlib.sha256)):
            raise AuthError("invalid token (forged, or issued before auth was re-enabled)")
        user, password_revision, issued_ms = msgpack.unpackb(body, raw=False)  # our own bytes
        if now_ms - issued_ms > ttl_ms:
            raise AuthError("token expired: authenticate again")
        u = self.users.get(user)
        if u is None or u.password_revision != password_revision:
            if password_revision > self.revision:
                raise AuthBehind("this node has not yet applied the auth state of the token")
            raise AuthError("token no longer valid (user deleted or password changed)")
        return str(user)

    # ---- changes (the apply path) --------------------------------------------------

    def apply(self, cmd: AuthCommand) -> None:
        """Apply one auth command; AuthError (nothing changed) if it cannot."""
        self._apply(cmd)
        self.revision += 1
        self._covers.clear()

    def _apply(self, cmd: AuthCommand) -> None:
        match cmd:
            case AuthEnable(key):
                root = self.users.get(ROOT)
                if root is None or ROOT not in root.roles:
                    raise PreconditionError("auth enable needs user root with role root")
                self.enabled, self.token_key = True, key
            case AuthDisable():
                self.enabled = False
            case UserAdd(name, password):
                if name in self.users:
                    raise PreconditionError(f"user {name!r} already exists")
                self.users[name] = User(password, frozenset(), self.revision + 1)
            case UserDelete(name):
                self._user(name)
                if name == ROOT and self.enabled:
                    raise PreconditionError("user root cannot be deleted while auth is on")
                del self.users[name]
            case UserChangePassword(name, password):
                u = self._user(name)
                self.users[name] = User(password, u.roles, self.revision + 1)
            case UserGrantRole(name, role):
                u = self._user(name)
                if role != ROOT and role not in self.roles:
                    raise NotFoundError(f"role {role!r} not found")
                self.users[name] = User(u.password, u.roles | {role}, u.password_revision)
            case UserRevokeRole(name, role):
                u = self._user(name)
                if role not in u.roles:
                    raise NotFoundError(f"user {name!r} does not have role {role!r}")
                if name == ROOT and role == ROOT and self.enabled:
                    raise PreconditionError("root cannot lose role root while auth is on")
                self.users[name] = User(u.password, u.roles - {role}, u.password_revision)
            case RoleAdd(name):
                if name == ROOT or name in self.roles:
                    raise PreconditionError(f"role {name!r} already exists")
                self.roles[name] = Role()
            case RoleDelete(name):
                if name == ROOT:
                    raise PreconditionError("role root cannot be deleted")
                self._role(name)
                del self.roles[name]
                for uname, u in list(self.users.items()):
                    if name in u.roles:
                        self.users[uname] = User(u.password, u.roles - {name}, u.password_revision)
            case RoleGrantPermission(name, perm, prefix):
                perms = dict(self._role(name).perms)
                perms[prefix] = perm
                self.roles[name] = Role(tuple(sorted(perms.items())))
            case RoleRevokePermission(name, prefix):
                perms = dict(self._role(name).perms)
                if perms.pop(prefix, None) is None:
                    raise NotFoundError(f"role {name!r} has no permission on {prefix!r}")
                self.roles[name] = Role(tuple(sorted(perms.items())))

    def _user(self, name: str) -> User:
        u = self.users.get(name)
        if u is None:
            raise NotFoundError(f"user {name!r} not found")
        return u

    def _role(self, name: str) -> Role:
        if name == ROOT:
            raise PreconditionError("role root grants everything; it has no permissions to change")
        r = self.roles.get(name)
        if r is None:
            raise NotFoundError(f"role {name!r} not found")
        return r

    # ---- snapshot ------------------------------------------------------------------

    def to_obj(self) -> dict[str, Any]:
        """The snapshot section (plain msgpack-able data, sorted: equal states, equal
        bytes)."""
        return {
            "enabled": self.enabled,
            "revision": self.revision,
            "token_key": self.token_key,
            "users": [
                [name, _hash_obj(u.password), sorted(u.roles), u.password_revision]
                for name, u in sorted(self.users.items())
            ],
            "roles": [
                [name, [[prefix, int(perm)] for prefix, perm in r.perms]]
                for name, r in sorted(self.roles.items())
            ],
        }

    @classmethod
    def from_obj(cls, obj: Any) -> AuthState:
        """The inverse of :meth:`to_obj`; ValueError on anything malformed."""
        if type(obj) is not dict or set(obj) != {
            "enabled",
            "revision",
            "token_key",
            "users",
            "roles",
        }:
            raise ValueError("auth section must have exactly its five fields")
        enabled, revision, key = obj["enabled"], obj["revision"], obj["token_key"]
        if type(enabled) is not bool or type(revision) is not int or revision < 0:
            raise ValueError("bad auth enabled flag or revision")
        if type(key) is not bytes or len(key) not in (0, *range(TOKEN_KEY_BYTES, 65)):
            raise ValueError("bad token key")
        state = cls(enabled=enabled, revision=revision, token_key=key)
        for name, perms in obj["roles"]:
            _check_name(name)
            if name == ROOT or name in state.roles:
                raise ValueError(f"bad or duplicate role {name!r}")
            rows = []
            for prefix, perm in perms:
                if type(prefix) is not bytes or len(prefix) > MAX_KEY_LEN:
                    raise ValueError("bad permission prefix")
                rows.append((prefix, Permission(perm)))
            if rows != sorted(dict(rows).items()):
                raise ValueError(f"role {name!r}: permissions unsorted or duplicated")
            state.roles[name] = Role(tuple(rows))
        for name, h, roles, pw_rev in obj["users"]:
            _check_name(name)
            password = PasswordHash(*h)
            problem = check_hash(password)
            if problem is not None or name in state.users:
                raise ValueError(f"bad or duplicate user {name!r}: {problem}")
            if any(r != ROOT and r not in state.roles for r in roles):
                raise ValueError(f"user {name!r} holds a role that does not exist")
            if type(pw_rev) is not int or not 0 < pw_rev <= revision:
                raise ValueError(f"user {name!r}: bad password revision")
            state.users[name] = User(password, frozenset(roles), pw_rev)
        if enabled and (not state.is_root(ROOT) or not key):
            raise ValueError("auth enabled without root user, root role or token key")
        return state


def session_owners_from_obj(rows: Any, open_sessions: Iterable[bytes]) -> dict[bytes, str]:
    """Snapshot rows ``[client_id, user]`` of the sessions opened by a user; each must
    be an open session, listed once."""
    known = set(open_sessions)
    owners: dict[bytes, str] = {}
    for cid, user in rows:
        _check_name(user)
        if type(cid) is not bytes or len(cid) != CLIENT_ID_LEN or cid not in known:
            raise ValueError("session owner of a session that is not open")
        if cid in owners:
            raise ValueError("duplicate session owner")
        owners[cid] = user
    return owners


def _check_name(name: Any) -> None:
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"bad name: {problem}")


def _hash_obj(h: PasswordHash) -> list[Any]:
    return [h.salt, h.log_n, h.r, h.p, h.hash]


def _covered(covers: list[KeyRange], r: KeyRange) -> bool:
    """Whether merged, disjoint, sorted ``covers`` contain every key of ``r``."""
    start, end = r
    if end is not None and end <= start:
        return True  # an empty range reads nothing
    i = bisect_right(covers, start, key=lambda c: c[0]) - 1  # last cover starting <= start
    if i < 0:
        return False
    c_end = covers[i][1]
    if c_end is None:
        return True
    return c_end > start and end is not None and end <= c_end
