"""Cluster configuration: cluster.toml → frozen, validated dataclasses.

Why so strict: a config mistake in a replicated store is silent and expensive. A
misspelt ``fsnyc = "never"`` that is ignored leaves fsync on (harmless), but a misspelt
``election_tick`` leaves a default the operator believes they changed, and two nodes
sharing a data directory corrupt each other's log. So every unknown key, wrong type,
impossible value and inconsistent combination is refused, and the error names the file
and the line to fix (``cluster.toml:14: [raft] election_ticks = 1 must be greater than
heartbeat_ticks = 1``).

tomllib returns plain dicts without positions, so :class:`SourceLines` re-scans the
text for the line of every table header and key (``("nodes", 2, "peer_address")`` is
the ``peer_address`` line of the third ``[[nodes]]`` table). A value left at its
default has no line; its error points at the enclosing table header instead.

Relative paths (``data_root``, ``data_dir``) are relative to the config file's
directory, not the working directory, so ``kv node --config x/cluster.toml`` means the
same thing wherever it is run.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from kvstore.quota import DEFAULT_QUOTA_BYTES
from raft.config import Config
from raft.framing import MAX_FRAME_LIMIT
from raft.types import NodeId

__all__ = [
    "Address",
    "ClientSettings",
    "ClusterConfig",
    "ConfigError",
    "Fsync",
    "NodeConfig",
    "RaftSettings",
    "SecuritySettings",
    "SourceLines",
    "StoreSettings",
    "ca_key_file",
    "generate_config",
    "load_config",
    "parse_address",
    "parse_config",
]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ENVELOPE_BYTES = 64 * KiB
"""Slack for encoding overhead (message header, client session fields) when one limit
must hold a payload bounded by another: a maximal request must fit in an entry, a
maximal entry in a peer frame."""

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ConfigError(ValueError):
    """A config that cannot be used. ``str()`` is ``file:line[:col]: reason``."""

    def __init__(self, source: str, line: int | None, reason: str, col: int | None = None):
        where = source if line is None else f"{source}:{line}" + ("" if col is None else f":{col}")
        super().__init__(f"{where}: {reason}")
        self.source, self.line, self.col, self.reason = source, line, col, reason


class Fsync(enum.Enum):
    ALWAYS = "always"  # fsync before acknowledging: survives power loss
    NEVER = "never"  # benchmarks only: acknowledged writes can vanish on power loss


class Address(NamedTuple):
    """host:port; a tuple, so it is directly a socket address for asyncio."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """[raft]: consensus timing and limits shared by every node (they must agree)."""

    tick_ms: int = 100
    heartbeat_ticks: int = 1
    election_ticks: int = 10
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_threshold: int = 10_000
    snapshot_catchup_entries: int = 1000
    fsync: Fsync = Fsync.ALWAYS
    max_entry_bytes: int = 8 * MiB
    max_msg_bytes: int = 1 * MiB
    max_inflight_msgs: int = 256
    snapshot_chunk_bytes: int = 1 * MiB
    max_frame_bytes: int = 64 * MiB
    peer_queue_limit: int = 4096

    def core_config(self, node_id: NodeId, applied: int = 0) -> Config:
        """The raft core's Config for ``node_id`` with these settings."""
        return Config(
            id=node_id,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_msg_bytes=self.max_msg_bytes,
            max_inflight_msgs=self.max_inflight_msgs,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
            snapshot_catchup_entries=self.snapshot_catchup_entries,
            applied=applied,
        )


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """[client]: limits on client requests, announced to clients in the hello reply."""

    max_request_bytes: int = 4 * MiB
    max_key_bytes: int = 4096
    max_value_bytes: int = 1 * MiB
    max_scan_limit: int = 1000
    # What one client may hold of a node (issue 11; docs/SECURITY.md has the rationale).
    idle_timeout_ms: int = 300_000
    frame_timeout_ms: int = 10_000
    max_connections: int = 4096
    max_in_flight: int = 32
    max_queued_bytes: int = 8 * MiB
    max_watches_per_connection: int = 1000
    max_watches: int = 10_000
    transfer_interval_ms: int = 1000
    # How long a login token is good for (issue 11; judged by each node's wall clock).
    token_ttl_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """[store]: the replicated state machine's limits. ``history_events`` must agree on
    every node (it shapes snapshots); ``quota_bytes`` need not: each node checks it
    before proposing a write, and the NOSPACE alarm it raises is replicated
    (kvstore/quota.py)."""

    history_events: int = 10_000
    quota_bytes: int = DEFAULT_QUOTA_BYTES


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """[security]: how peers and clients authenticate (docs/SECURITY.md). Paths are
    absolute (relative ones resolve against the config file's directory).

    ``ca_file`` turns TLS on, on both ports of every node: peers then verify each
    other's certificate against it (and that it names the member id they claim), and
    clients verify the node's. ``client_cert_file``/``client_key_file`` are what the
    ``kv`` tools present when they read this file (defaults beside ``ca_file``; used
    only if they exist); ``client_cert_auth``: nodes refuse clients without one."""

    peer_secret_file: Path = Path("cluster.secret")
    insecure: bool = False
    ca_file: Path | None = None
    client_cert_auth: bool = False
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


DEFAULT_SECRET_FILE = "cluster.secret"
DEFAULT_TLS_DIR = "tls"
"""Where ``kv cluster up --tls`` and ``kv cluster init --tls`` put the CA and the
certificates, beside cluster.toml: ``tls/ca.crt``, ``tls/<node id>.crt`` and ``.key``,
``tls/client.crt`` and ``.key``."""
CLIENT_CERT_NAME = "client"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One [[nodes]] entry; ``data_dir`` is absolute."""

    id: NodeId
    peer_address: Address
    client_address: Address
    data_dir: Path
    # With TLS ([security] ca_file): the node's certificate and key, by default
    # <ca_file's directory>/<id>.crt and <id>.key. None without TLS.
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    id: str
    data_root: Path
    raft: RaftSettings
    client: ClientSettings
    nodes: tuple[NodeConfig, ...]
    store: StoreSettings = StoreSettings()
    security: SecuritySettings = SecuritySettings()

    def node(self, node_id: NodeId) -> NodeConfig:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id!r} in cluster {self.id!r}")

    def peers_of(self, node_id: NodeId) -> tuple[NodeConfig, ...]:
        """Every node but ``node_id`` (which must exist), in file order."""
        self.node(node_id)
        return tuple(n for n in self.nodes if n.id != node_id)

    def peer_addresses(self, node_id: NodeId) -> dict[NodeId, Address]:
        """``peers_of`` as the transport wants it: id → peer address."""
        return {n.id: n.peer_address for n in self.peers_of(node_id)}


# ---- line numbers -------------------------------------------------------------------

Path_ = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class SourceLines:
    """Line (1-based) of every table header and key in TOML ``text``.

    Paths are key tuples with array-of-tables indexes: ``[[nodes]]`` number k (from 0)
    is ``("nodes", k)``. The scan tracks multi-line strings, quoted strings, comments
    and bracket depth, so lines inside a multi-line value are never mistaken for keys.
    Keys inside inline tables are not indexed; :meth:`line` falls back to the nearest
    indexed ancestor (e.g. the ``nodes = [...]`` line). Meant for text tomllib accepted.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[Path_, int] = {}
        self.last_line = max(1, len(text.splitlines()))
        self._arrays: dict[Path_, int] = {}
        table: Path_ = ()
        ml: str | None = None  # open multi-line string delimiter
        depth = 0  # open [ and { of a value
        for number, line in enumerate(text.splitlines(), start=1):
            pos = 0
            if ml is None and depth == 0:
                table, pos = self._statement(line, table, number)
            ml, depth = _scan_value(line, pos, ml, depth)

    def line(self, path: Path_) -> int:
        """Line of ``path`` or of its nearest indexed ancestor (1 if none)."""
        for n in range(len(path), 0, -1):
            if (found := self.lines.get(path[:n])) is not None:
                return found
        return 1

    def _statement(self, line: str, table: Path_, number: int) -> tuple[Path_, int]:
        """Record a header or key starting ``line``; (current table, value offset)."""
        s = line.lstrip()
        start = len(line) - len(s)
        if s.startswith("["):
            array = s.startswith("[[")
            keys, end = _parse_key(line, start + (2 if array else 1))
            table = self._resolve(keys, array)
            self.lines.setdefault(table, number)
            if array:  # the array itself is where its first table starts
                self.lines.setdefault(table[:-1], number)
            return table, len(line)  # the rest is "]" / "]]" and maybe a comment
        if not s or s.startswith("#"):
            return table, len(line)
        keys, end = _parse_key(line, start)
        if keys and line[end : end + 1] == "=":
            self.lines.setdefault((*table, *keys), number)
            return table, end + 1
        return table, len(line)

    def _resolve(self, keys: list[str], array: bool) -> Path_:
        path: Path_ = ()
        for i, key in enumerate(keys):
            path = (*path, key)
            last = i == len(keys) - 1
            if last and array:
                self._arrays[path] = self._arrays.get(path, 0) + 1
            if path in self._arrays:
                path = (*path, self._arrays[path] - 1)
        return path


def _parse_key(line: str, pos: int) -> tuple[list[str], int]:
    """A dotted key at ``pos``: (parts, offset after trailing whitespace)."""
    keys: list[str] = []
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] in "\"'":
            q = line[pos]
            end = pos + 1
            while end < len(line) and line[end] != q:
                end += 2 if q == '"' and line[end] == "\\" else 1
            raw = line[pos + 1 : end]
            keys.append(json.loads(f'"{raw}"') if q == '"' else raw)
            pos = end + 1
        elif m := _BARE_KEY.match(line, pos):
            keys.append(m.group())
            pos = m.end()
        else:
            return keys, pos
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if line[pos : pos + 1] != ".":
            return keys, pos
        pos += 1


def _scan_value(line: str, pos: int, ml: str | None, depth: int) -> tuple[str | None, int]:
    """Carry multi-line-string and bracket state across one line of a value."""
    i = pos
    while i < len(line):
        if ml is not None:
            if ml == '"""' and line[i] == "\\":
                i += 2
            elif line.startswith(ml, i):
                ml, i = None, i + 3
            else:
                i += 1
            continue
        c = line[i]
        if c == "#":
            break
        if line.startswith(('"""', "'''"), i):
            ml, i = line[i : i + 3], i + 3
        elif c in "\"'":
            i += 1
            while i < len(line) and line[i] != c:
                i += 2 if c == '"' and line[i] == "\\" else 1
            i += 1
        else:
            depth += (c in "[{") - (c in "]}")
            i += 1
    return ml, depth


# ---- validation -----------------------------------------------------------------------


# Integer settings that may be 0; every other integer setting is at least 1.
_ZERO_ALLOWED = frozenset({"snapshot_catchup_entries"})


_HIGHEST = {"quota_bytes": 1 << 50}  # a petabyte: past any disk, far below MAX_INT
_HINTS = {"quota_bytes": " (there is no 'unlimited': give the most the disk should hold)"}


def _lowest(name: str) -> int:
    return 0 if name in _ZERO_ALLOWED else 1


def _highest(name: str) -> int:
    return _HIGHEST.get(name, MAX_FRAME_LIMIT)


class _Checker:
    """Validation context: the parsed document, its lines and where it came from."""

    def __init__(self, doc: dict[str, Any], text: str, source: str, base_dir: Path) -> None:
        self.doc, self.where, self.source, self.base = doc, SourceLines(text), source, base_dir

    def fail(self, path: Path_, reason: str) -> ConfigError:
        return ConfigError(self.source, self.where.line(path), reason)

    def table(self, path: Path_, value: object, known: tuple[str, ...]) -> dict[str, Any]:
        """``value`` as a table whose keys are all in ``known``."""
        name = _show(path)
        if not isinstance(value, dict):
            raise self.fail(path, f"{name} must be a table, not {_type(value)}")
        for key in value:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                also = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(known)})"
                raise self.fail((*path, key), f"unknown key {key!r} in {name}{also}")
        return value

    def settings(self, cls: type[Any], key: str) -> Any:
        """[raft] / [client] as ``cls``: every field optional, typed by its default."""
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        raw = self.table((key,), self.doc.get(key, {}), tuple(fields))
        values: dict[str, Any] = {}
        for name, value in raw.items():
            default, path = fields[name], (key, name)
            if isinstance(default, enum.Enum):
                allowed = [m.value for m in type(default)]
                if value not in allowed:
                    raise self.fail(path, f"[{key}] {name} must be one of {allowed}, not {value!r}")
                value = type(default)(value)
            elif type(value) is not type(default):
                raise self.fail(
                    path, f"[{key}] {name} must be {_type(default)}, not {_type(value)}"
                )
            elif type(value) is int and not _lowest(name) <= value <= _highest(name):
                bounds = f"[{_lowest(name)}, {_highest(name)}]{_HINTS.get(name, '')}"
                raise self.fail(path, f"[{key}] {name} must be in {bounds}")
            values[name] = value
        return cls(**values)

    def string(self, path: Path_, value: object, pattern: re.Pattern[str] | None = None) -> str:
        if type(value) is not str:
            raise self.fail(path, f"{_show(path)} must be a string, not {_type(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(
                path, f"{_show(path)} = {value!r}: use 1-63 of letters, digits, '_', '.', '-'"
            )
        return value

    def directory(self, path: Path_, value: object) -> Path:
        text = self.string(path, value)
        try:
            return _absolute(self.base, text)
        except RuntimeError as exc:  # "~user" for a user this machine does not have
            raise self.fail(path, f"cannot expand {text!r}: {exc}") from None

    def file(self, path: Path_, value: object) -> Path:
        """A file path (absolute; it need not exist yet: the node checks it at start)."""
        if value == "":
            raise self.fail(path, f"{_show(path)} must name a file, not be empty")
        return self.directory(path, value)

    def address(self, path: Path_, value: object) -> Address:
        try:
            return parse_address(self.string(path, value))
        except ValueError as exc:
            raise self.fail(path, f"{_show(path)}: {exc}") from None


def _show(path: Path_) -> str:
    """``("nodes", 2, "id")`` → ``[[nodes]] #3 id``; ``("raft", "x")`` → ``[raft] x``."""
    if not path:
        return "the document"
    if len(path) >= 2 and isinstance(path[1], int):
        head = f"[[{path[0]}]] #{path[1] + 1}"
        return " ".join([head, *map(str, path[2:])])
    return " ".join([f"[{path[0]}]", *map(str, path[1:])])


def _type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", float: "a float"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _absolute(base: Path, value: str) -> Path:
    return Path(os.path.normpath(base / Path(value).expanduser()))


def parse_address(text: str) -> Address:
    """``host:port`` (``[v6]:port`` for IPv6). Raises ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be a number in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host, version=6):
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address")
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 host in brackets, e.g. [::1]:7101")
    elif not _is_ip(host, version=4):
        labels = host.split(".")
        if len(host) > 253 or not all(_LABEL_RE.fullmatch(lb) for lb in labels):
            raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a hostname")
        if labels[-1].isdigit():
            raise ValueError(f"{text!r}: {host!r} is not a valid IPv4 address")
    if _is_ip(host) and ipaddress.ip_address(host).is_unspecified:
        raise ValueError(f"{text!r}: {host} means 'any interface'; give one peers can dial")
    return Address(host, int(port))


def _is_ip(host: str, version: int | None = None) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return version is None or ip.version == version


def _machine_key(a: Address) -> tuple[str, int]:
    """Addresses that may share a listening socket compare equal: all loopback names
    are one host; other hosts compare by name (we cannot know which are one machine)."""
    host = a.host.lower()
    loopback = host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)
    return ("<loopback>" if loopback else host, a.port)


def _check_raft(c: _Checker, raft: RaftSettings, client: ClientSettings) -> None:
    if raft.election_ticks <= raft.heartbeat_ticks:
        key = "election_ticks" if "election_ticks" in c.doc.get("raft", {}) else "heartbeat_ticks"
        raise c.fail(
            ("raft", key),
            f"[raft] election_ticks = {raft.election_ticks} must be greater than "
            f"heartbeat_ticks = {raft.heartbeat_ticks}",
        )
    if raft.max_entry_bytes < client.max_request_bytes + ENVELOPE_BYTES:
        raise c.fail(
            ("raft", "max_entry_bytes"),
            f"[raft] max_entry_bytes = {raft.max_entry_bytes} cannot hold a maximal client "
            f"request: need at least [client] max_request_bytes + {ENVELOPE_BYTES}",
        )
    biggest = max(raft.max_entry_bytes, raft.max_msg_bytes, raft.snapshot_chunk_bytes)
    if raft.max_frame_bytes < biggest + ENVELOPE_BYTES:
        raise c.fail(
            ("raft", "max_frame_bytes"),
            f"[raft] max_frame_bytes = {raft.max_frame_bytes} must be at least {ENVELOPE_BYTES} "
            "more than max_entry_bytes, max_msg_bytes and snapshot_chunk_bytes",
        )
    if client.max_key_bytes + client.max_value_bytes + ENVELOPE_BYTES > client.max_request_bytes:
        raise c.fail(
            ("client", "max_request_bytes"),
            f"[client] max_request_bytes = {client.max_request_bytes} must be at least "
            f"max_key_bytes + max_value_bytes + {ENVELOPE_BYTES}",
        )


def _check_security(c: _Checker) -> SecuritySettings:
    """[security]: paths resolved (TLS files need not exist yet: a node checks its own
    at start), and the TLS keys refused without ``ca_file``."""
    known = (
        "peer_secret_file",
        "insecure",
        "ca_file",
        "client_cert_auth",
        "client_cert_file",
        "client_key_file",
    )
    sec = c.table(("security",), c.doc.get("security", {}), known)
    secret_file = c.directory(
        ("security", "peer_secret_file"), sec.get("peer_secret_file", DEFAULT_SECRET_FILE)
    )
    flags: dict[str, bool] = {}
    for name in ("insecure", "client_cert_auth"):
        flags[name] = sec.get(name, False)
        if type(flags[name]) is not bool:
            raise c.fail(("security", name), f"[security] {name} must be true or false")
    ca_file = c.file(("security", "ca_file"), sec["ca_file"]) if "ca_file" in sec else None
    if ca_file is None:
        for name in ("client_cert_auth", "client_cert_file", "client_key_file"):
            if sec.get(name, False) is not False:
                raise c.fail(("security", name), f"[security] {name} needs ca_file (TLS)")
        return SecuritySettings(secret_file, flags["insecure"])
    cert, key = (
        c.file(("security", k), sec[k]) if k in sec else ca_file.parent / f"{CLIENT_CERT_NAME}{x}"
        for k, x in (("client_cert_file", ".crt"), ("client_key_file", ".key"))
    )
    auth = flags["client_cert_auth"]
    return SecuritySettings(secret_file, flags["insecure"], ca_file, auth, cert, key)


def ca_key_file(ca_file: Path) -> Path:
    """Where the CA's private key lives: ``ca.crt`` → ``ca.key`` (kvstore/certs.py
    writes it there; config checks that no node's file lands on it)."""
    return ca_file.with_suffix(".key")


def _security_files(security: SecuritySettings) -> dict[Path, str]:
    """The files of [security] that a node's certificate or key must not be."""
    files = {security.peer_secret_file: "the cluster secret ([security] peer_secret_file)"}
    if security.ca_file is not None:
        files[security.ca_file] = "the CA certificate ([security] ca_file)"
        files.setdefault(ca_key_file(security.ca_file), "the CA's key (beside ca_file)")
    for path, what in (
        (
            security.client_cert_file,
            "the kv tools' client certificate ([security] client_cert_file)",
        ),
        (security.client_key_file, "the kv tools' client key ([security] client_key_file)"),
    ):
        if path is not None:
            files.setdefault(path, what)
    return files


def _check_nodes(
    c: _Checker, data_root: Path, security: SecuritySettings
) -> tuple[NodeConfig, ...]:
    raw = c.doc.get("nodes")
    if raw is None or raw == []:
        raise ConfigError(
            c.source,
            c.where.line(("nodes",)) if raw == [] else c.where.last_line,
            "no nodes: add at least one [[nodes]] table",
        )
    if not isinstance(raw, list):
        raise c.fail(("nodes",), f"nodes must be an array of [[nodes]] tables, not {_type(raw)}")
    nodes: list[NodeConfig] = []
    ids: dict[str, int] = {}
    seen: dict[tuple[str, int], tuple[str, str, Path_]] = {}
    dirs: dict[Path, str] = {}
    files = _security_files(security)  # path -> what it is; a node's may be none of them
    for k, entry in enumerate(raw):
        known = ("id", "peer_address", "client_address", "data_dir", "cert_file", "key_file")
        t = c.table(("nodes", k), entry, known)
        for key in known[:3]:
            if key not in t:
                raise c.fail(("nodes", k), f"[[nodes]] #{k + 1} is missing {key!r}")
        nid = c.string(("nodes", k, "id"), t["id"], _ID_RE)
        if nid in ids:
            first = c.where.line(("nodes", ids[nid], "id"))
            raise c.fail(("nodes", k, "id"), f"duplicate node id {nid!r} (first on line {first})")
        ids[nid] = k
        addrs = {}
        for key in ("peer_address", "client_address"):
            addr = addrs[key] = c.address(("nodes", k, key), t[key])
            other = seen.setdefault(_machine_key(addr), (nid, key, ("nodes", k, key)))
            if other[2] != ("nodes", k, key):
                raise c.fail(
                    ("nodes", k, key),
                    f"{key} {addr} of node {nid!r} is already the {other[1]} of node "
                    f"{other[0]!r} (line {c.where.line(other[2])})",
                )
        if "data_dir" in t:
            data_dir = c.directory(("nodes", k, "data_dir"), t["data_dir"])
        else:
            data_dir = data_root / nid
        if (owner := dirs.setdefault(data_dir, nid)) != nid:
            raise c.fail(
                ("nodes", k, "data_dir"), f"node {nid!r} shares data_dir {data_dir} with {owner!r}"
            )
        tls: list[Path | None] = [None, None]
        for i, (key, suffix) in enumerate((("cert_file", ".crt"), ("key_file", ".key"))):
            if key in t and security.ca_file is None:
                raise c.fail(("nodes", k, key), f"{key} needs [security] ca_file (TLS)")
            if key in t:
                tls[i] = c.file(("nodes", k, key), t[key])
            elif security.ca_file is not None:
                tls[i] = security.ca_file.parent / f"{nid}{suffix}"
            if (path := tls[i]) is None:
                continue
            if (other := files.get(path)) is None:
                files[path] = f"the {key} of node {nid!r}"
                continue
            if key in t:
                how, fix = "", f"point {key} elsewhere"
            else:
                how = f" (<ca_file's directory>/{nid}{suffix}, by default)"
                fix = f"choose another node id, or set {key} in its [[nodes]] table"
            raise c.fail(
                ("nodes", k, key if key in t else "id"),
                f"the {key} of node {nid!r}{how}, {path}, would be {other}: each TLS "
                f"file must be its own (a node certificate names one member id); {fix}",
            )
        peer, client = addrs["peer_address"], addrs["client_address"]
        nodes.append(NodeConfig(nid, peer, client, data_dir, *tls))
    return tuple(nodes)


def parse_config(
    text: str, *, source: str = "<string>", base_dir: Path | None = None
) -> ClusterConfig:
    """Validate TOML ``text``; relative paths resolve against ``base_dir`` (default cwd)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line, col = (int(m[1]), int(m[2])) if m else (max(1, len(text.splitlines())), None)
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        raise ConfigError(source, line, f"TOML syntax error: {reason}", col) from None
    c = _Checker(doc, text, source, (base_dir or Path.cwd()).absolute())
    c.table((), doc, ("cluster", "raft", "client", "store", "security", "nodes"))
    cluster = c.table(("cluster",), doc.get("cluster", {}), ("id", "data_root"))
    cid = c.string(("cluster", "id"), cluster.get("id", "local"), _ID_RE)
    data_root = c.directory(("cluster", "data_root"), cluster.get("data_root", "./data"))
    raft = c.settings(RaftSettings, "raft")
    client = c.settings(ClientSettings, "client")
    store = c.settings(StoreSettings, "store")
    _check_raft(c, raft, client)
    security = _check_security(c)
    nodes = _check_nodes(c, data_root, security)
    return ClusterConfig(cid, data_root, raft, client, nodes, store, security)


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a cluster.toml. Raises ConfigError naming the file and line."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), None, f"cannot read config: {exc}") from None
    return parse_config(text, source=str(p), base_dir=p.absolute().parent)


# ---- generation ---------------------------------------------------------------------

_DOCS: dict[str, str] = {
    "tick_ms": "Length of one Raft tick in milliseconds; the timeouts below count ticks.",
    "heartbeat_ticks": "Leader heartbeat interval, in ticks.",
    "election_ticks": "Base election timeout in ticks (each wait is random in [n, 2n));\n"
    "must be greater than heartbeat_ticks.",
    "pre_vote": "Pre-vote (dissertation §9.6): a node rejoining after a partition cannot\n"
    "depose a healthy leader by bumping the term.",
    "check_quorum": "A leader that has not heard from a quorum for an election timeout\n"
    "steps down, so a partitioned leader stops serving reads.",
    "snapshot_threshold": "Applied entries between state-machine snapshots (which also\n"
    "compact the log).",
    "snapshot_catchup_entries": "Entries kept in memory below each snapshot: a follower at\n"
    "most this far behind catches up by appends, not the whole snapshot (0: none).",
    "fsync": '"always": fsync the log before acknowledging a write (the default).\n'
    '"never" is for benchmarks ONLY: it loses acknowledged writes on power loss or an\n'
    "OS crash, and a node that restarts without them may break linearizability.",
    "max_entry_bytes": "Largest single log entry; must be at least [client]\n"
    "max_request_bytes + 64 KiB.",
    "max_msg_bytes": "Target bytes of entries per AppendEntries message.",
    "max_inflight_msgs": "AppendEntries messages a leader pipelines to one follower\n"
    "before waiting for acknowledgements.",
    "snapshot_chunk_bytes": "Snapshot bytes per InstallSnapshot message.",
    "max_frame_bytes": "Largest frame accepted from a peer; at least 64 KiB more than\n"
    "max_entry_bytes, max_msg_bytes and snapshot_chunk_bytes.",
    "peer_queue_limit": "Messages queued per unreachable or slow peer before new ones are\n"
    "dropped (Raft retransmits; memory stays bounded).",
    "max_request_bytes": "Largest client request frame; at least max_key_bytes +\n"
    "max_value_bytes + 64 KiB.",
    "max_key_bytes": "Longest key.",
    "max_value_bytes": "Largest value.",
    "max_scan_limit": "Most keys one scan may return.",
    "idle_timeout_ms": "A connection with no request in flight and no watch open for this\n"
    "long is closed.",
    "frame_timeout_ms": "A request frame begun must be complete within this long, or the\n"
    "connection is closed (a half-sent frame holds nothing for ever).",
    "max_connections": "Client connections one node serves at once; more are refused\n"
    "politely (and never starve the node of file descriptors).",
    "max_in_flight": "Requests of one connection served at once; beyond, the node reads\n"
    "no more of its requests until one finishes.",
    "max_queued_bytes": "Response bytes one connection may have waiting for the client to\n"
    "read: beyond, the node stops reading its requests, and a watch that would\n"
    "queue more is cancelled (a slow watcher).",
    "max_watches_per_connection": "Watches open on one connection.",
    "max_watches": "Watches open on one node, over all connections.",
    "transfer_interval_ms": "Shortest time between two leadership transfers a node starts.",
    "token_ttl_ms": "How long a login token is good for (kv auth; by each node's wall\n"
    "clock): the client library logs in again when it runs out.",
    "history_events": "Change events kept for watches (whole revisions are dropped from\n"
    "the oldest end beyond this); a watch from an older revision gets COMPACTED.",
    "quota_bytes": "Storage quota (etcd's --quota-backend-bytes): the most bytes of keys,\n"
    "values and retained history. A write past it is refused with NOSPACE and raises\n"
    "a replicated NOSPACE alarm, which refuses every growing write until deletes make\n"
    "room and `kv alarm disarm` clears it (docs/OPERATIONS.md). Checked by each node\n"
    "before proposing, so nodes may differ; there is no 'unlimited' (0 is an error).",
}


def _toml_value(v: object) -> str:
    if isinstance(v, enum.Enum):
        v = v.value
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is int:
        if v >= GiB and v % GiB == 0:
            return f"{v}  # {v // GiB} GiB"
        return f"{v}  # {v // MiB} MiB" if v >= MiB and v % MiB == 0 else str(v)
    if type(v) is str:
        # JSON's escapes are valid TOML escapes; TOML also bans a raw DEL.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"cannot render {type(v).__name__} as a TOML value")


def _render_settings(name: str, settings: object) -> list[str]:
    out = [f"[{name}]"]
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        out += ["# " + line for line in _DOCS[f.name].splitlines()]
        out += [f"{f.name} = {_toml_value(getattr(settings, f.name))}", ""]
    return out


def _security_lines(tls: bool) -> list[str]:
    on = "" if tls else "# "
    return [
        "[security]",
        "# The cluster secret every peer connection proves it holds (HMAC challenge-",
        "# response; docs/SECURITY.md). `kv cluster up` creates it (mode 0600) if it is",
        "# missing; copy the same file to every machine of the cluster.",
        f"peer_secret_file = {_toml_value(DEFAULT_SECRET_FILE)}",
        "# true: no peer authentication required, and no TLS required off loopback.",
        "# Never on a network others can reach.",
        "insecure = false",
        "# TLS on both ports of every node when set: peers verify each other's",
        "# certificate against this CA and that it names the member id they claim;",
        "# clients verify the node's. `kv cluster up --tls` / `kv cluster init --tls`",
        "# create the CA (its key, ca.key, stays with whoever issues certificates).",
        f'{on}ca_file = "{DEFAULT_TLS_DIR}/ca.crt"',
        "# Each node's certificate and key default to <ca_file's directory>/<id>.crt",
        "# and <id>.key; a node's own table may set cert_file and key_file instead.",
        "# true: nodes refuse clients that present no certificate signed by the CA.",
        f"{on}client_cert_auth = false",
        "# The certificate the kv tools present when they read this file (defaults:",
        "# client.crt and client.key beside ca_file; used only if they exist).",
        f'# client_cert_file = "{DEFAULT_TLS_DIR}/{CLIENT_CERT_NAME}.crt"',
        f'# client_key_file = "{DEFAULT_TLS_DIR}/{CLIENT_CERT_NAME}.key"',
        "",
    ]


NodeSpec = tuple[str, Address, Address]
"""A node for :func:`generate_config`: (id, peer address, client address)."""


def generate_config(
    n: int,
    base_port: int = 7100,
    data_root: str = "./data",
    cluster_id: str = "local",
    *,
    raft: Mapping[str, Any] | None = None,
    client: Mapping[str, Any] | None = None,
    store: Mapping[str, Any] | None = None,
    nodes: Sequence[NodeSpec] | None = None,
    tls: bool = False,
) -> str:
    """cluster.toml text for ``n`` nodes on 127.0.0.1: node ``n{i}`` has peer port
    ``base_port + i`` and client port ``base_port + 100 + i`` (or exactly ``nodes``,
    then ``n`` and ``base_port`` are ignored). ``raft``/``client`` override settings
    (e.g. ``raft={"fsync": "never", "tick_ms": 20}``); every setting is written out
    with its comment, so the file documents itself. ``tls``: [security] ca_file on."""
    if nodes is None:
        if not 1 <= n <= 99:
            raise ValueError("n must be in 1..99 (client ports sit 100 above peer ports)")
        if base_port < 1 or base_port + 100 + n > 65535:
            raise ValueError(f"base_port {base_port} leaves ports outside 1..65535")
        loop = "127.0.0.1"
        nodes = [
            (f"n{i}", Address(loop, base_port + i), Address(loop, base_port + 100 + i))
            for i in range(1, n + 1)
        ]
    try:
        rs = dataclasses.replace(RaftSettings(), **{**(raft or {})})
        cs = dataclasses.replace(ClientSettings(), **{**(client or {})})
        ss = dataclasses.replace(StoreSettings(), **{**(store or {})})
    except TypeError as exc:
        raise ValueError(f"unknown setting: {exc}") from None
    out = [
        "# raftkv cluster configuration. Every setting has a default and may be left",
        "# out; all are spelled out here. Unknown keys are errors, not ignored.",
        "# Relative paths are relative to this file's directory.",
        "",
        "[cluster]",
        "# Cluster id: peers from another cluster are refused at the handshake.",
        f"id = {_toml_value(cluster_id)}",
        "# Each node keeps its log and snapshots in <data_root>/<node id> unless the",
        "# node sets data_dir.",
        f"data_root = {_toml_value(data_root)}",
        "",
        *_render_settings("raft", rs),
        *_render_settings("client", cs),
        *_render_settings("store", ss),
        *_security_lines(tls),
    ]
    for nid, peer, client_address in nodes:
        out += [
            "[[nodes]]",
            f"id = {_toml_value(nid)}",
            "# Raft traffic between nodes.",
            f"peer_address = {_toml_value(str(peer))}",
            "# Clients (kv CLI, kvstore.client) connect here.",
            f"client_address = {_toml_value(str(client_address))}",
            f"# data_dir = {_toml_value(f'{data_root}/{nid}')}  (the default)",
            "",
        ]
    return "\n".join(out)
