"""The run loop: a real cluster, faults, many clients, a checked history, evidence.

Theory of operation
===================

``jepsen-like run`` tests the store the way Jepsen does, on one machine, without root:

1. **Cluster.** A fresh run directory gets one config per node (:mod:`jepsen_like.db`):
   every peer link ``i → j`` is routed through its own fault-injecting TCP proxy
   (:mod:`jepsen_like.proxy`), all proxies served by this process's event loop. The
   nodes are real ``kv node`` processes with fsync on, started by pid; the run waits
   until a majority acknowledges a leader. (With ``--net netns``, as root on Linux,
   each node has a real network namespace instead and the kernel makes the faults:
   :mod:`jepsen_like.netns`.)
2. **Load and faults, concurrently.** The workload (:mod:`jepsen_like.workloads`) runs
   ``concurrency`` logical clients, each recording ``invoke`` then ``ok``/``fail``/
   ``info`` for every operation in a shared history. The nemesis schedule
   (:mod:`jepsen_like.nemesis`) alternates healthy and faulty intervals, logging each
   fault's start and end on the same clock as the history.
3. **Time limit, then heal.** At ``time_limit`` the clients stop invoking (operations in
   flight finish within their deadline, or are cut off and count as unknown), and the
   schedule heals everything: links open, latency gone, paused nodes resumed, dead nodes
   restarted. The heal runs in a ``finally``: no run ends with a fault in place.
4. **Final reads.** Once a leader is back, the workload reads its state back (the set's
   final read; a read of every register), as ordinary history operations.
5. **Stop.** Every node is stopped by pid (SIGTERM, then SIGKILL); on any error path
   every node is SIGKILLed instead, and an ``atexit`` hook covers the rest.
6. **Check and report.** The history is checked (linearizability per key for
   ``register``, lost/unexpected elements for ``set``) and the evidence is written
   (:mod:`jepsen_like.report`): history, nemesis timeline, node logs, results.json,
   report.html.

Verdicts map to exit codes: 0 every checker valid, 1 some checker found a violation,
2 unknown (a check ran out of time, no final read succeeded) or the run itself failed.

Why trust it: the faults act on the real processes and sockets; the history is what
the clients saw, classified by Maelstrom's definite/indefinite rule; and the harness is
itself tested by running the store in deliberately broken modes (``--unsafe
stale-reads``, ``--unsafe lazy-fsync``), which it must report as invalid.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jepsen_like.catalog import make_workload, workload_class
from jepsen_like.checker import CheckResult
from jepsen_like.clock import LIBFAKETIME, NodeClocks, available
from jepsen_like.db import DBError, LocalDB, node_ids
from jepsen_like.history import pair_operations
from jepsen_like.nemesis import (
    Env,
    Schedule,
    combined,
    needs_clock,
    parse_nemesis,
    verification,
)
from jepsen_like.netns import NetnsNet, refusal
from jepsen_like.proxy import ProxyNet
from jepsen_like.report import copy_logs, summarize, write_evidence
from jepsen_like.workloads import (
    Recorder,
    SetResult,
    Workload,
    WorkloadOptions,
)

__all__ = [
    "EXIT_INVALID",
    "EXIT_UNKNOWN",
    "EXIT_VALID",
    "RunOptions",
    "RunOutcome",
    "run",
    "run_async",
    "validate_options",
]

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN = 0, 1, 2
NODE_UNSAFE_MODES = ("stale-reads", "lazy-fsync", "wall-clock-leases")
"""Broken modes of the store's nodes (``kv node --unsafe``)."""
CLIENT_UNSAFE_MODES = {"no-fencing": "lock"}
"""Broken modes of a workload's clients, and the workload each applies to."""
UNSAFE_MODES = (*NODE_UNSAFE_MODES, *CLIENT_UNSAFE_MODES)
NETS = ("proxy", "netns")
"""How peer links are made: harness proxies (default), or real network namespaces."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    workload: str = "register"
    nemesis: str = "partition"
    nemesis_interval: float = 5.0
    time_limit: float = 60.0
    concurrency: int = 10
    rate: float = 100.0
    keys: int = 3
    ops_per_key: int = 300
    nodes: int = 3
    seed: int | None = None
    out: Path = Path("jepsen-runs")
    unsafe: str | None = None
    tick_ms: int = 50
    election_ticks: int = 10
    attempt_timeout: float = 1.0
    op_deadline: float = 4.0
    check_time_limit: float = 120.0
    leader_timeout: float = 30.0
    keep_data: bool = False
    command: str = ""
    net: str = "proxy"


@dataclass(slots=True)
class RunOutcome:
    """What a run found. ``valid`` None: unknown (or the run failed: ``error``)."""

    run_dir: Path
    valid: bool | None
    results: dict[str, Any]
    error: str | None = None
    check: Any = None  # the workload checker's result object
    checkers: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.error is None and self.valid is True:
            return EXIT_VALID
        if self.valid is False:
            return EXIT_INVALID
        return EXIT_UNKNOWN


ProgressHook = Callable[[str, dict[str, Any]], None]
"""Called with (phase, facts) as the run proceeds; the CLI renders it."""


def _run_dir(opts: RunOptions, seed: int) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{opts.workload}-{opts.nemesis.replace(',', '+')}-{stamp}-s{seed}"
    if opts.unsafe:
        name += f"-UNSAFE-{opts.unsafe}"
    out = opts.out.resolve()  # every path below, and in the nodes' configs, is absolute
    path = out / name
    n = 1
    while path.exists():
        n += 1
        path = out / f"{name}.{n}"
    path.mkdir(parents=True)
    latest = out / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(path.name)
    except OSError:
        pass  # a convenience only
    return path


def validate_options(opts: RunOptions) -> list[str]:
    """The nemesis kinds; refuses bad options before anything starts (ValueError)."""
    kinds = parse_nemesis(opts.nemesis)
    workload_class(opts.workload)
    if opts.nodes not in (3, 5):
        raise ValueError("--nodes must be 3 or 5")
    if opts.unsafe is not None and opts.unsafe not in UNSAFE_MODES:
        raise ValueError(f"--unsafe must be one of {', '.join(UNSAFE_MODES)}")
    needs = CLIENT_UNSAFE_MODES.get(opts.unsafe or "")
    if needs is not None and opts.workload != needs:
        raise ValueError(f"--unsafe {opts.unsafe} applies to the {needs} workload only")
    if opts.time_limit <= 0 or opts.concurrency < 1 or opts.rate <= 0 or opts.keys < 1:
        raise ValueError("time limit, concurrency, rate and keys must be positive")
    if opts.net not in NETS:
        raise ValueError(f"--net must be one of {', '.join(NETS)}")
    if opts.net == "netns" and (problem := refusal(kinds)) is not None:
        raise ValueError(problem)  # not root, not Linux, no ip netns, or a fault it lacks
    if needs_clock(kinds) and not available():
        raise ValueError(f"clock faults need libfaketime ({LIBFAKETIME}): apt-get install faketime")
    return kinds


async def run_async(opts: RunOptions, progress: ProgressHook | None = None) -> RunOutcome:
    """One complete run; never leaves a node process behind."""
    kinds = validate_options(opts)
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 31)
    note = progress or (lambda phase, facts: None)
    run_dir = _run_dir(opts, seed)
    raft: dict[str, int | bool | str] = {
        "tick_ms": opts.tick_ms,
        "heartbeat_ticks": 1,
        "election_ticks": opts.election_ticks,
        "fsync": "always",
    }
    node_unsafe = opts.unsafe if opts.unsafe in NODE_UNSAFE_MODES else None
    clock = NodeClocks(run_dir / "clock", node_ids(opts.nodes)) if needs_clock(kinds) else None
    net: ProxyNet | NetnsNet
    if opts.net == "netns":
        net = NetnsNet(node_ids(opts.nodes))  # addresses chosen; made by net.start()
        db = LocalDB(
            run_dir,
            opts.nodes,
            raft=raft,
            unsafe=node_unsafe,
            placement=net.placement(),
            clock=clock,
        )
    else:
        db = LocalDB(run_dir, opts.nodes, raft=raft, unsafe=node_unsafe, clock=clock)
        net = ProxyNet(db.peer_addresses, seed=seed)
    rec = Recorder(run_dir / "history.jsonl")
    wopts = WorkloadOptions(
        endpoints=tuple(db.endpoints()),
        concurrency=opts.concurrency,
        rate=opts.rate,
        keys=opts.keys,
        ops_per_key=opts.ops_per_key,
        seed=seed,
        attempt_timeout=opts.attempt_timeout,
        op_deadline=opts.op_deadline,
        fencing=opts.unsafe != "no-fencing",
        election_timeout_s=opts.election_ticks * opts.tick_ms / 1000,
        tls=db.client_tls,
    )
    workload = make_workload(opts.workload, wopts, rec)
    schedule = Schedule(
        kinds,
        Env(net, db, random.Random(f"{seed}:nemesis"), clock=clock),
        interval=opts.nemesis_interval,
        clock_ns=rec.now,
        combined=combined(opts.nemesis),
    )
    poller = StatusPoller(db, rec.now)
    facts: dict[str, Any] = {"run_dir": str(run_dir), "seed": seed}
    error: str | None = None
    start_ns = end_ns = 0
    clean = False
    try:
        await net.start()
        db.write_configs({link: net.address(*link) for link in net.links})
        for node in db.nodes:
            db.start(node)
        note("starting", facts)
        leader = await db.wait_for_leader(opts.leader_timeout)
        if leader is None:
            raise DBError(f"no leader elected within {opts.leader_timeout}s")
        facts["first_leader"] = leader
        start_ns = rec.now()
        poller.start()
        await _drive(opts, workload, schedule, db, rec, note, facts)
        end_ns = rec.now()
        note("healing", facts)
        _note_crashes(db, schedule)
        facts["heal"] = await schedule.heal()
        leader = facts["leader_after_heal"] = await db.wait_for_leader(opts.leader_timeout)
        if leader is None:
            error = f"the cluster did not recover: no leader {opts.leader_timeout:g}s after healing"
        note("final reads", facts)
        await workload.final()
        _note_crashes(db, schedule)
        clean = True
        await poller.stop()
    except Exception as exc:  # recorded as the run's error (exit 2), evidence still written
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, DBError | OSError):
            facts["traceback"] = traceback.format_exc()
    finally:
        end_ns = end_ns or rec.now()
        await poller.stop()
        try:
            if not clean:
                await asyncio.shield(_heal_quietly(schedule))
            await workload.close()
        finally:
            rec.close()
            if clean:
                facts["stopped"] = await db.stop_all()
            else:
                db.kill_all_now()
            await net.close()
            copy_logs(db.data_dirs, run_dir)
    note("checking", facts)
    facts["node_states"] = poller.samples
    facts["node_states_end"] = poller.stopped_ns
    workload.observe_nodes(poller.samples, poller.every)
    return _finish(
        opts, kinds, seed, run_dir, db, rec, schedule, workload, facts, error, start_ns, end_ns
    )


class StatusPoller:
    """The per-node timeline: every ``every`` s, each node's role (leader, follower,
    candidate...) from its own status answer, or what the harness knows instead: down
    (no process), paused (SIGSTOPped: not asked, it could not answer), no answer. Only
    changes are kept, as ``(time ns, node, state, term)``. Two polls a second per node
    is light next to the workload, and fine enough for fault windows of seconds."""

    def __init__(self, db: LocalDB, clock_ns: Callable[[], int], every: float = 0.5) -> None:
        self.db = db
        self.clock_ns = clock_ns
        self.every = every
        self.samples: list[tuple[int, str, str, int | None]] = []
        self._last: dict[str, tuple[str, int | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.stopped_ns = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.stopped_ns = self.clock_ns()

    async def _run(self) -> None:
        while True:
            await asyncio.gather(*(self._poll(n) for n in self.db.nodes))
            await asyncio.sleep(self.every)

    async def _poll(self, node: str) -> None:
        term: int | None = None
        if not self.db.running(node):
            state = "down"
        elif node in self.db.paused:
            state = "paused"
        else:
            try:
                st = await asyncio.wait_for(self.db.status(node), self.every)
                state, term = str(st.role), st.term
            except Exception:
                state = "no answer"
        # A change of term counts too: the lease checker counts leader changes by term.
        if self._last.get(node, (None, None)) != (state, term):
            self.samples.append((self.clock_ns(), node, state, term))
        self._last[node] = (state, term)


def node_intervals(
    samples: list[tuple[int, str, str, int | None]], nodes: list[str], end_ns: int
) -> dict[str, list[dict[str, Any]]]:
    """Each node's states as intervals ``{start_s, end_s, state, term}``, in order."""
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in nodes}
    for t, node, state, term in sorted(samples):
        spans = out.setdefault(node, [])
        if spans:
            spans[-1]["end_s"] = round(t / 1e9, 3)
        spans.append({"start_s": round(t / 1e9, 3), "end_s": None, "state": state, "term": term})
    for spans in out.values():
        if spans and spans[-1]["end_s"] is None:
            spans[-1]["end_s"] = round(max(end_ns / 1e9, spans[-1]["start_s"]), 3)
    return out


async def _heal_quietly(schedule: Schedule) -> None:
    """Heal on an error path: resume paused nodes above all, so SIGKILL reaches them."""
    try:
        await schedule.heal()
    except Exception as exc:  # the processes are killed next anyway
        print(f"jepsen-like: heal failed: {exc!r}", file=sys.stderr)


def _note_crashes(db: LocalDB, schedule: Schedule) -> None:
    for crash in db.reap_crashes():
        schedule.note("crash", str(crash["node"]), crash)


async def _drive(
    opts: RunOptions,
    workload: Workload,
    schedule: Schedule,
    db: LocalDB,
    rec: Recorder,
    note: ProgressHook,
    facts: dict[str, Any],
) -> None:
    """Workload and nemesis until the time limit, reporting progress twice a second."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    load = loop.create_task(workload.run(stop))
    faults = loop.create_task(schedule.run(stop))
    began = time.monotonic()
    try:
        while (elapsed := time.monotonic() - began) < opts.time_limit:
            for task in (load, faults):
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            _note_crashes(db, schedule)
            facts.update(elapsed=elapsed, counts=dict(rec.counts()), fault=schedule.active)
            note("running", facts)
            await asyncio.sleep(min(0.5, opts.time_limit - elapsed))
    finally:
        stop.set()
        # In-flight operations end within their deadline; a hang beyond it is cut off
        # (its invoke stays open, which the checker reads as an unknown outcome).
        try:
            await asyncio.wait_for(asyncio.shield(load), workload.op_timeout + 5)
        except TimeoutError:
            load.cancel()
        # The schedule returns once stop is set, after the verification of a fault it
        # has just started (a cancelled verification would leave the fault unproven).
        try:
            await asyncio.wait_for(asyncio.shield(faults), 30)
        except TimeoutError:
            faults.cancel()
        await asyncio.gather(load, faults, return_exceptions=True)
    facts.update(elapsed=opts.time_limit, counts=dict(rec.counts()), fault=None)


def _finish(
    opts: RunOptions,
    kinds: list[str],
    seed: int,
    run_dir: Path,
    db: LocalDB,
    rec: Recorder,
    schedule: Schedule,
    workload: Workload,
    facts: dict[str, Any],
    error: str | None,
    start_ns: int,
    end_ns: int,
) -> RunOutcome:
    checkers: dict[str, Any] = {}
    valid: bool | None = None
    check_result: Any = None
    if not error or error.startswith("the cluster did not recover"):
        try:
            ops = pair_operations(rec.records)
            out = workload.check(ops, opts.check_time_limit)
            check_result = out["result"]
            valid = out["valid"]
            checkers[out["checker"]] = {
                "valid": valid,
                "summary": _summary(out),
                **check_result.to_json(),
            }
        except Exception as exc:
            error = f"checker failed: {type(exc).__name__}: {exc}"
    crashed = sorted({str(c["node"]) for c in db.crashes})
    checkers["nodes"] = {
        "valid": not crashed,
        "summary": (
            f"node(s) {', '.join(crashed)} exited without a fault killing them"
            if crashed
            else "no node exited unless a fault killed it"
        ),
        "crashes": db.crashes,
    }
    if crashed:
        valid = False
    # A fault nobody saw take effect proves nothing: such a run is unknown, never
    # valid (an invalid history stays invalid: the violation happened regardless).
    checkers["faults"] = verification(schedule.timeline)
    if valid is True and checkers["faults"]["valid"] is not True:
        valid = None
    verdict = "error" if error else {True: "valid", False: "invalid", None: "unknown"}[valid]
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    results = {
        "verdict": verdict,
        "valid": valid,
        "error": error,
        "run": {
            "dir": str(run_dir),
            "command": opts.command or _command(opts, seed),
            "workload": opts.workload,
            "nemesis": opts.nemesis,
            "nemesis_kinds": kinds,
            "seed": seed,
            "nodes": opts.nodes,
            "unsafe": opts.unsafe,
            "options": {**options, "seed": seed},
            "first_leader": facts.get("first_leader"),
            "leader_after_heal": facts.get("leader_after_heal"),
            "restarts": db.restarts,
            "faults_ran": sorted({e.kind for e in schedule.timeline if e.event == "start"}),
            "combined": schedule.combined,
            "heal": facts.get("heal"),
            "stopped": facts.get("stopped"),
            "traceback": facts.get("traceback"),
        },
        "checkers": checkers,
        "stats": summarize(
            rec.records, schedule.timeline, workload_start_ns=start_ns, workload_end_ns=end_ns
        ),
        "node_states": node_intervals(
            facts.get("node_states", []), db.nodes, facts.get("node_states_end") or end_ns
        ),
    }
    write_evidence(run_dir, results, rec.records, schedule.timeline)
    if valid is True and error is None and not opts.keep_data:
        shutil.rmtree(run_dir / "data", ignore_errors=True)  # logs were copied
    return RunOutcome(run_dir, valid, results, error, check_result, checkers)


def _summary(out: dict[str, Any]) -> str:
    result = out["result"]
    if not isinstance(result, SetResult | CheckResult):  # elle, watch, lock: say it themselves
        text = str(result.explain()).splitlines()[0]
        counts = getattr(result, "anomaly_counts", None) or {}
        if counts and not any(k in text for k in counts):
            text += "; " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        return text
    if isinstance(result, SetResult):
        return (
            f"{result.acknowledged} acknowledged adds, {len(result.lost)} lost, "
            f"{len(result.unexpected)} unexpected, {len(result.duplicated)} duplicated, "
            f"{len(result.recovered)} of {result.unknown} unknown recovered"
        )
    assert isinstance(result, CheckResult)
    bad = [p.key for p in result.partitions if p.verdict == "illegal"]
    unknown = [p.key for p in result.partitions if p.verdict == "unknown"]
    text = f"{len(result.partitions)} keys, {result.ops} ops checked in {result.elapsed_s:.2f}s"
    if bad:
        text += f"; NOT linearizable: {', '.join(bad)}"
    if unknown:
        text += f"; unknown: {', '.join(unknown)}"
    return text


def _command(opts: RunOptions, seed: int) -> str:
    args = [
        "jepsen-like", "run",
        "--workload", opts.workload,
        "--nemesis", opts.nemesis,
        "--nemesis-interval", f"{opts.nemesis_interval:g}",
        "--time-limit", f"{opts.time_limit:g}",
        "--concurrency", str(opts.concurrency),
        "--rate", f"{opts.rate:g}",
        "--keys", str(opts.keys),
        "--ops-per-key", str(opts.ops_per_key),
        "--nodes", str(opts.nodes),
        "--tick-ms", str(opts.tick_ms),
        "--election-ticks", str(opts.election_ticks),
        "--seed", str(seed),
    ]  # fmt: skip
    if opts.unsafe:
        args += ["--unsafe", opts.unsafe]
    if opts.net != "proxy":
        args += ["--net", opts.net]
    return shlex.join(args)


def run(opts: RunOptions, progress: ProgressHook | None = None) -> RunOutcome:
    """Synchronous entry point (owns the event loop)."""
    return asyncio.run(run_async(opts, progress))
