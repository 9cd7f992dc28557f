"""Creating a cluster's configuration: ``kv cluster init`` (machines of their own) and
``kv cluster up --tls`` (turning TLS on in an existing cluster.toml).

A cluster across machines needs, on every machine, the same cluster.toml and secret,
the CA certificate, and that machine's own certificate and key. :func:`init_cluster`
writes all of it into one directory (the CA's key too, which signs and must stay
there) and :func:`copy_plan` says which files go where; nothing here copies over the
network. The node addresses given are where the nodes listen *and* where the others
dial them, so they must be the machines' real addresses (never 0.0.0.0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.certs import ca_key_path
from kvstore.config import (
    DEFAULT_TLS_DIR,
    ClusterConfig,
    NodeSpec,
    generate_config,
    load_config,
    parse_address,
    parse_config,
)
from kvstore.security import ensure_peer_secret, ensure_tls_files

__all__ = ["InitReport", "copy_plan", "enable_tls", "init_cluster", "parse_node_spec"]

CONFIG_NAME = "cluster.toml"
_CA_LINE = f'ca_file = "{DEFAULT_TLS_DIR}/ca.crt"'


def parse_node_spec(text: str) -> NodeSpec:
    """``id=peer_host:port,client_host:port`` → (id, peer, client); ValueError saying
    what is wrong."""
    nid, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not nid or len(parts) != 2:
        raise ValueError(f"{text!r}: write ID=PEER_HOST:PORT,CLIENT_HOST:PORT")
    return nid, parse_address(parts[0].strip()), parse_address(parts[1].strip())


@dataclass(slots=True)
class InitReport:
    """What :func:`init_cluster` wrote, and the configuration it wrote."""

    config_path: Path
    cfg: ClusterConfig
    written: list[Path] = field(default_factory=list)


def init_cluster(
    directory: Path, nodes: Sequence[NodeSpec], *, cluster_id: str, tls: bool
) -> InitReport:
    """Write ``directory``/cluster.toml for ``nodes``, the peer secret and (``tls``) the
    CA and certificates. Refuses (FileExistsError) to touch an existing cluster.toml;
    the configuration is validated (ConfigError) before anything else is written."""
    if not nodes:
        raise ValueError("at least one node")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    if path.exists():
        raise FileExistsError(f"{path} exists: init writes a new cluster's configuration")
    text = generate_config(0, nodes=list(nodes), cluster_id=cluster_id, tls=tls)
    cfg = parse_config(text, source=str(path), base_dir=directory.absolute())
    path.write_text(text)
    report = InitReport(path, cfg, [path])
    if ensure_peer_secret(cfg):
        report.written.append(cfg.security.peer_secret_file)
    report.written += ensure_tls_files(cfg)
    return report


def copy_plan(cfg: ClusterConfig) -> dict[str, list[Path]]:
    """For each node id, the files its machine needs (same relative paths there)."""
    common = [cfg.security.peer_secret_file]
    if cfg.security.ca_file is not None:
        common.append(cfg.security.ca_file)
    return {
        n.id: [*common, *(p for p in (n.cert_file, n.key_file) if p is not None)] for n in cfg.nodes
    }


def enable_tls(config_path: Path) -> bool:
    """Turn TLS on in the cluster.toml at ``config_path`` if it is off: uncomment the
    generated ``# ca_file = ...`` line, or add ``ca_file`` to [security] (adding the
    table if missing). True if the file changed; the result is validated first."""
    cfg = load_config(config_path)
    if cfg.security.tls:
        return False
    text = config_path.read_text()
    commented = re.compile(r"^#\s*" + re.escape(_CA_LINE) + r"\s*$", re.M)
    header = re.compile(r"^\[security\]\s*(#.*)?$", re.M)
    if commented.search(text):
        new = commented.sub(_CA_LINE, text, count=1)
    elif m := header.search(text):
        new = text[: m.end()] + "\n" + _CA_LINE + text[m.end() :]
    else:
        # Before the first [[nodes]] table, so the key lands in [security].
        nodes = re.search(r"^\[\[nodes\]\]", text, re.M)
        at = nodes.start() if nodes else len(text)
        new = text[:at] + f"[security]\n{_CA_LINE}\n\n" + text[at:]
    base = config_path.absolute().parent
    if not parse_config(new, source=str(config_path), base_dir=base).security.tls:
        raise ValueError(f"could not turn TLS on in {config_path}: set {_CA_LINE} by hand")
    tmp = config_path.with_name(f".{config_path.name}.new")
    tmp.write_text(new)
    tmp.rename(config_path)
    return True


def ca_key_of(cfg: ClusterConfig) -> Path | None:
    """The CA's private key, which stays where certificates are issued."""
    return None if cfg.security.ca_file is None else ca_key_path(cfg.security.ca_file)
