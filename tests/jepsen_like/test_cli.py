"""The ``jepsen-like check`` command: rendering, JSON output and exit codes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jepsen_like.cli import main

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_main_is_a_group_with_check() -> None:
    assert isinstance(main, click.Group)
    assert "check" in main.commands
    code, out, _ = run("--help")
    assert code == 0 and "check" in out


def test_console_script_is_registered() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["jepsen-like"] == "jepsen_like.cli:main"


def test_linearizable_history_exits_0() -> None:
    code, out, _ = run("check", str(DATA / "etcd_002.jsonl"))
    assert code == 0, out
    assert "OK" in out and "Linearizable." in out


def test_non_linearizable_history_exits_1_with_a_counterexample() -> None:
    code, out, _ = run("check", str(DATA / "etcd_001.jsonl"))
    assert code == 1, out
    assert "ILLEGAL" in out and "NOT linearizable." in out
    assert "Counter-example for key 'r'" in out
    assert "Linearizable prefix: 30 operations (the last 10 shown)" in out  # failed cas kept
    assert "State after the prefix: 1" in out
    assert "Could not be linearized next" in out
    assert (
        "read() -> 4 by process 7 [t=72..73] cannot follow: the latest possible values are {1}"
        in out
    )


def test_refuted_read_is_explained() -> None:
    code, out, _ = run("check", str(DATA / "rethink-fail-minimal.jsonl"))
    assert code == 1
    assert "no operation that may have taken effect writes 3" in out


def test_json_output() -> None:
    code, out, _ = run("check", "--json", str(DATA / "etcd_000.jsonl"))
    assert code == 1
    result = json.loads(out)
    assert result["verdict"] == "illegal"
    (part,) = result["partitions"]
    assert part["key"] == "r" and part["verdict"] == "illegal"
    assert part["counterexample"]["explanation"].startswith("read() -> 2 by process 11")


def test_unknown_exits_2() -> None:
    code, out, _ = run("check", "--time-limit", "1e-9", str(DATA / "etcd_002.jsonl"))
    assert code == 2
    assert "UNKNOWN" in out and "time limit ran out" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops\n", "line 1: invalid JSON"),
        (
            '{"process": 0, "type": "ok", "f": "read", "key": "x", "value": 1, "time": 0}\n',
            "line 1: ok completion for process 0 without an invoke",
        ),
        (
            '{"process": 0, "type": "invoke", "f": "append", "key": "x", "value": 1, "time": 0}\n',
            "register model: unsupported operation 'append'",
        ),
    ],
)
def test_bad_history_exits_2_naming_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(content)
    code, out, err = run("check", str(path))
    assert code == 2
    assert message in err and out == ""


def test_missing_file_exits_2() -> None:
    code, _, err = run("check", "/nonexistent/history.jsonl")
    assert code == 2 and "error: /nonexistent/history.jsonl" in err


def test_unknown_model_is_a_usage_error() -> None:
    code, _, err = run("check", "--model", "set", str(DATA / "etcd_002.jsonl"))
    assert code == 2 and "Invalid value for '--model'" in err
