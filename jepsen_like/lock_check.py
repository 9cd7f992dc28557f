"""The lock checker: mutual exclusion, fencing tokens and fenced writes of a lock workload.

Theory of operation
===================

What the store promises
-----------------------
Locks are etcd-style, on leases. Acquiring lock ``L`` creates a lock key under ``L``
bound to the acquirer's lease; the *fencing token* is the store revision at which that
key was created. Revisions are store-wide and strictly increasing, and a key is never
re-created at an old revision, so tokens are unique and later holders get larger tokens.
The holder is the lock key with the smallest creation revision among those that exist;
it stops holding when its key is deleted (release, or expiry of its lease after a
stall).

A *fenced write* is a transaction: "if the lock key with creation revision ``t`` still
exists, write the resource; else fail". It therefore succeeds exactly while the holder
with token ``t`` holds the lock, and creates a revision greater than ``t``. Each holder
does a fenced ``enter`` write, maybe stalls, a fenced ``exit`` write, then releases; the
driver does the ``exit`` write only after its ``enter`` write returned ``ok``.

What the history says
---------------------
All records carry the lock's name as key; each lock is checked on its own.

- ``acquire``: ``ok`` value = the token; ``fail`` = not acquired (held by someone else, or
  a definite error); ``info`` = unknown.
- ``fenced``: invoke ``[token, phase]``; ``ok`` value ``[token, phase, revision]``: the
  write certainly happened, at that revision. ``fail``: the fence (or a definite error)
  rejected it, certainly not applied. ``info``: maybe applied, maybe not.
- ``release``: invoke = the token; ``ok``: it still held the lock and released it; ``fail``:
  it no longer held the lock; ``info``: unknown.
- ``resource``: a read after every fault healed; its ``ok`` value ``[[revision, token,
  phase], ...]`` is every fenced write the store ever applied to the lock's resource, in
  revision order (from the store's MVCC history). The last ``ok`` one per lock is used.

The checks, and why each is sound
---------------------------------
- ``duplicate-token``: two ``ok`` acquires returned the same token. Each acquire creates
  its own key at its own revision, so tokens never repeat.
- ``token-order``: acquire A returned before acquire B was invoked, both ``ok``, yet
  A's token >= B's. B's key was created after A's completed, at a later revision.
- ``overlap``: mutual exclusion in real time. Pair each ``ok`` acquire with the *next*
  release by the same process carrying the same token. If that release is ``ok``, the
  holder's key still existed when the release took effect; keys are never re-created,
  so it existed, and (being the holder when the acquire returned) stayed the holder,
  from the acquire's effect to the release's effect, which contains the interval
  [acquire returned, release invoked]. Two such intervals of one lock that overlap
  strictly therefore mean two holders at once. Touching endpoints are fine, and
  holders whose release was not ``ok`` are not used (they may have lost the lock
  early, which is legal).
- ``stale-fenced-write``: an ``ok`` fenced write with token t invoked after an ``ok``
  acquire of the same lock with a larger token had returned. The newer holder held the
  lock when its acquire returned, so the older key was gone by then, and the fence must
  have rejected the later write.
- ``fence-violation``: the final resource log, in revision order, must read as holders
  one after another: revisions strictly increasing; each entry's revision above its
  token (a fenced write needs its lock key, created at the token's revision); tokens
  non-decreasing (once a larger token has written, the older key is gone and its
  fenced writes must fail); and per token ``enter`` then at most one ``exit`` (never an
  ``exit`` without its ``enter``, never a second ``enter`` or ``exit``: each holder writes
  each phase once).
- ``missing-fenced-write``: an ``ok`` fenced op ``[t, phase, r]`` whose entry ``[r, t,
  phase]`` is not in the final log: an acknowledged write was lost (or recorded at
  another revision). Checked only for locks with a final read.
- ``phantom-fenced-write``: a log entry that no ``ok`` or ``info`` fenced op of that lock
  with that token and phase can explain: invented, or written by an op the client was
  told definitely failed.

What is not checked
-------------------
Holders whose release failed or is unknown take no part in ``overlap`` (how long they
held the lock is unknown); ``info`` acquires, fenced writes and releases constrain
nothing but the explanation of log entries; lease durations and the timing of
expiry are not checked; the resource's contents beyond the fenced-write log are not
read. A lock some operation used but no final read covered gives no basis for the
log checks, so ``valid`` is None then unless some anomaly was found.

Every check is a sort and a sweep per lock: O(n log n).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from jepsen_like.anomalies import MAX_EXAMPLES, Anomalies, Make, is_int, ref
from jepsen_like.history import Operation, Status

__all__ = [
    "LOCK_ANOMALY_KINDS",
    "MAX_EXAMPLES",
    "LockResult",
    "LockSummary",
    "check_lock",
]


LOCK_ANOMALY_KINDS: Final[tuple[str, ...]] = (
    "duplicate-token",
    "token-order",
    "overlap",
    "stale-fenced-write",
    "fence-violation",
    "missing-fenced-write",
    "phantom-fenced-write",
)

PHASES: Final = ("enter", "exit")

Entry = tuple[int, int, str]  # (revision, token, phase) of one applied fenced write
Fence = tuple[int, str]  # (token, phase) of a fenced write


# ---- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockSummary:
    """What happened to one lock."""

    lock: str
    acquires_ok: int
    acquires_failed: int
    acquires_unknown: int
    fenced_ok: int
    fenced_failed: int
    fenced_unknown: int
    releases_ok: int
    releases_failed: int
    releases_unknown: int
    holders: int  # acquire -> ok release intervals checked for overlap
    resource_read: bool  # a final resource read succeeded
    resource_entries: int  # entries in that read (0 without one)

    def to_json(self) -> dict[str, Any]:
        return {
            "lock": self.lock,
            "acquires": {
                "ok": self.acquires_ok,
                "failed": self.acquires_failed,
                "unknown": self.acquires_unknown,
            },
            "fenced": {
                "ok": self.fenced_ok,
                "failed": self.fenced_failed,
                "unknown": self.fenced_unknown,
            },
            "releases": {
                "ok": self.releases_ok,
                "failed": self.releases_failed,
                "unknown": self.releases_unknown,
            },
            "holders": self.holders,
            "resource_read": self.resource_read,
            "resource_entries": self.resource_entries,
        }


@dataclass(frozen=True, slots=True)
class LockResult:
    """The lock checker's verdict. ``valid`` is False iff some anomaly was found, None when
    nothing was found but some used lock has no final resource read (or no lock was
    used at all)."""

    valid: bool | None
    anomalies: dict[str, list[dict[str, Any]]]  # kind -> examples (at most MAX_EXAMPLES)
    anomaly_counts: dict[str, int]  # kind -> true count
    locks: tuple[LockSummary, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def acquires_ok(self) -> int:
        return sum(s.acquires_ok for s in self.locks)

    @property
    def fenced_ok(self) -> int:
        return sum(s.fenced_ok for s in self.locks)

    @property
    def holders(self) -> int:
        return sum(s.holders for s in self.locks)

    @property
    def resource_entries(self) -> int:
        return sum(s.resource_entries for s in self.locks)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "anomaly_counts": dict(self.anomaly_counts),
            "anomalies": {k: [dict(e) for e in v] for k, v in self.anomalies.items()},
            "acquires_ok": self.acquires_ok,
            "fenced_ok": self.fenced_ok,
            "holders": self.holders,
            "resource_entries": self.resource_entries,
            "locks": [s.to_json() for s in self.locks],
            "notes": list(self.notes),
        }

    def explain(self) -> str:
        verdict = {True: "valid", False: "INVALID", None: "unknown"}[self.valid]
        read = sum(s.resource_read for s in self.locks)
        lines = [
            f"lock: {verdict}: {len(self.locks)} lock(s) ({read} with a final read), "
            f"{self.acquires_ok} ok acquire(s), {self.holders} holder interval(s) compared, "
            f"{self.fenced_ok} ok fenced write(s), {self.resource_entries} applied"
        ]
        for kind, examples in self.anomalies.items():
            count = self.anomaly_counts[kind]
            lines.append(f"  {kind} x{count}: {examples[0]['explanation']}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- helpers -------------------------------------------------------------------------


def _fence(value: Hashable) -> Fence | None:
    """``[token, phase]`` (or the first two items of ``[token, phase, revision]``)."""
    if isinstance(value, tuple) and len(value) in (2, 3):
        token, phase = value[0], value[1]
        if is_int(token) and isinstance(phase, str):
            return token, phase
    return None


def _entry(value: object) -> Entry | None:
    if isinstance(value, tuple) and len(value) == 3:
        rev, token, phase = value
        if is_int(rev) and is_int(token) and isinstance(phase, str):
            return rev, token, phase
    return None


class _Lock:
    """Everything recorded about one lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acquires = {s: 0 for s in Status}
        self.fenced = {s: 0 for s in Status}
        self.releases = {s: 0 for s in Status}
        self.acquired: list[tuple[int, Operation]] = []  # ok acquires: token, op
        self.writes: list[tuple[int, str, int, Operation]] = []  # ok fenced: t, phase, r, op
        self.maybe: dict[Fence, Operation] = {}  # ok or info fenced ops, first of each
        self.failed: dict[Fence, Operation] = {}  # fail fenced ops, first of each
        self.open: dict[int, dict[int, Operation]] = {}  # process -> token -> ok acquire
        self.holds: list[tuple[int, int, Operation, Operation]] = []  # start, end, acq, rel
        self.resource: Operation | None = None
        self.log: list[Entry] = []

    def summary(self) -> LockSummary:
        return LockSummary(
            lock=self.name,
            acquires_ok=self.acquires[Status.OK],
            acquires_failed=self.acquires[Status.FAIL],
            acquires_unknown=self.acquires[Status.INFO],
            fenced_ok=self.fenced[Status.OK],
            fenced_failed=self.fenced[Status.FAIL],
            fenced_unknown=self.fenced[Status.INFO],
            releases_ok=self.releases[Status.OK],
            releases_failed=self.releases[Status.FAIL],
            releases_unknown=self.releases[Status.INFO],
            holders=len(self.holds),
            resource_read=self.resource is not None,
            resource_entries=len(self.log),
        )


def _record(lock: _Lock, op: Operation, bad: list[str]) -> None:
    """File one operation of ``lock``."""
    if op.f == "acquire":
        lock.acquires[op.status] += 1
        if op.status is Status.OK:
            if is_int(op.output):
                lock.acquired.append((op.output, op))
                lock.open.setdefault(op.process, {})[op.output] = op
            else:
                bad.append(f"acquire {ref(op)}: ok value {op.output!r} is not a token")
    elif op.f == "fenced":
        lock.fenced[op.status] += 1
        fence = _fence(op.input.value)
        if fence is None:
            bad.append(f"fenced {ref(op)}: invoke value {op.input.value!r} is not [token, phase]")
            return
        if op.status is Status.FAIL:
            lock.failed.setdefault(fence, op)
            return
        lock.maybe.setdefault(fence, op)
        if op.status is Status.OK:
            out = op.output
            if isinstance(out, tuple) and len(out) == 3 and is_int(out[2]):
                lock.writes.append((fence[0], fence[1], out[2], op))
            else:
                bad.append(f"fenced {ref(op)}: ok value {out!r} is not [token, phase, revision]")
    elif op.f == "release":
        lock.releases[op.status] += 1
        token = op.input.value
        if not is_int(token):
            bad.append(f"release {ref(op)}: invoke value {token!r} is not a token")
            return
        acquire = lock.open.get(op.process, {}).pop(token, None)
        if acquire is not None and op.status is Status.OK:
            assert is_int(acquire.ret)  # an ok acquire has a return time
            lock.holds.append((acquire.ret, op.call, acquire, op))
    elif op.f == "resource" and op.status is Status.OK:
        if not isinstance(op.output, tuple):
            bad.append(f"resource {ref(op)}: ok value {op.output!r} is not a list")
            return
        prior = lock.resource
        if prior is None or (op.ret, op.index) > (prior.ret, prior.index):
            lock.resource = op


# ---- the checker ---------------------------------------------------------------------


def check_lock(ops: Sequence[Operation]) -> LockResult:
    """Check acquires, releases and fenced writes of every lock against each other and
    against the final resource reads; see the module docstring for each anomaly kind."""
    found = Anomalies(LOCK_ANOMALY_KINDS)
    bad: list[str] = []
    notes: list[str] = []
    locks: dict[str, _Lock] = {}
    for op in ops:
        if op.f in ("acquire", "fenced", "release", "resource"):
            lock = locks.get(op.key)
            if lock is None:
                lock = locks[op.key] = _Lock(op.key)
            _record(lock, op, bad)

    unread: list[str] = []
    for lock in locks.values():
        _tokens(found, lock)
        _overlaps(found, lock)
        _stale_writes(found, lock)
        if lock.resource is None:
            unread.append(lock.name)
            continue
        assert isinstance(lock.resource.output, tuple)
        for raw in lock.resource.output:
            entry = _entry(raw)
            if entry is None:
                bad.append(f"resource {ref(lock.resource)}: malformed entry {raw!r}")
            else:
                lock.log.append(entry)
        _fence_log(found, lock)
        _missing_and_phantom(found, lock)

    if unread:
        shown = ", ".join(sorted(unread)[:5]) + (", ..." if len(unread) > 5 else "")
        notes.append(
            f"{len(unread)} lock(s) without a final resource read ({shown}): their fenced "
            "writes were not checked against the store"
        )
    if not locks:
        notes.append("no lock operations in the history")
    if bad:
        notes.append(f"{len(bad)} malformed record value(s) ignored, e.g. {bad[0]}")
    anomalies, counts = found.ordered()
    valid: bool | None = False if counts else (None if unread or not locks else True)
    return LockResult(
        valid=valid,
        anomalies=anomalies,
        anomaly_counts=counts,
        locks=tuple(lock.summary() for lock in locks.values()),
        notes=tuple(notes),
    )


def _tokens(found: Anomalies, lock: _Lock) -> None:
    """duplicate-token, and token-order by a sweep: acquires in call order, against the
    largest token among acquires that returned before that call."""
    by_token: dict[int, list[Operation]] = {}
    for token, op in lock.acquired:
        by_token.setdefault(token, []).append(op)
    for token, holders in by_token.items():
        if len(holders) > 1:
            found.add("duplicate-token", _duplicate(lock, token, holders))

    by_ret = sorted(lock.acquired, key=lambda a: (a[1].ret, a[1].index))
    j = 0
    best: tuple[int, Operation] | None = None
    for token, op in sorted(lock.acquired, key=lambda a: (a[1].call, a[1].index)):
        while j < len(by_ret) and by_ret[j][1].ret < op.call:
            if best is None or by_ret[j][0] > best[0]:
                best = by_ret[j]
            j += 1
        if best is not None and best[0] >= token:
            found.add("token-order", _order(lock, best, (token, op)))


def _overlaps(found: Anomalies, lock: _Lock) -> None:
    """Sweep the certain-holding intervals by start, against the latest end so far."""
    widest: tuple[int, int, Operation, Operation] | None = None
    for hold in sorted(lock.holds, key=lambda h: (h[0], h[1], h[2].index)):
        if widest is not None and hold[0] < widest[1]:
            found.add("overlap", _overlap(lock, widest, hold))
        if widest is None or hold[1] > widest[1]:
            widest = hold


def _stale_writes(found: Anomalies, lock: _Lock) -> None:
    """Ok fenced writes in call order, against the largest token acquired before."""
    by_ret = sorted(lock.acquired, key=lambda a: (a[1].ret, a[1].index))
    j = 0
    best: tuple[int, Operation] | None = None
    for write in sorted(lock.writes, key=lambda w: (w[3].call, w[3].index)):
        while j < len(by_ret) and by_ret[j][1].ret < write[3].call:
            if best is None or by_ret[j][0] > best[0]:
                best = by_ret[j]
            j += 1
        if best is not None and best[0] > write[0]:
            found.add("stale-fenced-write", _stale(lock, best, write))


def _fence_log(found: Anomalies, lock: _Lock) -> None:
    """The final log must read as holders one after another (module docstring)."""
    prev_rev: int | None = None
    top: tuple[int, int] | None = None  # largest token that wrote, and where
    state: dict[int, str] = {}  # token -> its last phase written
    for rev, token, phase in lock.log:
        reasons = []
        if prev_rev is not None and rev <= prev_rev:
            reasons.append(f"revision {rev} does not follow revision {prev_rev}")
        if rev <= token:
            reasons.append(f"it is not after its lock key's creation at revision {token}")
        if top is not None and token < top[0]:
            reasons.append(f"token {top[0]} had already written, at revision {top[1]}")
        last = state.get(token)
        if phase == "enter" and last is not None:
            reasons.append(f"token {token} had already written {last!r}")
        elif phase == "exit" and last is None:
            reasons.append(f"token {token} never wrote 'enter' before")
        elif phase == "exit" and last == "exit":
            reasons.append(f"token {token} had already written 'exit'")
        if phase in PHASES:
            state[token] = phase
        if top is None or token > top[0]:
            top = (token, rev)
        prev_rev = rev
        if reasons:
            found.add("fence-violation", _violation(lock, (rev, token, phase), reasons))


def _missing_and_phantom(found: Anomalies, lock: _Lock) -> None:
    logged = set(lock.log)
    at: dict[Fence, list[int]] = {}
    for rev, token, phase in lock.log:
        at.setdefault((token, phase), []).append(rev)
    for token, phase, rev, op in lock.writes:
        if (rev, token, phase) not in logged:
            found.add("missing-fenced-write", _missing(lock, (rev, token, phase), op, at))
    for entry in lock.log:
        fence = (entry[1], entry[2])
        if fence not in lock.maybe:
            found.add("phantom-fenced-write", _phantom(lock, entry, lock.failed.get(fence)))


# ---- anomaly examples ----------------------------------------------------------------


def _duplicate(lock: _Lock, token: int, holders: list[Operation]) -> Make:
    def make() -> dict[str, Any]:
        refs = "; ".join(f"({ref(op)})" for op in holders[:5])
        return {
            "lock": lock.name,
            "token": token,
            "acquires": [{"process": op.process, "line": op.line} for op in holders],
            "explanation": f"{lock.name}: {len(holders)} ok acquires returned token {token}: "
            f"{refs}",
        }

    return make


def _order(lock: _Lock, a: tuple[int, Operation], b: tuple[int, Operation]) -> Make:
    def make() -> dict[str, Any]:
        (ta, opa), (tb, opb) = a, b
        return {
            "lock": lock.name,
            "earlier": {"process": opa.process, "line": opa.line, "token": ta},
            "later": {"process": opb.process, "line": opb.line, "token": tb},
            "explanation": f"{lock.name}: acquire ({ref(opa)}) returned token {ta} before "
            f"acquire ({ref(opb)}) began, which returned token {tb}: a later holder must "
            "get a larger token",
        }

    return make


def _overlap(
    lock: _Lock,
    a: tuple[int, int, Operation, Operation],
    b: tuple[int, int, Operation, Operation],
) -> Make:
    def make() -> dict[str, Any]:
        def side(h: tuple[int, int, Operation, Operation]) -> dict[str, Any]:
            return {
                "process": h[2].process,
                "token": h[2].output,
                "acquire_line": h[2].line,
                "release_line": h[3].line,
                "held": [h[0], h[1]],
            }

        def text(h: tuple[int, int, Operation, Operation]) -> str:
            return (
                f"process {h[2].process} held token {h[2].output} from t={h[0]} (acquire, "
                f"line {h[2].line}) to t={h[1]} (release, line {h[3].line})"
            )

        return {
            "lock": lock.name,
            "holders": [side(a), side(b)],
            "explanation": f"{lock.name}: {text(a)}, and {text(b)}; both releases succeeded, "
            "so both held the lock at once",
        }

    return make


def _stale(
    lock: _Lock, newer: tuple[int, Operation], write: tuple[int, str, int, Operation]
) -> Make:
    def make() -> dict[str, Any]:
        token, phase, rev, op = write
        return {
            "lock": lock.name,
            "token": token,
            "phase": phase,
            "revision": rev,
            "process": op.process,
            "line": op.line,
            "newer_token": newer[0],
            "newer_process": newer[1].process,
            "newer_line": newer[1].line,
            "explanation": f"{lock.name}: fenced {phase!r} write with token {token} "
            f"({ref(op)}) succeeded at revision {rev}, but it began after acquire "
            f"({ref(newer[1])}) had returned the newer token {newer[0]}",
        }

    return make


def _violation(lock: _Lock, entry: Entry, reasons: list[str]) -> Make:
    def make() -> dict[str, Any]:
        rev, token, phase = entry
        by = lock.maybe.get((token, phase)) or lock.failed.get((token, phase))
        writer = f", written by fenced op ({ref(by)})" if by is not None else ""
        read = lock.resource
        assert read is not None
        return {
            "lock": lock.name,
            "entry": list(entry),
            "reasons": reasons,
            "process": read.process,
            "line": read.line,
            "explanation": f"{lock.name}: final read ({ref(read)}) shows {phase!r} by token "
            f"{token} at revision {rev}{writer}, but " + "; ".join(reasons),
        }

    return make


def _missing(lock: _Lock, entry: Entry, op: Operation, at: dict[Fence, list[int]]) -> Make:
    def make() -> dict[str, Any]:
        rev, token, phase = entry
        read = lock.resource
        assert read is not None
        elsewhere = at.get((token, phase))
        why = (
            f"it is logged at revision(s) {elsewhere} instead"
            if elsewhere
            else "no such entry is logged"
        )
        return {
            "lock": lock.name,
            "entry": list(entry),
            "process": op.process,
            "line": op.line,
            "explanation": f"{lock.name}: fenced {phase!r} write with token {token} "
            f"({ref(op)}) was acknowledged at revision {rev}, but the final read "
            f"({ref(read)}) lacks it: {why}",
        }

    return make


def _phantom(lock: _Lock, entry: Entry, failed: Operation | None) -> Make:
    def make() -> dict[str, Any]:
        rev, token, phase = entry
        read = lock.resource
        assert read is not None
        if failed is not None:
            why = f"the only such op ({ref(failed)}) failed definitely"
        else:
            why = f"no fenced {phase!r} write with token {token} was attempted"
        example: dict[str, Any] = {
            "lock": lock.name,
            "entry": list(entry),
            "explanation": f"{lock.name}: final read ({ref(read)}) shows {phase!r} by token "
            f"{token} at revision {rev}, but {why}",
        }
        if failed is not None:
            example |= {"process": failed.process, "line": failed.line}
        return example

    return make
