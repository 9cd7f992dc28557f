"""Workloads: many logical clients driving the real store, recording a history.

Theory of operation
-------------------
A workload runs ``concurrency`` worker slots. Each slot is one *process* at a time
(Jepsen's term: a logical single-threaded client) with its own ``AsyncClient`` pair, and
performs one operation at a time: record ``invoke``, call the store, record the
completion. The completion type follows Maelstrom's error model (docs/PROTOCOL.md §8):

- ``ok``: the call returned (a read of a missing key is ``ok`` with value ``null``);
- ``fail``: a *definite* refusal, the operation certainly did not take effect
  (``Unavailable``, ``NotFound``, ``CompareFailed``, ``SessionExpired``, ``BadRequest``);
  every one but a failed compare carries ``error`` (the exception's name as a code,
  e.g. ``UNAVAILABLE``), because a failed compare is itself an observation;
- ``info``: unknown (``Indeterminate``, the harness's own timeout, any unexpected
  error). A process whose operation ended ``info`` may still have it in flight, so it
  never invokes again: the slot retires it and continues as a new process (number
  + ``concurrency``), with new clients and so a new write session.

Each process has a *home node*: its clients list that node's address first, so
processes spread over the cluster. Writes follow the store's redirects to the leader;
reads use a separate client that has only ever been sent reads, so a read goes to the
home node unless that node redirects it. A correct node redirects a linearizable read to
the leader (or refuses it); a node that wrongly serves it locally is therefore *seen*
doing so from its minority side of a partition, which is what lets the harness catch
stale reads at all.

Workloads (``WORKLOADS``):

- ``register``: read / write / cas on a few registers with unique written values;
  checked for linearizability per key with the register model
  (:func:`jepsen_like.checker.check`). Each key takes at most ``ops_per_key``
  invocations and is then replaced by a fresh key (Jepsen's independent keys), which
  bounds every per-key search the checker must do.
- ``set``: each add of a unique integer ``e`` is ``put("set/<e>", "1")``; after the
  faults are healed a final linearizable scan reads the set back. Checked by
  :func:`check_set`: every acknowledged add present, nothing duplicated or invented.

``append``, ``watch`` and ``lock`` live in their own modules
(:mod:`jepsen_like.workload_append`, :mod:`jepsen_like.workload_watch`,
:mod:`jepsen_like.workload_lock`); :mod:`jepsen_like.catalog` names them all.

Every loop is bounded: by the stop event, by the client's deadline and by an outer
timeout per operation.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from jepsen_like.checker import CheckResult, Verdict, check
from jepsen_like.history import Operation, Record, RecordType, Status, dump_history
from jepsen_like.models import RegisterModel
from kvstore.client import (
    AsyncClient,
    BadRequest,
    ClientError,
    CompareFailed,
    Indeterminate,
    NotFound,
    SessionExpired,
    Unavailable,
)

__all__ = [
    "KeyPool",
    "Recorder",
    "RegisterWorkload",
    "SetResult",
    "SetWorkload",
    "Workload",
    "WorkloadOptions",
    "check_set",
]


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    endpoints: tuple[str, ...]  # client addresses, one per node, in node order
    concurrency: int = 10
    rate: float = 100.0  # target invocations per second, all processes together
    keys: int = 3  # registers in use at once
    ops_per_key: int = 300
    seed: int = 0
    attempt_timeout: float = 1.0  # one client attempt
    op_deadline: float = 4.0  # one operation, retries included
    final_read_timeout: float = 30.0
    lease_ttl_ms: int = 1000  # lock: each holder's lease
    stall_probability: float = 0.1  # lock: a holder stalls past its lease this often
    fencing: bool = True  # lock: False writes without the token check (harness self-test)
    election_timeout_s: float = 0.5  # the nodes' base election timeout (ticks x tick)
    lease_ttl_s: float | None = None  # lease: the TTL asked for (None: 4 election timeouts)
    tls: ssl.SSLContext | None = None  # the nodes speak TLS (--net netns): verify with this


# ---- the history ---------------------------------------------------------------------


class Recorder:
    """Appends records to memory and, line by line, to ``history.jsonl`` (so a crashed
    run still leaves its history). Times are ns since the recorder's creation."""

    def __init__(self, path: Path | None = None) -> None:
        self.t0 = time.monotonic_ns()
        self.records: list[Record] = []
        self._counts: Counter[str] = Counter()  # kept as we go: progress polls it often
        self._out: IO[str] | None = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115

    def now(self) -> int:
        return time.monotonic_ns() - self.t0

    def add(
        self,
        process: int,
        rtype: RecordType,
        f: str,
        key: str,
        value: Any,
        *,
        error: str | None = None,
    ) -> Record:
        rec = Record(
            process=process, type=rtype, f=f, key=key, value=value, time=self.now(), error=error
        )
        self.records.append(rec)
        if rtype is not RecordType.INVOKE:
            self._counts[str(rtype)] += 1
        if self._out is not None:
            self._out.writelines(dump_history([rec]))
        return rec

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def counts(self) -> Counter[str]:
        """Completions by type (``ok``, ``fail``, ``info``) so far."""
        return Counter(self._counts)


# ---- processes and their clients -----------------------------------------------------


class _Process:
    """One logical client: a number, a home node, a read client and a write client."""

    def __init__(self, number: int, opts: WorkloadOptions) -> None:
        self.number = number
        n = len(opts.endpoints)
        home = number % n
        order = [opts.endpoints[(home + i) % n] for i in range(n)]
        self.home = opts.endpoints[home]
        kwargs: dict[str, Any] = {
            "timeout": opts.attempt_timeout,
            "deadline": opts.op_deadline,
            "backoff_cap": 0.5,
            "rng": random.Random(f"{opts.seed}:client:{number}"),
            "tls": opts.tls,
        }
        self.reads = AsyncClient(order, **kwargs)
        self.writes = AsyncClient(order, **kwargs)

    async def close(self) -> None:
        await asyncio.gather(self.reads.close(), self.writes.close(), return_exceptions=True)


Outcome = tuple[RecordType, Any]  # completion type and value


async def _perform(
    rec: Recorder,
    proc: _Process,
    f: str,
    key: str,
    value: Any,
    call: Callable[[], Awaitable[Any]],
    timeout: float,
    *,
    returns: bool | None = None,
    definite: tuple[type[BaseException], ...] = (),
) -> Outcome:
    """Invoke, call, complete: the one place client errors become completion types.

    ``returns``: an ok completion records what ``call`` returned (default: only for
    reads); otherwise every completion echoes the invoked value. ``definite``: extra
    exception types that certainly mean "did not happen" (a workload's own refusals)."""
    rec.add(proc.number, RecordType.INVOKE, f, key, value)
    error: str | None = None  # why a fail failed, unless a compare did not hold
    try:
        async with asyncio.timeout(timeout):
            result = await call()
        outcome: Outcome = (RecordType.OK, result)
    except NotFound:
        outcome = (RecordType.OK, None) if f == "read" else (RecordType.FAIL, value)
        error = None if f == "read" else "NOT_FOUND"
    except CompareFailed:
        outcome = (RecordType.FAIL, value)  # an observation: the compare did not hold
    except (Unavailable, SessionExpired, BadRequest) as exc:
        outcome, error = (RecordType.FAIL, value), _error_code(exc)
    except (Indeterminate, TimeoutError, ClientError, OSError) as exc:
        outcome = (RecordType.FAIL if isinstance(exc, definite) else RecordType.INFO, value)
        if outcome[0] is RecordType.FAIL:
            error = _error_code(exc)
    rtype, out = outcome
    if returns is None:
        returns = f == "read"
    value_out = out if rtype is RecordType.OK and returns else value
    rec.add(proc.number, rtype, f, key, value_out, error=error)
    return outcome


def _error_code(exc: BaseException) -> str:
    """The history's ``error`` for a definite failure: the client's exception, by name
    (UNAVAILABLE, SESSION_EXPIRED, ...)."""
    return "".join(f"_{c}" if c.isupper() else c for c in type(exc).__name__).lstrip("_").upper()


class _Slots:
    """The worker slots: each holds its current process and retires it after ``info``."""

    def __init__(self, opts: WorkloadOptions) -> None:
        self.opts = opts
        self.procs = [_Process(i, opts) for i in range(opts.concurrency)]
        self._closing: list[asyncio.Task[None]] = []

    def retire(self, slot: int) -> _Process:
        old = self.procs[slot]
        self._closing.append(asyncio.get_running_loop().create_task(old.close()))
        new = self.procs[slot] = _Process(old.number + self.opts.concurrency, self.opts)
        return new

    def fresh(self) -> _Process:
        """A process numbered after every process so far (for final reads)."""
        top = max(p.number for p in self.procs)
        proc = _Process(top + 1, self.opts)
        self.procs.append(proc)
        return proc

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.procs), *self._closing)


# ---- workloads -------------------------------------------------------------------------


class KeyPool:
    """Jepsen's independent keys: ``active`` keys in use at once, each retired after
    ``uses`` picks and replaced by a fresh one (in-flight operations finish on it), so a
    per-key check stays small. Each key also numbers the unique values written to it."""

    def __init__(self, prefix: str, active: int, uses: int) -> None:
        self._prefix = prefix
        self._uses_per_key = uses
        self._count = 0
        self._uses: dict[str, int] = {}
        self._next_value: dict[str, int] = {}
        self.active = [self._new() for _ in range(active)]

    def _new(self) -> str:
        key = f"{self._prefix}{self._count}"
        self._count += 1
        self._uses[key] = 0
        self._next_value[key] = 1
        return key

    def pick(self, rng: random.Random) -> str:
        slot = rng.randrange(len(self.active))
        key = self.active[slot]
        self._uses[key] += 1
        if self._uses[key] >= self._uses_per_key:
            self.active[slot] = self._new()
        return key

    def unique_value(self, key: str) -> int:
        value = self._next_value[key]
        self._next_value[key] += 1
        return value

    def used(self) -> list[str]:
        """Every key handed out so far, oldest first."""
        return [f"{self._prefix}{n}" for n in range(self._count)]


class Workload(abc.ABC):
    """Shared driver: ``run`` until stopped, then ``final`` reads, then ``check``."""

    name = ""

    def __init__(self, opts: WorkloadOptions, recorder: Recorder) -> None:
        self.opts = opts
        self.rec = recorder
        self.rng = random.Random(f"{opts.seed}:workload")
        self.slots = _Slots(opts)
        self.latencies: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        workers = [
            asyncio.get_running_loop().create_task(self._worker(slot, stop))
            for slot in range(self.opts.concurrency)
        ]
        await asyncio.gather(*workers)

    async def _worker(self, slot: int, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.opts.seed}:slot:{slot}")
        # Each slot aims at rate/concurrency ops/s; stagger uniformly around that.
        mean_gap = self.opts.concurrency / self.opts.rate
        await _sleep_unless(stop, rng.uniform(0, mean_gap))
        while not stop.is_set():
            proc = self.slots.procs[slot]
            rtype, _ = await self.step(proc, rng)
            if rtype is RecordType.INFO:
                self.slots.retire(slot)
            await _sleep_unless(stop, rng.uniform(0, 2 * mean_gap))

    @abc.abstractmethod
    async def step(self, proc: _Process, rng: random.Random) -> Outcome:
        """One operation by ``proc``: invoke, call the store, record the completion."""

    async def final(self) -> None:  # noqa: B027 - optional hook; most workloads need none
        """Reads after the faults are healed (part of the history)."""

    @abc.abstractmethod
    def check(self, ops: Sequence[Operation], time_budget_s: float) -> dict[str, Any]:
        """The workload's verdict on its history (``valid`` and the evidence)."""

    async def close(self) -> None:
        await self.slots.close()

    def observe_nodes(self, samples: list[tuple[int, str, str, int | None]], every: float) -> None:  # noqa: B027
        """The runner's status polling of the nodes (``(ns, node, role, term)`` at each
        change, polled every ``every`` s), handed over before :meth:`check`; the lease
        checker counts leader changes and leaderless time from it."""

    @property
    def op_timeout(self) -> float:
        # The client gives up at its deadline; this outer bound only catches a hang.
        return self.opts.op_deadline + 2.0


class RegisterWorkload(Workload):
    """read / write / cas on ``keys`` registers; see the module docstring."""

    name = "register"

    def __init__(self, opts: WorkloadOptions, recorder: Recorder) -> None:
        super().__init__(opts, recorder)
        self.keys = KeyPool("k", opts.keys, opts.ops_per_key)
        self._last_seen: dict[str, int | None] = {}  # last value a completed op showed

    async def step(self, proc: _Process, rng: random.Random) -> Outcome:
        key = self.keys.pick(rng)
        store_key = f"register/{key}"
        roll = rng.random()
        if roll < 0.5:
            return await self._read(proc, key)
        new = self.keys.unique_value(key)
        if roll < 0.75:
            outcome = await _perform(
                self.rec,
                proc,
                "write",
                key,
                new,
                lambda: proc.writes.put(store_key, str(new)),
                self.op_timeout,
            )
        else:
            expected = self._last_seen.get(key)

            async def cas() -> None:
                if expected is None:
                    await proc.writes.cas(store_key, new_value=str(new), expected_version=0)
                else:
                    await proc.writes.cas(
                        store_key, new_value=str(new), expected_value=str(expected)
                    )

            outcome = await _perform(
                self.rec, proc, "cas", key, [expected, new], cas, self.op_timeout
            )
        if outcome[0] is RecordType.OK:
            self._last_seen[key] = new
        return outcome

    async def _read(self, proc: _Process, key: str) -> Outcome:
        async def read() -> int:
            kv = await proc.reads.get(f"register/{key}")
            return int(kv.value)

        outcome = await _perform(self.rec, proc, "read", key, None, read, self.op_timeout)
        if outcome[0] is RecordType.OK:
            self._last_seen[key] = outcome[1]
        return outcome

    async def final(self) -> None:
        """One linearizable read of every key ever used, by a fresh process, retried
        (as new processes) until it succeeds or the final-read time runs out."""
        deadline = time.monotonic() + self.opts.final_read_timeout
        proc = self.slots.fresh()
        for key in self.keys.used():
            while time.monotonic() < deadline:
                rtype, _ = await self._read(proc, key)
                if rtype is RecordType.OK:
                    break
                if rtype is RecordType.INFO:
                    proc = self.slots.fresh()
                await asyncio.sleep(0.2)

    def check(self, ops: Sequence[Operation], time_budget_s: float) -> dict[str, Any]:
        result: CheckResult = check(RegisterModel(), ops, time_budget_s=time_budget_s)
        return {
            "checker": "linearizable",
            "model": "register",
            "valid": _valid(result.verdict),
            "result": result,
        }


class SetWorkload(Workload):
    """Unique adds, then one final read of the whole set; see the module docstring."""

    name = "set"
    PREFIX: Final = "set/"

    def __init__(self, opts: WorkloadOptions, recorder: Recorder) -> None:
        super().__init__(opts, recorder)
        self._next_element = 0

    async def step(self, proc: _Process, rng: random.Random) -> Outcome:
        element = self._next_element
        self._next_element += 1
        return await _perform(
            self.rec,
            proc,
            "add",
            "set",
            element,
            lambda: proc.writes.put(f"{self.PREFIX}{element:09d}", "1"),
            self.op_timeout,
        )

    async def _scan_all(self, client: AsyncClient) -> list[int]:
        elements: list[int] = []
        start = self.PREFIX.encode()
        end = b"set0"  # prefix_end("set/")
        while True:
            page = await client.scan(start=start, end=end)
            elements += [int(kv.key[len(self.PREFIX) :]) for kv in page.kvs]
            if not page.more or not page.kvs:
                return elements
            start = page.kvs[-1].key + b"\x00"

    async def final(self) -> None:
        deadline = time.monotonic() + self.opts.final_read_timeout
        while time.monotonic() < deadline:
            proc = self.slots.fresh()
            rtype, _ = await _perform(
                self.rec,
                proc,
                "read",
                "set",
                None,
                lambda proc=proc: self._scan_all(proc.reads),  # type: ignore[misc]
                self.opts.final_read_timeout,
            )
            if rtype is RecordType.OK:
                return
            await asyncio.sleep(0.5)

    def check(self, ops: Sequence[Operation], time_budget_s: float) -> dict[str, Any]:
        result = check_set(ops)
        return {"checker": "set", "valid": result.valid, "result": result}


def _valid(verdict: Verdict) -> bool | None:
    return {Verdict.OK: True, Verdict.ILLEGAL: False, Verdict.UNKNOWN: None}[verdict]


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


# ---- the set checker (pure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetResult:
    """What the final read says about the adds. ``valid`` is None when no final read
    succeeded (nothing can be said)."""

    valid: bool | None
    attempted: int
    acknowledged: int  # adds that returned ok
    unknown: int  # adds that ended info
    failed: int  # adds that ended fail
    read: int  # elements in the final read
    lost: tuple[int, ...] = ()  # acknowledged, absent from the final read
    unexpected: tuple[int, ...] = ()  # read, never attempted (invented) or definitely failed
    duplicated: tuple[int, ...] = ()  # read more than once
    recovered: tuple[int, ...] = ()  # info adds that are present
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "unknown": self.unknown,
            "failed": self.failed,
            "read": self.read,
            "lost_count": len(self.lost),
            "unexpected_count": len(self.unexpected),
            "duplicated_count": len(self.duplicated),
            "recovered_count": len(self.recovered),
            "lost": list(self.lost),
            "unexpected": list(self.unexpected),
            "duplicated": list(self.duplicated),
            "recovered": list(self.recovered),
            "notes": list(self.notes),
        }


def check_set(ops: Sequence[Operation]) -> SetResult:
    """Compare the adds with the last successful final read."""
    by_status: dict[Status, set[Any]] = {s: set() for s in Status}
    reads: list[Operation] = []
    for op in ops:
        if op.f == "add":
            by_status[op.status].add(op.input.value)
        elif op.f == "read" and op.status is Status.OK:
            reads.append(op)
    ok, info, failed = by_status[Status.OK], by_status[Status.INFO], by_status[Status.FAIL]
    attempted = ok | info | failed
    if not reads:
        return SetResult(
            None,
            attempted=len(attempted),
            acknowledged=len(ok),
            unknown=len(info),
            failed=len(failed),
            read=0,
            notes=("no final read succeeded",),
        )
    final = max(reads, key=lambda op: op.ret)
    assert isinstance(final.output, tuple), "a set read returns a list of elements"
    seen = Counter(final.output)
    present = set(seen)
    lost = tuple(sorted(ok - present))
    unexpected = tuple(sorted(present - (ok | info)))
    duplicated = tuple(sorted(e for e, c in seen.items() if c > 1))
    recovered = tuple(sorted(info & present))
    notes = []
    if failed & present:
        notes.append(f"{len(failed & present)} element(s) of definitely failed adds are present")
    return SetResult(
        not (lost or unexpected or duplicated),
        attempted=len(attempted),
        acknowledged=len(ok),
        unknown=len(info),
        failed=len(failed),
        read=sum(seen.values()),
        lost=lost,
        unexpected=unexpected,
        duplicated=duplicated,
        recovered=recovered,
        notes=tuple(notes),
    )
