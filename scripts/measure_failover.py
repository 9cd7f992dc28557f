"""Measure failover: from ``kill -9`` of the leader to the first acknowledged write.

Starts a fresh local 3-node cluster (``kvstore.cluster``, the code behind ``kv cluster
up``) on free ports in a temporary directory, with the default cluster.toml timing
unless told otherwise, then repeats ``--rounds`` times:

1. find the leader; write once through a client (so it has found the leader and opened
   its write session, as a long-lived client would have);
2. SIGKILL the leader and start the clock;
3. ``put`` through that same client (default retry settings) and stop the clock when it
   is acknowledged; also note when a new leader first answers ``status``;
4. restart the killed node and wait until it has caught up.

Prints each round and the median; ``--json`` for a machine-readable summary.

    python scripts/measure_failover.py [--rounds 5] [--tick-ms 100] [--election-ticks 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvstore import cluster
from kvstore.client import AsyncClient, NodeStatus
from kvstore.config import generate_config, load_config


async def leader_of(cfg_nodes: list[str]) -> NodeStatus | None:
    for addr in cfg_nodes:
        async with AsyncClient([addr], timeout=0.5, deadline=0.5) as c:
            try:
                s = await c.status(addr)
            except Exception:
                continue
            if s.role == "leader":
                return s
    return None


async def one_round(config: Path, addrs: list[str], n: int) -> tuple[float, float]:
    cfg = load_config(config)
    async with AsyncClient(addrs) as client:
        await client.put(f"warm/{n}", "x")
        lead = await leader_of(addrs)
        assert lead is not None, "no leader"
        node = cfg.node(lead.node)
        pid = cluster.running_pid(node, config)
        assert pid is not None
        others = [str(x.client_address) for x in cfg.nodes if x.id != lead.node]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        elected = asyncio.create_task(_wait_new_leader(others, lead.term, t0))
        await client.put(f"failover/{n}", "y")
        acked = time.monotonic() - t0
        elected_s = await asyncio.wait_for(elected, 30)
    await asyncio.to_thread(cluster.start_cluster, config, only=[lead.node], wait=15)
    await _wait_caught_up(addrs)
    return acked, elected_s


async def _wait_new_leader(addrs: list[str], old_term: int, t0: float) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = await leader_of(addrs)
        if s is not None and s.term > old_term:
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    raise TimeoutError("no new leader in 30 s")


async def _wait_caught_up(addrs: list[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            sts = []
            for a in addrs:
                async with AsyncClient([a], timeout=0.5, deadline=0.5) as c:
                    sts.append(await c.status(a))
            if len({s.applied for s in sts}) == 1 and any(s.role == "leader" for s in sts):
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("cluster did not converge")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tick-ms", type=int, default=100)
    ap.add_argument("--election-ticks", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raftkv-failover-") as tmp:
        config = Path(tmp) / "cluster.toml"
        config.write_text(
            generate_config(
                3,
                cluster.free_base_port(),
                str(Path(tmp) / "data"),
                raft={"tick_ms": args.tick_ms, "election_ticks": args.election_ticks},
            )
        )
        addrs = [str(n.client_address) for n in load_config(config).nodes]
        try:
            report = cluster.start_cluster(config, wait=15)
            if report.leader is None:
                print("no leader after start", file=sys.stderr)
                return 1
            acked, elected = [], []
            for n in range(args.rounds):
                a, e = asyncio.run(one_round(config, addrs, n))
                acked.append(a)
                elected.append(e)
                if not args.json:
                    print(
                        f"round {n + 1}: new leader after {e * 1000:.0f} ms, "
                        f"first acknowledged write after {a * 1000:.0f} ms"
                    )
        finally:
            cluster.stop_cluster(config, timeout=5)
    summary = {
        "tick_ms": args.tick_ms,
        "election_ticks": args.election_ticks,
        "rounds": args.rounds,
        "write_acked_ms": [round(a * 1000) for a in acked],
        "leader_elected_ms": [round(e * 1000) for e in elected],
        "median_write_acked_ms": round(statistics.median(acked) * 1000),
        "median_leader_elected_ms": round(statistics.median(elected) * 1000),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"median: kill -9 of the leader -> first acknowledged write "
            f"{summary['median_write_acked_ms']} ms "
            f"(new leader visible after {summary['median_leader_elected_ms']} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
