"""Password hashes: scrypt with a per-password salt, parameters carried with the hash.

Passwords never enter the Raft log or a snapshot: the node that receives ``user_add``
or ``user_passwd`` hashes the password (a fresh random salt, chosen by that proposer)
and proposes the :class:`PasswordHash`. Every replica stores the same hash; any node
checks a login against it. The parameters travel with the hash so they can be raised
later without invalidating the passwords already set.

The bounds below are part of the command format's gateway (kvstore/commands.py): a
hash from the log whose cost parameters are out of range is refused at decode, so a
bad entry cannot make every login spend a gigabyte.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = [
    "DEFAULT_LOG_N",
    "PasswordHash",
    "check_hash",
    "hash_password",
    "verify_password",
]

DEFAULT_LOG_N = 14  # n = 16384, r = 8: 16 MiB and ~50 ms per hash (the scrypt paper's)
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
LOG_N_RANGE = (10, 20)
R_RANGE = (1, 16)
P_RANGE = (1, 4)
MAX_PASSWORD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """``scrypt(password, salt, n=2**log_n, r, p)`` of ``len(hash)`` bytes."""

    salt: bytes
    log_n: int
    r: int
    p: int
    hash: bytes


def check_hash(h: PasswordHash) -> str | None:
    """What is wrong with ``h`` (None: nothing). Checked wherever a hash crosses a
    gateway (command decode, snapshot restore)."""
    if type(h.salt) is not bytes or not SALT_BYTES <= len(h.salt) <= 64:
        return "salt must be 16 to 64 bytes"
    for name, v, (low, high) in (
        ("log_n", h.log_n, LOG_N_RANGE),
        ("r", h.r, R_RANGE),
        ("p", h.p, P_RANGE),
    ):
        if type(v) is not int or not low <= v <= high:
            return f"scrypt {name} must be in [{low}, {high}]"
    if type(h.hash) is not bytes or not HASH_BYTES <= len(h.hash) <= 64:
        return "hash must be 32 to 64 bytes"
    return None


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int, size: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p + (1 << 20), dklen=size
    )


def hash_password(password: str, *, log_n: int = DEFAULT_LOG_N) -> PasswordHash:
    """A fresh hash of ``password`` with a random salt (the proposer's randomness)."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, log_n, DEFAULT_R, DEFAULT_P, HASH_BYTES)
    return PasswordHash(salt, log_n, DEFAULT_R, DEFAULT_P, digest)


def verify_password(password: str, h: PasswordHash) -> bool:
    """Whether ``password`` matches ``h`` (constant-time comparison)."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return False
    digest = _scrypt(password, h.salt, h.log_n, h.r, h.p, len(h.hash))
    return hmac.compare_digest(digest, h.hash)
