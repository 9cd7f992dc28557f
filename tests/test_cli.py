"""The ``kv`` entry point: help and version work without any cluster, and ``kv sim``
hands its options to the simulator unchanged (the simulator is stubbed here, so this
tests the CLI's wiring, not the simulator)."""

from __future__ import annotations

import sys
import types
from importlib.metadata import version

import pytest
from click.testing import CliRunner

from cli.main import cli


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: kv" in result.output
    assert "Commands:" in result.output
    assert "sim" in result.output


def test_version_matches_package_metadata() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"kv, version {version('raftkv')}"


def test_sim_help() -> None:
    result = CliRunner().invoke(cli, ["sim", "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--seeds", "--seed", "--nodes", "--steps"):
        assert flag in result.output


@pytest.fixture
def fake_sim(monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    """Replace raft.sim.__main__ with a stub that records its argv and returns 3."""
    calls: list[list[str] | None] = []

    def main(argv: list[str] | None) -> int:
        calls.append(argv)
        return 3

    stub = types.ModuleType("raft.sim.__main__")
    stub.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "raft.sim.__main__", stub)
    return calls


def test_sim_passes_options_and_exit_code(fake_sim: list[list[str] | None]) -> None:
    args = ["sim", "--seeds", "20", "--seed", "7", "--nodes", "5", "--steps", "900"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert fake_sim == [["--seeds", "20", "--seed", "7", "--nodes", "5", "--steps", "900"]]


def test_sim_passes_only_given_options(fake_sim: list[list[str] | None]) -> None:
    result = CliRunner().invoke(cli, ["sim"])
    assert result.exit_code == 3, result.output
    assert fake_sim == [[]]


def test_sim_rejects_unsupported_cluster_size(fake_sim: list[list[str] | None]) -> None:
    result = CliRunner().invoke(cli, ["sim", "--nodes", "4"])
    assert result.exit_code == 2
    assert fake_sim == []
