"""``python -m raft.sim``: summary, exit codes, and the failure report."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raft.sim import __main__ as sim_main
from raft.sim import invariants as inv
from raft.types import Entry


def test_sweep_prints_a_summary_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main.main(["--seeds", "2", "--start", "100", "--steps", "300"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("seed 100: ok") and out[1].startswith("seed 101: ok")
    assert out[-1].startswith("passed 2/2 seeds (nodes=3 steps=300): ")
    assert "events/s" in out[-1]


def test_quiet_single_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main.main(["--seed", "7", "--nodes", "5", "--steps", "300", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("passed 1/1 seeds (nodes=5 steps=300)")


def test_failure_exits_one_with_replay_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(g: inv.Ghost, node: str, e: Entry) -> None:
        raise inv.violation("state-machine-safety", f"{node} injected")

    monkeypatch.setattr(inv, "check_applied", broken)
    assert sim_main.main(["--seeds", "3", "--steps", "300", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("seed=0 nodes=3 steps=300\nVIOLATION [state-machine-safety]")
    assert out.rstrip().endswith("python -m raft.sim --seed 0 --nodes 3 --steps 300")


def test_module_entry_point() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "raft.sim", "--seed", "1", "--steps", "200", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("passed 1/1 seeds")
