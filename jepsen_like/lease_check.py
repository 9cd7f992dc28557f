"""The lease checker: no lease ends early, and none outlives its bound.

History format (``f`` values of the ``lease`` workload; ``key`` is the lease's name, a
client-chosen string, one process per name):

- ``grant``: invoke value ``{"ttl_ms": T, "plan": "keep" | "abandon"}``; ok value
  ``[lease id, TTL granted in ms]``.
- ``attach``: a txn put of the key ``lease/<name>`` with the lease; invoke value the
  lease id; ok value the revision. A ``fail`` with value ``null`` (error
  ``LEASE_NOT_FOUND``) says the lease was already gone: a revocation observed.
- ``keepalive``: invoke value the lease id; ok value the TTL restarted (ms), or ``null``
  when the leader answered NOT_FOUND (a revocation observed).
- ``ttl`` (``lease_ttl``): invoke value the lease id; ok value the ms left, or ``null``
  for NOT_FOUND.
- ``read``: a linearizable get of the key; ok value the lease id the key is attached to,
  or ``null`` when the key is missing.

Times are the harness's monotonic clock (one machine, one true clock). For each lease,
with TTL the TTL granted and ET the base election timeout:

- **early-expiry**: a revocation observed -- completed at ``c`` (keepalive or ttl
  NOT_FOUND, attach LEASE_NOT_FOUND, or a read invoked after the attach was
  acknowledged finding the key gone) -- while some acknowledged renewal (the grant or
  an ok keepalive) invoked at ``i < c`` promised the lease until ``i + TTL - 1% of
  TTL``: ``c`` before that. (The leader restarts the TTL between invoke and ack, by a
  clock that may run at most 1% fast.)
- **late-expiry**: positive evidence the lease is alive -- a read finding its key, or a
  ttl answering, *invoked* at ``t`` -- after ``last + TTL + n x (TTL + ET) + leaderless
  + ET + slack``, where ``last`` is the last grant or keepalive invoke before ``t``
  (acknowledged or not: an unacknowledged one may have renewed), ``n`` the leader
  changes between ``last`` and ``t``, and ``leaderless`` the time in between with no
  leader, both from the runner's status polling (:class:`NodeTimeline`).
- **revived**: evidence the lease is alive (or a keepalive acknowledged) invoked after a
  revocation was observed: a lease id is never reused, so an ended lease cannot live.

A watch event is not evidence: a watcher behind a partition legitimately lags.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from jepsen_like.anomalies import Anomalies, is_int, ref
from jepsen_like.history import Operation, Status

__all__ = ["DRIFT_TOLERANCE", "KINDS", "LeaseResult", "NodeTimeline", "check_leases"]

DRIFT_TOLERANCE: Final = 0.01
"""A lease may end this fraction of its TTL early: the leader's clock may run fast."""
KINDS: Final = ("early-expiry", "late-expiry", "revived")
NS: Final = 1_000_000_000


class NodeTimeline:
    """Leader changes and leaderless time from the runner's status polling: samples
    ``(ns, node, state, term)``, one per change of a node's (state, term), taken every
    ``every`` s.

    - Leader changes between ``a`` and ``b``: the highest term seen by ``b + every``
      minus the highest seen by ``a``. Every leader change raises the term, so this
      counts each (failed elections too: an upper bound, which only widens the late
      bound); polling later than the change is covered by looking ``every`` past ``b``.
    - Leaderless: while no node reports itself leader in the highest term any node
      reports (a deposed leader that has not heard yet is no leader)."""

    def __init__(self, samples: Sequence[tuple[int, str, str, int | None]], every: float) -> None:
        self.every_ns = int(every * NS)
        self._samples = sorted(samples)
        self._times: list[int] = []
        self._max_term: list[int] = []  # highest term seen up to each sample
        self._spans: list[tuple[int, int]] = []  # leaderless [start, end) in ns
        top = 0
        state: dict[str, tuple[str, int | None]] = {}
        gap_from: int | None = None
        for t, node, role, term in self._samples:
            state[node] = (role, term)
            top = max(top, term or 0)
            self._times.append(t)
            self._max_term.append(top)
            cur = max((tm or 0 for _, tm in state.values()), default=0)
            led = any(r == "leader" and tm == cur for r, tm in state.values())
            if not led and gap_from is None:
                gap_from = t
            elif led and gap_from is not None:
                self._spans.append((gap_from, t))
                gap_from = None
        if gap_from is not None:
            self._spans.append((gap_from, 1 << 62))

    def term_at(self, t: int) -> int:
        i = bisect.bisect_right(self._times, t)
        return self._max_term[i - 1] if i else 0

    def changes(self, a: int, b: int) -> int:
        return max(0, self.term_at(b + self.every_ns) - self.term_at(a))

    def leaderless_ns(self, a: int, b: int) -> int:
        return sum(max(0, min(e, b) - max(s, a)) for s, e in self._spans)


@dataclass(frozen=True, slots=True)
class LeaseSummary:
    name: str
    lease: int | None
    ttl_ms: int | None
    plan: str | None
    renewals: int
    revoked_seen: bool
    alive_seen: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lease": self.lease,
            "ttl_ms": self.ttl_ms,
            "plan": self.plan,
            "renewals": self.renewals,
            "revoked_seen": self.revoked_seen,
            "alive_seen": self.alive_seen,
        }


@dataclass(frozen=True)
class LeaseResult:
    valid: bool | None
    anomalies: dict[str, list[dict[str, Any]]]
    anomaly_counts: dict[str, int]
    leases: tuple[LeaseSummary, ...]
    slack_s: float
    election_timeout_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "anomaly_counts": dict(self.anomaly_counts),
            "anomalies": {k: [dict(e) for e in v] for k, v in self.anomalies.items()},
            "slack_s": self.slack_s,
            "election_timeout_s": self.election_timeout_s,
            "leases": len(self.leases),
            "kept": sum(s.plan == "keep" for s in self.leases),
            "abandoned": sum(s.plan == "abandon" for s in self.leases),
            "revoked_seen": sum(s.revoked_seen for s in self.leases),
            "renewals": sum(s.renewals for s in self.leases),
            "notes": list(self.notes),
        }

    def explain(self) -> str:
        verdict = {True: "valid", False: "INVALID", None: "unknown"}[self.valid]
        j = self.to_json()
        lines = [
            f"lease: {verdict}: {j['leases']} lease(s) ({j['kept']} kept alive, "
            f"{j['abandoned']} abandoned), {j['renewals']} acknowledged renewal(s), "
            f"{j['revoked_seen']} revocation(s) observed"
        ]
        for kind, examples in self.anomalies.items():
            lines.append(f"  {kind} x{self.anomaly_counts[kind]}: {examples[0]['explanation']}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _s(ns: float) -> str:
    return f"{ns / NS:.3f}s"


def check_leases(
    ops: Sequence[Operation],
    *,
    election_timeout_s: float,
    timeline: NodeTimeline | None = None,
    slack_s: float = 2.0,
) -> LeaseResult:
    """Check every lease of a ``lease`` workload history (see the module docstring)."""
    timeline = timeline or NodeTimeline([], 0.5)
    et = int(election_timeout_s * NS)
    slack = int(slack_s * NS)
    found = Anomalies(KINDS)
    by_name: dict[str, list[Operation]] = {}
    for op in ops:
        if op.f in ("grant", "attach", "keepalive", "ttl", "read"):
            by_name.setdefault(op.key, []).append(op)
    summaries: list[LeaseSummary] = []
    for name, lops in sorted(by_name.items()):
        summaries.append(_check_lease(name, lops, found, timeline, et, slack))
    anomalies, counts = found.ordered()
    granted = [s for s in summaries if s.lease is not None]
    notes: list[str] = []
    valid: bool | None = not counts
    if not counts and not granted:
        valid, notes = None, ["no lease was granted: nothing was tested"]
    return LeaseResult(
        valid, anomalies, counts, tuple(summaries), slack_s, election_timeout_s, tuple(notes)
    )


def _check_lease(
    name: str,
    lops: list[Operation],
    found: Anomalies,
    timeline: NodeTimeline,
    et: int,
    slack: int,
) -> LeaseSummary:
    lops.sort(key=lambda o: o.call)
    grant = next((o for o in lops if o.f == "grant"), None)
    lease: int | None = None
    ttl_ms: int | None = None
    plan = None
    if grant is not None and isinstance(grant.input.value, tuple):
        plan = dict(grant.input.value).get("plan")
    if grant is not None and grant.status is Status.OK and isinstance(grant.output, tuple):
        lease, ttl_ms = grant.output[0], grant.output[1]
    if grant is None or lease is None or not is_int(ttl_ms):
        return LeaseSummary(name, lease, ttl_ms, plan, 0, False, 0)
    ttl = ttl_ms * NS // 1000
    renewals = [grant] + [
        o for o in lops if o.f == "keepalive" and o.status is Status.OK and o.output is not None
    ]
    invokes = sorted(
        o.call
        for o in lops
        if o.f == "grant" or (o.f == "keepalive" and o.status is not Status.FAIL)
    )
    attached = next((o.ret for o in lops if o.f == "attach" and o.status is Status.OK), None)
    revocations: list[tuple[float, Operation, str]] = []
    alive: list[tuple[int, Operation, str]] = []
    for o in lops:
        if o.status is not Status.OK and not (o.f == "attach" and o.status is Status.FAIL):
            continue
        if o.f == "attach" and o.status is Status.FAIL and o.output is None:
            revocations.append((o.ret, o, "an attach refused with LEASE_NOT_FOUND"))
        elif o.f in ("keepalive", "ttl") and o.output is None:
            revocations.append((o.ret, o, f"a {o.f} answered NOT_FOUND"))
        elif o.f == "ttl":
            alive.append((o.call, o, f"a ttl query answered ({o.output} ms left)"))
        elif o.f == "read" and attached is not None and o.call > attached:
            if o.output is None:
                revocations.append((o.ret, o, "a linearizable read found its key gone"))
            elif o.output == lease:
                alive.append((o.call, o, "a linearizable read found its key"))
    first_gone = min((c for c, _, _ in revocations), default=None)
    for c, o, what in revocations:
        before = [r for r in renewals if r.call < c]
        if not before:
            continue
        r = max(before, key=lambda x: x.call)
        earliest = r.call + ttl - ttl * DRIFT_TOLERANCE
        if c < earliest:
            found.add(
                "early-expiry",
                lambda o=o, r=r, c=c, earliest=earliest, what=what: {
                    "lease": lease,
                    "name": name,
                    "ttl_ms": ttl_ms,
                    "explanation": (
                        f"lease {lease} ({name}, TTL {ttl_ms} ms): {what} ({ref(o)}), "
                        f"completed at {_s(c)}, before {_s(earliest)}: the {r.f} "
                        f"invoked at {_s(r.call)} ({ref(r)}) was acknowledged"
                    ),
                    "lines": [r.line, o.line],
                },
            )
    for t, o, what in alive:
        last = invokes[bisect.bisect_right(invokes, t) - 1]
        n = timeline.changes(last, t)
        gap = timeline.leaderless_ns(last, t)
        bound = last + ttl + n * (ttl + et) + gap + et + slack
        if t > bound:
            found.add(
                "late-expiry",
                lambda o=o, t=t, bound=bound, last=last, n=n, gap=gap, what=what: {
                    "lease": lease,
                    "name": name,
                    "ttl_ms": ttl_ms,
                    "explanation": (
                        f"lease {lease} ({name}, TTL {ttl_ms} ms): {what} ({ref(o)}), "
                        f"invoked at {_s(t)}, after {_s(bound)}: last keep-alive or "
                        f"grant invoked at {_s(last)}, {n} leader change(s), "
                        f"{_s(gap)} without a leader since"
                    ),
                    "lines": [o.line],
                },
            )
        if first_gone is not None and t > first_gone:
            found.add(
                "revived",
                lambda o=o, what=what: {
                    "lease": lease,
                    "name": name,
                    "explanation": (
                        f"lease {lease} ({name}): {what} ({ref(o)}) after its "
                        f"revocation was observed at {_s(first_gone)}"
                    ),
                    "lines": [o.line],
                },
            )
    for r in renewals[1:]:
        if first_gone is not None and r.call > first_gone:
            found.add(
                "revived",
                lambda r=r: {
                    "lease": lease,
                    "name": name,
                    "explanation": (
                        f"lease {lease} ({name}): a keepalive invoked at {_s(r.call)} "
                        f"({ref(r)}) was acknowledged after its revocation was "
                        f"observed at {_s(first_gone)}"
                    ),
                    "lines": [r.line],
                },
            )
    return LeaseSummary(
        name, lease, ttl_ms, plan, len(renewals) - 1, first_gone is not None, len(alive)
    )
