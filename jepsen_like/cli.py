"""The ``jepsen-like`` command line: a thin shell over the harness's library code.

``main`` is the click group; each subcommand registers itself on it (``check``, and
``run``, whose work is in ``jepsen_like.runner``, imported only when ``run`` is used).
Rendering uses ``rich``; the verdicts and counter-examples come
from ``jepsen_like.checker`` unchanged, so the CLI adds no logic a test could miss.

Exit codes of ``check``: 0 linearizable, 1 not linearizable, 2 unknown (budget exhausted)
or an error (unreadable history, unknown model). Click's own usage errors also exit 2.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

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
_MAX_RUN_COUNTEREXAMPLES: Final = 3


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


# ---- run ------------------------------------------------------------------------------

_WORKLOAD_HELP = (
    "register (linearizable read/write/cas), set (no lost adds), append (Elle list-append "
    "txns: strict serializability), watch (gap-free, identical watch streams on every "
    "node), lock (fencing tokens: critical sections never overlap), lease (leases end "
    "neither before their TTL nor long after it)"
)
_NEMESIS_HELP = (
    "Comma list of faults: partition (= partition-halves, -one, -leader, -ring, -bridge), "
    "kill (= kill-one, -leader, -all), pause (= pause-one, -leader), latency, drop, "
    "transfer (leadership moved to another node), membership (a voter removed, wiped, "
    "re-added as learner, promoted), all (Jepsen's combined nemesis: faults of different "
    "groups overlap, one of each group at a time), clock (= clock-offset, -step-forward, "
    "-step-backward, -strobe, -drift: wall clocks moved through libfaketime), or none. Every "
    "fault is verified by an independent observation; one that is not makes the run unknown."
)


@main.command("run")
@click.option("--workload", default="register", show_default=True, help=_WORKLOAD_HELP)
@click.option("--nemesis", default="partition", show_default=True, help=_NEMESIS_HELP)
@click.option(
    "--nemesis-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds of health, then of fault, alternately.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Seconds of workload.",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    default=100.0,
    show_default=True,
    help="Target operations per second, all clients together.",
)
@click.option("--keys", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--ops-per-key",
    type=click.IntRange(min=10),
    default=300,
    show_default=True,
    help="register: invocations per key before it is replaced by a fresh key.",
)
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True)
@click.option("--seed", type=int, default=None, help="Fixes every random choice of the harness.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("jepsen-runs"),
    show_default=True,
    help="Directory of run directories (a 'latest' link points at the newest).",
)
@click.option(
    "--unsafe",
    type=click.Choice(["stale-reads", "lazy-fsync", "wall-clock-leases", "no-fencing"]),
    default=None,
    help="A deliberately BROKEN mode (harness self-test only): stale-reads, lazy-fsync and "
    "wall-clock-leases (leases expire by the leader's wall clock) break every node; "
    "no-fencing makes the lock workload write without its token.",
)
@click.option("--tick-ms", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--election-ticks", type=click.IntRange(min=2), default=10, show_default=True)
@click.option(
    "--check-time-limit",
    type=click.FloatRange(min=0.1),
    default=120.0,
    show_default=True,
    help="Seconds of linearizability search before 'unknown'.",
)
@click.option("--keep-data", is_flag=True, help="Keep node data directories of a valid run.")
@click.option(
    "--net",
    type=click.Choice(["proxy", "netns"]),
    default="proxy",
    show_default=True,
    help="How peer links are made: proxy (harness proxies, no root) or netns (a network "
    "namespace per node, faults by the kernel; Linux and root only).",
)
def run_command(
    workload: str,
    nemesis: str,
    nemesis_interval: float,
    time_limit: float,
    concurrency: int,
    rate: float,
    keys: int,
    ops_per_key: int,
    nodes: str,
    seed: int | None,
    out: Path,
    unsafe: str | None,
    tick_ms: int,
    election_ticks: int,
    check_time_limit: float,
    keep_data: bool,
    net: str,
) -> None:
    """Run WORKLOAD against a fresh local cluster while the NEMESIS injects faults,
    then check the history and write the evidence to a run directory.

    Exits 0 if every checker says valid, 1 if one found a violation, 2 if the verdict
    is unknown or the run failed.
    """
    from jepsen_like.runner import RunOptions, run, validate_options

    console = Console(highlight=False, stderr=True)
    opts = RunOptions(
        workload=workload,
        nemesis=nemesis,
        nemesis_interval=nemesis_interval,
        time_limit=time_limit,
        concurrency=concurrency,
        rate=rate,
        keys=keys,
        ops_per_key=ops_per_key,
        nodes=int(nodes),
        seed=seed,
        out=out,
        unsafe=unsafe,
        tick_ms=tick_ms,
        election_ticks=election_ticks,
        check_time_limit=check_time_limit,
        keep_data=keep_data,
        net=net,
        command=shlex.join(["jepsen-like", *sys.argv[1:]]) if sys.argv[1:2] == ["run"] else "",
    )
    try:
        validate_options(opts)
    except ValueError as exc:  # refused before anything starts
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNKNOWN)
    if unsafe:
        console.print(
            Text(f"UNSAFE MODE {unsafe}: broken on purpose (self-test only)", style="bold red")
        )
    with _RunProgress(console, time_limit) as hook:
        outcome = run(opts, hook)
    _render_outcome(outcome, Console(highlight=False))
    sys.exit(outcome.exit_code)


class _RunProgress:
    """A rich progress bar fed by the runner's progress hook."""

    def __init__(self, console: Console, time_limit: float) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.time_limit = time_limit
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[facts]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("starting", total=time_limit, facts="")

    def __enter__(self) -> Callable[[str, dict[str, Any]], None]:
        self.progress.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, phase: str, facts: dict[str, Any]) -> None:
        counts = facts.get("counts") or {}
        text = " ".join(f"{k} {counts.get(k, 0)}" for k in ("ok", "fail", "info"))
        if facts.get("fault"):
            text += f"  [red]{facts['fault']}[/]"
        self.progress.update(
            self.task,
            description=phase,
            completed=min(self.time_limit, facts.get("elapsed") or 0.0),
            facts=text,
        )


def _render_outcome(outcome: Any, console: Console) -> None:
    """Verdict table, per-fault throughput, and the counter-example if any."""
    from jepsen_like.report import culprit_context

    res = outcome.results
    stats = res.get("stats", {})
    table = Table(title=f"jepsen-like run: {res['run']['workload']} x {res['run']['nemesis']}")
    for column in ("checker", "verdict", "summary"):
        table.add_column(column)
    words = {True: ("VALID", "bold green"), False: ("INVALID", "bold red")}
    for name, c in outcome.checkers.items():
        word, style = words.get(c["valid"], ("UNKNOWN", "bold yellow"))
        table.add_row(name, Text(word, style=style), c.get("summary", ""))
    if outcome.error:
        table.add_row("run", Text("ERROR", style="bold yellow"), outcome.error)
    console.print(table)
    faults = Table(title="Throughput by fault")
    for column in ("fault", "windows", "seconds", "ops/s", "ok/s"):
        faults.add_column(column, justify="left" if column == "fault" else "right")
    for kind, k in sorted(stats.get("by_fault_kind", {}).items()):
        faults.add_row(
            kind, str(k["count"]), f"{k['seconds']:.1f}", f"{k['ops_per_s']}", f"{k['ok_per_s']}"
        )
    healthy = stats.get("healthy") or {}
    if healthy:
        faults.add_row("(none)", "", f"{healthy['seconds']:.1f}", "", f"{healthy['ok_per_s']}")
    console.print(faults)
    by_type = stats.get("by_type", {})
    console.print(
        f"{stats.get('invocations', 0)} operations: "
        + ", ".join(f"{by_type.get(k, 0)} {k}" for k in ("ok", "fail", "info", "pending"))
        + f"; {stats.get('ops_per_s', 0)} ops/s ({stats.get('ok_per_s', 0)} ok/s)"
    )
    if isinstance(outcome.check, CheckResult) and outcome.check.verdict is Verdict.ILLEGAL:
        counterexamples = outcome.check.counterexamples
        for counterexample in counterexamples[:_MAX_RUN_COUNTEREXAMPLES]:
            _render_counterexample(counterexample, console)
            console.print(culprit_context(res, counterexample.to_json()["blocking"]))
        if len(counterexamples) > _MAX_RUN_COUNTEREXAMPLES:
            more = len(counterexamples) - _MAX_RUN_COUNTEREXAMPLES
            console.print(f"... and {more} more non-linearizable key(s): see results.json")
    for name, checker in outcome.checkers.items():
        if checker.get("valid") is False and checker.get("anomalies"):
            counts = checker.get("anomaly_counts", {})
            for kind, examples in checker["anomalies"].items():
                console.print(f"[bold red]{name}: {kind}[/] ({counts.get(kind, len(examples))})")
                for ex in examples[:_MAX_RUN_COUNTEREXAMPLES]:
                    console.print("  " + str(ex.get("explanation", ex)), soft_wrap=True)
    set_result = outcome.checkers.get("set")
    if set_result and set_result["valid"] is False:
        for what in ("lost", "unexpected", "duplicated"):
            if set_result[what]:
                shown = ", ".join(map(str, set_result[what][:30]))
                more = len(set_result[what]) - 30
                console.print(
                    f"[bold red]{what}[/]: {shown}" + (f" ... +{more}" if more > 0 else "")
                )
    console.print(f"Evidence: {outcome.run_dir}/report.html (seed {res['run']['seed']})")
