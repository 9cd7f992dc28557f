"""``python -m raft.sim``: run seeds of the deterministic simulator.

Prints one line per seed (unless ``--quiet``) and a summary with the simulated events
per second; on the first failing seed prints its report — invariant, the last events,
and the exact command that replays it — and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time

from raft.sim.runner import RunResult, run_seed

DEFAULT_STEPS = 3000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m raft.sim", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="number of seeds to run (default 20)")
    p.add_argument("--seed", type=int, help="run (replay) exactly this seed")
    p.add_argument("--start", type=int, default=0, help="first seed of the sweep (default 0)")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3, help="cluster size")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"events of the fault phase per seed (default {DEFAULT_STEPS})",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary or failure")
    p.add_argument("--trace", action="store_true", help="print the full trace of each run")
    return p


def _seed_line(r: RunResult) -> str:
    s = r.summary
    return (
        f"seed {r.seed}: ok  events={r.events} virtual={s.get('virtual_ms', 0)}ms "
        f"faults={s.get('faults', 0)} crashes={s.get('crashes', 0)} "
        f"writes={s.get('writes_ok', 0)} reads={s.get('reads_ok', 0)} "
        f"commit={s.get('max_commit', 0)}"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.steps < 1 or args.seeds < 1:
        print("--steps and --seeds must be >= 1", file=sys.stderr)
        return 2
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    events = passed = 0
    t0 = time.perf_counter()
    for seed in seeds:
        r = run_seed(seed, args.nodes, args.steps, keep_trace=args.trace)
        events += r.events
        if args.trace:
            print("\n".join(r.trace))
        if not r.ok:
            print(r.report)
            return 1
        passed += 1
        if not args.quiet:
            print(_seed_line(r))
    wall = time.perf_counter() - t0
    rate = events / wall if wall > 0 else 0.0
    print(
        f"passed {passed}/{len(seeds)} seeds (nodes={args.nodes} steps={args.steps}): "
        f"{events} simulated events in {wall:.1f}s wall, {rate:,.0f} events/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
