"""Composition root of one node process: config → storage → engine → transport → server.

``kv node --config cluster.toml --id n1`` calls :func:`main`. The node logs to
``<data_dir>/node.log``, writes ``<data_dir>/node.pid`` while it runs, shuts down
cleanly on SIGTERM/SIGINT, and on the next start recovers everything from its data
directory (a founding member bootstraps the cluster membership only when that
directory is empty). A node started with ``join`` never bootstraps: it waits, empty,
until the leader of an existing cluster that has added it replicates to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import random
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from kvstore.config import ClusterConfig, Fsync, NodeConfig, load_config
from kvstore.security import node_peer_secret, node_tls
from kvstore.server import ClientServer, ConnectionLimits
from kvstore.state_machine import KVStateMachine
from raft.runtime.node import RaftEngine
from raft.runtime.transport import PeerTransport
from raft.storage.base import Storage
from raft.storage.disk import DiskStorage
from raft.storage.fs import make_dirs
from raft.storage.write_behind import WriteBehindStorage

log = logging.getLogger(__name__)

PID_FILE = "node.pid"
LOG_FILE = "node.log"
SERVER_REQUEST_TIMEOUT_S = 4.0


def pid_path(node: NodeConfig) -> Path:
    return node.data_dir / PID_FILE


def log_path(node: NodeConfig) -> Path:
    return node.data_dir / LOG_FILE


@dataclass
class RunningNode:
    """The parts of a started node, for orderly shutdown."""

    engine: RaftEngine
    transport: PeerTransport
    server: ClientServer

    async def close(self) -> None:
        await self.server.close()
        await self.transport.close()
        await self.engine.close()


class UnsafeMode(enum.Enum):
    """Deliberately broken behaviours, used only by the fault-injection harness's own
    tests to show that it catches them. Never use them for data you care about."""

    STALE_READS = "stale-reads"  # linearizable reads served locally, no ReadIndex
    LAZY_FSYNC = "lazy-fsync"  # writes acknowledged before they reach the disk
    WALL_CLOCK_LEASES = "wall-clock-leases"  # leases run out by the leader's wall clock


LAZY_FSYNC_DELAY_S = 2.0


async def start_node(
    cfg: ClusterConfig, node_id: str, unsafe: UnsafeMode | None = None, join: bool = False
) -> RunningNode:
    """Build and start every layer of ``node_id``; the caller owns shutdown. ``join``:
    an empty node must not found a cluster of its own (every config node a voter, as
    a fresh start does): a wiped node doing so would forget its votes and could
    campaign with a membership the cluster has long left."""
    me = cfg.node(node_id)
    secret = node_peer_secret(cfg, me)  # SecurityError: refuse to start as configured
    tls = node_tls(cfg, me)
    if not secret and tls is None:
        log.warning("%s: INSECURE: peers are not authenticated ([security] insecure)", node_id)
    elif not secret:
        log.warning("%s: no cluster secret: peers are authenticated by certificate only", node_id)
    if tls is not None:
        clients = "required" if cfg.security.client_cert_auth else "not required"
        log.info("%s: TLS on both ports (CA %s)", node_id, cfg.security.ca_file)
        log.info("%s: client certificates %s", node_id, clients)
    make_dirs(me.data_dir)
    storage: Storage = DiskStorage(me.data_dir / "raft")
    if unsafe is UnsafeMode.LAZY_FSYNC:
        storage = WriteBehindStorage(storage, LAZY_FSYNC_DELAY_S)
    if unsafe is not None:
        log.warning("%s: RUNNING IN UNSAFE MODE %s (harness self-test only)", node_id, unsafe)
    sm = KVStateMachine(history_limit=cfg.store.history_events)
    engine = RaftEngine(
        config=cfg.raft.core_config(node_id),
        storage=storage,
        state_machine=sm,
        bootstrap_voters=None if join else frozenset(n.id for n in cfg.nodes),
        tick_seconds=cfg.raft.tick_ms / 1000,
        snapshot_threshold=cfg.raft.snapshot_threshold,
        sync_writes=cfg.raft.fsync is Fsync.ALWAYS,
        unsafe_local_reads=unsafe is UnsafeMode.STALE_READS,
    )
    transport = PeerTransport(
        node_id,
        cfg.id,
        me.peer_address,
        cfg.peer_addresses(node_id),
        engine.deliver,
        engine.unreachable,
        rng=random.Random(),
        max_frame_bytes=cfg.raft.max_frame_bytes,
        queue_limit=cfg.raft.peer_queue_limit,
        secret=secret,
        tls=None if tls is None else tls.peer,
    )
    engine.attach(transport)
    engine.start()
    await transport.start()
    election_timeout = cfg.raft.election_ticks * cfg.raft.tick_ms / 1000
    limits = _fit_descriptors(ConnectionLimits.from_settings(cfg.client), node_id)
    server = ClientServer(
        engine,
        sm,
        node_id,
        {n.id: str(n.client_address) for n in cfg.nodes},
        cfg.client,
        # BROKEN ON PURPOSE in that mode: a step of the wall clock moves every lease.
        time.time if unsafe is UnsafeMode.WALL_CLOCK_LEASES else time.monotonic,
        # Below the client library's 5 s attempt timeout, so a client hears TIMEOUT (and
        # retries with the same seq) rather than silence.
        request_timeout=SERVER_REQUEST_TIMEOUT_S,
        # A transfer finishes within one election timeout or is abandoned by the core.
        transfer_timeout=2 * election_timeout,
        election_timeout=election_timeout,
        connection_limits=limits,
        quota_bytes=cfg.store.quota_bytes,
    )
    await server.start(
        me.client_address.host, me.client_address.port, ssl=None if tls is None else tls.clients
    )
    return RunningNode(engine, transport, server)


FD_RESERVE = 256
"""File descriptors kept back from clients: WAL segments, snapshots, peers, logs. A node
out of descriptors cannot write its log: clients must never take the last ones."""


def _fit_descriptors(limits: ConnectionLimits, node_id: str) -> ConnectionLimits:
    """Raise the open-files limit to its hard limit, and keep ``max_connections`` below
    it by ``FD_RESERVE`` (issue 11: 20,000 idle clients exhausted the descriptors and the
    node died at its next log write)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    room = max(16, soft - FD_RESERVE)
    if limits.max_connections > room:
        log.warning(
            "%s: [client] max_connections = %d exceeds what %d open files allow: using %d",
            *(node_id, limits.max_connections, soft, room),
        )
        limits = dataclasses.replace(limits, max_connections=room)
    return limits


async def serve(
    cfg: ClusterConfig, node_id: str, unsafe: UnsafeMode | None = None, join: bool = False
) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal engine error (exit 1)."""
    node = await start_node(cfg, node_id, unsafe, join)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failed = loop.create_task(node.engine.wait_failed())
    stopping = loop.create_task(stop.wait())
    log.info("%s: serving (pid %d)", node_id, os.getpid())
    await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if failed.done():
        log.critical("%s: raft loop failed, stopping: %r", node_id, failed.result())
        code = 1
    else:
        log.info("%s: shutting down on signal", node_id)
    failed.cancel()
    stopping.cancel()
    await node.close()
    log.info("%s: stopped", node_id)
    return code


def main(
    config_path: Path,
    node_id: str,
    *,
    log_level: str = "INFO",
    unsafe: UnsafeMode | None = None,
    join: bool = False,
) -> int:
    """Entry point of ``kv node``: load and validate config, log to the data dir, run."""
    cfg = load_config(config_path)
    me = cfg.node(node_id)
    make_dirs(me.data_dir)
    logging.basicConfig(
        filename=log_path(me),
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    pid_file = pid_path(me)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        return asyncio.run(serve(cfg, node_id, unsafe, join))
    finally:
        with contextlib.suppress(FileNotFoundError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
