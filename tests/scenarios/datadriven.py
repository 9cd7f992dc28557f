"""A ~100-line reader/runner for etcd's datadriven test files (PyPI's ``datadriven`` is
unrelated).

Format: a case is a command line ``cmd arg key=value key=(a,b)``, optional input lines,
a ``----`` line, then the expected output up to the next blank line. Output that itself
contains blank lines is fenced by a doubled separator (``----`` ``----`` ... ``----``
``----``). Lines starting with ``#`` and blank lines between cases are kept verbatim.
With ``rewrite=True`` the expected blocks are regenerated in place; "only commit the
changes if you understand what caused them".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEP = "----"


@dataclass(frozen=True)
class CmdArg:
    """``key`` alone (``vals`` empty), ``key=v`` or ``key=(v1,v2)``."""

    key: str
    vals: tuple[str, ...] = ()


@dataclass
class TestCase:
    __test__ = False  # not a pytest class

    pos: str  # "file:line" of the command, for failure messages
    cmd: str
    args: list[CmdArg]
    input: str
    expected: str
    span: tuple[int, int] = (0, 0)  # [first, last) line numbers of the whole case
    header: list[str] = field(default_factory=list)  # command + input lines, verbatim

    def arg(self, key: str) -> CmdArg | None:
        return next((a for a in self.args if a.key == key), None)


def parse_args(words: list[str]) -> list[CmdArg]:
    out = []
    for w in words:
        key, eq, val = w.partition("=")
        if not eq:
            out.append(CmdArg(key))
            continue
        val = val.removeprefix("(").removesuffix(")")
        out.append(CmdArg(key, tuple(v for v in val.split(",") if v)))
    return out


def parse(text: str, name: str = "<string>") -> list[TestCase]:
    lines = text.split("\n")
    cases: list[TestCase] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            i += 1
            continue
        start = i
        words = line.split()
        i += 1
        inp: list[str] = []
        while i < len(lines) and lines[i] != SEP:
            if not lines[i].strip():
                raise ValueError(f"{name}:{start + 1}: {words[0]!r} has no {SEP} line")
            inp.append(lines[i])
            i += 1
        if i >= len(lines):
            raise ValueError(f"{name}:{start + 1}: {words[0]!r} has no {SEP} line")
        i += 1
        out: list[str] = []
        if i < len(lines) and lines[i] == SEP:  # fenced output, may hold blank lines
            i += 1
            while i + 1 < len(lines) and not (lines[i] == SEP and lines[i + 1] == SEP):
                out.append(lines[i])
                i += 1
            if i + 1 >= len(lines):
                raise ValueError(f"{name}:{start + 1}: unterminated {SEP}{SEP} block")
            i += 2
        else:
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
        header = lines[start : start + 1 + len(inp)]
        cases.append(
            TestCase(
                f"{name}:{start + 1}",
                words[0],
                parse_args(words[1:]),
                "\n".join(inp),
                "\n".join(out),
                (start, i),
                header,
            )
        )
    return cases


def format_case(case: TestCase, output: str) -> list[str]:
    body = output.rstrip("\n").split("\n") if output.strip() else []
    if any(not b.strip() for b in body):
        return [*case.header, SEP, SEP, *body, SEP, SEP]
    return [*case.header, SEP, *body]


def run_file(path: Path, handler: Callable[[TestCase], str], rewrite: bool = False) -> None:
    """Run every case of ``path`` through ``handler``; compare, or rewrite the file."""
    text = path.read_text()
    lines = text.split("\n")
    new: list[str] = []
    done = 0
    for case in parse(text, path.name):
        actual = handler(case).rstrip("\n")
        if rewrite:
            new += lines[done : case.span[0]] + format_case(case, actual)
            done = case.span[1]
        elif actual != case.expected:
            raise AssertionError(
                f"{case.pos}: {' '.join(case.header[:1])}\n"
                f"--- expected\n{case.expected}\n--- actual\n{actual}"
            )
    if rewrite:
        path.write_text("\n".join(new + lines[done:]))
