"""An Elle-style checker for list-append transactions, at strict serializability.

Theory of operation
-------------------
The workload runs transactions of micro-ops on lists: ``("append", k, e)`` appends a
unique element ``e`` to the list at key ``k``; ``("r", k, None)`` reads the whole list,
and the ok completion fills in what was read. Because every element is unique and a list
only ever grows at its end, one read does not just reveal *a* value: it reveals the
whole history of the key up to that point, in order. That is the idea of Elle (Kingsbury
& Alvaro, VLDB 2020): from the observations alone, recover the order in which versions
were installed, derive the dependencies between transactions, and look for cycles. No
search over interleavings is needed, so the check is (near) linear in the history.

Which transactions count. ``ok`` transactions happened. ``fail`` ones certainly did not.
``info`` ones may or may not have: one whose element some read observed certainly
happened (nothing else could have put it there), so it joins the graph, with no reads
of its own (their results are unknown) and no completion time; one never observed is
treated as not having happened, which is always a possible explanation.

Version order. Under serializability every read of ``k`` is a prefix of the key's final
list, so all reads of ``k`` must form a chain under "is a prefix of"; the longest read is
then the best known version order of ``k``. Two reads where neither is a prefix of the
other are an ``incompatible-order`` anomaly, and such a key yields no ww or rw edges (its
order is unknown). wr edges do not depend on the order, so they are kept for every key.

Edges (Adya's dependencies; each one means "must come before" in any serial order):

- ``ww``: T1 appended the element immediately before T2's in a key's version order, so
  T1's write was installed first.
- ``wr``: T2 read a list whose last element T1 appended: T2 observed T1's write.
- ``rw`` (anti-dependency): T1 read ``k`` ending at ``x`` (or empty) and T2 appended the
  element right after ``x``: T1 did not see T2's write, so T1 came first. An append
  nobody ever read, by a transaction that certainly happened (ok, or info but observed
  through another key), has no known position, yet it was installed after every read
  lacking it: it gets rw edges from the readers of the longest version of its key (all
  other readers of the key reach those through rw, ww and wr edges).
- ``realtime``: T1 completed before T2 was invoked. Strict serializability demands that
  the serial order respect real time, which is what turns a stale read into an anomaly.
  Only ``ok`` transactions have a completion, so only they are sources. Materialising
  every such pair would be quadratic; instead the sweep over call/return times creates a
  *barrier* node whenever an invocation follows some new completions: the completed
  transactions point to the barrier, each barrier to the next, and the barrier to the
  invoked transaction. T1 reaches T2 through barriers iff ``T1.ret < T2.call``, with a
  linear number of edges.

Cycles. Any cycle makes a serial order impossible. Strongly connected components are
found with an iterative Tarjan (no recursion limit). Each component is then explained by
short cycles (breadth-first, counting only transactions, not barriers), searched for in
order of increasing edge sets so the weakest explanations come first: ww only (``G0``),
ww and wr (``G1c``), ww and wr plus exactly one rw (``G-single``), any (``G2-item``);
first without realtime edges, then with them. Each search returns its shortest cycle,
and the component reports one cycle per kind so found (the count of a cycle kind is the
number of components exhibiting it). A cycle is named by the edges it actually uses:
no wr and no rw is ``G0``, no rw is ``G1c``, one rw is ``G-single``, more is
``G2-item``; ``-realtime`` is appended when it uses a realtime edge, i.e. it is only
forbidden by strict serializability, not by serializability alone.

Other anomalies, found directly on the reads:

- ``duplicate-elements``: a read holds an element twice (it was appended only once).
- ``garbage-read``: a read holds an element nobody ever appended to that key.
- ``G1a`` (aborted read): a read holds an element only a failed transaction appended.
- ``G1b`` (intermediate read): a read ends with an element its writer followed with
  another append to the same key in the same transaction.
- ``internal``: a transaction's read disagrees with its own earlier micro-ops on that
  key (it must show its own appends, at the end, on top of what it last read, and it
  cannot already hold an element the transaction appends later).
- ``lost-append``: an ok append of ``e`` and a read of its key invoked after that
  transaction completed which does not contain ``e``. On a key whose reads agree this
  always comes with a realtime cycle too (the read precedes the append through rw
  edges, the append completed before the read began), but it is the direct account of
  what went wrong, and it needs no order for the key.

Limits: an unobserved append's position is unknown, so it gets no ww edges (nor needs
any). Per component at most one cycle per kind is reported, so a large component may
hide more, and a stronger kind goes unreported when its search first meets a weaker
cycle already found; the ``G-single`` search is bounded, so in a huge component such a
cycle may be reported by a stronger name. Duplicate appends of one element (which the
workload never generates) are only noted. Per-process order (session guarantees) is
implied by the realtime edges and not reported separately. On small histories the tests
compare the verdict with a brute-force search over serial orders.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from jepsen_like.history import Operation, Status

__all__ = [
    "ANOMALY_KINDS",
    "MAX_EXAMPLES",
    "ElleResult",
    "check_list_append",
]

MAX_EXAMPLES: Final = 20  # examples kept per anomaly kind (counts are not capped)

_CYCLE_KINDS: Final = ("G0", "G1c", "G-single", "G2-item")
ANOMALY_KINDS: Final[tuple[str, ...]] = (
    "duplicate-elements",
    "garbage-read",
    "G1a",
    "G1b",
    "internal",
    "incompatible-order",
    "lost-append",
    *_CYCLE_KINDS,
    *(f"{kind}-realtime" for kind in _CYCLE_KINDS),
)

# Bound on breadth-first pops spent looking for a G-single cycle in one component.
_SINGLE_RW_BUDGET: Final = 100_000
_START_NODES: Final = 4  # cycle searches tried per component and edge set
_UNOBSERVED_EDGES: Final = 200_000  # bound on rw edges to appends nobody read

Read = tuple[Hashable, ...]
MicroOp = tuple[str, str, Any]
# An edge's justification: the key, the element(s) involved, and whether the second
# element is one nobody read (an rw edge to an unobserved append).
Why = tuple[str, Hashable, Hashable, bool]


# ---- result ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ElleResult:
    """The verdict on a list-append history. ``valid`` is None when no transaction
    completed ok (nothing was observed); otherwise it is False iff an anomaly was found.
    ``anomalies`` holds up to ``MAX_EXAMPLES`` JSON-able examples per kind found and
    ``anomaly_counts`` the true counts."""

    valid: bool | None
    txns: int
    ok: int
    failed: int
    unknown: int
    anomalies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    anomaly_counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    keys: int = 0
    graph_txns: int = 0  # transactions in the dependency graph (ok + observed info)
    edges: dict[str, int] = field(default_factory=dict)  # by type; realtime after reduction
    notes: tuple[str, ...] = ()

    @property
    def anomaly_types(self) -> tuple[str, ...]:
        return tuple(self.anomalies)

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": "elle-list-append",
            "consistency": "strict-serializable",
            "valid": self.valid,
            "txns": self.txns,
            "ok": self.ok,
            "failed": self.failed,
            "unknown": self.unknown,
            "keys": self.keys,
            "graph_txns": self.graph_txns,
            "edges": dict(self.edges),
            "anomaly_types": list(self.anomaly_types),
            "anomaly_counts": dict(self.anomaly_counts),
            "anomalies": {kind: list(examples) for kind, examples in self.anomalies.items()},
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
        }

    def explain(self) -> str:
        verdict = {True: "VALID", False: "INVALID", None: "UNKNOWN"}[self.valid]
        lines = [
            f"list-append (strict serializability): {verdict}: {self.txns} txns "
            f"({self.ok} ok, {self.failed} failed, {self.unknown} unknown) on {self.keys} "
            f"key(s); {self.graph_txns} in the dependency graph",
        ]
        if self.edges:
            edges = ", ".join(f"{kind} {count}" for kind, count in self.edges.items())
            lines.append(f"  edges: {edges}")
        if self.valid is None:
            lines.append("  no transaction completed ok: nothing was observed")
        for kind, examples in self.anomalies.items():
            lines.append(f"  {kind} x{self.anomaly_counts.get(kind, len(examples))}:")
            lines.append(f"    e.g. {examples[0]['explanation']}")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.append(f"  checked in {self.elapsed_s:.3f} s")
        return "\n".join(lines)


# ---- parsed transactions ---------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Txn:
    tid: int  # position in the checker's list of transactions
    op: Operation
    appends: dict[str, list[Hashable]]  # per key, in transaction order
    reads: list[tuple[str, Read]]  # ok transactions only: (key, list read), in order
    mops: list[MicroOp]  # output for ok transactions (reads filled), else the input
    reads_known: bool  # ok, with a well-formed output

    @property
    def ok(self) -> bool:
        return self.op.status is Status.OK

    @property
    def name(self) -> str:
        op = self.op
        return f"op {op.index} (process {op.process}, line {op.line})"

    @property
    def short(self) -> str:
        return f"T{self.op.index}"

    def ref(self) -> dict[str, Any]:
        op = self.op
        return {
            "index": op.index,
            "process": op.process,
            "line": op.line,
            "status": str(op.status),
            "call": op.call,
            "ret": None if op.ret == math.inf else op.ret,
            "value": [_clip(mop) for mop in self.mops],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _clip(mop: MicroOp) -> list[Any]:
    """A micro-op for a report: a long read becomes its length and last elements."""
    f, key, value = mop
    if isinstance(value, tuple) and len(value) > 16:
        return [f, key, {"length": len(value), "last": _jsonable(value[-8:])}]
    return [f, key, _jsonable(value)]


def _show(seq: Sequence[Hashable]) -> str:
    """A list for humans: short lists whole, long ones by their ends."""
    if len(seq) <= 10:
        return "[" + ", ".join(map(repr, seq)) + "]"
    head = ", ".join(map(repr, seq[:3]))
    tail = ", ".join(map(repr, seq[-3:]))
    return f"[{head}, ... {len(seq) - 6} more ..., {tail}] ({len(seq)} elements)"


def _micro_ops(value: Hashable) -> list[MicroOp] | None:
    if not isinstance(value, tuple):
        return None
    out: list[MicroOp] = []
    for mop in value:
        if not (
            isinstance(mop, tuple)
            and len(mop) == 3
            and mop[0] in ("r", "append")
            and isinstance(mop[1], str)
        ):
            return None
        out.append((mop[0], mop[1], mop[2]))
    return out


def _parse(ops: Sequence[Operation], notes: list[str]) -> list[_Txn]:
    txns: list[_Txn] = []
    for op in ops:
        if op.f != "txn":
            continue
        mops = _micro_ops(op.input.value)
        if mops is None:
            notes.append(f"op {op.index} (line {op.line}): malformed transaction, ignored")
            continue
        reads: list[tuple[str, Read]] = []
        reads_known = False
        if op.status is Status.OK:
            out = _micro_ops(op.output)
            if out is None or len(out) != len(mops):
                notes.append(
                    f"op {op.index} (line {op.line}): malformed ok value; its reads are ignored"
                )
            else:
                mops, reads_known = out, True
                for f, key, value in mops:
                    if f != "r":
                        continue
                    if value is None:
                        reads.append((key, ()))
                    elif isinstance(value, tuple):
                        reads.append((key, value))
                    else:
                        notes.append(
                            f"op {op.index} (line {op.line}): read of {key!r} returned "
                            f"{value!r}, not a list; ignored"
                        )
        appends: dict[str, list[Hashable]] = {}
        for f, key, value in mops:
            if f == "append":
                appends.setdefault(key, []).append(value)
        txns.append(_Txn(len(txns), op, appends, reads, mops, reads_known))
    return txns


# ---- anomaly collection ----------------------------------------------------------------


class _Anomalies:
    def __init__(self) -> None:
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.counts: Counter[str] = Counter()

    def wants(self, kind: str) -> bool:
        """Whether another example of ``kind`` would be kept (build it only then)."""
        return len(self.examples.get(kind, ())) < MAX_EXAMPLES

    def add(self, kind: str, example: dict[str, Any] | None) -> None:
        self.counts[kind] += 1
        if example is not None and self.wants(kind):
            self.examples.setdefault(kind, []).append(example)


# ---- per-key analysis ------------------------------------------------------------------


@dataclass(slots=True)
class _Key:
    key: str
    reads: list[tuple[int, Read]] = field(default_factory=list)  # (reader tid, list)
    readers: dict[Read, list[int]] = field(default_factory=dict)  # distinct list -> tids
    appends: list[tuple[int, Hashable]] = field(default_factory=list)  # (tid, element)
    order: Read | None = None  # version order when every read is a prefix of it
    pos: dict[Hashable, int] = field(default_factory=dict)  # element -> index in order


class _Checker:
    def __init__(self, txns: list[_Txn], notes: list[str]) -> None:
        self.txns = txns
        self.notes = notes
        self.found = _Anomalies()
        # (key, element) -> the transaction that appended it (a non-failed one if several)
        self.writer: dict[tuple[str, Hashable], int] = {}
        self.keys: dict[str, _Key] = {}
        self.unobserved_edges = 0
        self.unobserved_capped = False
        duplicates = 0
        for txn in txns:
            for key, elements in txn.appends.items():
                info = self._key(key)
                for e in elements:
                    info.appends.append((txn.tid, e))
                    prior = self.writer.get((key, e))
                    if prior is None:
                        self.writer[(key, e)] = txn.tid
                        continue
                    duplicates += 1
                    if txns[prior].op.status is Status.FAIL:
                        self.writer[(key, e)] = txn.tid
            for key, value in txn.reads:
                info = self._key(key)
                info.reads.append((txn.tid, value))
                info.readers.setdefault(value, []).append(txn.tid)
        if duplicates:
            notes.append(
                f"{duplicates} append(s) of an element already appended to the same key; "
                "elements should be unique per key"
            )

    def _key(self, key: str) -> _Key:
        info = self.keys.get(key)
        if info is None:
            info = self.keys[key] = _Key(key)
        return info

    # -- internal consistency ----------------------------------------------------------

    def check_internal(self) -> None:
        for txn in self.txns:
            if not txn.reads_known:
                continue
            # key -> (list last read, or None if not read yet; elements appended since)
            state: dict[str, tuple[Read | None, Read]] = {}
            for f, key, value in txn.mops:
                base, tail = state.get(key, (None, ()))
                if f == "append":
                    if base is not None and value in base:
                        self._internal(
                            txn,
                            key,
                            f"{txn.name} read {key!r} = {_show(base)}, already holding "
                            f"{value!r}, which it appends afterwards",
                        )
                    state[key] = (base, (*tail, value))
                    continue
                if value is not None and not isinstance(value, tuple):
                    continue  # malformed, noted when parsed
                read: Read = value or ()
                if base is not None and read != base + tail:
                    since = f" plus its own appends {_show(tail)}" if tail else ""
                    self._internal(
                        txn,
                        key,
                        f"{txn.name} read {key!r} = {_show(read)}, but its earlier read "
                        f"{_show(base)}{since} means it should be {_show(base + tail)}",
                    )
                elif base is None and tail and read[-len(tail) :] != tail:
                    self._internal(
                        txn,
                        key,
                        f"{txn.name} appended {_show(tail)} to {key!r}, then read "
                        f"{_show(read)}, which does not end with its own appends",
                    )
                state[key] = (read, ())

    def _internal(self, txn: _Txn, key: str, explanation: str) -> None:
        example = None
        if self.found.wants("internal"):
            example = {"op": txn.ref(), "key": key, "explanation": explanation}
        self.found.add("internal", example)

    # -- the reads of each key ---------------------------------------------------------

    def check_keys(self) -> None:
        for info in self.keys.values():
            self._duplicates(info)
            self._version_order(info)
            self._foreign_elements(info)
            self._intermediate_reads(info)

    def _duplicates(self, info: _Key) -> None:
        for value, tids in info.readers.items():
            if len(set(value)) == len(value):
                continue
            dups = [e for e, n in Counter(value).items() if n > 1]
            for tid in tids:
                txn = self.txns[tid]
                example = None
                if self.found.wants("duplicate-elements"):
                    example = {
                        "op": txn.ref(),
                        "key": info.key,
                        "duplicates": _jsonable(dups),
                        "explanation": f"{txn.name} read {info.key!r} = {_show(value)}, "
                        f"holding {', '.join(map(repr, dups))} more than once",
                    }
                self.found.add("duplicate-elements", example)

    def _version_order(self, info: _Key) -> None:
        """The longest read, if every other read is a prefix of it; else report the
        pairs that break the chain of prefixes."""
        values = sorted(info.readers, key=len)
        consistent = True
        for shorter, longer in pairwise(values):
            if longer[: len(shorter)] == shorter:
                continue
            consistent = False
            self._incompatible(info, shorter, longer)
        if not consistent:
            return
        order: Read = values[-1] if values else ()
        if len(set(order)) != len(order):
            return  # positions are ambiguous; duplicate-elements already reported it
        info.order = order
        info.pos = {e: i for i, e in enumerate(order)}

    def _incompatible(self, info: _Key, a: Read, b: Read) -> None:
        example = None
        if self.found.wants("incompatible-order"):
            agree = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
            ta, tb = self.txns[info.readers[a][0]], self.txns[info.readers[b][0]]
            example = {
                "key": info.key,
                "ops": [ta.ref(), tb.ref()],
                "agree": agree,
                "lengths": [len(a), len(b)],
                "diverging": [_jsonable(a[agree : agree + 8]), _jsonable(b[agree : agree + 8])],
                "explanation": f"{ta.name} read {info.key!r} = {_show(a)} and {tb.name} read "
                f"{_show(b)}: neither is a prefix of the other (they agree on {agree} "
                f"element(s), then {a[agree]!r} vs {b[agree]!r})",
            }
        self.found.add("incompatible-order", example)

    def _foreign_elements(self, info: _Key) -> None:
        """Elements read that nobody appended (garbage) or only a failed txn did (G1a):
        one anomaly per (key, element), with the number of reads holding it."""
        bad: dict[Hashable, list[int]] = {}  # element -> [reads holding it, first reader]
        if info.order is not None:
            by_len = sorted((len(v), self.txns[tid].op.index, tid) for tid, v in info.reads)
            lens = [n for n, _, _ in by_len]
            for p, e in enumerate(info.order):
                if self._is_foreign(info.key, e):
                    j = bisect_right(lens, p)  # reads of length > p hold e
                    bad[e] = [len(lens) - j, by_len[j][2]]
        else:
            for value, tids in info.readers.items():
                for e in set(value):
                    if self._is_foreign(info.key, e):
                        entry = bad.setdefault(e, [0, tids[0]])
                        entry[0] += len(tids)
        for e, (count, tid) in bad.items():
            reader = self.txns[tid]
            w = self.writer.get((info.key, e))
            kind = "garbage-read" if w is None else "G1a"
            example = None
            if self.found.wants(kind):
                if w is None:
                    why = "which no transaction ever appended"
                else:
                    why = f"appended only by {self.txns[w].name}, which failed"
                example = {
                    "op": reader.ref(),
                    "key": info.key,
                    "element": _jsonable(e),
                    "reads": count,
                    "explanation": f"{reader.name} read {info.key!r} holding {e!r}, {why} "
                    f"({count} read(s) hold it)",
                }
                if w is not None:
                    example["writer"] = self.txns[w].ref()
            self.found.add(kind, example)

    def _is_foreign(self, key: str, e: Hashable) -> bool:
        w = self.writer.get((key, e))
        return w is None or self.txns[w].op.status is Status.FAIL

    def _intermediate_reads(self, info: _Key) -> None:
        for tid, value in info.reads:
            if not value:
                continue
            last = value[-1]
            w = self.writer.get((info.key, last))
            if w is None or w == tid:
                continue
            writes = self.txns[w].appends[info.key]
            if writes[-1] == last:
                continue
            example = None
            if self.found.wants("G1b"):
                reader, writer = self.txns[tid], self.txns[w]
                example = {
                    "op": reader.ref(),
                    "writer": writer.ref(),
                    "key": info.key,
                    "element": _jsonable(last),
                    "explanation": f"{reader.name} read {info.key!r} ending in {last!r}, but "
                    f"{writer.name} appended {_jsonable(writes)} to {info.key!r} in one "
                    f"transaction: {last!r} is an intermediate version",
                }
            self.found.add("G1b", example)

    # -- lost appends ------------------------------------------------------------------

    def check_lost_appends(self) -> None:
        for info in self.keys.values():
            appends = [(self.txns[tid], e) for tid, e in info.appends if self.txns[tid].ok]
            if not appends or not info.reads:
                continue
            reads = sorted(info.reads, key=lambda r: self.txns[r[0]].op.call)
            calls = [self.txns[tid].op.call for tid, _ in reads]
            if info.order is not None:
                self._lost_by_position(info, appends, reads, calls)
            else:
                self._lost_by_membership(info, appends, reads, calls)

    def _lost_by_position(
        self,
        info: _Key,
        appends: list[tuple[_Txn, Hashable]],
        reads: list[tuple[int, Read]],
        calls: list[int],
    ) -> None:
        # Every read is a prefix of the order, so it holds e iff len(read) > pos(e).
        shortest_from = [len(v) for _, v in reads]  # suffix minima of read lengths
        for i in range(len(shortest_from) - 2, -1, -1):
            shortest_from[i] = min(shortest_from[i], shortest_from[i + 1])
        absent = len(info.order or ())
        for txn, e in appends:
            i = bisect_right(calls, txn.op.ret)
            p = info.pos.get(e, absent)
            if i == len(reads) or shortest_from[i] > p:
                continue
            j = i
            if self.found.wants("lost-append"):
                while len(reads[j][1]) > p:
                    j += 1
            self._lost(info, txn, e, reads[j])

    def _lost_by_membership(
        self,
        info: _Key,
        appends: list[tuple[_Txn, Hashable]],
        reads: list[tuple[int, Read]],
        calls: list[int],
    ) -> None:
        sets: dict[Read, frozenset[Hashable]] = {v: frozenset(v) for v in info.readers}
        for txn, e in appends:
            for j in range(bisect_right(calls, txn.op.ret), len(reads)):
                if e not in sets[reads[j][1]]:
                    self._lost(info, txn, e, reads[j])
                    break

    def _lost(self, info: _Key, txn: _Txn, e: Hashable, read: tuple[int, Read]) -> None:
        example = None
        if self.found.wants("lost-append"):
            reader = self.txns[read[0]]
            example = {
                "writer": txn.ref(),
                "op": reader.ref(),
                "key": info.key,
                "element": _jsonable(e),
                "read_length": len(read[1]),
                "explanation": f"{txn.name} appended {e!r} to {info.key!r} and completed at "
                f"t={txn.op.ret}, but {reader.name}, invoked later at t={reader.op.call}, "
                f"read {info.key!r} = {_show(read[1])} without it",
            }
        self.found.add("lost-append", example)

    # -- the dependency graph ----------------------------------------------------------

    def graph(self) -> _Graph:
        observed: set[int] = set()
        for info in self.keys.values():
            elements: Iterable[Hashable]
            if info.order is not None:
                elements = info.order
            else:
                elements = {e for value in info.readers for e in value}
            for e in elements:
                w = self.writer.get((info.key, e))
                if w is not None:
                    observed.add(w)
        member = [
            txn.ok or (txn.op.status is Status.INFO and txn.tid in observed) for txn in self.txns
        ]
        graph = _Graph(self.txns, member)
        for info in self.keys.values():
            key, writer = info.key, self.writer
            order = info.order
            if order is not None:
                for prev, nxt in pairwise(order):
                    a, b = writer.get((key, prev)), writer.get((key, nxt))
                    if a is not None and b is not None:
                        graph.add(a, b, "ww", (key, prev, nxt, False))
            for tid, value in info.reads:
                if value:
                    w = writer.get((key, value[-1]))
                    if w is not None:
                        graph.add(w, tid, "wr", (key, value[-1], None, False))
                if order is not None and len(value) < len(order):
                    nxt = order[len(value)]
                    w = writer.get((key, nxt))
                    if w is not None:
                        graph.add(tid, w, "rw", (key, value[-1] if value else None, nxt, False))
            if order is not None:
                self._unobserved_appends(graph, info, order)
        if self.unobserved_capped:
            self.notes.append(
                f"more than {_UNOBSERVED_EDGES} rw edges to unobserved appends; the rest "
                "were not added"
            )
        spans = [(t.tid, t.op.call, t.op.ret) for t in self.txns if member[t.tid]]
        graph.set_realtime(_realtime_links(len(self.txns), spans))
        return graph

    def _unobserved_appends(self, graph: _Graph, info: _Key, order: Read) -> None:
        """An append nobody read, by a transaction that certainly happened, was installed
        after every read of its key that lacks it: rw edges from the readers of the
        longest version (every other reader reaches them through rw, ww and wr edges)."""
        readers = info.readers.get(order, [])
        last = order[-1] if order else None
        for w, e in info.appends:
            if e in info.pos or not graph.member[w]:
                continue
            for tid in readers:
                if self.unobserved_edges >= _UNOBSERVED_EDGES:
                    self.unobserved_capped = True
                    return
                self.unobserved_edges += 1
                graph.add(tid, w, "rw", (info.key, last, e, True))

    def check_cycles(self, graph: _Graph) -> None:
        for comp in _sccs(graph.adjacency(), graph.nodes()):
            for kind, hops in graph.explain_component(comp).items():
                example = None
                if self.found.wants(kind):
                    example = graph.describe(kind, hops, comp)
                self.found.add(kind, example)


# ---- graph -----------------------------------------------------------------------------

_PRIORITY: Final = ("ww", "wr", "rw")
_RW_NAMES: Final = {1: "G-single", 2: "G2-item"}
_ARROW: Final = {"ww": "ww", "wr": "wr", "rw": "rw", "realtime": "rt"}
# Edge sets tried in turn, weakest explanation first; None marks "one rw, the rest ww/wr".
_LEVELS: Final[tuple[frozenset[str] | None, ...]] = (
    frozenset({"ww"}),
    frozenset({"ww", "wr"}),
    None,
    frozenset({"ww", "wr", "rw"}),
)
Hop = tuple[int, int, str, Why | None]  # from tid, to tid, edge type, justification


class _Graph:
    """Transactions ``0..n-1`` (members only carry edges) plus realtime barrier nodes
    ``n..``. Dependency edges are kept by type with one justification each."""

    def __init__(self, txns: list[_Txn], member: list[bool]) -> None:
        self.txns = txns
        self.n = len(txns)
        self.member = member
        self.deps: list[dict[int, dict[str, Why]]] = [{} for _ in txns]
        self.rt: list[list[int]] = [[] for _ in txns]

    def add(self, a: int, b: int, kind: str, why: Why) -> None:
        if a != b and self.member[a] and self.member[b]:
            self.deps[a].setdefault(b, {}).setdefault(kind, why)

    def set_realtime(self, rt: list[list[int]]) -> None:
        self.rt = rt

    def nodes(self) -> list[int]:
        return [v for v in range(self.n) if self.member[v]] + list(range(self.n, len(self.rt)))

    def adjacency(self) -> list[list[int]]:
        return [
            [*self.deps[v], *self.rt[v]] if v < self.n else self.rt[v] for v in range(len(self.rt))
        ]

    def edge_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for out in self.deps:
            for kinds in out.values():
                counts.update(kinds.keys())
        result = {kind: counts[kind] for kind in _PRIORITY}
        result["realtime"] = sum(len(out) for out in self.rt)
        return result

    def _sub(
        self, members: set[int], kinds: frozenset[str], realtime: bool
    ) -> dict[int, list[int]]:
        adj: dict[int, list[int]] = {}
        for v in members:
            if v < self.n:
                out = [
                    w for w, ks in self.deps[v].items() if w in members and not kinds.isdisjoint(ks)
                ]
                if realtime:
                    out.extend(w for w in self.rt[v] if w in members)
                adj[v] = out
            elif realtime:
                adj[v] = [w for w in self.rt[v] if w in members]
        return adj

    def explain_component(self, comp: list[int]) -> dict[str, list[Hop]]:
        """Short cycles in a strongly connected component, by kind: each edge set is
        searched in turn, weakest first, and each kind keeps the first cycle found."""
        found: dict[str, list[Hop]] = {}
        txns = {v for v in comp if v < self.n}
        for realtime in (False, True):
            if realtime and len(txns) == len(comp):
                break  # no barrier in the component: realtime edges change nothing
            members = set(comp) if realtime else txns
            for kinds in _LEVELS:
                if kinds is None:
                    ring = self._single_rw_cycle(members, realtime)
                else:
                    ring = self._cycle(self._sub(members, kinds, realtime))
                if ring is not None:
                    hops = self.hops(ring)
                    found.setdefault(_classify([hop[2] for hop in hops]), hops)
        assert found, "a strongly connected component always has a cycle"
        return found

    def _cycle(self, adj: dict[int, list[int]]) -> list[int] | None:
        best: list[int] | None = None
        starts: list[int] = []
        for sub in sorted(_sccs(adj, list(adj)), key=len):
            starts.extend(v for v in sub if v < self.n)
            if len(starts) >= _START_NODES:
                break
        for s in starts[:_START_NODES]:
            path = _path(adj, s, s, self.n, None)
            if path is not None and (best is None or len(path) < len(best)):
                best = path
        return best

    def _single_rw_cycle(self, members: set[int], realtime: bool) -> list[int] | None:
        adj = self._sub(members, frozenset({"ww", "wr"}), realtime)
        budget = [_SINGLE_RW_BUDGET]
        best: list[int] | None = None
        for a in sorted(v for v in members if v < self.n):
            for b, kinds in self.deps[a].items():
                if "rw" not in kinds or b not in members:
                    continue
                path = _path(adj, b, a, self.n, budget)  # b ... a, closed by a -rw-> b
                if path is not None and (best is None or len(path) + 1 < len(best)):
                    best = [*path, a]
                if budget[0] <= 0 or (best is not None and len(best) == 2):
                    return best
        return best

    def hops(self, ring: list[int]) -> list[Hop]:
        """The cycle as transaction-to-transaction hops; barrier runs become realtime."""
        txn_at = [i for i, v in enumerate(ring) if v < self.n]
        hops: list[Hop] = []
        for k, i in enumerate(txn_at):
            j = txn_at[(k + 1) % len(txn_at)]
            a, b = ring[i], ring[j]
            if (i + 1) % len(ring) != j:
                hops.append((a, b, "realtime", None))
                continue
            kinds = self.deps[a][b]
            kind = next(kind for kind in _PRIORITY if kind in kinds)
            hops.append((a, b, kind, kinds[kind]))
        return hops

    def describe(self, kind: str, hops: list[Hop], comp: list[int]) -> dict[str, Any]:
        steps = [self._step(h) for h in hops]
        chain = self.txns[hops[0][0]].short + "".join(
            f" -{_ARROW[h[2]]}-> {self.txns[h[1]].short}" for h in hops
        )
        size = sum(1 for v in comp if v < self.n)
        return {
            "cycle": [self.txns[a].ref() for a, _, _, _ in hops],
            "steps": steps,
            "component_size": size,
            "explanation": f"{kind} cycle {chain}: "
            + "; ".join(step["explanation"] for step in steps)
            + ". Each must precede the next in a serial order, so none exists"
            + (
                f" ({size} transactions are entangled in this cycle's component)"
                if size > len(hops)
                else ""
            ),
        }

    def _step(self, hop: Hop) -> dict[str, Any]:
        a, b, kind, why = hop
        ta, tb = self.txns[a], self.txns[b]
        step: dict[str, Any] = {"from": ta.op.index, "to": tb.op.index, "type": kind}
        if why is None:
            text = (
                f"{ta.name} completed at t={ta.op.ret} before {tb.name} was invoked "
                f"at t={tb.op.call}"
            )
        else:
            key, x, y, unobserved = why
            step.update(key=key, element=_jsonable(x), next=_jsonable(y))
            if kind == "ww":
                text = (
                    f"{ta.name} appended {x!r} to {key!r} and {tb.name} appended {y!r} "
                    "right after it"
                )
            elif kind == "wr":
                text = f"{tb.name} read {key!r} ending in {x!r}, which {ta.name} appended"
            else:
                seen = "as empty" if x is None else f"ending in {x!r}"
                if unobserved:
                    text = (
                        f"{ta.name} read {key!r} {seen}, the longest version anyone read, "
                        f"without {y!r}, which {tb.name} appended"
                    )
                else:
                    text = (
                        f"{ta.name} read {key!r} {seen}, and {tb.name} appended {y!r}, "
                        "the next element"
                    )
        step["explanation"] = f"{text} ({kind})"
        return step


def _classify(kinds: Sequence[str]) -> str:
    rw = kinds.count("rw")
    base = ("G1c" if "wr" in kinds else "G0") if rw == 0 else _RW_NAMES[min(rw, 2)]
    return f"{base}-realtime" if "realtime" in kinds else base


def _realtime_links(n: int, spans: Iterable[tuple[int, float, float]]) -> list[list[int]]:
    """Adjacency (nodes ``0..n-1`` plus barriers from ``n``) in which ``u`` reaches ``v``
    iff ``ret(u) < call(v)``, for ``spans`` of ``(node, call, ret)``; ``ret = inf`` (no
    completion) is never a source. Linear in the number of spans after sorting."""
    events: list[tuple[float, int, int]] = []
    for v, call, ret in spans:
        events.append((call, 0, v))  # at equal times calls sort first: strictly after
        if ret != math.inf:
            events.append((ret, 1, v))
    events.sort()
    adj: list[list[int]] = [[] for _ in range(n)]
    completed: list[int] = []  # since the last barrier
    barrier = -1
    for _, is_ret, v in events:
        if is_ret:
            completed.append(v)
            continue
        if completed:
            new = len(adj)
            adj.append([])
            for u in completed:
                adj[u].append(new)
            if barrier >= 0:
                adj[barrier].append(new)
            barrier, completed = new, []
        if barrier >= 0:
            adj[barrier].append(v)
    return adj


def _sccs(
    adj: Mapping[int, Sequence[int]] | Sequence[Sequence[int]], nodes: Iterable[int]
) -> list[list[int]]:
    """Strongly connected components of more than one node (iterative Tarjan)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    comps: list[list[int]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            v, i = work[-1]
            succ = adj[v]
            if i < len(succ):
                work[-1] = (v, i + 1)
                w = succ[i]
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == index[v]:
                comp: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)
    return comps


def _path(
    adj: Mapping[int, Sequence[int]], src: int, dst: int, n: int, budget: list[int] | None
) -> list[int] | None:
    """Nodes ``[src, ..., v]`` of a path with an edge ``v -> dst``, fewest transactions
    (nodes below ``n``) first: barriers cost nothing (0-1 breadth-first search). With
    ``src == dst`` this is a shortest cycle through ``src``. ``budget`` (a one-element
    list, decremented per node expanded) stops the search early."""
    dist: dict[int, int] = {src: 0}
    parent: dict[int, int] = {}
    done: set[int] = set()
    queue: deque[int] = deque([src])
    while queue:
        v = queue.popleft()
        if v in done:
            continue
        done.add(v)
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                return None
        for w in adj.get(v, ()):
            if w == dst:
                path = [v]
                while path[-1] != src:
                    path.append(parent[path[-1]])
                return path[::-1]
            cost = dist[v] + (1 if w < n else 0)
            if cost < dist.get(w, math.inf):
                dist[w] = cost
                parent[w] = v
                if w < n:
                    queue.append(w)
                else:
                    queue.appendleft(w)
    return None


# ---- entry point -----------------------------------------------------------------------


def check_list_append(ops: Sequence[Operation]) -> ElleResult:
    """Check the ``txn`` operations of a history for strict serializability; see the
    module docstring. Other operations are ignored."""
    started = time.perf_counter()
    notes: list[str] = []
    txns = _parse(ops, notes)
    if len(notes) > MAX_EXAMPLES:
        notes[MAX_EXAMPLES:] = [f"... and {len(notes) - MAX_EXAMPLES} more such notes"]
    status = Counter(txn.op.status for txn in txns)
    ok, failed, unknown = status[Status.OK], status[Status.FAIL], status[Status.INFO]
    if ok == 0:
        return ElleResult(
            None,
            txns=len(txns),
            ok=0,
            failed=failed,
            unknown=unknown,
            elapsed_s=time.perf_counter() - started,
            notes=tuple(notes),
        )
    checker = _Checker(txns, notes)
    checker.check_internal()
    checker.check_keys()
    checker.check_lost_appends()
    graph = checker.graph()
    checker.check_cycles(graph)
    found = checker.found
    kinds = [kind for kind in ANOMALY_KINDS if found.counts[kind]]
    kinds += sorted(kind for kind in found.counts if kind not in ANOMALY_KINDS)
    return ElleResult(
        not kinds,
        txns=len(txns),
        ok=ok,
        failed=failed,
        unknown=unknown,
        anomalies={kind: found.examples.get(kind, []) for kind in kinds},
        anomaly_counts={kind: found.counts[kind] for kind in kinds},
        elapsed_s=time.perf_counter() - started,
        keys=len(checker.keys),
        graph_txns=sum(graph.member),
        edges=graph.edge_counts(),
        notes=tuple(notes),
    )
