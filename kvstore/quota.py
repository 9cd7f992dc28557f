"""The storage quota and the NOSPACE alarm (etcd's ``--quota-backend-bytes``).

Theory of operation. The quota bounds the store's logical data size: the live key-value
records and the history retained for watches, as :attr:`kvstore.mvcc.MVCCStore.data_bytes`
counts them (kept up to date by every write, O(1)). It is enforced in two steps, as
etcd does, because the limit is a per-node setting (``[store] quota_bytes``) and a
replica must never consult its own configuration while applying -- replicas configured
differently would then apply the same log to different states:

1. *At the proposer.* Before proposing a write that may grow the data, the server
   checks ``data_bytes + growth > quota`` (:func:`write_growth`: an upper bound of
   what the write adds; O(size of the request)). Past the quota it refuses the write
   (NOSPACE, definite: nothing was proposed) and proposes ``RaiseAlarm(NOSPACE,
   its id)``. Writes already in flight may still land: the quota is a soft limit, as
   etcd's is, overshot by at most the writes in flight when it was reached.
2. *At apply.* While a NOSPACE alarm is raised -- replicated state, so every replica,
   a restarted one and a new leader included, agrees -- the state machine refuses, at
   apply, every command that could grow the data (:func:`refused_under_nospace`:
   puts, cas, lease grants, and a transaction whose chosen branch puts), with the
   definite result NOSPACE. Reads, deletes (a delete always shrinks the size: its
   tombstone counts less than the record it removes), transactions that only read and
   delete, session open and close, lease revoke and keep-alive, and the alarm
   commands themselves are always admitted, so there is always a way out: delete
   keys, then disarm. A retry of a write is answered from its session's cache as
   always (dissertation §6.3): OK if it took effect before the alarm, NOSPACE if the
   alarm refused it, whatever the alarm is now.

``DisarmAlarm`` clears the alarm whatever the size is; if the data is still past a
proposer's quota, that proposer's next growing write raises it again (etcd behaves the
same). The alarms are part of the state machine snapshot (format 5's ``"alarms"``
section, :func:`alarms_section` / :func:`decode_alarms_section`).
"""

from __future__ import annotations

from typing import Any

from kvstore.commands import (
    ALARM_MEMBER_MAX,
    AlarmType,
    Cas,
    Command,
    LeaseGrant,
    Put,
    PutOp,
    Txn,
    TxnOp,
)
from kvstore.mvcc import kv_bytes

__all__ = [
    "DEFAULT_QUOTA_BYTES",
    "Alarm",
    "alarms_section",
    "branch_puts",
    "decode_alarms_section",
    "refused_under_nospace",
    "write_growth",
]

DEFAULT_QUOTA_BYTES = 2 << 30
"""2 GiB, etcd's default for ``--quota-backend-bytes``."""

Alarm = tuple[AlarmType, bytes]
"""A raised alarm: its type and the member that raised it."""


def branch_puts(ops: tuple[TxnOp, ...]) -> bool:
    """Whether a transaction branch writes a value (and so may grow the data)."""
    return any(isinstance(op, PutOp) for op in ops)


def refused_under_nospace(cmd: Command) -> bool:
    """Whether a NOSPACE alarm refuses ``cmd`` outright, at apply. A Txn is judged by
    the branch its compares choose (:func:`branch_puts`), so it is not decided here."""
    return isinstance(cmd, (Put, Cas, LeaseGrant))


def write_growth(cmd: Command) -> int:
    """An upper bound of the bytes ``cmd`` may add to the data size: each put adds a
    record and an event (replacing a record only makes that less). 0 for a command
    that cannot grow it (a delete, a lease revoke, a session command...)."""
    match cmd:
        case Put(key, value) | Cas(key, _, _, value):
            return 2 * kv_bytes(len(key), len(value))
        case Txn(_, success, failure):
            return max(_puts_bytes(success), _puts_bytes(failure))
    return 0


def _puts_bytes(ops: tuple[TxnOp, ...]) -> int:
    return sum(2 * kv_bytes(len(op.key), len(op.value)) for op in ops if isinstance(op, PutOp))


# ---- snapshot section -------------------------------------------------------------------


def alarms_section(alarms: frozenset[Alarm]) -> list[list[Any]]:
    """The ``"alarms"`` snapshot section: ``[[type, member], ...]`` sorted, so equal
    states give equal bytes."""
    return [[int(kind), member] for kind, member in sorted(alarms)]


def decode_alarms_section(obj: Any) -> frozenset[Alarm]:
    """Inverse of :func:`alarms_section`; ValueError on anything else (an unknown
    alarm type, a member id that is not 1-255 bytes, a duplicate)."""
    if type(obj) is not tuple:
        raise ValueError("alarms section must be an array")
    known = {int(a) for a in AlarmType}
    out: set[Alarm] = set()
    for row in obj:
        if type(row) is not tuple or len(row) != 2:
            raise ValueError("alarm must be [type, member]")
        kind, member = row
        if type(kind) is not int or kind not in known:
            raise ValueError(f"unknown alarm type {kind!r}")
        if type(member) is not bytes or not 1 <= len(member) <= ALARM_MEMBER_MAX:
            raise ValueError("alarm member must be 1-255 bytes")
        alarm = (AlarmType(kind), member)
        if alarm in out:
            raise ValueError("duplicate alarm")
        out.add(alarm)
    return frozenset(out)
