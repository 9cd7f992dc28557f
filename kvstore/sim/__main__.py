"""``python -m kvstore.sim``: sweep seeds of the KV simulation; every failure prints the
command that replays it."""

from __future__ import annotations

import argparse
import sys
import time

from kvstore.sim.cluster import FAULTS, SimParams, run_seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvstore.sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    ap.add_argument("--start", type=int, default=1, help="first seed")
    ap.add_argument("--seed", type=int, help="run this one seed and print its trace")
    ap.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    ap.add_argument("--load", type=float, default=30.0, help="seconds of load and faults")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"subset of {','.join(FAULTS)}")
    ap.add_argument(
        "--quota", type=int, help="[store] quota_bytes: small, the NOSPACE alarm goes on and off"
    )
    args = ap.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown faults: {sorted(unknown)}")
    params = SimParams(nodes=args.nodes, load_s=args.load, faults=faults, quota_bytes=args.quota)
    opts = f"--nodes {args.nodes} --load {args.load:g} --faults {','.join(faults)}"
    if args.quota is not None:
        opts += f" --quota {args.quota}"
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    failed, started = 0, time.monotonic()
    for seed in seeds:
        r = run_seed(seed, params)
        if args.seed is not None:
            print("\n".join(r.trace))
            print(r.stats)
        if not r.ok:
            failed += 1
            print(f"seed {seed}: {r.violation}")
            print(f"  replay: python -m kvstore.sim --seed {seed} {opts}")
    n = len(seeds)
    print(f"{n - failed}/{n} seeds passed in {time.monotonic() - started:.1f}s ({opts})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
