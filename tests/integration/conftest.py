"""Real 3-node clusters on 127.0.0.1 for the integration tests.

Nodes are started exactly as ``kv cluster up`` starts them (kvstore.cluster), on a
free port range, with fsync on and a short tick so elections take a fraction of a
second. Whatever a test does -- kill nodes, restart them, run ``kv cluster up`` in a
subprocess -- the finalizer SIGKILLs every node process it can attribute to the test's
config (the pids it started plus those in the config's pid files, each verified to be
that config's ``kv node``), even when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvstore import cluster
from kvstore.client import AsyncClient, Client, NodeStatus
from kvstore.config import ClusterConfig, generate_config, load_config
from kvstore.tls import config_client_context

TICK_MS = 25  # elections in 250-500 ms


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: real node processes on 127.0.0.1 (run in CI, ~1 min)"
    )


class LocalCluster:
    """One test's cluster: a generated config plus helpers to start, kill and query."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.cfg: ClusterConfig = load_config(config)
        self.started: set[int] = set()  # every pid this fixture started
        self._clients: list[Client] = []

    # -- processes --

    def up(self, only: list[str] | None = None, wait: float = 15.0) -> cluster.StartReport:
        report = cluster.start_cluster(self.config, only=only, wait=wait)
        self.started |= set(report.started.values())
        assert not report.exited, f"nodes exited at start: {report.exited}"
        return report

    def pid(self, node_id: str) -> int | None:
        return cluster.running_pid(self.cfg.node(node_id), self.config)

    def kill(self, *node_ids: str, sig: int = signal.SIGKILL) -> None:
        """Signal the nodes (all at once) and wait until every one is gone."""
        pids = [p for n in node_ids if (p := self.pid(n)) is not None]
        assert len(pids) == len(node_ids), f"not all of {node_ids} are running"
        for p in pids:
            os.kill(p, sig)
        deadline = time.monotonic() + 10
        while any(cluster.pid_alive(p) for p in pids):
            assert time.monotonic() < deadline, f"{node_ids} still alive after {sig}"
            time.sleep(0.01)

    def cleanup(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        pids = set(self.started)
        pids |= {p for n in self.cfg.nodes if (p := cluster.read_pid(n)) is not None}
        ours = [
            p
            for p in pids
            if any(cluster.is_node_process(p, self.config, n.id) for n in self.cfg.nodes)
        ]
        for p in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(cluster.pid_alive(p) for p in ours) and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- addresses and clients --

    def addr(self, node_id: str) -> str:
        return str(self.cfg.node(node_id).client_address)

    @property
    def addrs(self) -> list[str]:
        return [str(n.client_address) for n in self.cfg.nodes]

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.cfg.nodes]

    def client(self, *node_ids: str, **kwargs: Any) -> Client:
        """A sync client to ``node_ids`` (default all); closed by the finalizer."""
        addrs = [self.addr(n) for n in node_ids] if node_ids else self.addrs
        c = Client(addrs, **{"deadline": 20.0, "tls": self.tls, **kwargs})
        self._clients.append(c)
        return c

    def async_client(self, *node_ids: str, **kwargs: Any) -> AsyncClient:
        """An async client (the caller closes it, inside its event loop)."""
        addrs = [self.addr(n) for n in node_ids] if node_ids else self.addrs
        return AsyncClient(addrs, **{"deadline": 20.0, "tls": self.tls, **kwargs})

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The context the kv tools use for this config (None without TLS)."""
        return config_client_context(self.cfg)

    # -- state --

    def statuses(self, timeout: float = 1.0) -> dict[str, NodeStatus | str]:
        return asyncio.run(cluster.poll_status(self.cfg, timeout, tls=self.tls))

    def status(self, node_id: str) -> NodeStatus | None:
        s = self.statuses()[node_id]
        return s if isinstance(s, NodeStatus) else None

    def leader(self, timeout: float = 15.0, exclude: str | None = None) -> str:
        """The id of a leader a majority acknowledges (not ``exclude``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sts = [s for s in self.statuses(0.5).values() if isinstance(s, NodeStatus)]
            for s in sts:
                acks = sum(1 for o in sts if o.leader == s.node and o.term == s.term)
                if s.role == "leader" and s.node != exclude and acks > len(self.ids) // 2:
                    return s.node
            time.sleep(0.05)
        raise AssertionError(f"no leader within {timeout} s: {self.statuses()}")

    def followers(self) -> list[str]:
        lead = self.leader()
        return [n for n in self.ids if n != lead]

    def wait_applied(self, node_id: str, index: int, timeout: float = 15.0) -> NodeStatus:
        """Wait until ``node_id`` has applied ``index``."""
        deadline = time.monotonic() + timeout
        last: NodeStatus | None = None
        while time.monotonic() < deadline:
            last = self.status(node_id)
            if last is not None and last.applied >= index:
                return last
            time.sleep(0.05)
        raise AssertionError(f"{node_id} did not apply {index} within {timeout} s: {last}")

    def wal_tail(self, node_id: str) -> Path:
        """The last WAL segment file of ``node_id``."""
        segments = sorted((self.cfg.node(node_id).data_dir / "raft").glob("wal-*.log"))
        assert segments, f"{node_id} has no WAL segment"
        return segments[-1]


MakeCluster = Callable[..., LocalCluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """``make_cluster(start=True, tls=False, store=None, **raft_settings)`` → a running
    LocalCluster (``tls``: [security] ca_file on, the certificates made at start;
    ``store``: its [store] settings)."""
    made: list[LocalCluster] = []

    def make(
        start: bool = True,
        tls: bool = False,
        store: dict[str, Any] | None = None,
        **raft: Any,
    ) -> LocalCluster:
        root = tmp_path / f"cluster{len(made)}"
        root.mkdir()
        config = root / "cluster.toml"
        settings = {"tick_ms": TICK_MS, "fsync": "always", **raft}
        text = generate_config(
            3, cluster.free_base_port(), "./data", raft=settings, tls=tls, store=store
        )
        config.write_text(text)
        lc = LocalCluster(config)
        made.append(lc)
        if start:
            report = lc.up()
            assert report.leader is not None, "no leader after start"
        return lc

    try:
        yield make
    finally:
        for lc in made:
            lc.cleanup()


@pytest.fixture
def local_cluster(make_cluster: MakeCluster) -> LocalCluster:
    """A running 3-node cluster with the test defaults."""
    return make_cluster()
