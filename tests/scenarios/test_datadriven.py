"""The datadriven reader itself: a harness that silently skips or mangles cases would
make every scenario test pass vacuously."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenarios.datadriven import CmdArg, TestCase, parse, parse_args, run_file

SAMPLE = """\
# a comment
echo a b=1 c=(x,y)
----
a

two-lines
input line
----
one
two

empty
----

fenced
----
----
x

y
----
----
"""


def test_parse_cases() -> None:
    cases = parse(SAMPLE, "sample")
    assert [c.cmd for c in cases] == ["echo", "two-lines", "empty", "fenced"]
    assert cases[0].args == [CmdArg("a"), CmdArg("b", ("1",)), CmdArg("c", ("x", "y"))]
    assert cases[0].pos == "sample:2"
    assert cases[1].input == "input line"
    assert cases[1].expected == "one\ntwo"
    assert cases[2].expected == ""
    assert cases[3].expected == "x\n\ny"


@pytest.mark.parametrize(
    ("words", "want"),
    [
        (["1", "2"], [CmdArg("1"), CmdArg("2")]),
        (["drop=2,3"], [CmdArg("drop", ("2", "3"))]),
        (["voters=()"], [CmdArg("voters", ())]),
    ],
)
def test_parse_args(words: list[str], want: list[CmdArg]) -> None:
    assert parse_args(words) == want


@pytest.mark.parametrize("bad", ["cmd\n", "cmd\ninput\n\n----\n", "f\n----\n----\nx\n"])
def test_parse_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        parse(bad)


def _echo(case: TestCase) -> str:
    if case.cmd == "fenced":
        return "p\n\nq"
    return " ".join(a.key for a in case.args) or case.input


def test_run_file_compares_and_reports(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("echo a\n----\na\n\necho b\n----\nwrong\n")
    with pytest.raises(
        AssertionError, match=r"(?s)t.txt:5: echo b.*expected\nwrong\n--- actual\nb"
    ):
        run_file(f, _echo)


def test_rewrite_regenerates_in_place(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("# keep me\necho a\n----\nstale\nlines\n\nfenced\n----\n\n# tail\n")
    run_file(f, _echo, rewrite=True)
    assert f.read_text() == (
        "# keep me\necho a\n----\na\n\nfenced\n----\n----\np\n\nq\n----\n----\n\n# tail\n"
    )
    run_file(f, _echo)  # the rewritten file now passes
    before = f.read_text()
    run_file(f, _echo, rewrite=True)
    assert f.read_text() == before  # idempotent
