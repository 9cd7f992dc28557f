"""The ``jepsen-like`` command line: a thin shell over the harness's library code.

``main`` is the click group; each subcommand registers itself on it (``check`` here; the
run loop adds ``run``). Rendering uses ``rich``; the verdicts and counter-examples come
from ``jepsen_like.checker`` unchanged, so the CLI adds no logic a test could miss.

Exit codes of ``check``: 0 linearizable, 1 not linearizable, 2 unknown (budget exhausted)
or an error (unreadable history, unknown model). Click's own usage errors also exit 2.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Final

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jepsen_like.checker import CheckResult, CounterExample, Verdict, check
from jepsen_like.history import HistoryError, Operation, read_operations
from jepsen_like.models import MODELS, get_model

EXIT_OK: Final = 0
EXIT_ILLEGAL: Final = 1
EXIT_UNKNOWN: Final = 2
_EXIT_CODES: Final = {
    Verdict.OK: EXIT_OK,
    Verdict.ILLEGAL: EXIT_ILLEGAL,
    Verdict.UNKNOWN: EXIT_UNKNOWN,
}
_STYLES: Final = {
    Verdict.OK: "bold green",
    Verdict.ILLEGAL: "bold red",
    Verdict.UNKNOWN: "bold yellow",
}
# How much of a counter-example's prefix to print: its tail is what leads to the failure.
_PREFIX_TAIL: Final = 10
_MAX_CANDIDATES: Final = 12


@click.group(name="jepsen-like", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Jepsen-style testing of the key-value store: histories and their checking."""


@main.command("check")
@click.argument("history", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--model",
    "model_name",
    type=click.Choice(sorted(MODELS)),
    default="register",
    show_default=True,
    help="Sequential specification to check against.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0.0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds of search before giving up with 'unknown'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check_command(history: str, model_name: str, time_limit: float, as_json: bool) -> None:
    """Check that HISTORY.jsonl is linearizable.

    Exits 0 if it is, 1 if it is not (with a counter-example), 2 if the time limit ran
    out or the history cannot be read.
    """
    try:
        ops = read_operations(history)
        result = check(get_model(model_name), ops, time_budget_s=time_limit)
    except (OSError, HistoryError, ValueError) as exc:
        click.echo(f"error: {history}: {exc}", err=True)
        sys.exit(EXIT_UNKNOWN)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        render(result, Console(highlight=False))
    sys.exit(_EXIT_CODES[result.verdict])


def render(result: CheckResult, console: Console) -> None:
    """Print the per-key verdict table, then each counter-example."""
    table = Table(title="Linearizability by key")
    for column in ("key", "ops", "verdict", "time (s)", "note"):
        table.add_column(column, justify="right" if column in ("ops", "time (s)") else "left")
    for part in result.partitions:
        table.add_row(
            part.key,
            str(part.ops),
            Text(str(part.verdict).upper(), style=_STYLES[part.verdict]),
            f"{part.elapsed_s:.3f}",
            part.note,
        )
    console.print(table)
    for counterexample in result.counterexamples:
        _render_counterexample(counterexample, console)
    summary = {
        Verdict.OK: "Linearizable.",
        Verdict.ILLEGAL: "NOT linearizable.",
        Verdict.UNKNOWN: "Unknown: the time limit ran out before a verdict.",
    }[result.verdict]
    console.print(
        Text(summary, style=_STYLES[result.verdict]),
        f"{result.ops} operations ({result.failed} failed, dropped) in {result.elapsed_s:.3f}s",
    )


def _render_counterexample(ce: CounterExample, console: Console) -> None:
    console.print()
    console.print(Text(f"Counter-example for key {ce.key!r}", style="bold red"))
    shown = ce.prefix[-_PREFIX_TAIL:]
    skipped = len(ce.prefix) - len(shown)
    title = f"Linearizable prefix: {len(ce.prefix)} operations"
    if skipped:
        title += f" (the last {len(shown)} shown)"
    prefix = _ops_table(title)
    descriptions = ce.prefix_descriptions[-_PREFIX_TAIL:]
    for n, (op, description) in enumerate(zip(shown, descriptions, strict=True), skipped + 1):
        prefix.add_row(str(n), *_op_cells(op, description))
    console.print(prefix)
    console.print(f"State after the prefix: {ce.state}")
    candidates = _ops_table("Could not be linearized next", extra="after prefix")
    for n, c in enumerate(ce.candidates[:_MAX_CANDIDATES], 1):
        verdict = "illegal" if not c.legal else "legal, leads nowhere"
        mark = "*" if c.op.index == ce.blocking.index else str(n)
        candidates.add_row(mark, *_op_cells(c.op, c.description), verdict)
    console.print(candidates)
    if len(ce.candidates) > _MAX_CANDIDATES:
        console.print(f"... and {len(ce.candidates) - _MAX_CANDIDATES} more")
    console.print(Text(ce.explanation, style="bold"), soft_wrap=True)  # one greppable line


def _ops_table(title: str, extra: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("#", "line", "process", "operation", "call", "return", "status"):
        table.add_column(column)
    if extra:
        table.add_column(extra)
    return table


def _op_cells(op: Operation, description: str) -> tuple[str, ...]:
    ret = "-" if math.isinf(op.ret) else str(int(op.ret))
    return (str(op.line), str(op.process), description, str(op.call), ret, str(op.status))
