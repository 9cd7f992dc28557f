"""kvstore.cluster's status polling with TLS, without node processes (nothing listens
on the config's ports, so every poll answers with errors): the client TLS context,
which reads the CA and key files, is built once per call site and never on the event
loop, however many polls a wait takes."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from kvstore import cluster
from kvstore.config import ClusterConfig, generate_config, load_config
from kvstore.security import ensure_tls_files
from kvstore.tls import config_client_context


@pytest.fixture
def cfg(tmp_path: Path) -> ClusterConfig:
    path = tmp_path / "cluster.toml"
    path.write_text(generate_config(3, cluster.free_base_port(), tls=True))
    config = load_config(path)
    ensure_tls_files(config)
    return config


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per context built through kvstore.cluster: whether a loop was running."""
    builds: list[bool] = []

    def build(c: ClusterConfig) -> ssl.SSLContext | None:
        try:
            asyncio.get_running_loop()
            builds.append(True)
        except RuntimeError:
            builds.append(False)
        return config_client_context(c)

    monkeypatch.setattr(cluster, "config_client_context", build)
    return builds


def test_waiting_for_a_leader_builds_the_context_once_off_the_loop(
    cfg: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(monkeypatch)
    polls = 0
    real = cluster.poll_status

    async def counting(*args: object, **kwargs: object) -> dict[str, object]:
        nonlocal polls
        polls += 1
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cluster, "poll_status", counting)
    leader, statuses, _ = cluster.wait_for_leader(cfg, timeout=1.5)
    assert leader is None and all(isinstance(s, str) for s in statuses.values())
    assert polls >= 2
    assert builds == [False]


def test_cluster_status_builds_the_context_off_the_loop(
    cfg: ClusterConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    builds = count_builds(monkeypatch)
    infos = cluster.cluster_status(tmp_path / "cluster.toml", timeout=0.3)
    assert [i.id for i in infos] == ["n1", "n2", "n3"] and all(i.error for i in infos)
    assert builds == [False]


def test_poll_status_without_the_context_of_a_tls_config_is_refused(cfg: ClusterConfig) -> None:
    """Rather than polling a TLS cluster in plain TCP and reporting every node down."""
    with pytest.raises(ValueError, match="pass tls=config_client_context"):
        asyncio.run(cluster.poll_status(cfg, 0.3))
