"""The cluster secret and TLS files: created with the configuration, checked before a
node starts.

A node authenticates every peer connection with the cluster secret
(raft/runtime/peer_auth.py). The secret belongs to the cluster's configuration: it
lives in ``[security] peer_secret_file`` (``cluster.secret`` beside cluster.toml by
default), mode 0600, and every machine of the cluster holds the same file. Whatever
creates a configuration and starts nodes from it creates the secret if it is missing
(:func:`ensure_peer_secret`: ``kv cluster up``, the fault harness, the test fixtures,
the benchmark, all through ``kvstore.cluster.spawn_node``). ``kv node`` never creates
one: a node that finds none refuses to start (:func:`node_peer_secret`), since a
secret made on one machine alone would shut it out of its own cluster.

TLS (``[security] ca_file``, kvstore/tls.py) works the same way: ``kv cluster up``
(:func:`ensure_tls_files`) creates the CA and the certificates it finds missing (if it
holds the CA's key); a node only checks its own files (:func:`node_tls`). Without TLS,
a node whose peer or client address is not loopback refuses to start unless the
configuration says ``insecure = true``: the secret authenticates peers, but nothing
encrypts the traffic or authenticates clients. ``insecure`` lifts requirements only: a
secret that is there is still used, and so is TLS that is configured.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from kvstore.certs import CertificateAuthority, CertPair, ca_key_path, write_pair
from kvstore.config import Address, ClusterConfig, NodeConfig
from kvstore.tls import NodeTLS, TLSConfigError, check_node_files, node_contexts

__all__ = [
    "SECRET_BYTES",
    "SecurityError",
    "ensure_peer_secret",
    "ensure_tls_files",
    "node_peer_secret",
    "node_tls",
]

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
    if exposed and not cfg.security.tls:
        raise SecurityError(
            f"node {node.id} listens on {', '.join(exposed)}, which is not loopback: across "
            "machines the traffic needs TLS ([security] ca_file; `kv cluster init --tls` "
            "sets it up). Set [security] insecure = true to run without it "
            "(docs/SECURITY.md)"
        )
    return _read_secret(cfg.security.peer_secret_file)


def node_tls(cfg: ClusterConfig, node: NodeConfig) -> NodeTLS | None:
    """``node``'s TLS contexts (None without ``ca_file``), or SecurityError naming the
    file that cannot be used."""
    if not cfg.security.tls:
        return None
    try:
        check_node_files(cfg, node)
        return node_contexts(cfg, node)
    except TLSConfigError as exc:
        raise SecurityError(str(exc)) from None


def ensure_tls_files(cfg: ClusterConfig) -> list[Path]:
    """Create what is missing of ``cfg``'s TLS files: the CA (with its key beside it),
    each node's certificate (naming its id and its hosts) and key, the client
    certificate and key. Existing files are kept; each certificate lands with its key
    or not at all (:func:`kvstore.certs.write_pair`). Returns the files written; nothing
    without ``ca_file``. SecurityError, naming the files, for a missing certificate
    without the CA's key, and for half a pair (a crash mid-creation, or a file removed)."""
    sec = cfg.security
    if sec.ca_file is None:
        return []
    written: list[Path] = []

    def write(cert: Path, key: Path, pair: CertPair) -> None:
        write_pair(cert, key, pair)
        written.extend((key, cert))

    ca_key = ca_key_path(sec.ca_file)
    if not sec.ca_file.exists():
        if ca_key.exists():  # a CA certificate without its key is a node's normal state
            raise SecurityError(
                f"{ca_key} exists but {sec.ca_file} does not (an interrupted creation "
                f"leaves this): if no certificate was issued by this CA, remove {ca_key}; "
                f"otherwise restore {sec.ca_file} (every node has a copy)"
            )
        ca = CertificateAuthority.create(cfg.id)
        write(sec.ca_file, ca_key, ca.pair)
    wanted: list[tuple[Path, Path, NodeConfig | None]] = [
        (n.cert_file, n.key_file, n) for n in cfg.nodes if n.cert_file and n.key_file
    ]
    if sec.client_cert_file and sec.client_key_file:
        wanted.append((sec.client_cert_file, sec.client_key_file, None))
    for cert_file, key_file, _ in wanted:
        if cert_file.exists() != key_file.exists():
            have, lack = (cert_file, key_file) if cert_file.exists() else (key_file, cert_file)
            raise SecurityError(
                f"{have} exists but {lack} does not (an interrupted creation, or a file "
                f"removed): restore {lack}, or remove {have} to have both made anew"
            )
    missing = [w for w in wanted if not w[0].exists()]
    if not missing:
        return written
    try:
        ca = CertificateAuthority.load(sec.ca_file)
    except (OSError, ValueError) as exc:
        raise SecurityError(
            f"cannot issue certificates for {', '.join(str(m[0]) for m in missing)}: the "
            f"CA's key ({ca_key_path(sec.ca_file)}) is unusable: {exc}"
        ) from None
    for cert_file, key_file, node in missing:
        if node is None:
            pair = ca.issue_client(f"raftkv client of {cfg.id}")
        else:
            pair = ca.issue_node(node.id, [node.peer_address.host, node.client_address.host])
        write(cert_file, key_file, pair)
    return written


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
