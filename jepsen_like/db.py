"""The system under test: a local cluster of real node processes wired through proxies.

Jepsen calls this the "db": it installs, starts, kills and pauses the database. Here
the nodes are ``kv node`` processes on 127.0.0.1, started and stopped through
:mod:`kvstore.cluster` (the same code as ``kv cluster up``), each with its *own* config
file: identical except that every other node's ``peer_address`` is the proxy for the
link from this node (see :mod:`jepsen_like.proxy`), while its own is its real listen
address. Clients dial the nodes' client addresses directly, as Jepsen's clients do:
faults sit between the nodes, not between clients and nodes. With ``--net netns`` a
:class:`Placement` (:mod:`jepsen_like.netns`) puts each node in a network namespace of
its own instead, at a real address its peers dial directly.

Every pid this module starts is remembered in :data:`STARTED` until it is known dead,
and an ``atexit`` hook SIGKILLs any survivor, so an interrupted run (Ctrl-C, a test
timeout, a bug) never leaves nodes behind. Processes are only ever signalled by pid.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jepsen_like.clock import NodeClocks
from kvstore.client import AsyncClient, Members, NodeStatus
from kvstore.cluster import (
    OUT_FILE,
    free_ports,
    pid_alive,
    prepare_tls,
    spawn_node,
    stop_pid,
    wait_for_leader,
)
from kvstore.config import ClusterConfig, NodeConfig, load_config, parse_config

__all__ = [
    "STARTED",
    "DBError",
    "LocalDB",
    "Placement",
    "free_ports",
    "kill_survivors",
    "node_ids",
    "render_config",
]

Address = tuple[str, int]
Spawner = Callable[[str, Path, NodeConfig, Sequence[str], Sequence[str]], int]
"""(node id, config path, its config, extra ``kv node`` args, a wrapper command that
execs the node) -> pid of the node."""
STARTED: set[int] = set()
"""Pids started by this process and not yet seen dead (the atexit safety net)."""


class DBError(Exception):
    """The cluster could not be brought to the state asked for."""


def node_ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where nodes listen and how they start when they do not run on 127.0.0.1 behind
    proxies (``--net netns``: :meth:`jepsen_like.netns.NetnsNet.placement`)."""

    peer: Mapping[str, Address]  # each node's real peer listen address
    client: Mapping[str, Address]
    spawn: Spawner
    header: Sequence[str]  # the comment that opens each node's config
    # Nodes off loopback must speak TLS (docs/SECURITY.md): the harness then makes a CA
    # and certificates for the run, and its own clients verify the nodes with them.
    tls: bool = False


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(
    me: str,
    *,
    cluster_id: str,
    data_root: Path,
    raft: Mapping[str, int | bool | str],
    peer: Mapping[str, Address],
    client: Mapping[str, Address],
    data_dirs: Mapping[str, Path],
    store: Mapping[str, int] | None = None,
    header: Sequence[str] | None = None,
    tls: bool = False,
) -> str:
    """cluster.toml text as ``me`` must see the cluster: ``peer`` holds, for every node,
    the address ``me`` dials for it (a proxy, or with ``--net netns`` its real address)
    and, for ``me``, its real listen address. ``header``: the opening comment lines.
    Same schema as :func:`kvstore.config.generate_config`; :func:`load_config` validates."""
    if header is None:
        header = [
            f"# Node {me}'s view of the jepsen-like test cluster: the other nodes' peer",
            "# addresses are fault-injecting proxies owned by the harness.",
        ]
    lines = [
        *header,
        "[cluster]",
        f"id = {_toml_str(cluster_id)}",
        f"data_root = {_toml_str(str(data_root))}",
        "",
        "[raft]",
    ]
    for key, value in raft.items():
        shown = ("true" if value else "false") if isinstance(value, bool) else value
        lines.append(f"{key} = {_toml_str(shown) if isinstance(shown, str) else shown}")
    if store:
        lines += ["", "[store]", *(f"{key} = {value}" for key, value in store.items())]
    if tls:
        lines += [
            "",
            "[security]",
            "# Off loopback: TLS, with a CA and certificates the harness made for this run",
            "# (tls/<node>.crt names the node's id and address).",
            f"ca_file = {_toml_str(TLS_CA_FILE)}",
        ]
    for node in sorted(peer):
        lines += [
            "",
            "[[nodes]]",
            f"id = {_toml_str(node)}",
            f'peer_address = "{peer[node][0]}:{peer[node][1]}"',
            f'client_address = "{client[node][0]}:{client[node][1]}"',
            f"data_dir = {_toml_str(str(data_dirs[node]))}",
        ]
    return "\n".join(lines) + "\n"


TLS_CA_FILE = "tls/ca.crt"
"""Relative to the config directory, which every node's config shares."""

HISTORY_EVENTS = 200_000
"""Watch history the test cluster keeps: every event of a run (the watch and lock
workloads read it back from revision 1), with room to spare for long runs."""


class LocalDB:
    """``n`` nodes ``n1..nN``; real addresses are chosen at construction (free ports on
    127.0.0.1, or those of ``placement``, which also says how a node is started)."""

    def __init__(
        self,
        run_dir: Path,
        n: int,
        *,
        raft: Mapping[str, int | bool | str],
        unsafe: str | None = None,
        placement: Placement | None = None,
        clock: NodeClocks | None = None,
    ) -> None:
        # Absolute once, here: the configs' paths are resolved against the config file's
        # folder, so a relative run directory would put the nodes' data somewhere the
        # harness never looks (its wipes and log copies then silently did nothing).
        self.run_dir = run_dir = run_dir.resolve()
        self.nodes = node_ids(n)
        self.raft = dict(raft)
        self.unsafe = unsafe
        self.placement = placement
        self.clock = clock  # start every node under libfaketime (the clock nemesis)
        if placement is None:
            ports = free_ports(2 * n)
            self.peer_addresses: dict[str, Address] = {
                node: ("127.0.0.1", ports[i]) for i, node in enumerate(self.nodes)
            }
            self.client_addresses: dict[str, Address] = {
                node: ("127.0.0.1", ports[n + i]) for i, node in enumerate(self.nodes)
            }
        else:
            self.peer_addresses = {node: placement.peer[node] for node in self.nodes}
            self.client_addresses = {node: placement.client[node] for node in self.nodes}
        self.data_dirs = {node: run_dir / "data" / node for node in self.nodes}
        self.config_paths = {node: run_dir / "config" / f"{node}.toml" for node in self.nodes}
        self.configs: dict[str, ClusterConfig] = {}
        self.tls = placement is not None and placement.tls
        # The harness's own clients: TLS verified against the run's CA (made now, before
        # any node or client needs it), or plain TCP on loopback.
        self.client_tls = self._make_tls() if self.tls else None
        self.pids: dict[str, int] = {}  # running (or paused) node processes
        self.paused: set[str] = set()
        self.restarts = dict.fromkeys(self.nodes, 0)
        self.crashes: list[dict[str, object]] = []  # exits no fault caused
        # Nodes whose Raft state was wiped: they start with --join from then on, so an
        # empty node never founds a second cluster (once it has state, --join is moot).
        self.wiped: set[str] = set()
        # Nodes a fault keeps down until its own stop (a membership change's victim,
        # wiped and waiting to come back as a new machine): no other restart touches
        # them, so a kill's heal cannot start the victim early (--nemesis all).
        self.held: set[str] = set()

    def _make_tls(self) -> ssl.SSLContext | None:
        """The run's CA, node and client certificates (in config/tls/, as the node
        configs name them; each node's names its id and real address)."""
        text = render_config(
            self.nodes[0],
            cluster_id="jepsen",
            data_root=self.run_dir / "data",
            raft=self.raft,
            peer=self.peer_addresses,
            client=self.client_addresses,
            data_dirs=self.data_dirs,
            tls=True,
        )
        config_dir = self.config_paths[self.nodes[0]].parent
        cfg = parse_config(text, source="<tls>", base_dir=config_dir)
        return prepare_tls(cfg)

    def client(self, endpoints: list[str], *, timeout: float, deadline: float) -> AsyncClient:
        """A harness client of these nodes (TLS when they speak it)."""
        return AsyncClient(endpoints, timeout=timeout, deadline=deadline, tls=self.client_tls)

    def endpoints(self) -> list[str]:
        return [f"{h}:{p}" for h, p in (self.client_addresses[n] for n in self.nodes)]

    def write_configs(self, dial: Mapping[tuple[str, str], Address]) -> None:
        """One config per node; ``dial[(src, dst)]`` is where src reaches dst."""
        for me in self.nodes:
            peer = {
                other: (self.peer_addresses[me] if other == me else dial[(me, other)])
                for other in self.nodes
            }
            path = self.config_paths[me]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                render_config(
                    me,
                    cluster_id="jepsen",
                    data_root=self.run_dir / "data",
                    raft=self.raft,
                    peer=peer,
                    client=self.client_addresses,
                    data_dirs=self.data_dirs,
                    store={"history_events": HISTORY_EVENTS},
                    header=None if self.placement is None else self.placement.header,
                    tls=self.tls,
                )
            )
            self.configs[me] = load_config(path)  # the node's own validation, up front

    # ---- processes -----------------------------------------------------------------

    def start(self, node: str) -> int:
        """Start ``node`` (which must not be running); returns its pid."""
        if node in self.pids and pid_alive(self.pids[node]):
            raise DBError(f"{node} is already running (pid {self.pids[node]})")
        extra: tuple[str, ...] = () if self.unsafe is None else ("--unsafe", self.unsafe)
        if node in self.wiped:
            extra += ("--join",)
        wrapper = []
        if self.clock is not None:
            self.clock.process_starting(node)
            wrapper = self.clock.wrapper(node)
        if self.placement is None:
            cfg = self.configs[node].node(node)
            pid = spawn_node(self.config_paths[node], cfg, extra, wrapper=wrapper)
        else:
            cfg = self.configs[node].node(node)
            pid = self.placement.spawn(node, self.config_paths[node], cfg, extra, wrapper)
        STARTED.add(pid)
        self.pids[node] = pid
        self.paused.discard(node)
        return pid

    def running(self, node: str) -> bool:
        pid = self.pids.get(node)
        return pid is not None and _alive(pid)

    def kill(self, nodes: list[str]) -> list[str]:
        """SIGKILL ``nodes`` all at once (as close together as signals allow), then wait
        until each is gone. Returns the nodes that were running."""
        victims = {n: self.pids[n] for n in nodes if self.running(n)}
        for pid in victims.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_dead(list(victims.values()), 10.0)
        for n in victims:
            del self.pids[n]
            self.paused.discard(n)
        return list(victims)

    def restart(self, node: str) -> int | None:
        """Start ``node`` again if it is not running and not held down (data dir kept)."""
        if self.running(node) or node in self.held:
            return None
        self.restarts[node] += 1
        return self.start(node)

    def pause(self, node: str) -> bool:
        if not self.running(node):
            return False
        os.kill(self.pids[node], signal.SIGSTOP)
        self.paused.add(node)
        return True

    def resume(self, node: str) -> bool:
        if node not in self.paused:
            return False
        self.paused.discard(node)
        if self.running(node):
            os.kill(self.pids[node], signal.SIGCONT)
        return True

    def reap_crashes(self) -> list[dict[str, object]]:
        """Nodes whose process exited although no fault killed it: a store bug (or the
        host) took them down. Each is forgotten (so a heal restarts it) and returned
        with the tail of its output, once."""
        found = []
        for node, pid in list(self.pids.items()):
            if not _alive(pid):
                del self.pids[node]
                self.paused.discard(node)
                crash = {"node": node, "pid": pid, "output": self.exit_tail(node)}
                self.crashes.append(crash)
                found.append(crash)
        return found

    def wipe(self, node: str) -> None:
        """Delete a stopped node's Raft state (log, snapshots, votes): a new machine."""
        if self.running(node):
            raise DBError(f"{node} is running; stop it before wiping its data")
        self.wiped.add(node)
        shutil.rmtree(self.data_dirs[node] / "raft", ignore_errors=True)

    def dead(self) -> list[str]:
        return [n for n in self.nodes if not self.running(n)]

    # ---- what a verifier reads (jepsen_like.observe) ----------------------------------

    def pid(self, node: str) -> int | None:
        """The pid of ``node``'s current process, if it has one."""
        return self.pids.get(node)

    def dial_address(self, src: str, dst: str) -> Address:
        """Where ``src`` dials ``dst``, read from src's config file as the node reads it
        (not from the harness's own tables)."""
        addr = load_config(self.config_paths[src]).node(dst).peer_address
        return addr.host, addr.port

    def own_data_dir(self, node: str) -> Path:
        """``node``'s data directory as its config file resolves it for the node."""
        return load_config(self.config_paths[node]).node(node).data_dir

    async def status(self, node: str) -> NodeStatus:
        """``node``'s own answer to the status op."""
        async with self.client([self._endpoint(node)], timeout=1.0, deadline=1.0) as client:
            return await client.status(self._endpoint(node))

    def exit_tail(self, node: str, lines: int = 8) -> str:
        try:
            text = (self.data_dirs[node] / OUT_FILE).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    # ---- cluster state -------------------------------------------------------------

    async def wait_for_leader(self, timeout: float) -> str | None:
        """The leader a majority acknowledges, polled for up to ``timeout`` seconds (or
        None). Fails fast, with the node's output, if a node dies while starting."""
        cfg = self.configs[self.nodes[0]]  # client addresses are the same in every view
        watch = {n: p for n, p in self.pids.items() if n not in self.paused}
        leader, _, exited = await asyncio.to_thread(wait_for_leader, cfg, timeout, watch)
        if exited:
            detail = "; ".join(f"{n}: {t.strip() or '(no output)'}" for n, t in exited.items())
            raise DBError(f"node(s) exited: {detail}")
        return leader

    async def leader(self) -> str | None:
        """The current leader, if one is acknowledged within a second."""
        cfg = self.configs[self.nodes[0]]
        leader, _, _ = await asyncio.to_thread(wait_for_leader, cfg, 1.0, None)
        return leader

    async def transfer_leader(self, to: str, deadline: float = 5.0) -> str:
        """Ask the cluster (through the admin op, as an operator would) to move
        leadership to ``to``; returns the new leader. Raises the client's errors."""
        async with self.client(self.endpoints(), timeout=2.0, deadline=deadline) as client:
            return await client.transfer_leader(to)

    async def member_list(self, node: str | None = None) -> Members:
        """The cluster's membership, confirmed by the leader (linearizable); pinned to
        ``node``, that node answers, and only if it can confirm with a leader."""
        pin = None if node is None else self._endpoint(node)
        async with self.client(self.endpoints(), timeout=2.0, deadline=5.0) as client:
            return await client.member_list(pin)

    async def member_add(self, node: str, learner: bool) -> Members:
        async with self.client(self.endpoints(), timeout=2.0, deadline=5.0) as client:
            return await client.member_add(node, learner=learner)

    async def member_remove(self, node: str) -> Members:
        async with self.client(self.endpoints(), timeout=2.0, deadline=5.0) as client:
            return await client.member_remove(node)

    async def wait_caught_up(self, node: str, timeout: float) -> int:
        """Wait until ``node`` has applied what the leader had committed when the wait
        began (under load the leader moves on; "caught up" means within one round of
        it); returns that index."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.client(self.endpoints(), timeout=1.0, deadline=2.0) as client:
            target: int | None = None
            while loop.time() < deadline:
                with contextlib.suppress(Exception):
                    if target is None:
                        leader = await self.leader()
                        if leader is not None:
                            target = (await client.status(self._endpoint(leader))).commit
                    node_status = await client.status(self._endpoint(node))
                    if target is not None and node_status.applied >= target:
                        return target
                await asyncio.sleep(0.05)
        raise DBError(f"{node} did not catch up within {timeout:g} s")

    def _endpoint(self, node: str) -> str:
        host, port = self.client_addresses[node]
        return f"{host}:{port}"

    async def stop_all(self, timeout: float = 5.0) -> dict[str, str]:
        """SIGCONT the paused, then SIGTERM every node (SIGKILL after ``timeout``)."""
        for node in list(self.paused):
            self.resume(node)
        pids = dict(self.pids)
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(stop_pid, p, timeout) for p in pids.values())
        )
        for pid in pids.values():
            _forget(pid)
        self.pids.clear()
        return dict(zip(pids, outcomes, strict=True))

    def kill_all_now(self) -> None:
        """Error path: SIGCONT + SIGKILL every node we know of, without waiting long."""
        for pid in list(self.pids.values()):
            _kill_hard(pid)
        _wait_dead(list(self.pids.values()), 5.0)
        self.pids.clear()
        self.paused.clear()


def _alive(pid: int) -> bool:
    if pid_alive(pid):
        return True
    _forget(pid)
    return False


def _forget(pid: int) -> None:
    STARTED.discard(pid)


def _wait_dead(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {p for p in left if _alive(p)}
        if left:
            time.sleep(0.01)


def _kill_hard(pid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_survivors() -> list[int]:
    """SIGKILL every pid this process started that may still run; returns them."""
    pids = [p for p in list(STARTED) if _alive(p)]
    for pid in pids:
        _kill_hard(pid)
    _wait_dead(pids, 5.0)
    return pids


atexit.register(kill_survivors)
