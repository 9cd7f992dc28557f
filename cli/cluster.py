"""``kv node`` (one node in the foreground) and ``kv cluster up/down/status`` (every node
of a config as background processes on this host). The work is in kvstore.cluster and
kvstore.node; this module parses options and renders."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.kv_commands import (
    DEFAULT_CONFIG,
    ExitCode,
    client_options,
    consistency_option,
    console,
    emit,
    fail,
    load_config_or_exit,
    run_client,
)

if TYPE_CHECKING:
    from kvstore.cluster import NodeInfo

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Cluster config file.",
)


@click.command(short_help="Run one node in the foreground.")
@_config_option
@click.option("--id", "node_id", required=True, help="This node's id in the config.")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    "--unsafe",
    # kvstore.node.UnsafeMode's values, spelled out: importing kvstore.node here would
    # add ~0.2 s to every kv command's start.
    type=click.Choice(["stale-reads", "lazy-fsync", "wall-clock-leases"]),
    default=None,
    hidden=True,
    help="Break the node on purpose (fault-injection harness self-test only).",
)
@click.option(
    "--join",
    is_flag=True,
    help="Join a running cluster: with an empty data dir, wait for the leader to add "
    "this node (kv member add) instead of founding a new cluster.",
)
def node(config_path: str, node_id: str, log_level: str, unsafe: str | None, join: bool) -> None:
    """Run node ID of the config until SIGTERM/SIGINT. It logs to <data_dir>/node.log
    and keeps its pid in <data_dir>/node.pid. A broken config exits 2 naming the line."""
    cfg = load_config_or_exit(config_path)
    try:
        cfg.node(node_id)
    except KeyError:
        ids = ", ".join(n.id for n in cfg.nodes)
        fail(ExitCode.USAGE, f"{config_path}: no node {node_id!r} (nodes: {ids})")
    from kvstore.security import SecurityError, node_peer_secret, node_tls

    try:
        node_peer_secret(cfg, cfg.node(node_id))
        node_tls(cfg, cfg.node(node_id))
    except SecurityError as exc:
        fail(ExitCode.USAGE, f"node {node_id} refuses to start: {exc}")
    from kvstore.node import UnsafeMode, main

    try:
        code = main(
            Path(config_path),
            node_id,
            log_level=log_level,
            unsafe=UnsafeMode(unsafe) if unsafe else None,
            join=join,
        )
    except OSError as exc:  # typically a port already in use or an unwritable data_dir
        fail(ExitCode.ERROR, f"node {node_id} cannot run: {exc}")
    except Exception as exc:  # e.g. CorruptStorage: keep the traceback, end on one line
        traceback.print_exc()
        fail(ExitCode.ERROR, f"node {node_id} stopped: {type(exc).__name__}: {exc}")
    sys.exit(code)


@click.group(short_help="Start, stop and inspect the local cluster.")
def cluster() -> None:
    """Run every node of a cluster.toml on this host as background processes."""


def _table(nodes: Sequence[NodeInfo], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title)
    numbers = ("pid", "term", "commit", "applied", "lag", "data")
    columns = ("node", "pid", "role", "term", "commit", "applied", "lag", "leader", "client")
    for col in (*columns, "data", "alarms"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for n in nodes:
        s = n.status
        role = {"leader": "[bold green]leader[/]", "down": "[red]down[/]"}.get(n.role, n.role)
        table.add_row(
            n.id,
            str(n.pid) if n.pid is not None else "-",
            role,
            *(
                str(v) if v is not None else "-"
                for v in (s and s.term, s and s.commit, s and s.applied, n.lag)
            ),
            (s and s.leader) or "-",
            n.client_address,
            _usage(s),
            f"[bold red]{' '.join(n.alarms)}[/]" if n.alarms else "-",
        )
    console().print(table)


def _usage(s: Any) -> str:
    """Data size over quota, as the node counts them."""
    if s is None or s.data_bytes is None or s.quota_bytes is None:
        return "-"
    pct = 100 * s.data_bytes / s.quota_bytes
    return f"{_size(s.data_bytes)} / {_size(s.quota_bytes)} ({pct:.0f}%)"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@cluster.command(short_help="Start every node; wait for a leader.")
@_config_option
@click.option("--fresh", is_flag=True, help="Wipe the data directories first (nodes must be down).")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="Seconds to wait for a leader.",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Turn TLS on in the config ([security] ca_file) if it is off, and create the CA "
    "and certificates that are missing (in tls/ beside the config).",
)
def up(config_path: str, fresh: bool, wait: float, tls: bool) -> None:
    """Start the config's nodes that are not running, detached (output in
    <data_dir>/node.out), and wait until a leader is elected."""
    from kvstore.cluster import ClusterError, start_cluster
    from kvstore.security import SecurityError, ensure_tls_files

    cfg = load_config_or_exit(config_path)
    try:
        if tls:
            from kvstore.cluster_init import enable_tls

            if enable_tls(Path(config_path)):
                click.echo(f"TLS turned on in {config_path} ([security] ca_file)")
            cfg = load_config_or_exit(config_path)
        for path in ensure_tls_files(cfg):
            click.echo(f"created {path}")
        report = start_cluster(Path(config_path), fresh=fresh, wait=wait)
    except (ClusterError, SecurityError, OSError, ValueError) as exc:
        fail(ExitCode.ERROR, str(exc))
    for nid, pid in report.already_running.items():
        click.echo(f"{nid}: already running (pid {pid})")
    for nid, pid in report.started.items():
        click.echo(f"{nid}: started (pid {pid})")
    _table(report.nodes)
    for nid, tail in report.exited.items():
        log = report_log(report.nodes, nid)
        click.echo(f"kv: {nid} exited at start; see {log}\n{tail}", err=True)
    if report.leader is None:
        if wait > 0:
            fail(ExitCode.ERROR, f"no leader elected within {wait:g} s (see each node.log)")
        return
    click.echo(f"leader: {report.leader}")
    if report.exited:
        sys.exit(int(ExitCode.ERROR))


def report_log(nodes: Sequence[NodeInfo], nid: str) -> str:
    for n in nodes:
        if n.id == nid:
            return str(n.data_dir / "node.out")
    return "node.out"


@cluster.command(short_help="Stop every node.")
@_config_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
def down(config_path: str, timeout: float) -> None:
    """Stop the config's nodes (by the pids in their pid files, after checking each pid
    is still that node): SIGTERM, then SIGKILL after --timeout."""
    from kvstore.cluster import stop_cluster

    load_config_or_exit(config_path)
    for r in stop_cluster(Path(config_path), timeout=timeout):
        pid = f" (pid {r.pid})" if r.pid is not None else ""
        note = {
            "stopped": "stopped",
            "killed": f"killed: still running {timeout:g} s after SIGTERM",
            "not running": "not running",
            "stale pid file": "not running; removed a stale pid file",
        }.get(r.outcome, r.outcome)
        click.echo(f"{r.id}: {note}{pid}")


@cluster.command(short_help="Show every node's role, term, commit, lag and alarms.")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="A JSON list of per-node objects.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds to wait for each node's answer.",
)
def status(config_path: str, as_json: bool, timeout: float) -> None:
    """Each node's process and Raft state; lag is the leader's commit index minus the
    node's applied index; data is the size the storage quota bounds, over the node's
    quota; alarms are the raised alarms (NOSPACE@n1: raised by n1; see `kv alarm`). A
    node that does not answer shows as down."""
    from kvstore.cluster import cluster_status

    load_config_or_exit(config_path, as_json=as_json)
    nodes = cluster_status(Path(config_path), timeout=timeout)
    if as_json:
        click.echo(json.dumps([n.to_json() for n in nodes]))
    else:
        _table(nodes)


@cluster.command(short_help="Move leadership to another node.")
@click.option("--to", "to", required=True, help="The voter that should lead.")
@client_options
def transfer(
    to: str, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """Ask the leader to hand leadership to node TO and wait until it has moved. Exit 1
    if TO is not a voter, 5 if leadership certainly did not move, 6 if it may still."""
    leader = run_client(endpoints, config, timeout, as_json, lambda c: c.transfer_leader(to))
    emit(as_json, {"leader": leader}, f"[green]OK[/] leader: {leader}")


@click.group(short_help="List and change the cluster's membership.")
def member() -> None:
    """Single-server membership changes, one at a time (docs/OPERATIONS.md, "Changing
    the membership"). A node to add must be in the config file, so that every node
    knows its address, and must be running with an empty data dir and --join."""


def _show_members(as_json: bool, m: Any) -> None:
    obj = {"voters": list(m.voters), "learners": list(m.learners), "leader": m.leader}
    human = f"voters: {', '.join(m.voters) or '-'}\nlearners: {', '.join(m.learners) or '-'}"
    emit(as_json, obj, f"{human}\nleader: {m.leader or '-'}")


@member.command("list", short_help="Show voters and learners.")
@consistency_option
@client_options
def member_list(
    consistency: str, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """The voters and learners: the cluster's, confirmed by the leader (linearizable,
    the default), or as the node that answers has them (serializable)."""
    _show_members(
        as_json,
        run_client(
            endpoints, config, timeout, as_json, lambda c: c.member_list(consistency=consistency)
        ),
    )


@member.command("add", short_help="Add a voter or a learner.")
@click.argument("node_id")
@click.option("--learner", is_flag=True, help="Add as a learner (replicates, does not vote).")
@client_options
def member_add(
    node_id: str,
    learner: bool,
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Add NODE_ID as a voter (promoting it if it is a learner), or as a learner. Exit 1
    if the leader refuses (another change pending: retry), 6 if the outcome is unknown."""
    m = run_client(
        endpoints, config, timeout, as_json, lambda c: c.member_add(node_id, learner=learner)
    )
    _show_members(as_json, m)


@member.command("remove", short_help="Remove a voter or a learner.")
@click.argument("node_id")
@client_options
def member_remove(
    node_id: str, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """Remove NODE_ID from the cluster. Its process keeps running until you stop it."""
    m = run_client(endpoints, config, timeout, as_json, lambda c: c.member_remove(node_id))
    _show_members(as_json, m)


@cluster.command(short_help="Write the configuration of a cluster across machines.")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    required=True,
    metavar="ID=PEER_HOST:PORT,CLIENT_HOST:PORT",
    help="A node and the addresses it listens on (repeat for each node).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="Where to write cluster.toml, cluster.secret and tls/.",
)
@click.option("--cluster-id", default="main", show_default=True, help="The cluster's id.")
@click.option("--tls", is_flag=True, help="Create a CA and a certificate per node and client.")
def init(nodes: tuple[str, ...], directory: str, cluster_id: str, tls: bool) -> None:
    """Write cluster.toml for the given nodes, the peer secret (mode 0600) and, with
    --tls, a CA and certificates (keys 0600); then print what to copy to each machine
    and how to start the nodes."""
    from kvstore.cluster_init import ca_key_of, copy_plan, init_cluster, parse_node_spec
    from kvstore.config import ConfigError

    try:
        specs = [parse_node_spec(n) for n in nodes]
        report = init_cluster(Path(directory), specs, cluster_id=cluster_id, tls=tls)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        code = ExitCode.USAGE if isinstance(exc, ValueError | ConfigError) else ExitCode.ERROR
        fail(code, str(exc))
    for path in report.written:
        click.echo(f"wrote {path}")
    base = report.config_path.parent
    click.echo("\nNext steps:")
    step = 1
    for nid, files in copy_plan(report.cfg).items():
        rel = " ".join(str(p.relative_to(base)) for p in files)
        host = report.cfg.node(nid).peer_address.host
        click.echo(
            f"  {step}. on {host} ({nid}): copy cluster.toml {rel} into one directory "
            "(same relative paths; keep the .key and .secret files mode 0600), then run "
            f"there:  kv node --config cluster.toml --id {nid}"
        )
        step += 1
    click.echo(
        f"  {step}. once a leader is elected (kv cluster status --config "
        f"{report.config_path}), turn on client authentication right away: kv auth "
        "enable (docs/SECURITY.md)"
    )
    if (ca_key := ca_key_of(report.cfg)) is not None:
        click.echo(
            f"\nKeep {ca_key} (the CA's key) here, or offline: no node needs it. Clients "
            "verify the nodes with tls/ca.crt and, with client_cert_auth = true, present "
            f"tls/client.crt and .key: kv get KEY --config {report.config_path}"
        )
    else:
        click.echo(
            "\nWithout --tls, nodes off loopback refuse to start unless [security] "
            "insecure = true: run init again with --tls (docs/SECURITY.md)."
        )


@click.group(short_help="List and disarm the cluster's alarms.")
def alarm() -> None:
    """Cluster alarms (etcd's). NOSPACE: the data reached a node's storage quota
    ([store] quota_bytes); writes that would grow it are refused until it is
    disarmed. Recover by deleting keys, then `kv alarm disarm` (docs/OPERATIONS.md)."""


def _show_alarms(as_json: bool, alarms: Any) -> None:
    rows = [{"alarm": a.alarm, "node": a.node} for a in alarms]
    human = "\n".join(f"{a.alarm} (raised by {a.node})" for a in alarms) or "no alarms"
    emit(as_json, {"alarms": rows}, human)


@alarm.command("list", short_help="Show the raised alarms.")
@client_options
def alarm_list(endpoints: str | None, config: str | None, timeout: float, as_json: bool) -> None:
    """The raised alarms, as the cluster has committed them."""
    _show_alarms(as_json, run_client(endpoints, config, timeout, as_json, lambda c: c.alarm_list()))


@alarm.command("disarm", short_help="Clear the raised alarms.")
@click.argument(
    "name",
    required=False,
    metavar="[NOSPACE]",
    type=click.Choice(["NOSPACE"], case_sensitive=False),
)
@client_options
def alarm_disarm(
    name: str | None, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """Clear the NOSPACE alarm (default: every alarm) on every node. If the data is still past
    a node's quota, the next write that would grow it raises NOSPACE again."""
    left = run_client(endpoints, config, timeout, as_json, lambda c: c.alarm_disarm(name))
    _show_alarms(as_json, left)
