"""The local cluster: start, stop and inspect every node of one cluster.toml on this host.

This is the library behind ``kv cluster up/down/status`` and the integration tests'
fixture, so both start nodes the same way. It knows nothing of click or rich.

Theory of operation. A node runs as ``python -m cli.main node --config <abs path> --id
<id>`` in its own session (so a terminal's Ctrl-C or the caller's exit does not reach
it), with stdout/stderr in ``<data_dir>/node.out``. Its pid lives in
``<data_dir>/node.pid``: written here right after the spawn (so a node that dies while
importing still leaves a trace) and again by the node itself (kvstore.node, which also
removes it on a clean exit).

A pid file alone is not proof: after a crash and a reboot, or a few hours of churn, the
pid may belong to an unrelated process, and signalling it would be a disaster. So before
any signal the pid is checked against ``/proc/<pid>/cmdline``: it must be a ``node``
command of ``kv``/python for this node id and this config file (resolved against the
process's own working directory). A pid that fails the check is *stale*: its file is
removed and the node counts as down.

"Up" means a leader is elected: a node reporting itself leader whose leadership a
majority of nodes acknowledge, learned by polling ``status`` over the client protocol
(the same path a client takes, so a node that cannot serve clients is not "up").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore.client import AsyncClient, ClientError, NodeStatus
from kvstore.config import ClusterConfig, NodeConfig, load_config
from kvstore.security import ensure_peer_secret, ensure_tls_files
from kvstore.tls import config_client_context
from raft.storage.fs import make_dirs

__all__ = [
    "OUT_FILE",
    "ClusterError",
    "NodeInfo",
    "StartReport",
    "StopResult",
    "busy_addresses",
    "cluster_status",
    "free_base_port",
    "free_ports",
    "is_node_process",
    "listen_port_range",
    "node_command",
    "pid_alive",
    "poll_status",
    "prepare_tls",
    "read_pid",
    "running_pid",
    "spawn_node",
    "start_cluster",
    "stop_cluster",
    "stop_pid",
    "wait_for_leader",
    "wipe_data",
]

PID_FILE = "node.pid"  # written by kvstore.node too; the names must agree
LOG_FILE = "node.log"
OUT_FILE = "node.out"
# What a node's data directory may hold; ``--fresh`` refuses to wipe anything else, so
# a data_dir pointed at the wrong place (a home directory) is never deleted.
_DATA_ENTRIES = frozenset({"raft", PID_FILE, LOG_FILE, OUT_FILE})
_POLL_S = 0.1
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Children spawned by this process, so they can be reaped (a killed child stays a
# zombie, which os.kill(pid, 0) still reports alive, until its parent waits for it).
_children: dict[int, subprocess.Popen[bytes]] = {}


class ClusterError(Exception):
    """The local cluster cannot do what was asked (the message says why)."""


# ---- processes --------------------------------------------------------------------------


def node_command(config_path: Path, node_id: str, extra_args: Sequence[str] = ()) -> list[str]:
    """The argv of one node process (``kv node`` through this interpreter)."""
    return [
        sys.executable,
        "-m",
        "cli.main",
        "node",
        "--config",
        str(config_path),
        "--id",
        node_id,
        *extra_args,
    ]


def pid_path(node: NodeConfig) -> Path:
    return node.data_dir / PID_FILE


def read_pid(node: NodeConfig) -> int | None:
    """The pid recorded in the node's pid file, or None (no file, unreadable, garbage)."""
    try:
        text = pid_path(node).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies are dead: they are reaped if ours)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    if stat[stat.rfind(")") + 2 :].startswith("Z"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _option(args: Sequence[str], name: str) -> str | None:
    """Value of ``--name v`` or ``--name=v`` in ``args``."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1 :]
    return None


def is_node_process(pid: int, config_path: Path, node_id: str) -> bool:
    """Whether ``pid`` is a live ``kv node`` for ``node_id`` of ``config_path``.

    Without /proc (not Linux) this degrades to "is alive"."""
    if not pid_alive(pid):
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except FileNotFoundError:
        return False  # exited meanwhile
    except OSError:
        return not Path("/proc/self").exists()
    args = raw.decode(errors="replace").split("\0")
    if args and args[-1] == "":
        args.pop()
    launcher = " ".join(Path(a).name for a in args[:2])
    if "node" not in args or not ("python" in launcher or "kv" in launcher):
        return False
    if _option(args, "--id") != node_id:
        return False
    config = Path(_option(args, "--config") or "cluster.toml")
    try:
        return (cwd / config).resolve() == config_path.resolve()
    except OSError:
        return False


def running_pid(node: NodeConfig, config_path: Path) -> int | None:
    """The verified pid of the running node, or None. A stale pid file is removed."""
    pid = read_pid(node)
    if pid is None:
        return None
    if is_node_process(pid, config_path, node.id):
        return pid
    with contextlib.suppress(FileNotFoundError):
        pid_path(node).unlink()
    return None


def spawn_node(
    config_path: Path,
    node: NodeConfig,
    extra_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> int:
    """Start ``node`` as a detached background process; returns its pid. ``extra_args``
    go to ``kv node`` (e.g. ``["--log-level", "DEBUG"]``). ``wrapper`` is a command
    that must exec the node in its own process (``ip netns exec NS``), so the pid is
    still the node's."""
    make_dirs(node.data_dir)
    cfg = load_config(config_path)
    ensure_peer_secret(cfg)  # the configuration's: created once
    ensure_tls_files(cfg)  # likewise, with [security] ca_file
    env = dict(os.environ)
    # The node runs ``-m cli.main``: make the project importable even without an install.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    with open(node.data_dir / OUT_FILE, "ab") as out:
        proc = subprocess.Popen(
            [*wrapper, *node_command(config_path.resolve(), node.id, extra_args)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config_path.resolve().parent,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    pid_path(node).write_text(f"{proc.pid}\n")
    return proc.pid


def prepare_tls(cfg: ClusterConfig) -> ssl.SSLContext | None:
    """Create what is missing of ``cfg``'s TLS files (as :func:`spawn_node` would) and
    return the context its clients use; None without TLS."""
    ensure_tls_files(cfg)
    return config_client_context(cfg)


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def listen_port_range() -> tuple[int, int]:
    """``[low, high)`` of ports to give test servers: below the kernel's ephemeral range
    where it leaves room (Linux: 32768 up). A port picked inside that range can be taken
    as the *source* port of any outgoing connection while its node is down -- between
    the pick and the start, or during a kill and restart -- and the node then cannot
    bind it again."""
    try:
        low = int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; other systems differ, the bind check still holds
    return (10000, low) if low > 12000 else (20000, 60000)


def _bindable(ports: Iterable[int]) -> bool:
    try:
        for port in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_base_port(n: int = 3, attempts: int = 100) -> int:
    """A base port for ``generate_config(n, base)`` whose peer (base+i) and client
    (base+100+i) ports are all free right now (tests and measurement scripts)."""
    rng = random.Random()
    low, high = listen_port_range()
    for _ in range(attempts):
        base = rng.randrange(low, high - 100 - n)
        if _bindable(
            [base + i for i in range(1, n + 1)] + [base + 100 + i for i in range(1, n + 1)]
        ):
            return base
    raise ClusterError("no free port range found")


def free_ports(count: int, attempts: int = 100) -> list[int]:
    """``count`` distinct ports in :func:`listen_port_range` free on 127.0.0.1 now."""
    rng = random.Random()
    low, high = listen_port_range()
    for _ in range(attempts):
        ports = rng.sample(range(low, high), count)
        if _bindable(ports):
            return ports
    raise ClusterError("no free ports found")


def busy_addresses(node: NodeConfig) -> list[str]:
    """The node's peer and client addresses that cannot be bound now, with why.

    Checked before starting: a node that cannot bind exits at once, but another
    cluster already listening there would answer ``status`` in its place and make a
    failed start look like success."""
    busy = []
    for addr in (node.peer_address, node.client_address):
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                # Like asyncio's servers: a port in TIME_WAIT is free.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr.host, addr.port))
        except OSError as exc:
            busy.append(f"{addr}: {exc.strerror or exc}")
    return busy


def stop_pid(pid: int, timeout: float) -> str:
    """SIGTERM, wait up to ``timeout``, then SIGKILL: "stopped", "killed" or "gone"."""
    return _stop_many({pid: "?"}, timeout)[pid]


def _stop_many(pids: dict[int, str], timeout: float) -> dict[int, str]:
    outcome: dict[int, str] = {}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            outcome[pid] = "gone"
    _wait_dead([p for p in pids if p not in outcome], timeout)
    for pid in pids:
        if pid in outcome:
            continue
        if not pid_alive(pid):
            outcome[pid] = "stopped"
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        outcome[pid] = "killed"
    _wait_dead([p for p, o in outcome.items() if o == "killed"], 5.0)
    return outcome


def _wait_dead(pids: Iterable[int], timeout: float) -> None:
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = {p for p in left if pid_alive(p)}
        if left:
            time.sleep(0.02)


# ---- status ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as seen from outside: its process and its own report of its state."""

    id: str
    client_address: str
    data_dir: Path
    pid: int | None  # verified running pid
    status: NodeStatus | None  # None: no answer
    error: str | None = None
    lag: int | None = None  # leader's commit minus this node's applied

    @property
    def role(self) -> str:
        return self.status.role if self.status is not None else "down"

    @property
    def alarms(self) -> list[str]:
        """The raised alarms as this node has applied them, ``"NOSPACE@n1"`` (type,
        then the member that raised it); empty when none or unknown."""
        s = self.status
        return [f"{a.alarm}@{a.node}" for a in (s.alarms or ())] if s is not None else []

    def to_json(self) -> dict[str, Any]:
        s = self.status
        return {
            "id": self.id,
            "pid": self.pid,
            "running": self.pid is not None,
            "role": self.role,
            "term": s and s.term,
            "commit": s and s.commit,
            "applied": s and s.applied,
            "leader": s and s.leader,
            "lag": self.lag,
            "alarms": self.alarms,
            "data_bytes": s and s.data_bytes,
            "quota_bytes": s and s.quota_bytes,
            "client_address": self.client_address,
            "data_dir": str(self.data_dir),
            "error": self.error,
        }


async def poll_status(
    cfg: ClusterConfig,
    timeout: float = 1.0,
    clients: dict[str, AsyncClient] | None = None,
    *,
    tls: ssl.SSLContext | None = None,
) -> dict[str, NodeStatus | str]:
    """Every node's ``status`` at once: its NodeStatus, or the error text if it did not
    answer within ``timeout``. Pass ``clients`` to reuse connections across polls, and
    ``tls`` (``config_client_context(cfg)``) for the clients it makes itself: built by
    the caller once, before the event loop runs, since it reads the CA and key files
    (ValueError without it when ``cfg`` has TLS and some node has no client)."""
    if tls is None and cfg.security.tls and any(n.id not in (clients or {}) for n in cfg.nodes):
        raise ValueError("poll_status: cfg has TLS; pass tls=config_client_context(cfg)")

    async def one(node: NodeConfig) -> NodeStatus | str:
        addr = str(node.client_address)
        own = clients is None or node.id not in clients
        client = (
            AsyncClient([addr], timeout=timeout, deadline=timeout, backoff_cap=0.2, tls=tls)
            if own
            else clients[node.id]  # type: ignore[index]
        )
        try:
            return await client.status(addr)
        except (ClientError, OSError) as exc:
            return str(exc) or type(exc).__name__
        finally:
            if own:
                await client.close()

    results = await asyncio.gather(*(one(n) for n in cfg.nodes))
    return {n.id: r for n, r in zip(cfg.nodes, results, strict=True)}


def _leader(statuses: dict[str, NodeStatus | str], n_nodes: int) -> str | None:
    """A leader whose leadership a majority acknowledges (itself included)."""
    ok = [s for s in statuses.values() if isinstance(s, NodeStatus)]
    leaders = sorted((s for s in ok if s.role == "leader"), key=lambda s: -s.term)
    for cand in leaders:
        votes = sum(1 for s in ok if s.leader == cand.node and s.term == cand.term)
        if votes > n_nodes // 2:
            return cand.node
    return None


def _infos(
    cfg: ClusterConfig, config_path: Path, statuses: dict[str, NodeStatus | str]
) -> list[NodeInfo]:
    ok = [s for s in statuses.values() if isinstance(s, NodeStatus)]
    leaders = [s for s in ok if s.role == "leader"]
    top = max(leaders, key=lambda s: s.term) if leaders else None
    infos = []
    for node in cfg.nodes:
        s = statuses.get(node.id)
        status = s if isinstance(s, NodeStatus) else None
        infos.append(
            NodeInfo(
                id=node.id,
                client_address=str(node.client_address),
                data_dir=node.data_dir,
                pid=running_pid(node, config_path),
                status=status,
                error=s if isinstance(s, str) else None,
                lag=None if status is None or top is None else max(0, top.commit - status.applied),
            )
        )
    return infos


def cluster_status(config_path: Path, timeout: float = 1.0) -> list[NodeInfo]:
    """Process and Raft state of every node of the config (one status round)."""
    cfg = load_config(config_path)
    statuses = asyncio.run(poll_status(cfg, timeout, tls=config_client_context(cfg)))
    return _infos(cfg, config_path, statuses)


def wait_for_leader(
    cfg: ClusterConfig, timeout: float, watch: dict[str, int] | None = None
) -> tuple[str | None, dict[str, NodeStatus | str], dict[str, str]]:
    """Poll until a leader is acknowledged by a majority or ``timeout`` passes.

    Returns (leader id or None, the last statuses, nodes of ``watch`` (id → pid) whose
    process exited meanwhile, with the tail of their output)."""

    tls = config_client_context(cfg)  # reads files: once, and not on the event loop

    async def run() -> tuple[str | None, dict[str, NodeStatus | str], dict[str, str]]:
        clients = {
            n.id: AsyncClient(
                [str(n.client_address)], timeout=0.5, deadline=0.5, backoff_cap=0.1, tls=tls
            )
            for n in cfg.nodes
        }
        deadline = time.monotonic() + timeout
        exited: dict[str, str] = {}
        try:
            while True:
                statuses = await poll_status(cfg, 0.5, clients)
                for nid, pid in (watch or {}).items():
                    if nid not in exited and not pid_alive(pid):
                        exited[nid] = _tail(cfg.node(nid).data_dir / OUT_FILE)
                leader = _leader(statuses, len(cfg.nodes))
                # Up: a leader, and every node we started either serving or dead.
                pending = [
                    n for n in (watch or {}) if n not in exited and isinstance(statuses[n], str)
                ]
                done = watch is not None and len(exited) == len(watch)
                if (leader and not pending) or done or time.monotonic() >= deadline:
                    return leader, statuses, exited
                await asyncio.sleep(_POLL_S)
        finally:
            for c in clients.values():
                await c.close()

    return asyncio.run(run())


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---- up / down ------------------------------------------------------------------------


@dataclass(slots=True)
class StartReport:
    """What ``start_cluster`` did and found."""

    started: dict[str, int] = field(default_factory=dict)  # id → pid
    already_running: dict[str, int] = field(default_factory=dict)
    exited: dict[str, str] = field(default_factory=dict)  # id → tail of node.out
    leader: str | None = None
    nodes: list[NodeInfo] = field(default_factory=list)


def wipe_data(cfg: ClusterConfig) -> list[Path]:
    """Delete every configured data directory (only those), after checking that each
    holds nothing but what a node writes there. Returns the directories removed."""
    doomed = [n.data_dir for n in cfg.nodes if n.data_dir.exists()]
    for d in doomed:
        if not d.is_dir():
            raise ClusterError(f"data_dir {d} is not a directory; refusing to delete it")
        strange = sorted(e.name for e in d.iterdir() if e.name not in _DATA_ENTRIES)
        if strange:
            raise ClusterError(
                f"data_dir {d} holds files a node does not write ({', '.join(strange[:5])}); "
                "refusing to delete it -- check data_root/data_dir in the config"
            )
    for d in doomed:
        shutil.rmtree(d)
    return doomed


def start_cluster(
    config_path: Path,
    *,
    fresh: bool = False,
    wait: float = 15.0,
    only: Sequence[str] | None = None,
) -> StartReport:
    """Start every node of the config that is not running (or just ``only``), then wait
    up to ``wait`` seconds for a leader. ``fresh`` first wipes the data directories and
    is refused while any node of this config runs."""
    config_path = Path(config_path).resolve()
    cfg = load_config(config_path)
    ids = list(only) if only is not None else [n.id for n in cfg.nodes]
    for nid in ids:
        cfg.node(nid)  # KeyError on a typo, before anything starts
    report = StartReport()
    running = {n.id: pid for n in cfg.nodes if (pid := running_pid(n, config_path)) is not None}
    if fresh:
        if running:
            listed = ", ".join(f"{k} (pid {v})" for k, v in running.items())
            raise ClusterError(f"refusing --fresh while nodes are running: {listed}")
        wipe_data(cfg)
    to_start = [nid for nid in ids if nid not in running]
    busy = {nid: b for nid in to_start if (b := busy_addresses(cfg.node(nid)))}
    if busy:
        listed = "; ".join(f"{nid}: {', '.join(b)}" for nid, b in busy.items())
        raise ClusterError(
            f"cannot start, addresses in use (another cluster or process?): {listed}"
        )
    for nid in ids:
        if nid in running:
            report.already_running[nid] = running[nid]
        else:
            report.started[nid] = spawn_node(config_path, cfg.node(nid))
    if wait > 0:
        report.leader, statuses, report.exited = wait_for_leader(cfg, wait, report.started)
    else:
        statuses = {}
    report.nodes = _infos(cfg, config_path, statuses)
    return report


@dataclass(frozen=True, slots=True)
class StopResult:
    id: str
    pid: int | None
    outcome: str  # "stopped", "killed" (SIGKILL after the timeout), "not running", "stale pid file"


def stop_cluster(
    config_path: Path, *, timeout: float = 10.0, only: Sequence[str] | None = None
) -> list[StopResult]:
    """Stop the config's running nodes (or ``only``): SIGTERM, then SIGKILL after
    ``timeout``. Only verified node processes are signalled; stale pid files go."""
    config_path = Path(config_path).resolve()
    cfg = load_config(config_path)
    nodes = [cfg.node(i) for i in only] if only is not None else list(cfg.nodes)
    results: dict[str, StopResult] = {}
    targets: dict[int, str] = {}
    for node in nodes:
        pid = read_pid(node)
        if pid is None:
            results[node.id] = StopResult(node.id, None, "not running")
        elif running_pid(node, config_path) is None:  # removes the stale file
            results[node.id] = StopResult(node.id, pid, "stale pid file")
        else:
            targets[pid] = node.id
    for pid, outcome in _stop_many(targets, timeout).items():
        node = cfg.node(targets[pid])
        if read_pid(node) == pid:  # a clean exit removes it; SIGKILL does not
            with contextlib.suppress(FileNotFoundError):
                pid_path(node).unlink()
        results[node.id] = StopResult(node.id, pid, "stopped" if outcome == "gone" else outcome)
    return [results[n.id] for n in nodes]
