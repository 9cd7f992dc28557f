"""Linearizability checking: Wing & Gong's search with Lowe's memoisation, as in porcupine.

Theory of operation
===================

A history is *linearizable* if every operation can be given a single instant, between its
call and its return, at which it takes effect, such that executing the operations one at a
time in the order of those instants is a legal run of the sequential model. ``check``
decides this for each key apart (``Model.partition``): linearizability is local, so a
history is linearizable iff every per-key sub-history is, and several small searches are
exponentially cheaper than one big one.

The search (Wing & Gong 1993, with Lowe 2017's improvements; porcupine's shape). Every
operation with a known outcome contributes a *call* and a *return* entry to one list
sorted by time (at equal times calls sort first, so touching intervals count as
concurrent: a tie never makes a history ILLEGAL). Walking the list from the front:

- at a call entry, try to linearize that operation next: if the model accepts it in the
  current state, push (operation, old state) on a stack, *lift* both its entries out of
  the list and restart from the front;
- at a return entry, an operation that had to take effect by now has not: undo the last
  linearized operation (pop, restore the state, *unlift* its entries) and carry on from
  the entry after its call, trying the next candidate;
- an empty list means every operation found its place: OK. A return entry with an empty
  stack means no order works: ILLEGAL.

The list is doubly linked over integer arrays; lifting unlinks two nodes and unlifting
relinks them in reverse order ("dancing links"), both O(1).

Unknown outcomes
----------------

``fail`` operations certainly did not happen and are dropped before the search, except a
failed ``cas`` without an error: its compare ran and failed, which the model checks
(the register differed from the expected value at some point in its interval). ``info``
operations (a timeout, a crash) may have taken effect at any instant after their call, or
never: their return is at +inf. They live on a second chain holding only their calls, and
are tried at a return entry, after every known-outcome candidate failed there: placed early
enough, a later read can observe them; never placed, they never happened. So the search
ends OK as soon as every known-outcome operation is placed, whatever info operations
remain. (Porcupine instead gives them a return at the end of the history and places them
all; that is the same for models whose unknown-output steps always succeed, as the
register's do, and right for the others too.) Trying them last keeps the happy path fast:
they are placed only when something observed them.

Two info operations with equal input are interchangeable: swapping where two such twins
take effect gives another valid order. So twins are placed in call order only, which
prunes the k! orders and 2^k subsets of a run full of timeouts writing few values.

Memoisation
-----------

Lowe's observation: the pair (set of placed operations, model state) determines everything
that can follow, so each pair need be explored once. The sets are Python ``int`` bitsets
and states are hashable. The cache goes one step further for info operations: a node that
has placed a *superset* of another explored node's info operations, with the same known
operations placed and the same state, can do nothing the other could not (the extra info
operations could equally never have happened), so it is pruned too. The cache maps
(known set, state) to the info sets explored with it.

Read-only operations
--------------------

An operation the model says never changes the state (a read) is placed as soon as it is
legal, and its node gets no other branch: if some order places it later, moving it to the
front changes nothing for anyone, so if placing it now fails, everything from this node
fails. Without this, w concurrent reads of one value multiply the nodes by 2^w.

Refutations without search
--------------------------

Proving a history ILLEGAL means exhausting every order, which can take exponential time
when many operations are concurrent or unknown. So ``Model.never_legal`` first points out
operations illegal in every state the history could produce at all (a read of a value
nobody may have written, e.g. the value of a write reported as failed): such a history is
ILLEGAL at once, with that operation as the culprit.

Budget and verdicts
-------------------

The search is exponential in the worst case, so ``check`` takes a time budget shared by
all partitions (smallest first, so cheap verdicts are never starved) and reports UNKNOWN
for a partition it could not finish, never a guess. The overall verdict is ILLEGAL if any
partition is, else UNKNOWN if any is, else OK.

Counter-examples
----------------

The deepest point of a failed search is a poor witness: the search may have wandered far
down an order that was doomed much earlier. So for an ILLEGAL key the checker isolates the
*first failing return*: cutting the history at a return (operations still running there
become unknown-outcome, as they were at that instant), the prefixes are linearizable up to
some return and not from it on (monotone, so a binary search over returns finds it in a
logarithmic number of searches). The operation returning there is the culprit (unless
the model refuted one on its own, which is then reported as is). A last
search of that prefix records every state in which the culprit was tried and the order
the search had built when it got stuck on it, giving, e.g., "read() -> 3 by process 1
[t=2..4] cannot follow: the latest possible values are {0, 4}". If the budget runs out
while isolating, the report falls back to the deepest point of the first search.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from jepsen_like.history import (
    COMPARE_FAILED,
    UNKNOWN,
    Operation,
    Record,
    Status,
    pair_operations,
)
from jepsen_like.models import Model

__all__ = [
    "Candidate",
    "CheckResult",
    "CounterExample",
    "PartitionResult",
    "Verdict",
    "check",
]

_NIL: Final = -1
_FORCED: Final = -2  # stack marker: a read-only op placed as soon as it was legal
# Search steps between clock reads: a read per step would dominate the loop.
_CLOCK_EVERY: Final = 1024
# Time always allowed for isolating a counter-example's culprit (within the budget).
_EXPLAIN_MIN_S: Final = 2.0


class Verdict(enum.StrEnum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """An operation that could have gone next after the counter-example's prefix.

    ``legal`` says whether the model accepts it (with its recorded output) in
    ``CounterExample.state``."""

    op: Operation
    description: str
    legal: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterExample:
    """Why one key is not linearizable."""

    key: str
    prefix: tuple[Operation, ...]  # a linearizable order of what precedes the culprit
    prefix_descriptions: tuple[str, ...]
    state: str  # the model state after the prefix, described
    blocking: Operation  # the culprit: its return is the first no order survives
    candidates: tuple[Candidate, ...]  # what was still unplaced there, culprit included
    possible_states: tuple[str, ...]  # every state in which the culprit was tried
    explanation: str
    # True: ``blocking`` provably breaks the history (the first failing return, or an
    # operation the model refutes on its own). False: the budget ran out while isolating
    # it, and this is the first search's deepest point.
    isolated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "prefix": [
                _op_json(op, d) for op, d in zip(self.prefix, self.prefix_descriptions, strict=True)
            ],
            "state": self.state,
            "blocking": _op_json(self.blocking, ""),
            "candidates": [
                {**_op_json(c.op, c.description), "legal_after_prefix": c.legal}
                for c in self.candidates
            ],
            "possible_states": list(self.possible_states),
            "explanation": self.explanation,
            "isolated": self.isolated,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionResult:
    key: str
    verdict: Verdict
    ops: int  # operations searched (after dropping failed and irrelevant ones)
    elapsed_s: float
    explored: int = 0  # search nodes expanded
    counterexample: CounterExample | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "verdict": str(self.verdict),
            "ops": self.ops,
            "elapsed_s": round(self.elapsed_s, 6),
            "explored": self.explored,
            "note": self.note,
            "counterexample": self.counterexample.to_json() if self.counterexample else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    verdict: Verdict
    partitions: tuple[PartitionResult, ...]  # sorted by key
    ops: int  # operations in the history, failed ones included
    failed: int  # operations dropped as certainly not having happened
    elapsed_s: float

    @property
    def counterexamples(self) -> list[CounterExample]:
        return [p.counterexample for p in self.partitions if p.counterexample is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "ops": self.ops,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 6),
            "partitions": [p.to_json() for p in self.partitions],
        }


def _op_json(op: Operation, description: str) -> dict[str, Any]:
    return {
        "index": op.index,
        "line": op.line,
        "process": op.process,
        "description": description,
        "call": op.call,
        "return": None if math.isinf(op.ret) else int(op.ret),
        "status": str(op.status),
    }


def check(
    model: Model,
    history: Sequence[Operation] | Sequence[Record],
    *,
    time_budget_s: float = 60.0,
) -> CheckResult:
    """Check a history (records, or operations from ``pair_operations``) against ``model``.

    Pure apart from reading a monotonic clock for the budget: a history and model that
    finish within it always give the same verdict and counter-example.
    """
    started = time.monotonic()
    deadline = started + time_budget_s
    ops: list[Operation] = (
        pair_operations(history)  # type: ignore[arg-type]
        if history and isinstance(history[0], Record)
        else list(history)  # type: ignore[arg-type]
    )
    # Failed operations certainly did not happen; a failed cas without an error still
    # observed something (its compare did not hold) and stays, as a state-preserving op.
    live = [op for op in ops if op.status is not Status.FAIL or op.output is COMPARE_FAILED]
    parts = model.partition(live)
    results: dict[str, PartitionResult] = {}
    # Smallest first: a huge key that eats the budget must not starve the cheap ones.
    for key in sorted(parts, key=lambda k: (len(parts[k]), k)):
        part = parts[key]
        if time.monotonic() >= deadline:
            results[key] = PartitionResult(
                key=key,
                verdict=Verdict.UNKNOWN,
                ops=len(part),
                elapsed_s=0.0,
                note="not checked: time budget exhausted",
            )
            continue
        results[key] = _check_partition(model, key, part, deadline)
    partitions = tuple(results[k] for k in sorted(results))
    verdicts = {p.verdict for p in partitions}
    if Verdict.ILLEGAL in verdicts:
        verdict = Verdict.ILLEGAL
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.OK
    return CheckResult(
        verdict=verdict,
        partitions=partitions,
        ops=len(ops),
        failed=len(ops) - len(live),
        elapsed_s=time.monotonic() - started,
    )


def _check_partition(
    model: Model, key: str, ops: Sequence[Operation], deadline: float
) -> PartitionResult:
    started = time.monotonic()
    out = _search(model, ops, deadline)
    note = ""
    counterexample = None
    if out.verdict is Verdict.UNKNOWN:
        note = f"time budget exhausted after {out.explored} search states"
    elif out.verdict is Verdict.ILLEGAL:
        # Isolating the culprit takes about log2(n) searches no bigger than this one;
        # cap it so that explaining one key cannot starve the verdicts of the others.
        spent = time.monotonic() - started
        explain_by = min(deadline, time.monotonic() + max(_EXPLAIN_MIN_S, 12 * spent))
        counterexample = _explain(model, key, ops, explain_by, out)
    return PartitionResult(
        key=key,
        verdict=out.verdict,
        ops=len(ops),
        elapsed_s=time.monotonic() - started,
        explored=out.explored,
        counterexample=counterexample,
        note=note,
    )


@dataclass(frozen=True, slots=True)
class _Layout:
    """The entry lists of one partition, as integer arrays.

    Entry ids are positions in one time order of all events (calls before returns at
    equal times). Known-outcome operations have a call and a return entry on the main
    chain; unknown-outcome ones only a call entry, on the info chain. Both chains are
    doubly linked through ``nxt``/``prv`` from sentinels ``head`` and ``info_head``.
    """

    head: int
    info_head: int
    nxt: list[int]
    prv: list[int]
    entry_op: list[int]
    is_call: list[bool]
    call_pos: list[int]
    ret_pos: list[int]  # -1 for unknown-outcome operations
    info_class: list[int]  # twin class, -1 for known-outcome operations
    info_rank: list[int]  # call order within the twin class, -1 likewise
    n_classes: int


def _layout(ops: Sequence[Operation]) -> _Layout:
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(ops)]
        + [(op.ret, 1, i) for i, op in enumerate(ops) if op.status is not Status.INFO]
    )
    m = len(events)
    head, info_head = m, m + 1
    nxt = [_NIL] * (m + 2)
    prv = [_NIL] * (m + 2)
    call_pos = [0] * len(ops)
    ret_pos = [-1] * len(ops)
    tails = {head: head, info_head: info_head}
    for e, (_, kind, i) in enumerate(events):
        if kind == 0:
            call_pos[i] = e
        else:
            ret_pos[i] = e
        chain = info_head if ops[i].status is Status.INFO else head
        nxt[tails[chain]] = e
        prv[e] = tails[chain]
        tails[chain] = e
    # Twin classes: unknown-outcome operations of equal (input, output), ranked by call.
    classes: dict[tuple[Hashable, Hashable], int] = {}
    sizes: list[int] = []
    info_class = [-1] * len(ops)
    info_rank = [-1] * len(ops)
    for _, _, i in events:
        if ops[i].status is Status.INFO:
            c = classes.setdefault((ops[i].input, ops[i].output), len(sizes))
            if c == len(sizes):
                sizes.append(0)
            info_class[i], info_rank[i] = c, sizes[c]
            sizes[c] += 1
    return _Layout(
        head=head,
        info_head=info_head,
        nxt=nxt,
        prv=prv,
        entry_op=[i for _, _, i in events],
        is_call=[kind == 0 for _, kind, _ in events],
        call_pos=call_pos,
        ret_pos=ret_pos,
        info_class=info_class,
        info_rank=info_rank,
        n_classes=len(sizes),
    )


@dataclass(slots=True)
class _Outcome:
    verdict: Verdict
    explored: int
    # Where the search got stuck deepest (on ``watch`` only, when watching): the order
    # built so far (partition-local op numbers), the operation whose return stopped it,
    # and the state there.
    path: list[int] = field(default_factory=list)
    blocking: int = -1
    state: Hashable = None
    tried: set[Hashable] = field(default_factory=set)  # states in which ``watch`` was tried
    reason: str = ""  # set when the model proved ``blocking`` illegal in every state


def _search(model: Model, ops: Sequence[Operation], deadline: float, watch: int = -1) -> _Outcome:
    """The WGL search over one partition (see the module docstring).

    One long loop on purpose: it is the checker's hot path, and locals are much faster
    than attribute access or helper calls in CPython.
    """
    lay = _layout(ops)
    out = _Outcome(Verdict.OK, 0)
    never = model.never_legal(ops)
    if never:
        out.verdict = Verdict.ILLEGAL
        out.blocking = min(never, key=lambda n: lay.ret_pos[n])  # the first to return
        out.reason = never[out.blocking]
        return out
    head, info_head, nxt, prv = lay.head, lay.info_head, lay.nxt, lay.prv
    entry_op, is_call, call_pos, ret_pos = lay.entry_op, lay.is_call, lay.call_pos, lay.ret_pos
    info_class, info_rank = lay.info_class, lay.info_rank
    placed_in_class = [0] * lay.n_classes
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    read_only = [model.is_read_only(op.input) for op in ops]
    step = model.step
    state: Hashable = model.init()
    done = 0  # bitset: known-outcome operations placed
    info_done = 0  # bitset: unknown-outcome operations placed
    cache: dict[tuple[int, Hashable], list[int]] = {}  # (done, state) -> info_done sets
    stack_op: list[int] = []
    stack_state: list[Hashable] = []
    # per placed op: _NIL (known outcome), _FORCED (read-only, placed as soon as legal),
    # or the return entry an unknown-outcome op was placed at
    stack_at: list[int] = []
    depth = -1
    countdown = _CLOCK_EVERY
    resume = info_head  # the info chain scan starts after this entry

    entry = nxt[head]
    while entry != _NIL:
        countdown -= 1
        if countdown == 0:
            countdown = _CLOCK_EVERY
            if time.monotonic() >= deadline:
                out.verdict = Verdict.UNKNOWN
                return out
        if is_call[entry]:
            i = entry_op[entry]
            ok, new_state = step(state, inputs[i], outputs[i])
            if i == watch:
                out.tried.add(state)
            if not ok:
                entry = nxt[entry]
                continue
            new_done = done | (1 << i)
            seen = cache.get((new_done, new_state))
            if seen is None:
                cache[(new_done, new_state)] = seen = []
            for prior in seen:
                if prior & info_done == prior:
                    break  # explored already, or dominated by an explored node
            else:
                seen.append(info_done)
                out.explored += 1
                stack_op.append(i)
                stack_state.append(state)
                stack_at.append(_FORCED if read_only[i] else _NIL)
                state = new_state
                done = new_done
                # lift: unlink the call entry, then the return entry
                p, q = prv[entry], nxt[entry]
                nxt[p] = q
                if q != _NIL:
                    prv[q] = p
                r = ret_pos[i]
                p, q = prv[r], nxt[r]
                nxt[p] = q
                if q != _NIL:
                    prv[q] = p
                entry = nxt[head]
                continue
            if not read_only[i]:
                entry = nxt[entry]
                continue
            # A legal read-only op whose placement was explored and failed: this node
            # fails too (see "Read-only operations"), so fall through to backtracking.
        else:
            # A return entry: every known-outcome candidate failed here. Before giving
            # up on this state, try the unknown-outcome ops called before this return.
            j = nxt[resume]
            resume = info_head
            placed = False
            while j != _NIL and j < entry:
                i = entry_op[j]
                if placed_in_class[info_class[i]] == info_rank[i]:  # else a twin goes first
                    ok, new_state = step(state, inputs[i], outputs[i])
                    if ok:
                        new_info = info_done | (1 << i)
                        seen = cache.get((done, new_state))
                        if seen is None:
                            cache[(done, new_state)] = seen = []
                        for prior in seen:
                            if prior & new_info == prior:
                                break
                        else:
                            seen.append(new_info)
                            placed = True
                            break
                j = nxt[j]
            if placed:
                out.explored += 1
                stack_op.append(i)
                stack_state.append(state)
                stack_at.append(entry)
                state = new_state
                info_done = new_info
                placed_in_class[info_class[i]] += 1
                p, q = prv[j], nxt[j]
                nxt[p] = q
                if q != _NIL:
                    prv[q] = p
                entry = nxt[head]
                continue
            # Nothing fits before this return.
            blocking = entry_op[entry]
            if len(stack_op) > depth and (watch < 0 or blocking == watch):
                depth = len(stack_op)
                out.path, out.blocking, out.state = stack_op[:], blocking, state
        # Backtrack: undo the last placement and try the next candidate after it; a
        # forced placement has no alternatives, so its node failed too: undo further.
        while True:
            if not stack_op:
                out.verdict = Verdict.ILLEGAL
                return out
            i = stack_op.pop()
            state = stack_state.pop()
            at = stack_at.pop()
            c = call_pos[i]
            if at >= 0:
                # an unknown-outcome op: relink its call, go on along the info chain
                info_done ^= 1 << i
                placed_in_class[info_class[i]] -= 1
                p, q = prv[c], nxt[c]
                nxt[p] = c
                if q != _NIL:
                    prv[q] = c
                entry = at
                resume = c
                break
            # a known-outcome op: unlift, relinking in reverse order of unlinking
            done ^= 1 << i
            r = ret_pos[i]
            p, q = prv[r], nxt[r]
            nxt[p] = r
            if q != _NIL:
                prv[q] = r
            p, q = prv[c], nxt[c]
            nxt[p] = c
            if q != _NIL:
                prv[q] = c
            if at == _NIL:
                entry = nxt[c]
                break
    # Every known-outcome operation is placed. Info operations still unplaced simply
    # never took effect (or took effect after everything observable).
    return out


def _prefix(ops: Sequence[Operation], cut: tuple[float, int]) -> list[Operation]:
    """The history as it stood at the return event ``cut`` = (time, op number): what was
    called by then, with what was still running turned into unknown-outcome operations."""
    ret_t, k = cut
    prefix = []
    for j, op in enumerate(ops):
        if (op.call, 0, j) > (ret_t, 1, k):
            continue  # called after the cut
        if op.status is Status.INFO or (op.ret, j) > (ret_t, k):
            op = dataclasses.replace(op, status=Status.INFO, ret=math.inf, output=UNKNOWN)
        prefix.append(op)
    return prefix


def _explain(
    model: Model, key: str, ops: Sequence[Operation], deadline: float, first: _Outcome
) -> CounterExample:
    """Isolate the first failing return (see "Counter-examples" above) and describe it."""
    if first.reason:
        # The model refuted the culprit on its own: no order, no prefix needed.
        culprit = ops[first.blocking]
        explanation = f"{_who(model, culprit)} cannot be linearized: {first.reason}"
        return _counterexample(
            model, key, [], model.init(), culprit, [culprit], set(), explanation, True
        )
    cuts = sorted((op.ret, j) for j, op in enumerate(ops) if op.status is not Status.INFO)
    lo, hi = 0, len(cuts) - 1  # invariant: the prefix at cuts[hi] is not linearizable
    while lo < hi:
        mid = (lo + hi) // 2
        verdict = _search(model, _prefix(ops, cuts[mid]), deadline).verdict
        if verdict is Verdict.UNKNOWN:
            return _fallback(model, key, ops, first)
        if verdict is Verdict.ILLEGAL:
            hi = mid
        else:
            lo = mid + 1
    prefix = _prefix(ops, cuts[lo])
    # Operations keep their order, so the culprit's number is its index in the prefix.
    watch = next(n for n, op in enumerate(prefix) if op.index == ops[cuts[lo][1]].index)
    out = _search(model, prefix, deadline, watch=watch)
    if out.verdict is not Verdict.ILLEGAL or out.blocking != watch:
        return _fallback(model, key, ops, first)
    originals = {op.index: op for op in ops}
    culprit = prefix[watch]
    bad = {s for s in out.tried if not model.step(s, culprit.input, culprit.output)[0]}
    good = out.tried - bad
    who = _who(model, culprit)
    noun = model.state_noun
    if not good:
        explanation = f"{who} cannot follow: the latest possible {noun} are {_set(model, bad)}"
    else:
        explanation = (
            f"{who} cannot be placed: where it is legal (after {_set(model, good)}) the "
            f"operations that must take effect before it returns no longer fit, and "
            f"elsewhere the {noun} are {_set(model, bad)}"
        )
    placed = set(out.path)
    unplaced = [originals[op.index] for n, op in enumerate(prefix) if n not in placed]
    return _counterexample(
        model,
        key,
        [originals[prefix[n].index] for n in out.path],
        out.state,
        culprit,
        unplaced,
        out.tried,
        explanation,
        True,
    )


def _fallback(model: Model, key: str, ops: Sequence[Operation], first: _Outcome) -> CounterExample:
    """The first search's deepest point, when isolating the culprit ran out of time."""
    culprit = ops[first.blocking]
    placed = set(first.path)
    unplaced = [
        op
        for n, op in enumerate(ops)
        if n not in placed and (op.call, 0, n) < (culprit.ret, 1, first.blocking)
    ]
    explanation = (
        f"{_who(model, culprit)} could not follow the longest linearizable prefix found "
        f"(which leaves {model.describe_state(first.state)}); the time budget ran out "
        "before the first failing operation was isolated"
    )
    return _counterexample(
        model,
        key,
        [ops[n] for n in first.path],
        first.state,
        culprit,
        unplaced,
        {first.state},
        explanation,
        False,
    )


def _counterexample(
    model: Model,
    key: str,
    prefix: list[Operation],
    state: Hashable,
    culprit: Operation,
    unplaced: list[Operation],
    states: set[Hashable],
    explanation: str,
    isolated: bool,
) -> CounterExample:
    return CounterExample(
        key=key,
        prefix=tuple(prefix),
        prefix_descriptions=tuple(model.describe(op) for op in prefix),
        state=model.describe_state(state),
        blocking=culprit,
        candidates=tuple(
            Candidate(
                op=op,
                description=model.describe(op),
                legal=model.step(state, op.input, op.output)[0],
            )
            for op in unplaced
        ),
        possible_states=tuple(sorted(model.describe_state(s) for s in states)),
        explanation=explanation,
        isolated=isolated,
    )


def _who(model: Model, op: Operation) -> str:
    end = "inf" if math.isinf(op.ret) else str(int(op.ret))
    return f"{model.describe(op)} by process {op.process} [t={op.call}..{end}]"


def _set(model: Model, states: set[Hashable]) -> str:
    return "{" + ", ".join(sorted(model.describe_state(s) for s in states)) + "}"
