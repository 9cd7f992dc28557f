"""The watch checker: do watchers see every revision, once, in order, and all the same?

Theory of operation
===================

What the store promises
-----------------------
The store keeps etcd-style MVCC revisions: every successful write advances the store-wide
revision by exactly one (a multi-key transaction is one revision carrying several
events). A watch from revision ``R`` streams the events of every revision ``>= R`` in
revision order, each revision's events together, and refuses (``COMPACTED``) a start
that history no longer reaches. So every watcher of a prefix sees one and the same event
list for each revision, in the same order, whatever reconnects it went through.

The watch workload writes only under its own prefix, on a dedicated cluster, and its
watchers watch that prefix. Hence the premise every check below leans on: **every
revision from 1 to the final head revision produces at least one event that every
watcher must see.** A revision a watcher skipped is therefore always a lost event, never
a revision that happened elsewhere.

What the history says
---------------------
- ``put`` (key = the store key): invoke ``v`` (unique per key). ``ok`` completes with
  ``[v, revision]``: the put certainly created that revision. ``fail``: it certainly did
  not happen. ``info``: it may have happened, at any revision, or never.
- ``watch`` (key = the watcher's name): one operation per stream *segment*; a logical
  watcher reconnects many times, possibly from different processes, its segments in call
  order. Invoke ``{"from": R}``. ``ok`` completes with ``{"from", "events", "end"}``,
  events ``[revision, "put"|"delete", key, value_or_null]`` in delivery order; ``fail``
  means the store refused the start (``COMPACTED ...`` or another error) and delivered
  nothing; ``info`` means the events are not known. The driver resumes each segment from
  the events it *recorded*, never from events of a segment it did not record, so an
  ``info`` segment delivered nothing the watcher used.
- ``head`` (key ``""``): an ``ok`` value is the store's revision read after every fault
  healed; the largest is used.
- ``delete`` (key = the store key), should a driver issue any: any non-``fail`` attempt
  lets a delete event of that key be explained. Other functions are ignored.

Event values written as decimal strings are compared as the integers they spell, so a
driver may record either.

The checks, and why each is sound
---------------------------------
Each watcher's segments are replayed in order. The watcher's *start* is the ``from`` of
its first accepted (``ok``) segment; its *received-up-to* revision starts at start - 1
and rises to the highest revision any of its segments delivered.

- ``resume-gap``: a later ``ok`` segment starts beyond received-up-to + 1. The store
  delivers exactly the revisions from the start asked for, so the revisions in between
  were never offered to the watcher (a driver that resumes past what it saw, or a store
  that reports a later resume point than it delivered).
- ``out-of-order``: within a segment a revision is lower than the one before it (which is
  also how a revision whose events are not contiguous shows: a later revision came
  between them), or lower than the segment's ``from``; or a segment re-delivers a
  revision this watcher already received with a different event list. Identical
  re-deliveries (a resume from an earlier revision) are fine and de-duplicated.
- ``stream-gap``: within one segment from ``R``, the first revision delivered is not
  ``R``, or a revision is followed by one more than one higher. By the premise, the
  stream skipped revisions that exist, even if another segment delivered them.
- ``revision-gap``: in the watcher's merged stream, a revision between its start and the
  last revision it received is missing. By the premise that revision has events this
  watcher was owed.
- ``divergence``: two watchers received different event lists for the same revision
  (compared as multisets: the order of events within one revision is not checked).
- ``missing-write``: an ``ok`` put ``[v, r]`` and a watcher whose merged stream spans
  ``r`` (start <= r <= last) without the event ``put key v`` at ``r``. The put created
  ``r``, so the event is part of ``r`` for every watcher.
- ``phantom-event``: a put event whose (key, value) no ``ok`` or ``info`` put attempted,
  or a delete event of a key no delete was attempted on: nobody wrote it.
- ``failed-write-visible``: a put event matching only ``fail`` puts: a write the client
  was told certainly did not happen, happened.
- ``duplicate-event``: one (key, value) put delivered at two different revisions (values
  are unique per key, so the write was applied twice), or twice within one revision (a
  transaction never writes a key twice).
- ``lagging``: after the final head read, a watcher's received-up-to is below the head:
  it never caught up although nothing was in its way. A watcher whose last segment was
  refused as ``COMPACTED`` is exempt (noted): compaction legitimately ends a watch; but
  what it never saw was never checked, so the verdict is then unknown, not valid.
- ``stale-head``: an ``ok`` put that completed before the head read was invoked created a
  revision above the head read: the head read returned a revision older than one already
  acknowledged.

What is not checked
-------------------
When each event was delivered relative to real time (watch latency); the order of events
within one revision; revisions no watcher spans; the values of ``info`` puts beyond their
existence; delete events beyond their key (the workload deletes nothing). Without an
``ok`` head read nobody can tell whether watchers caught up, so ``valid`` is None unless
some other anomaly was found; likewise with no accepted watch segment at all.

Everything is one pass over the operations plus a sort of each watcher's revisions:
O(n log n) in the events delivered, times the number of watchers for ``missing-write``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from jepsen_like.anomalies import MAX_EXAMPLES, Anomalies, is_int, ref
from jepsen_like.history import Operation, Status

__all__ = [
    "MAX_EXAMPLES",
    "WATCH_ANOMALY_KINDS",
    "WatchResult",
    "WatcherCoverage",
    "check_watch",
]


WATCH_ANOMALY_KINDS: Final[tuple[str, ...]] = (
    "resume-gap",
    "out-of-order",
    "stream-gap",
    "revision-gap",
    "divergence",
    "missing-write",
    "phantom-event",
    "failed-write-visible",
    "duplicate-event",
    "lagging",
    "stale-head",
)

Event = tuple[str, str, Hashable]  # (type, key, value) of one event; its revision aside
Group = tuple[Event, ...]  # the events of one revision, canonically ordered
PutId = tuple[str, Hashable]  # (key, value) of a put


# ---- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatcherCoverage:
    """What one logical watcher received, over all its segments."""

    name: str
    segments: int  # watch operations, whatever their outcome
    ok_segments: int
    failed_segments: int
    unknown_segments: int
    events: int  # events delivered, re-deliveries included
    revisions: int  # distinct revisions received
    start: int | None  # ``from`` of its first accepted segment
    first: int | None  # lowest revision received
    last: int | None  # highest revision received
    caught_up: bool | None  # received everything up to the head (None: no head read)
    compacted: bool  # its last segment was refused as compacted

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "segments": self.segments,
            "ok_segments": self.ok_segments,
            "failed_segments": self.failed_segments,
            "unknown_segments": self.unknown_segments,
            "events": self.events,
            "revisions": self.revisions,
            "start": self.start,
            "first": self.first,
            "last": self.last,
            "caught_up": self.caught_up,
            "compacted": self.compacted,
        }


@dataclass(frozen=True, slots=True)
class WatchResult:
    """The watch checker's verdict. ``valid`` is False iff some anomaly was found, None
    when nothing was found but the run gives no basis to judge (no head read, or no
    accepted watch segment)."""

    valid: bool | None
    anomalies: dict[str, list[dict[str, Any]]]  # kind -> examples (at most MAX_EXAMPLES)
    anomaly_counts: dict[str, int]  # kind -> true count
    puts_attempted: int
    puts_ok: int
    puts_failed: int
    puts_unknown: int
    head: int | None  # the largest ok head read
    revisions_observed: int  # distinct revisions any watcher received
    events_delivered: int  # over all watchers and segments
    watchers: tuple[WatcherCoverage, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "anomaly_counts": dict(self.anomaly_counts),
            "anomalies": {k: [dict(e) for e in v] for k, v in self.anomalies.items()},
            "puts": {
                "attempted": self.puts_attempted,
                "ok": self.puts_ok,
                "failed": self.puts_failed,
                "unknown": self.puts_unknown,
            },
            "head": self.head,
            "revisions_observed": self.revisions_observed,
            "events_delivered": self.events_delivered,
            "watchers": [w.to_json() for w in self.watchers],
            "notes": list(self.notes),
        }

    def explain(self) -> str:
        verdict = {True: "valid", False: "INVALID", None: "unknown"}[self.valid]
        head = "no head read" if self.head is None else f"head revision {self.head}"
        lines = [
            f"watch: {verdict}: {len(self.watchers)} watcher(s), {self.revisions_observed} "
            f"revision(s) observed, {head}; puts {self.puts_ok} ok, {self.puts_unknown} "
            f"unknown, {self.puts_failed} failed"
        ]
        for kind, examples in self.anomalies.items():
            count = self.anomaly_counts[kind]
            lines.append(f"  {kind} x{count}: {examples[0]['explanation']}")
        for w in self.watchers:
            span = "nothing received" if w.last is None else f"revisions {w.first}..{w.last}"
            lines.append(
                f"  watcher {w.name}: {span} in {w.ok_segments}/{w.segments} ok segment(s), "
                f"{w.events} event(s)"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- shared helpers ------------------------------------------------------------------


def _as_dict(value: object) -> dict[str, Any] | None:
    """A frozen JSON object (sorted (key, value) pairs) as a dict; None if it is not one."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, tuple):
        return None
    if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value):
        return None
    return dict(value)


def _norm(value: Hashable) -> Hashable:
    """A value as compared: decimal strings as the integers they spell."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _event_json(rev: int, ev: Event) -> list[Any]:
    return [rev, ev[0], ev[1], _jsonable(ev[2])]


def _fmt_event(ev: Event) -> str:
    return f"put {ev[1]}={ev[2]!r}" if ev[0] == "put" else f"{ev[0]} {ev[1]}"


def _fmt_group(group: Iterable[Event], limit: int = 4) -> str:
    items = list(group)
    text = ", ".join(_fmt_event(e) for e in items[:limit])
    more = f", ... ({len(items)} events)" if len(items) > limit else ""
    return f"[{text}{more}]"


def _canon(events: list[Event]) -> Group:
    if len(events) == 1:
        return (events[0],)
    return tuple(sorted(events, key=repr))


def _parse_event(raw: object) -> tuple[int, Event] | None:
    if not isinstance(raw, tuple) or len(raw) != 4:
        return None
    rev, typ, key, value = raw
    if not is_int(rev) or not isinstance(typ, str) or not isinstance(key, str):
        return None
    typ = typ.lower()
    if typ == "put":
        return rev, ("put", key, _norm(value))
    if typ == "delete":
        return rev, ("delete", key, None)
    return None


# ---- per-watcher replay --------------------------------------------------------------


class _Watcher:
    __slots__ = (
        "compacted",
        "events",
        "failed",
        "merged",
        "name",
        "ok",
        "segments",
        "source",
        "start",
        "started",
        "unknown",
        "upto",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.segments = self.ok = self.failed = self.unknown = self.events = 0
        self.started = False
        self.start: int | None = None
        self.upto: int | None = None  # highest revision received, or start - 1
        self.merged: dict[int, Group] = {}  # revision -> its events, as first received
        self.source: dict[int, Operation] = {}  # revision -> segment that first delivered it
        self.compacted = False

    def span(self) -> tuple[int, int] | None:
        """(start, last): the revisions this watcher's merged stream answers for."""
        if not self.merged:
            return None
        first, last = min(self.merged), max(self.merged)
        lo = first if self.start is None else min(self.start, first)
        return lo, last


def _replay(w: _Watcher, op: Operation, found: Anomalies, bad: list[str]) -> None:
    """One segment of watcher ``w``."""
    w.segments += 1
    w.compacted = False
    if op.status is Status.INFO:
        w.unknown += 1
        return
    if op.status is Status.FAIL:
        w.failed += 1
        out = _as_dict(op.output)
        error = str(out.get("error", "")) if out is not None else ""
        w.compacted = "compacted" in error.lower()
        return
    w.ok += 1
    inp, out = _as_dict(op.input.value), _as_dict(op.output)
    asked = inp.get("from") if inp is not None else None
    if not is_int(asked) and out is not None:
        asked = out.get("from")
    events = out.get("events") if out is not None else None
    if not is_int(asked) or not isinstance(events, tuple):
        bad.append(f"watch {ref(op)}: ok segment without an integer from and an events list")
        return
    frm = asked
    if not w.started:
        w.started = True
        if frm >= 1:
            w.start, w.upto = frm, frm - 1
    elif w.upto is not None and frm > w.upto + 1:
        found.add("resume-gap", _resume_gap(w, op, frm, w.upto))

    seg: dict[int, list[Event]] = {}
    prev: int | None = None
    for raw in events:
        parsed = _parse_event(raw)
        if parsed is None:
            bad.append(f"watch {ref(op)}: malformed event {raw!r}")
            continue
        rev, ev = parsed
        w.events += 1
        if prev is not None and rev < prev:
            found.add("out-of-order", _backwards(w, op, frm, rev, prev))
        elif rev < frm:
            found.add("out-of-order", _before_start(w, op, frm, rev))
        elif prev is None and frm >= 1 and rev > frm:
            found.add("stream-gap", _skipped(w, op, frm, frm, rev))
        elif prev is not None and rev > prev + 1:
            found.add("stream-gap", _skipped(w, op, frm, prev + 1, rev))
        prev = rev
        seg.setdefault(rev, []).append(ev)

    for rev, evs in seg.items():
        group = _canon(evs)
        old = w.merged.get(rev)
        if old is None:
            w.merged[rev] = group
            w.source[rev] = op
        elif old != group:
            found.add("out-of-order", _redelivered(w, op, rev, group, old))
        if w.upto is None or rev > w.upto:
            w.upto = rev


def _resume_gap(w: _Watcher, op: Operation, frm: int, upto: int) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        return {
            "watcher": w.name,
            "from": frm,
            "received_upto": upto,
            "skipped": [upto + 1, frm - 1],
            "process": op.process,
            "line": op.line,
            "explanation": f"watcher {w.name}: segment ({ref(op)}) resumes from revision "
            f"{frm} although the watcher had received only up to revision {upto}: "
            f"revisions {upto + 1}..{frm - 1} skipped",
        }

    return make


def _backwards(
    w: _Watcher, op: Operation, frm: int, rev: int, before: int
) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        return {
            "watcher": w.name,
            "revision": rev,
            "after_revision": before,
            "process": op.process,
            "line": op.line,
            "explanation": f"watcher {w.name}: segment from {frm} ({ref(op)}) delivers "
            f"revision {rev} after revision {before}",
        }

    return make


def _skipped(
    w: _Watcher, op: Operation, frm: int, lo: int, rev: int
) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        where = "first" if lo == frm else f"right after revision {lo - 1}"
        return {
            "watcher": w.name,
            "from": frm,
            "skipped": [lo, rev - 1],
            "process": op.process,
            "line": op.line,
            "explanation": f"watcher {w.name}: segment from {frm} ({ref(op)}) delivers "
            f"revision {rev} {where}: its stream skipped revision(s) {lo}..{rev - 1}",
        }

    return make


def _before_start(w: _Watcher, op: Operation, frm: int, rev: int) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        return {
            "watcher": w.name,
            "revision": rev,
            "from": frm,
            "process": op.process,
            "line": op.line,
            "explanation": f"watcher {w.name}: segment from {frm} ({ref(op)}) delivers "
            f"revision {rev}, before its start",
        }

    return make


def _redelivered(
    w: _Watcher, op: Operation, rev: int, group: Group, old: Group
) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        first_op = w.source[rev]
        return {
            "watcher": w.name,
            "revision": rev,
            "events": [_event_json(rev, e) for e in group],
            "earlier_events": [_event_json(rev, e) for e in old],
            "process": op.process,
            "line": op.line,
            "earlier_process": first_op.process,
            "earlier_line": first_op.line,
            "explanation": f"watcher {w.name}: segment ({ref(op)}) re-delivers revision "
            f"{rev} as {_fmt_group(group)} but segment ({ref(first_op)}) had delivered it "
            f"as {_fmt_group(old)}",
        }

    return make


# ---- the checker ---------------------------------------------------------------------


def check_watch(ops: Sequence[Operation]) -> WatchResult:
    """Check watch streams against the puts and the final head read; see the module
    docstring for what each anomaly kind means and why it is one."""
    found = Anomalies(WATCH_ANOMALY_KINDS)
    bad: list[str] = []
    notes: list[str] = []

    ok_or_info: set[PutId] = set()
    failed: dict[PutId, Operation] = {}
    ok_puts: list[tuple[str, Hashable, int, Operation]] = []  # key, value, revision, op
    puts = {Status.OK: 0, Status.FAIL: 0, Status.INFO: 0}
    deletes: set[str] = set()
    watchers: dict[str, _Watcher] = {}
    head: int | None = None
    head_op: Operation | None = None

    for op in ops:
        if op.f == "put":
            puts[op.status] += 1
            pid: PutId = (op.key, _norm(op.input.value))
            if op.status is Status.FAIL:
                failed.setdefault(pid, op)
                continue
            ok_or_info.add(pid)
            if op.status is Status.OK:
                out = op.output
                if isinstance(out, tuple) and len(out) == 2 and is_int(out[1]):
                    ok_puts.append((pid[0], pid[1], out[1], op))
                else:
                    bad.append(f"put {ref(op)}: ok value {out!r} is not [value, revision]")
        elif op.f == "watch":
            w = watchers.get(op.key)
            if w is None:
                w = watchers[op.key] = _Watcher(op.key)
            _replay(w, op, found, bad)
        elif op.f == "head" and op.status is Status.OK:
            value = op.output
            if is_int(value):
                if head is None or value > head:
                    head, head_op = value, op
            else:
                bad.append(f"head {ref(op)}: ok value {op.output!r} is not a revision")
        elif op.f == "delete" and op.status is not Status.FAIL:
            deletes.add(op.key)

    # Gaps inside each watcher's merged stream.
    for w in watchers.values():
        span = w.span()
        if span is None:
            continue
        expected = span[0]
        for rev in sorted(w.merged):
            if rev > expected:
                _gap(found, w, expected, rev)
            expected = rev + 1

    # Each revision's versions over watchers; each put event's revisions.
    versions: dict[int, dict[Group, list[str]]] = {}
    for w in watchers.values():
        for rev, group in w.merged.items():
            versions.setdefault(rev, {}).setdefault(group, []).append(w.name)
    put_revs: dict[PutId, dict[int, list[str]]] = {}
    doubled: dict[PutId, tuple[int, list[str]]] = {}  # delivered twice within one revision
    delete_revs: dict[str, dict[int, list[str]]] = {}
    for rev, by_group in versions.items():
        if len(by_group) > 1:
            _divergence(found, rev, by_group)
        for group, names in by_group.items():
            for ev in group:
                if ev[0] == "put":
                    pid = (ev[1], ev[2])
                    put_revs.setdefault(pid, {}).setdefault(rev, []).extend(names)
                else:
                    delete_revs.setdefault(ev[1], {}).setdefault(rev, []).extend(names)
            if len(group) > 1 and len(set(group)) < len(group):
                seen: set[Event] = set()
                for ev in group:
                    if ev in seen and ev[0] == "put":
                        doubled.setdefault((ev[1], ev[2]), (rev, names))
                    seen.add(ev)

    for pid, revs in put_revs.items():
        if len(revs) > 1 or pid in doubled:
            _duplicate(found, pid, revs, doubled.get(pid))
        if pid in ok_or_info:
            continue
        if pid in failed:
            _unexplained(found, "failed-write-visible", pid, revs, failed[pid])
        else:
            _unexplained(found, "phantom-event", pid, revs, None)
    for key, revs in delete_revs.items():
        if key not in deletes:
            _phantom_delete(found, key, revs)

    # Acknowledged puts every spanning watcher must have seen, at their revision.
    spans = [(w, s) for w in watchers.values() if (s := w.span()) is not None]
    index: dict[str, dict[PutId, int]] = {}  # watcher -> put -> first revision received at
    for key, value, rev, op in ok_puts:
        missed: list[tuple[_Watcher, int | None]] = []
        for w, (lo, hi) in spans:
            if not lo <= rev <= hi:
                continue
            if ("put", key, value) in w.merged.get(rev, ()):
                continue
            if w.name not in index:
                index[w.name] = _put_index(w)
            missed.append((w, index[w.name].get((key, value))))
        if missed:
            _missing(found, key, value, rev, op, missed)

    caught: dict[str, bool | None] = {}
    unverified = False  # a watcher compaction stopped short of the head
    if head is not None and head_op is not None:
        for w in watchers.values():
            upto = w.upto if w.upto is not None else 0
            caught[w.name] = upto >= head
            if upto >= head:
                continue
            if w.compacted:
                unverified = True
                notes.append(
                    f"watcher {w.name} was refused as compacted on its last segment; it is "
                    f"not required to reach head {head} (received up to {upto})"
                )
                continue
            _lagging(found, w, upto, head, head_op)
        for key, value, rev, op in ok_puts:
            if rev > head and op.ret < head_op.call:
                _stale_head(found, key, value, rev, op, head, head_op)

    accepted = any(w.ok for w in watchers.values())
    if head is None:
        notes.append("no head read succeeded: whether watchers caught up is unknown")
    if not accepted:
        notes.append("no watch segment was accepted: nothing was observed")
    if bad:
        notes.append(f"{len(bad)} malformed record value(s) ignored, e.g. {bad[0]}")
    anomalies, counts = found.ordered()
    unknown = head is None or not accepted or unverified
    valid: bool | None = False if counts else (None if unknown else True)
    coverage = tuple(
        WatcherCoverage(
            name=w.name,
            segments=w.segments,
            ok_segments=w.ok,
            failed_segments=w.failed,
            unknown_segments=w.unknown,
            events=w.events,
            revisions=len(w.merged),
            start=w.start,
            first=min(w.merged) if w.merged else None,
            last=max(w.merged) if w.merged else None,
            caught_up=caught.get(w.name),
            compacted=w.compacted,
        )
        for w in watchers.values()
    )
    return WatchResult(
        valid=valid,
        anomalies=anomalies,
        anomaly_counts=counts,
        puts_attempted=sum(puts.values()),
        puts_ok=puts[Status.OK],
        puts_failed=puts[Status.FAIL],
        puts_unknown=puts[Status.INFO],
        head=head,
        revisions_observed=len(versions),
        events_delivered=sum(w.events for w in watchers.values()),
        watchers=coverage,
        notes=tuple(notes),
    )


def _put_index(w: _Watcher) -> dict[PutId, int]:
    index: dict[PutId, int] = {}
    for rev in sorted(w.merged):
        for ev in w.merged[rev]:
            if ev[0] == "put":
                index.setdefault((ev[1], ev[2]), rev)
    return index


# ---- anomaly examples ----------------------------------------------------------------


def _gap(found: Anomalies, w: _Watcher, lo: int, next_rev: int) -> None:
    def make() -> dict[str, Any]:
        before, after = w.source.get(lo - 1), w.source.get(next_rev)
        if before is not None:
            context = f"revision {lo - 1} came in segment ({ref(before)})"
        else:
            context = f"it started from revision {w.start}"
        if after is not None:
            context += f", revision {next_rev} in segment ({ref(after)})"
        return {
            "watcher": w.name,
            "missing": [lo, next_rev - 1],
            "missing_count": next_rev - lo,
            "explanation": f"watcher {w.name} never received revision(s) {lo}..{next_rev - 1} "
            f"({context})",
        }

    found.add("revision-gap", make)


def _divergence(found: Anomalies, rev: int, by_group: dict[Group, list[str]]) -> None:
    def make() -> dict[str, Any]:
        parts = [f"{', '.join(names)} saw {_fmt_group(g)}" for g, names in by_group.items()]
        return {
            "revision": rev,
            "versions": [
                {"watchers": list(names), "events": [_event_json(rev, e) for e in g]}
                for g, names in by_group.items()
            ],
            "explanation": f"revision {rev}: watcher(s) " + "; but ".join(parts),
        }

    found.add("divergence", make)


def _where(revs: dict[int, list[str]]) -> str:
    items = sorted(revs.items())
    text = "; ".join(f"revision {r} (watcher {', '.join(sorted(set(n)))})" for r, n in items[:5])
    return text + (f"; ... ({len(items)} revisions)" if len(items) > 5 else "")


def _duplicate(
    found: Anomalies,
    pid: PutId,
    revs: dict[int, list[str]],
    doubled: tuple[int, list[str]] | None,
) -> None:
    def make() -> dict[str, Any]:
        key, value = pid
        if len(revs) > 1:
            text = f"put {key}={value!r} was delivered at {len(revs)} revisions: {_where(revs)}"
        else:
            assert doubled is not None
            text = (
                f"put {key}={value!r} was delivered twice within revision {doubled[0]} "
                f"(watcher {', '.join(doubled[1])})"
            )
        return {
            "key": key,
            "value": _jsonable(value),
            "revisions": sorted(revs),
            "explanation": text + ": the write was applied more than once",
        }

    found.add("duplicate-event", make)


def _unexplained(
    found: Anomalies,
    kind: str,
    pid: PutId,
    revs: dict[int, list[str]],
    failed_op: Operation | None,
) -> None:
    def make() -> dict[str, Any]:
        key, value = pid
        if failed_op is not None:
            why = f"the only put of it ({ref(failed_op)}) failed definitely"
        else:
            why = "no put of that value to that key was attempted"
        example: dict[str, Any] = {
            "key": key,
            "value": _jsonable(value),
            "revisions": sorted(revs),
            "explanation": f"event put {key}={value!r} at {_where(revs)}: {why}",
        }
        if failed_op is not None:
            example |= {"process": failed_op.process, "line": failed_op.line}
        return example

    found.add(kind, make)


def _phantom_delete(found: Anomalies, key: str, revs: dict[int, list[str]]) -> None:
    def make() -> dict[str, Any]:
        return {
            "key": key,
            "type": "delete",
            "revisions": sorted(revs),
            "explanation": f"event delete {key} at {_where(revs)}: no delete of that key "
            "was attempted",
        }

    found.add("phantom-event", make)


def _missing(
    found: Anomalies,
    key: str,
    value: Hashable,
    rev: int,
    op: Operation,
    missed: list[tuple[_Watcher, int | None]],
) -> None:
    def make() -> dict[str, Any]:
        parts = []
        for w, elsewhere in missed[:5]:
            if elsewhere is not None:
                why = f"has it at revision {elsewhere} instead"
            elif (group := w.merged.get(rev)) is not None:
                why = f"has {_fmt_group(group)} at revision {rev}"
            else:
                why = f"never received revision {rev}"
            parts.append(f"watcher {w.name} {why}")
        more = f"; ... ({len(missed)} watchers)" if len(missed) > 5 else ""
        return {
            "key": key,
            "value": _jsonable(value),
            "revision": rev,
            "watchers": [w.name for w, _ in missed],
            "process": op.process,
            "line": op.line,
            "explanation": f"put {key}={value!r} ({ref(op)}) was acknowledged at revision "
            f"{rev}, but " + "; ".join(parts) + more,
        }

    found.add("missing-write", make)


def _lagging(found: Anomalies, w: _Watcher, upto: int, head: int, head_op: Operation) -> None:
    def make() -> dict[str, Any]:
        return {
            "watcher": w.name,
            "received_upto": upto,
            "head": head,
            "process": head_op.process,
            "line": head_op.line,
            "explanation": f"watcher {w.name} received "
            + ("nothing" if w.upto is None else f"revisions only up to {upto}")
            + f", but the final head read ({ref(head_op)}) says revision {head}: it never "
            "caught up",
        }

    found.add("lagging", make)


def _stale_head(
    found: Anomalies,
    key: str,
    value: Hashable,
    rev: int,
    op: Operation,
    head: int,
    head_op: Operation,
) -> None:
    def make() -> dict[str, Any]:
        return {
            "key": key,
            "value": _jsonable(value),
            "revision": rev,
            "head": head,
            "process": op.process,
            "line": op.line,
            "explanation": f"put {key}={value!r} ({ref(op)}) was acknowledged at revision "
            f"{rev} before the head read ({ref(head_op)}) began, yet that read returned "
            f"{head}",
        }

    found.add("stale-head", make)
