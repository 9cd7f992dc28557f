"""A bounded load generator for a running cluster (``kv bench``).

Each simulated client is its own :class:`~kvstore.client.AsyncClient`, so it has its own
write session and connection, like N independent processes would; all of them run as
tasks on one event loop, each issuing its next operation as soon as the previous one
answers (a closed loop: throughput is what the cluster sustains at that concurrency,
not an offered rate). The write sessions are opened and the leader found in an untimed
warm-up; ``get`` and ``mixed`` first write every key once, so reads find values.

Every loop is bounded: the run stops after ``ops`` operations or ``duration`` seconds,
and in any case after ``max_seconds``; each operation is bounded by the client's
deadline. Failed operations are counted by error type and left out of the latencies.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kvstore.client import AsyncClient, AuthFailed, ClientError, NoSpace, NotFound, PermissionDenied

__all__ = ["BenchConfig", "BenchResult", "LatencyStats", "Workload", "percentile", "run_bench"]


class Workload(enum.Enum):
    PUT = "put"
    GET = "get"
    MIXED = "mixed"  # half puts, half gets, at random


@dataclass(frozen=True, slots=True)
class BenchConfig:
    endpoints: list[str]
    clients: int = 64
    ops: int | None = None  # total operations; None: run for ``duration``
    duration: float = 10.0  # seconds, when ``ops`` is None
    workload: Workload = Workload.PUT
    value_size: int = 100
    keys: int = 1000
    consistency: str = "linearizable"
    seed: int | None = None
    max_seconds: float = 600.0  # hard stop, whatever ``ops`` says
    op_deadline: float = 10.0  # one operation, retries included
    tls: ssl.SSLContext | None = None  # a TLS cluster: kvstore.tls.client_context
    user: str | None = None  # log in as this user (auth on); each client logs in once
    password: str | None = None

    def __post_init__(self) -> None:
        if self.clients < 1 or self.keys < 1 or self.value_size < 0:
            raise ValueError("clients and keys must be >= 1, value_size >= 0")
        if self.ops is not None and self.ops < 1:
            raise ValueError("ops must be >= 1")
        if self.duration <= 0 or self.max_seconds <= 0:
            raise ValueError("duration and max_seconds must be > 0")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Latencies of successful operations, in seconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: list[float]) -> LatencyStats:
        s = sorted(samples)
        mean = sum(s) / len(s) if s else 0.0
        return cls(
            len(s),
            percentile(s, 50),
            percentile(s, 90),
            percentile(s, 99),
            s[-1] if s else 0.0,
            mean,
        )

    def to_json(self) -> dict[str, Any]:
        ms = {k: round(getattr(self, k) * 1000, 3) for k in ("p50", "p90", "p99", "max", "mean")}
        return {"count": self.count, **{f"{k}_ms": v for k, v in ms.items()}}


@dataclass(slots=True)
class BenchResult:
    workload: Workload
    clients: int
    elapsed: float
    ok: int
    errors: Counter[str] = field(default_factory=Counter)
    latency: dict[str, LatencyStats] = field(default_factory=dict)  # "all", "put", "get"

    @property
    def throughput(self) -> float:
        """Successful operations per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload.value,
            "clients": self.clients,
            "elapsed_s": round(self.elapsed, 3),
            "ok": self.ok,
            "errors": dict(self.errors),
            "throughput_ops_s": round(self.throughput, 1),
            "latency": {k: v.to_json() for k, v in self.latency.items()},
        }


class _Run:
    """Shared state of one measured run (all tasks share one loop: no locks needed)."""

    def __init__(self, cfg: BenchConfig, value: bytes, keys: list[bytes]) -> None:
        self.cfg = cfg
        self.value = value
        self.keys = keys
        self.issued = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, list[float]] = {"put": [], "get": []}
        self.stop_at = 0.0

    def take(self, now: float) -> bool:
        """Whether one more operation may start (the run's only bound check)."""
        if now >= self.stop_at or (self.cfg.ops is not None and self.issued >= self.cfg.ops):
            return False
        self.issued += 1
        return True

    def op(self, client: AsyncClient, rng: random.Random) -> tuple[str, Awaitable[Any]]:
        key = self.keys[rng.randrange(len(self.keys))]
        w = self.cfg.workload
        if w is Workload.PUT or (w is Workload.MIXED and rng.random() < 0.5):
            return "put", client.put(key, self.value)
        return "get", client.get(key, consistency=self.cfg.consistency)

    async def worker(self, client: AsyncClient, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        while self.take(loop.time()):
            kind, fut = self.op(client, rng)
            t0 = time.perf_counter()
            try:
                await fut
            except NotFound:
                pass  # a read of an absent key is still a served read
            except ClientError as exc:
                self.errors[type(exc).__name__] += 1
                continue
            self.samples[kind].append(time.perf_counter() - t0)
            self.ok += 1


async def _each(
    clients: list[AsyncClient], work: Callable[[int, AsyncClient], Awaitable[Any]]
) -> list[ClientError]:
    """Run ``work`` for every client at once; the ClientErrors raised."""
    results = await asyncio.gather(
        *(work(i, c) for i, c in enumerate(clients)), return_exceptions=True
    )
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ClientError):
            raise r
    return [r for r in results if isinstance(r, ClientError)]


def _refused(errors: list[ClientError]) -> None:
    """Raise the first error that retrying cannot cure (a login or permission refused,
    the NOSPACE alarm), so the caller reports it as such rather than as a cluster down."""
    for error in errors:
        if isinstance(error, AuthFailed | PermissionDenied | NoSpace):
            raise error


async def run_bench(cfg: BenchConfig) -> BenchResult:
    """Warm up, (pre)load, then measure; raises ClientError if the warm-up fails."""
    rng = random.Random(cfg.seed)
    value = rng.randbytes(cfg.value_size)
    keys = [f"bench/{i:08d}".encode() for i in range(cfg.keys)]
    clients = [
        AsyncClient(
            cfg.endpoints,
            timeout=min(5.0, cfg.op_deadline),
            deadline=cfg.op_deadline,
            rng=random.Random(rng.random()),
            tls=cfg.tls,
            user=cfg.user,
            password=cfg.password,
        )
        for _ in range(cfg.clients)
    ]
    try:
        # Warm-up: every client opens its write session (seq 1) and finds the leader.
        if errors := await _each(clients, lambda i, c: c.put(keys[i % len(keys)], value)):
            _refused(errors)
            raise ClientError("warm-up failed: is the cluster up? (kv cluster status)")
        if cfg.workload is not Workload.PUT:
            n = len(clients)

            async def preload(i: int, c: AsyncClient) -> None:
                for k in keys[i::n]:
                    await c.put(k, value)

            if errors := await _each(clients, preload):
                _refused(errors)
                raise ClientError("preloading keys failed")
        run = _Run(cfg, value, keys)
        loop = asyncio.get_running_loop()
        start = loop.time()
        limit = cfg.max_seconds if cfg.ops is not None else min(cfg.duration, cfg.max_seconds)
        run.stop_at = start + limit
        await asyncio.gather(*(run.worker(c, random.Random(rng.random())) for c in clients))
        elapsed = loop.time() - start
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    everything = run.samples["put"] + run.samples["get"]
    latency = {"all": LatencyStats.of(everything)}
    if cfg.workload is Workload.MIXED:
        latency |= {k: LatencyStats.of(v) for k, v in run.samples.items()}
    return BenchResult(cfg.workload, cfg.clients, elapsed, run.ok, run.errors, latency)
