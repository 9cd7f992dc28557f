"""Real runs: real node processes, real sockets, real faults, ~15-20 s each.

The store must come out VALID under partitions, kills and pauses; and the harness must
prove it can fail: started in a deliberately broken mode, the store must be caught,
every time:

- ``--unsafe stale-reads`` (linearizable reads served from local state, no ReadIndex),
  with the leader isolated for many election timeouts while processes whose home is
  the old leader keep reading there: the register checker must find a stale read;
- ``--unsafe lazy-fsync`` (writes acknowledged before they reach the disk) with every
  node killed at once, repeatedly, under a steady stream of adds: the set checker must
  find acknowledged adds lost;
- ``--unsafe stale-reads`` again under the ``append`` workload: Elle must find
  read-only transactions that missed acknowledged appends;
- ``--unsafe no-fencing`` (the lock workload's holders write without their token)
  while holders stall past their leases: the lock checker must find the critical
  sections interleaved in the resource's history.

Each run goes through the ``jepsen-like run`` command (exit codes included) and its
evidence is checked on disk. An autouse fixture SIGKILLs, by pid, any node a run left
behind and fails the test if there was one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jepsen_like import db
from jepsen_like.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Short ticks so elections take 0.25-0.5 s and a 2.5 s fault window spans several.
COMMON = ["--tick-ms", "25", "--nemesis-interval", "2.5", "--concurrency", "8", "--rate", "80"]


def _kv_node_accepts_unsafe() -> bool:
    from cli.cluster import node  # tests may look at the CLI; the harness may not

    return any(p.name == "unsafe" for p in node.params)


needs_unsafe = pytest.mark.skipif(
    not _kv_node_accepts_unsafe(),
    reason="kv node has no --unsafe option yet (cli/cluster.py); the self-tests need it",
)


@pytest.fixture(autouse=True)
def no_node_left_behind() -> Iterator[None]:
    yield
    survivors = db.kill_survivors()
    assert not survivors, f"the run left node processes behind: {survivors}"


def run(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], Path, str]:
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path), "--seed", "11", *args])
    latest = tmp_path / "latest"
    assert latest.exists(), result.output
    run_dir = latest.resolve()
    results = json.loads((run_dir / "results.json").read_text())
    return result.exit_code, results, run_dir, result.output


def assert_evidence(run_dir: Path, results: dict[str, Any]) -> None:
    for name in ("history.jsonl", "nemesis.jsonl", "results.json", "report.html"):
        assert (run_dir / name).stat().st_size > 0, name
    for node in ("n1", "n2", "n3"):
        assert (run_dir / "logs" / f"{node}.log").exists()
        assert (run_dir / "config" / f"{node}.toml").exists()
    timeline = [json.loads(line) for line in (run_dir / "nemesis.jsonl").read_text().splitlines()]
    assert timeline and timeline[-1]["event"] == "heal", "a run always ends healed"
    assert "<svg" in (run_dir / "report.html").read_text()
    assert results["error"] is None, results["error"]


def assert_valid(code: int, results: dict[str, Any], run_dir: Path, output: str) -> None:
    assert_evidence(run_dir, results)
    assert results["verdict"] == "valid", (output, results["checkers"])
    assert code == 0, output
    stats = results["stats"]
    assert stats["by_type"].get("ok", 0) > 200, stats["by_type"]
    assert stats["faults"], "the nemesis injected nothing"


def test_register_partition_is_linearizable(tmp_path: Path) -> None:
    out = run(
        tmp_path, "--workload", "register", "--nemesis", "partition", "--time-limit", "15", *COMMON
    )
    assert_valid(*out)
    kinds = {w["kind"] for w in out[1]["stats"]["faults"]}
    assert kinds and all(k.startswith("partition-") for k in kinds)


def test_register_kill_is_linearizable(tmp_path: Path) -> None:
    out = run(
        tmp_path, "--workload", "register", "--nemesis", "kill", "--time-limit", "15", *COMMON
    )
    assert_valid(*out)
    assert sum(out[1]["run"]["restarts"].values()) >= 2


def test_set_kill_loses_nothing(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "--workload",
        "set",
        "--nemesis",
        "kill-all,kill-leader",
        "--time-limit",
        "15",
        *COMMON,
    )
    assert_valid(*out)
    checker = out[1]["checkers"]["set"]
    assert checker["lost_count"] == 0 and checker["acknowledged"] > 200


def test_set_partition_and_pause_loses_nothing(tmp_path: Path) -> None:
    out = run(
        tmp_path, "--workload", "set", "--nemesis", "partition,pause", "--time-limit", "15", *COMMON
    )
    assert_valid(*out)


def test_register_leadership_transfers_are_linearizable(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "--workload", "register",
        "--nemesis", "transfer",
        "--time-limit", "12",
        *COMMON,
        "--nemesis-interval", "1",
    )  # fmt: skip
    assert_valid(*out)
    timeline = [json.loads(line) for line in (out[2] / "nemesis.jsonl").read_text().splitlines()]
    moved = [
        e["details"]
        for e in timeline
        if e["event"] == "start" and e["details"].get("outcome") == "moved"
    ]
    assert len(moved) >= 3, timeline
    assert all(d["new_leader"] == d["to"] != d["leader"] for d in moved), moved


def test_set_membership_changes_lose_nothing(tmp_path: Path) -> None:
    out = run(
        tmp_path, "--workload", "set", "--nemesis", "membership", "--time-limit", "15", *COMMON
    )
    assert_valid(*out)
    timeline = [json.loads(line) for line in (out[2] / "nemesis.jsonl").read_text().splitlines()]
    stops = [e["details"] for e in timeline if e["event"] == "stop"]
    assert len(stops) >= 2, timeline
    for d in stops:  # every removed node came back empty, as a learner, then a voter
        steps = [s["step"] for s in d["steps"]]
        # (The final heal restarts the dead first, then completes the change.)
        assert steps[-3:] == ["learner added", "caught up", "promoted"], d
        assert steps[:-3] in ([], ["restarted"]), d
        assert d["steps"][-1]["voters"] == ["n1", "n2", "n3"], d
        # ... and said so itself: it recovered nothing from disk.
        checks = {c["check"]: c for c in d["evidence"]["checks"]}
        assert checks["recovered index 0 from disk"]["observed"]["entries"] == 0, d
    starts = [e["details"] for e in timeline if e["event"] == "start"]
    for d in starts:  # the directory the node itself had open, seen empty
        checks = {c["check"]: c for c in d["evidence"]["checks"]}
        assert checks["Raft directory empty"]["observed"]["source"].endswith("/fd"), d


def test_a_wipe_that_does_nothing_makes_the_verdict_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old relative-path bug, planted: the harness wipes a directory the nodes do not
    use. The history is fine, yet the run must not be called valid: the wiped node's open
    files show its Raft state untouched and it logs recovering its whole log."""

    def misplaced_wipe(self: db.LocalDB, node: str) -> None:
        self.wiped.add(node)
        shutil.rmtree(self.run_dir / "elsewhere" / node / "raft", ignore_errors=True)

    monkeypatch.setattr(db.LocalDB, "wipe", misplaced_wipe)
    code, results, run_dir, output = run(
        tmp_path, "--workload", "set", "--nemesis", "membership", "--time-limit", "8", *COMMON
    )
    assert_evidence(run_dir, results)
    assert results["checkers"]["set"]["valid"] is True, "the history itself is fine"
    faults = results["checkers"]["faults"]
    assert faults["valid"] is None, faults
    assert results["verdict"] == "unknown" and code == 2, (output, faults)
    failed = {c["check"] for bad in faults["unverified"] for c in bad["failed"]}
    assert {"Raft directory empty", "recovered index 0 from disk"} <= failed, faults
    assert "Fault verification" in (run_dir / "report.html").read_text()


def test_register_under_the_combined_nemesis_is_linearizable(tmp_path: Path) -> None:
    out = run(tmp_path, "--workload", "register", "--nemesis", "all", "--time-limit", "15", *COMMON)
    _, results, run_dir, output = out
    assert_evidence(run_dir, results)
    assert results["checkers"]["linearizable"]["valid"] is True, output
    # Every fault verified; a run where one could not be is unknown, never valid.
    assert results["verdict"] == ("valid" if results["checkers"]["faults"]["valid"] else "unknown")
    windows = results["stats"]["faults"]
    overlapping = any(
        a["start_s"] < b["start_s"] < a["end_s"] for a in windows for b in windows if a is not b
    )
    assert overlapping, windows
    assert len({w["kind"].split("-")[0] for w in windows}) >= 4, windows
    html = (run_dir / "report.html").read_text()
    assert "Nodes</h2>" in html and "Fault verification" in html


@needs_unsafe
def test_stale_reads_mode_is_caught_as_non_linearizable(tmp_path: Path) -> None:
    code, results, run_dir, output = run(
        tmp_path,
        "--unsafe", "stale-reads",
        "--workload", "register",
        "--nemesis", "partition-leader",
        "--nemesis-interval", "3",
        "--keys", "2",
        "--concurrency", "9",
        "--rate", "90",
        "--tick-ms", "25",
        "--time-limit", "12",
    )  # fmt: skip
    assert_evidence(run_dir, results)
    assert results["verdict"] == "invalid", (output, results["checkers"])
    assert code == 1
    partitions = results["checkers"]["linearizable"]["partitions"]
    culprits = [p["counterexample"] for p in partitions if p["counterexample"]]
    assert any(c["explanation"].startswith("read() -> ") for c in culprits), culprits
    # Not just follower lag: some stale read ran on the isolated old leader, invoked
    # while it was cut off, by a process whose home is that node.
    windows = [w for w in results["stats"]["faults"] if w["kind"] == "partition-leader"]
    on_isolated = [
        c
        for c in culprits
        for w in windows
        if w["start_s"] <= c["blocking"]["call"] / 1e9 <= w["end_s"]
        and f"n{c['blocking']['process'] % 3 + 1}" == w["details"]["isolated"]
    ]
    assert on_isolated, (windows, [c["blocking"] for c in culprits])
    assert "Counter-example" in (run_dir / "report.html").read_text()


@needs_unsafe
def test_lazy_fsync_mode_is_caught_losing_acknowledged_writes(tmp_path: Path) -> None:
    code, results, run_dir, output = run(
        tmp_path,
        "--unsafe", "lazy-fsync",
        "--workload", "set",
        "--nemesis", "kill-all",
        "--nemesis-interval", "3",
        "--rate", "100",
        "--tick-ms", "25",
        "--time-limit", "13",
    )  # fmt: skip
    assert_evidence(run_dir, results)
    assert results["verdict"] == "invalid", (output, results["checkers"])
    assert code == 1
    assert results["checkers"]["set"]["lost_count"] > 0
    assert "lost" in output


def test_append_partition_is_strictly_serializable(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "--workload", "append",
        "--nemesis", "partition",
        "--keys", "8",
        "--time-limit", "15",
        *COMMON,
    )  # fmt: skip
    assert_valid(*out)
    elle = out[1]["checkers"]["elle-list-append"]
    assert elle["ok"] > 200 and not elle["anomalies"], elle


def test_watch_streams_agree_across_kills(tmp_path: Path) -> None:
    out = run(tmp_path, "--workload", "watch", "--nemesis", "kill", "--time-limit", "15", *COMMON)
    assert_valid(*out)
    watch = out[1]["checkers"]["watch"]
    assert watch["head"] > 200
    watchers = watch["watchers"]
    assert len(watchers) == 3 and all(w["last"] >= watch["head"] for w in watchers), watchers
    # A killed node's watcher lost its stream and resumed on the restarted node.
    assert any(w["segments"] >= 2 for w in watchers), watchers


def test_lock_holders_never_overlap_under_partitions_and_pauses(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "--workload",
        "lock",
        "--nemesis",
        "partition,pause",
        "--time-limit",
        "15",
        *COMMON,
    )
    assert_valid(*out)
    records = [json.loads(line) for line in (out[2] / "history.jsonl").read_text().splitlines()]
    refused = [r for r in records if r["f"] == "fenced" and r["type"] == "fail"]
    assert refused, "no stalled holder was fenced off: the fence was never exercised"


def test_no_fencing_mode_is_caught_overlapping(tmp_path: Path) -> None:
    code, results, run_dir, output = run(
        tmp_path,
        "--unsafe", "no-fencing",
        "--workload", "lock",
        "--nemesis", "none",
        "--time-limit", "12",
        *COMMON,
    )  # fmt: skip
    assert_evidence(run_dir, results)
    assert results["verdict"] == "invalid", (output, results["checkers"])
    assert code == 1
    assert "fence-violation" in results["checkers"]["lock"]["anomalies"]


@needs_unsafe
def test_stale_reads_mode_is_caught_by_elle(tmp_path: Path) -> None:
    code, results, run_dir, output = run(
        tmp_path,
        "--unsafe", "stale-reads",
        "--workload", "append",
        "--nemesis", "partition-leader",
        "--nemesis-interval", "3",
        "--keys", "6",
        "--concurrency", "9",
        "--rate", "90",
        "--tick-ms", "25",
        "--time-limit", "12",
    )  # fmt: skip
    assert_evidence(run_dir, results)
    assert results["verdict"] == "invalid", (output, results["checkers"])
    assert code == 1
    assert results["checkers"]["elle-list-append"]["anomalies"], results["checkers"]


# The leader's wall clock stepped forward by 1-128 s every 4 s (3 steps); leases of 1 s
# (four election timeouts of 0.25 s), kept alive every quarter TTL.
CLOCK_STEPS = [
    "--workload", "lease",
    "--nemesis", "clock-step-forward",
    "--nemesis-interval", "2",
    "--tick-ms", "25",
    "--concurrency", "8",
    "--rate", "80",
    "--time-limit", "14",
]  # fmt: skip


@needs_unsafe
def test_wall_clock_leases_are_caught_as_early_expiry_under_clock_steps(
    tmp_path: Path, libfaketime: Path
) -> None:
    code, results, run_dir, output = run(tmp_path, "--unsafe", "wall-clock-leases", *CLOCK_STEPS)
    assert_evidence(run_dir, results)
    assert results["verdict"] == "invalid", (output, results["checkers"])
    assert code == 1
    assert "early-expiry" in results["checkers"]["lease"]["anomalies"], results["checkers"]
    assert results["checkers"]["faults"]["valid"] is True, "the steps took effect"
    assert results["run"]["faults_ran"] == ["clock-step-forward"]


def test_leases_are_valid_under_the_same_clock_steps(tmp_path: Path, libfaketime: Path) -> None:
    code, results, run_dir, output = run(tmp_path, *CLOCK_STEPS)
    assert_evidence(run_dir, results)
    assert results["verdict"] == "valid", (output, results["checkers"])
    assert code == 0
    lease = results["checkers"]["lease"]
    assert lease["renewals"] > 0 and lease["revoked_seen"] > 0, lease
    assert results["run"]["faults_ran"] == ["clock-step-forward"]
    steps = [f for f in results["stats"]["faults"] if f["kind"] == "clock-step-forward"]
    assert steps and all(f["details"]["evidence"]["status"] == "verified" for f in steps)
