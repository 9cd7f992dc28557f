"""What must hold after every event of a KV simulation run (issue 9).

- **Replicas agree**: the command at each log index, and the result of applying it,
  are the same on every replica that applies it.
- **Exactly once**: every client write carries a value no other write carries; the log
  applies it (OK) at one index only. A retry applied again shows up at a second index.
- **Linearizable reads**: a read sees at least the revision of every write acknowledged,
  and every read completed, before it was invoked (real-time order), and what it
  returns is what the log wrote at that revision.
- **The lease bound**: a lease is revoked no earlier than (invoke of its last
  acknowledged keep-alive, or of its grant, + TTL - 1% of TTL for clock drift), and,
  once abandoned, no later than that invoke (for the grant: the time the log applied
  it, when later; the leader's lessor starts the lease there, and a grant can wait
  long at a node whose disk stalls) + TTL + (TTL + one election timeout) per
  leader change since + the time without a leader since (none, or none that can
  commit: kvstore/sim/cluster.py says when) + one election timeout + ``slack``.
- **The Raft loop never dies** but by a crash (kvstore/sim/node.py).
- **The NOSPACE alarm holds**: while the log has raised it (and not disarmed it since),
  no put, lease grant or putting transaction takes effect (kvstore/quota.py). A retry
  of one that took effect before the alarm is answered OK from its session's cache:
  that is no new write (its revision, or its lease id, is not new).

Times are the simulation's true time (one machine, one true clock), never a node's.
The first violation ends the run; its kind and detail name what broke.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.commands import (
    CommandError,
    DisarmAlarm,
    ExpireLease,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RaiseAlarm,
    Txn,
    decode_command,
)
from kvstore.quota import branch_puts
from kvstore.state_machine import Result, ResultCode
from raft.types import Index, NodeId

__all__ = ["DRIFT_TOLERANCE", "Checker", "LeaseRecord", "Violation"]

DRIFT_TOLERANCE = 0.01
"""A lease may end this fraction of its TTL early: the leader's clock may run fast."""


class Violation(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class LeaseRecord:
    lease: int
    ttl: float  # seconds
    start: float  # invoke of the grant or of the last acknowledged keep-alive
    changes_at: int  # leader changes counted at ``start``
    unavailable_at: float  # leaderless + stalled-leader seconds counted at ``start``
    abandoned: bool = False
    revoked_at: float | None = None
    granted_at: float = 0.0  # when the log first applied the grant


def _grows(cmd: object, r: Result) -> bool:
    """A command the NOSPACE alarm refuses, as it was applied OK."""
    if isinstance(cmd, Txn):
        return branch_puts(cmd.success if r.data[0] else cmd.failure)
    return isinstance(cmd, Put | LeaseGrant)


class Checker:
    def __init__(self, now: object, election_timeout: float, slack: float) -> None:
        self._now = now  # callable: true time
        self.election_timeout = election_timeout
        self.slack = slack
        self.violation: Violation | None = None
        self._applied: dict[Index, tuple[bytes, Result]] = {}
        self._value_rev: dict[bytes, int] = {}  # client value -> revision it was written at
        self._rev_kv: dict[int, tuple[bytes, bytes]] = {}
        self._floor: dict[bytes, int] = {}  # per key: revision every later read must see
        self.leases: dict[int, LeaseRecord] = {}
        self._grants_applied: dict[int, float] = {}  # lease -> when its grant applied
        # Revocations applied before the client heard of its grant: lease -> when.
        self._revoked_early: dict[int, float] = {}
        self.leader_changes = 0
        self.unavailable = 0.0  # seconds without a leader that can commit
        self.stats = {"applies": 0, "reads": 0, "writes": 0, "keepalives": 0, "expired": 0}
        self.stats["alarms"] = 0  # NOSPACE alarms raised by the log
        # Whether the NOSPACE alarm is raised as of the highest index applied: indexes
        # are first applied in increasing order (every replica applies in order, and a
        # committed entry is never lost), so this follows the log.
        self._nospace = False
        # The highest store revision and lease id any result has shown: a result
        # beyond them is a write taking effect now, not a cached answer.
        self._top_revision = 0
        self._top_lease = 0

    def now(self) -> float:
        return self._now()  # type: ignore[operator,no-any-return]

    def fail(self, kind: str, detail: str) -> None:
        if self.violation is None:
            self.violation = Violation(kind, f"at t={self.now():.3f}s: {detail}")
        raise self.violation

    # ---- replicas ---------------------------------------------------------------------

    def on_apply(self, node: NodeId, life: int, index: Index, command: bytes, r: Result) -> None:
        self.stats["applies"] += 1
        seen = self._applied.get(index)
        if seen is not None:  # another replica (or an earlier life) applied it first
            if seen != (command, r):
                self.fail("replicas-diverge", f"{node} (life {life}) applied another {index}")
            return
        self._applied[index] = (command, r)
        try:
            _, cmd = decode_command(command)
        except CommandError:
            return
        if r.code is ResultCode.OK:
            self._check_alarm(index, cmd, r)
        self._top_revision = max(self._top_revision, r.revision)
        if isinstance(cmd, LeaseGrant) and r.code is ResultCode.OK:
            self._top_lease = max(self._top_lease, r.data[0])
        if isinstance(cmd, Put) and r.code is ResultCode.OK:
            # A retry answered from the session's cache returns the first result, with
            # the revision of the first write; only a second write has another one.
            assert r.kv is not None
            rev = self._value_rev.setdefault(cmd.value, r.kv.mod_revision)
            if rev != r.kv.mod_revision:
                self.fail(
                    "applied-twice",
                    f"value {cmd.value!r} written at revision {rev} and again at "
                    f"{r.kv.mod_revision} (log index {index})",
                )
            self._rev_kv[rev] = (cmd.key, cmd.value)
        elif isinstance(cmd, ExpireLease | LeaseRevoke) and r.code is ResultCode.OK:
            self.lease_revoked(cmd.lease)
        elif isinstance(cmd, LeaseGrant) and r.code is ResultCode.OK:
            self._grants_applied[r.data[0]] = self.now()

    def _check_alarm(self, index: Index, cmd: object, r: Result) -> None:
        if isinstance(cmd, RaiseAlarm):
            self.stats["alarms"] += not self._nospace
            self._nospace = True
        elif isinstance(cmd, DisarmAlarm):
            self._nospace = False
        elif self._nospace and _grows(cmd, r) and self._takes_effect(cmd, r):
            what = type(cmd).__name__
            self.fail("nospace-ignored", f"{what} applied OK at index {index} under NOSPACE")

    def _takes_effect(self, cmd: object, r: Result) -> bool:
        """Whether ``r`` is a write taking effect now rather than a cached answer."""
        if isinstance(cmd, LeaseGrant):
            return bool(r.data[0] > self._top_lease)
        return r.revision > self._top_revision

    # ---- reads and writes ---------------------------------------------------------------

    def write_acked(self, key: bytes, revision: int) -> None:
        self.stats["writes"] += 1
        self._floor[key] = max(self._floor.get(key, 0), revision)

    def read_floor(self, key: bytes) -> int:
        """At a read's invoke: the revision it must see at least."""
        return self._floor.get(key, 0)

    def read_done(
        self, node: NodeId, key: bytes, floor: int, got: tuple[int, bytes] | None
    ) -> None:
        """A linearizable read invoked when ``read_floor`` was ``floor`` returned
        ``(mod_revision, value)`` or nothing."""
        self.stats["reads"] += 1
        rev = 0 if got is None else got[0]
        if rev < floor:
            self.fail(
                "stale-read",
                f"read of {key!r} at {node} saw revision {rev}, but revision {floor} "
                "was acknowledged (or read) before the read began",
            )
        if got is not None and self._rev_kv.get(rev) != (key, got[1]):
            self.fail("phantom-read", f"read of {key!r} at {node} returned {got!r}, never written")
        self._floor[key] = max(self._floor.get(key, 0), rev)

    # ---- leases -------------------------------------------------------------------------

    def lease_granted(
        self, lease: int, ttl_ms: int, invoked: float, at: tuple[int, float] = (0, 0.0)
    ) -> None:
        """A grant invoked at ``invoked``, when the counters were ``at``, answered OK."""
        rec = LeaseRecord(lease, ttl_ms / 1000, invoked, *at)
        rec.granted_at = self._grants_applied.pop(lease, invoked)
        rec.revoked_at = self._revoked_early.pop(lease, None)
        self.leases[lease] = rec
        self._check_early(rec)

    def keepalive_acked(self, lease: int, invoked: float, at: tuple[int, float]) -> None:
        """An OK keep-alive invoked at ``invoked``, when the counters were ``at``."""
        self.stats["keepalives"] += 1
        rec = self.leases[lease]
        if invoked > rec.start:
            rec.start, (rec.changes_at, rec.unavailable_at) = invoked, at
        self._check_early(rec)

    def abandoned(self, lease: int) -> None:
        self.leases[lease].abandoned = True

    def lease_revoked(self, lease: int) -> None:
        """The first replica applied the revocation of ``lease`` (now)."""
        rec = self.leases.get(lease)
        if rec is None:
            self._revoked_early.setdefault(lease, self.now())
            return
        if rec.revoked_at is not None:
            return
        rec.revoked_at = self.now()
        self.stats["expired"] += 1
        self._check_early(rec)

    def _check_early(self, rec: LeaseRecord) -> None:
        if rec.revoked_at is None:
            return
        earliest = rec.start + rec.ttl * (1 - DRIFT_TOLERANCE)
        if rec.revoked_at < earliest:
            self.fail(
                "early-expiry",
                f"lease {rec.lease} (TTL {rec.ttl}s) revoked at {rec.revoked_at:.3f}s, before "
                f"{earliest:.3f}s (its last acknowledged keep-alive was invoked at "
                f"{rec.start:.3f}s)",
            )

    def latest_revocation(self, rec: LeaseRecord) -> float:
        changes = self.leader_changes - rec.changes_at
        return (
            max(rec.start, rec.granted_at)
            + rec.ttl
            + changes * (rec.ttl + self.election_timeout)
            + (self.unavailable - rec.unavailable_at)
            + self.election_timeout
            + self.slack
        )

    def check_late(self) -> None:
        now = self.now()
        for rec in self.leases.values():
            if rec.abandoned and rec.revoked_at is None:
                bound = self.latest_revocation(rec)
                if now > bound:
                    self.fail(
                        "late-expiry",
                        f"lease {rec.lease} (TTL {rec.ttl}s, last keep-alive invoked at "
                        f"{rec.start:.3f}s) still alive at {now:.3f}s, after {bound:.3f}s",
                    )
