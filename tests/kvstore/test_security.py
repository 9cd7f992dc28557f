"""The cluster secret (kvstore/security.py): created once with mode 0600 by whatever
starts nodes from a configuration, and checked before a node starts: missing, open to
others, too short, or a non-loopback address without TLS all refuse the start with a
message that says what to do; ``insecure = true`` opts out."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kvstore.config import generate_config, parse_config
from kvstore.security import SecurityError, ensure_peer_secret, node_peer_secret


def config(tmp_path: Path, extra: str = "", text: str | None = None):  # type: ignore[no-untyped-def]
    return parse_config((text or generate_config(3)) + extra, base_dir=tmp_path)


def test_the_secret_is_created_once_private_and_random(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = cfg.security.peer_secret_file
    assert path == tmp_path / "cluster.secret" and not path.exists()
    assert ensure_peer_secret(cfg) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert ensure_peer_secret(cfg) is False and path.read_text() == first
    assert node_peer_secret(cfg, cfg.nodes[0]) == first.strip().encode()
    other = tmp_path / "other"
    other.mkdir()
    ensure_peer_secret(config(other))
    assert (other / "cluster.secret").read_text() != first


def test_a_missing_secret_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(SecurityError, match=r"no cluster secret at .*kv cluster up"):
        node_peer_secret(cfg, cfg.nodes[0])


def test_a_secret_open_to_others_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_peer_secret(cfg)
    cfg.security.peer_secret_file.chmod(0o644)
    with pytest.raises(SecurityError, match=r"open to other users .*chmod 600"):
        node_peer_secret(cfg, cfg.nodes[0])


def test_a_short_secret_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = cfg.security.peer_secret_file
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(SecurityError, match="too short"):
        node_peer_secret(cfg, cfg.nodes[0])


def test_a_non_loopback_address_needs_insecure(tmp_path: Path) -> None:
    text = generate_config(3).replace("127.0.0.1:7101", "10.1.2.3:7101")
    cfg = config(tmp_path, text=text)
    ensure_peer_secret(cfg)
    with pytest.raises(SecurityError, match=r"10\.1\.2\.3:7101, which is not loopback"):
        node_peer_secret(cfg, cfg.nodes[0])
    node_peer_secret(cfg, cfg.nodes[1])  # n2 is on loopback
    insecure = config(tmp_path, text=text.replace("insecure = false", "insecure = true"))
    # insecure lifts the requirements, not the authentication: the secret is used.
    secret = insecure.security.peer_secret_file.read_text().strip().encode()
    assert node_peer_secret(insecure, insecure.nodes[0]) == secret
    assert ensure_peer_secret(insecure) is False
    insecure.security.peer_secret_file.unlink()
    assert node_peer_secret(insecure, insecure.nodes[0]) == b""  # none: authenticates nothing


def test_security_settings_are_validated(tmp_path: Path) -> None:
    from kvstore.config import ConfigError

    with pytest.raises(ConfigError, match="insecure must be true or false"):
        config(tmp_path, text=generate_config(3).replace("insecure = false", 'insecure = "no"'))
    with pytest.raises(ConfigError, match="unknown key 'secret'"):
        config(tmp_path, text=generate_config(3).replace("insecure = false", 'secret = "x"'))
    custom = generate_config(3).replace('"cluster.secret"', '"keys/peer.key"')
    assert config(tmp_path, text=custom).security.peer_secret_file == tmp_path / "keys/peer.key"
