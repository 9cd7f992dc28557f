"""The cluster secret: created with the configuration, checked before a node starts.

A node authenticates every peer connection with the cluster secret
(raft/runtime/peer_auth.py). The secret belongs to the cluster's configuration: it
lives in ``[security] peer_secret_file`` (``cluster.secret`` beside cluster.toml by
default), mode 0600, and every machine of the cluster holds the same file. Whatever
creates a configuration and starts nodes from it creates the secret if it is missing
(:func:`ensure_peer_secret`: ``kv cluster up``, the fault harness, the test fixtures,
the benchmark, all through ``kvstore.cluster.spawn_node``). ``kv node`` never creates
one: a node that finds none refuses to start (:func:`node_peer_secret`), since a
secret made on one machine alone would shut it out of its own cluster.

Without TLS (not yet available), a node whose peer or client address is not loopback
refuses to start unless the configuration says ``insecure = true``: the secret
authenticates peers, but nothing encrypts the traffic or authenticates clients.
``insecure`` lifts requirements only: a secret that is there is still used.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from kvstore.config import Address, ClusterConfig, NodeConfig

__all__ = ["SECRET_BYTES", "SecurityError", "ensure_peer_secret", "node_peer_secret"]

SECRET_BYTES = 32
MIN_SECRET_CHARS = 32


class SecurityError(Exception):
    """A node must not start as configured; the message says what to do."""


def ensure_peer_secret(cfg: ClusterConfig) -> bool:
    """Create the configuration's peer secret (random, mode 0600) if it is missing (an
    ``insecure`` cluster uses one too); True if it created one."""
    path = cfg.security.peer_secret_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(SECRET_BYTES).hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def node_peer_secret(cfg: ClusterConfig, node: NodeConfig) -> bytes:
    """The secret ``node`` authenticates its peers with, or SecurityError saying why it
    must not start. ``insecure`` lifts the requirements (a secret, loopback without
    TLS), not the authentication: a secret that is there is still used; b"" only when
    there is none."""
    if cfg.security.insecure:
        if not cfg.security.peer_secret_file.exists():
            return b""
        return _read_secret(cfg.security.peer_secret_file)
    addresses = (node.peer_address, node.client_address)
    exposed = [f"{a.host}:{a.port}" for a in addresses if not _loopback(a)]
    if exposed:
        raise SecurityError(
            f"node {node.id} listens on {', '.join(exposed)}, which is not loopback: across "
            "machines the traffic needs TLS, which this release does not have yet. Set "
            "[security] insecure = true to run without it (docs/SECURITY.md)"
        )
    return _read_secret(cfg.security.peer_secret_file)


def _read_secret(path: Path) -> bytes:
    try:
        st = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError:
        raise SecurityError(
            f"no cluster secret at {path}: `kv cluster up` creates one; across machines, "
            "copy the cluster's secret file there (mode 0600). Or set [security] "
            "insecure = true (no peer authentication)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"cannot read the cluster secret {path}: {exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(
            f"the cluster secret {path} is open to other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}): chmod 600 {path}"
        )
    if len(text) < MIN_SECRET_CHARS:
        raise SecurityError(
            f"the cluster secret {path} is too short ({len(text)} characters; at least "
            f"{MIN_SECRET_CHARS})"
        )
    return text.encode()


def _loopback(address: Address) -> bool:
    host = address.host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it resolves to who knows what
