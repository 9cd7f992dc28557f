"""The ``kv`` command line.

The CLI is a thin shell: it parses options and hands them to library code. No Raft or
store logic lives here, so everything the CLI can do is also reachable (and tested)
without a terminal. ``rich`` is for rendering output only.

Subcommands exist only once the feature behind them does; ``kv --help`` never lists a
command that cannot run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from cli.auth import auth, role, user
from cli.cluster import alarm, cluster, member, node
from cli.kv_commands import COMMANDS, GlobalFlags
from cli.watch_lease import COMMANDS as STREAM_COMMANDS

# The distribution name in pyproject.toml; ``--version`` reads it from the installed
# metadata so the version has a single source of truth.
_DIST_NAME = "raftkv"
_SIM_MODULE = "raft.sim.__main__"


@click.group(name="kv", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=_DIST_NAME, prog_name="kv")
@click.option(
    "--cacert",
    type=click.Path(dir_okay=False),
    envvar="KV_CACERT",
    help="Speak TLS to the nodes, verifying them with this CA certificate (env KV_CACERT). "
    "Default: the config's [security] ca_file, when the config is read.",
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False),
    envvar="KV_CERT",
    help="Client certificate to present (client_cert_auth; env KV_CERT).",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False),
    envvar="KV_KEY",
    help="The client certificate's private key (env KV_KEY).",
)
@click.option("--user", envvar="KV_USER", help="Log in as this user, if auth is on (env KV_USER).")
@click.option(
    "--password-file",
    envvar="KV_PASSWORD_FILE",
    type=click.Path(dir_okay=False),
    help="Read --user's password from this file (env KV_PASSWORD_FILE; else KV_PASSWORD, "
    "else a prompt on a terminal).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    user: str | None,
    password_file: str | None,
) -> None:
    """A Raft-replicated, versioned key-value store."""
    ctx.obj = GlobalFlags(cacert, cert, key, user, password_file)


@cli.command(short_help="Run the deterministic Raft simulator.")
@click.pass_context
@click.option("--seeds", type=click.IntRange(min=1), help="Run this many seeds.")
@click.option("--seed", type=int, help="Run (or replay) this one seed.")
@click.option("--nodes", type=click.Choice(["3", "5"]), help="Cluster size.")
@click.option("--steps", type=click.IntRange(min=1), help="Events to simulate per seed.")
def sim(
    ctx: click.Context, seeds: int | None, seed: int | None, nodes: str | None, steps: int | None
) -> None:
    """Run the deterministic Raft simulator (python -m raft.sim).

    Each seed fixes every random choice (delays, drops, crashes, partitions), so a
    failing seed replays exactly with --seed.
    """
    argv: list[str] = []
    # Pass only what the user gave, so the simulator's own defaults stay authoritative.
    for flag, value in (
        ("--seeds", seeds),
        ("--seed", seed),
        ("--nodes", nodes),
        ("--steps", steps),
    ):
        if value is not None:
            argv += [flag, str(value)]
    ctx.exit(_load_sim_main()(argv))


for _command in (node, cluster, member, alarm, auth, user, role, *COMMANDS, *STREAM_COMMANDS):
    cli.add_command(_command)


def _load_sim_main() -> Callable[[list[str] | None], int]:
    """Import the simulator only when asked: ``kv --help`` must not pay for (or depend
    on) the simulator's imports."""
    try:
        module = importlib.import_module(_SIM_MODULE)
    except ModuleNotFoundError as exc:
        # Only a missing simulator is a user-facing condition; a missing dependency
        # *inside* the simulator is a bug and must surface with its traceback.
        if exc.name not in {_SIM_MODULE, "raft.sim"}:
            raise
        raise click.ClickException("the simulator (raft.sim) is not installed") from exc
    main: Callable[[list[str] | None], int] = module.main
    return main


if __name__ == "__main__":
    cli()
