"""Real network namespaces for ``jepsen-like run --net netns`` (Linux, root only).

Theory of operation
-------------------
The default network (:mod:`jepsen_like.proxy`) needs no privileges: every peer link goes
through a userspace proxy of the harness. Faithful as it is, the store's nodes then talk
to proxies, not to each other, and the faults are the proxy's model of a network. This
module is the optional other way, Jepsen's own: the nodes talk over real TCP between
real interfaces, and the faults are made by the kernel.

**Topology.** A run gets a random id ``R`` (6 hex digits) and a random ``10.X.Y.0/24``
that no route or address of the host overlaps, so two runs coexist. Each node ``nI``
(the I-th node) lives in its own namespace ``jlR-nI`` with loopback up and one
interface ``eth0``, address ``10.X.Y.I``, the far end of a veth pair whose near end
``jlRnI`` is a port of a bridge ``jlRbr`` in the root namespace. The bridge has
``10.X.Y.254``, so the harness (clients, status polls) reaches every node's client port
directly, as before. Every node binds its namespace address for both its peer and its
client port (the same ports in every namespace: each has a port space of its own), and
dials its peers' real addresses.

**Processes.** A node is started as ``ip netns exec jlR-nI <the usual kv node argv>``.
``ip netns exec`` enters the namespace and then *execs* the command, so the pid the
harness records is the node's own, and SIGKILL, SIGSTOP and SIGCONT by pid work exactly
as without namespaces.

**Partitions.** iptables and nft are not needed (nor assumed installed). A blocked
directed link ``i → j`` is a permanent neighbour (ARP) entry in ``i``'s namespace mapping
``j``'s address to a MAC address no interface has: ``i``'s frames to ``j`` are flooded by
the bridge and dropped by everyone, *silently*, like an iptables DROP rule: the sender
learns nothing and must find out by timeouts, as Raft must. (A blackhole route, the
obvious alternative, is not silent: the kernel fails the local sender's ``connect`` and
sends with EINVAL at once.) A permanent entry is never overwritten by ARP traffic, and
healing deletes it, so the next packet resolves ``j`` again and open connections resume
(TCP retransmits; no stream has a hole, unlike a proxy that discarded bytes).

Packet loss in one direction stalls TCP in *both*: ``j``'s segments still reach ``i``,
but ``i``'s acknowledgements (and handshake replies) do not reach ``j``. So at the
level the store sees, a grudge is symmetric per pair: blocking ``i → j`` cuts ``i`` and
``j`` apart. The partition kinds of :mod:`jepsen_like.nemesis` are symmetric anyway
(halves, one, leader and bridge block both directions of every cut pair; the majorities
ring is symmetric with 5 nodes) except the 3-node majorities ring, which blocks one
direction of every pair: here that isolates every node from every other for the window
(with proxies each node still hears one peer; in both cases nothing can commit).

**Latency** needs the kernel's ``netem`` qdisc. Only peer traffic is delayed: on each
namespace's ``eth0`` an HTB root sends packets to the node subnet (except the harness's
``.254``) through a class whose leaf is ``netem delay D J``, and everything else
through an undelayed class; healing deletes the root qdisc. With jitter netem may
reorder packets, which TCP puts back in order. Where the kernel has no netem (some
minimal VM kernels), the ``latency`` nemesis is refused up front (:func:`refusal`).

**Dropped connections** are reset with ``ss -K`` (the kernel's socket-destroy
diagnostics): in each namespace, the TCP sockets of the connections that node dialled
to a peer's peer port, each connection once, the peer getting a RST. Without kernel
support the ``drop`` nemesis is refused up front.

**Cleanup.** Everything is created under exact names recorded before it is made, and
:meth:`NetnsNet.close` (the runner's ``finally``) deletes exactly those: any process
still inside one of the run's namespaces is SIGKILLed by pid (the harness started it),
then the veth pairs, the bridge and the namespaces go. An ``atexit`` hook does the same
for every network not closed, so an exception or Ctrl-C leaves nothing behind. Only a
harness killed outright (SIGKILL) can leave ``jl*`` namespaces and links, which
``ip netns list`` and ``ip link`` show, for deletion by name.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepsen_like.db import Placement
from jepsen_like.proxy import Grudge, Link
from kvstore.cluster import spawn_node
from kvstore.config import NodeConfig

__all__ = [
    "CLIENT_PORT",
    "PEER_PORT",
    "NetnsError",
    "NetnsNet",
    "Support",
    "refusal",
    "support",
]

Address = tuple[str, int]
PEER_PORT = 7001
CLIENT_PORT = 7101
_PREFIX = "jl"
_DEV = "eth0"  # each node's interface, inside its namespace
_NOWHERE_MAC = "02:00:00:00:00:00"  # locally administered, owned by no interface
_CMD_TIMEOUT_S = 10.0


class NetnsError(OSError):
    """The namespaces could not be set up or changed (the message says why)."""


# ---- what the host can do ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Support:
    """What ``--net netns`` can do here. ``problem``: why it cannot run at all, or None."""

    problem: str | None
    netem: bool = False  # the latency nemesis
    kill_sockets: bool = False  # the drop nemesis (ss -K)


def _run(args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=_CMD_TIMEOUT_S,
        check=False,
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no output"


@functools.cache
def support() -> Support:
    """Probe once per process: Linux, root, a working ``ip netns``, netem, ``ss -K``."""
    if not sys.platform.startswith("linux"):
        return Support("--net netns needs Linux network namespaces; use --net proxy")
    if os.geteuid() != 0:
        return Support("--net netns needs root (network namespaces); use --net proxy")
    if shutil.which("ip") is None:
        return Support("--net netns needs iproute2's ip command; use --net proxy")
    probe = f"{_PREFIX}probe{secrets.token_hex(3)}"
    try:
        made = _run(["ip", "netns", "add", probe])
    except (OSError, subprocess.SubprocessError) as exc:
        return Support(f"--net netns: ip netns add failed ({exc}); use --net proxy")
    if made.returncode != 0:
        why = _first_line(made.stderr)
        return Support(f"--net netns: ip netns add failed ({why}); use --net proxy")
    try:
        _run(["ip", "-n", probe, "link", "set", "lo", "up"])
        netem = (
            shutil.which("tc") is not None
            and _run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem"]).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        netem = False
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run(["ip", "netns", "del", probe])
    return Support(None, netem=netem, kill_sockets=_ss_kill_works())


def _ss_kill_works() -> bool:
    """Whether ``ss -K`` destroys sockets here: tried on a connection of our own, on
    loopback, named by its exact ports."""
    if shutil.which("ss") is None:
        return False
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        port = server.getsockname()[1]
        client = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=2))
        stack.enter_context(server.accept()[0])
        mine = client.getsockname()[1]
        try:
            _run(["ss", "-K", "-t", "-n", "-H", f"sport = :{mine} and dport = :{port}"])
        except (OSError, subprocess.SubprocessError):
            return False
        client.settimeout(1.0)
        try:
            client.recv(1)
        except TimeoutError:
            return False  # still open: ss -K did nothing
        except OSError:
            return True  # ECONNABORTED: destroyed
        return False  # an EOF: not what a destroyed socket reports


def refusal(kinds: Iterable[str]) -> str | None:
    """Why ``--net netns`` cannot run these nemesis kinds here (one line), or None."""
    sup = support()
    if sup.problem is not None:
        return sup.problem
    kinds = set(kinds)
    if "latency" in kinds and not sup.netem:
        return (
            "--net netns: the latency nemesis needs the kernel's netem qdisc, which this "
            "kernel lacks; use --net proxy for latency"
        )
    if "drop" in kinds and not sup.kill_sockets:
        return (
            "--net netns: the drop nemesis needs ss -K (kernel socket destroy), which does "
            "not work here; use --net proxy for drop"
        )
    return None


# ---- the network ---------------------------------------------------------------------------


_LIVE: dict[int, NetnsNet] = {}  # networks set up and not yet torn down (the atexit net)


def _in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix routed or assigned on the host (root namespace)."""
    nets = []
    out = _run(["ip", "-j", "-4", "route", "show", "table", "all"])
    with contextlib.suppress(ValueError):
        for route in json.loads(out.stdout or "[]"):
            dst = route.get("dst", "default")
            if dst != "default":
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def _pick_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    used = _in_use()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(128, 255)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError("no free 10.x.y.0/24 for the test network")


class NetnsNet:
    """One run's namespaces, bridge and veths, and the faults on them (the ``Net`` of
    :mod:`jepsen_like.nemesis`, like :class:`jepsen_like.proxy.ProxyNet`)."""

    def __init__(self, nodes: Sequence[str]) -> None:
        if len(nodes) > 250:
            raise ValueError("at most 250 nodes")
        self.nodes = list(nodes)
        rng = random.Random(secrets.randbits(64))  # unique per run, never the run's seed
        self.run_id = secrets.token_hex(3)
        self.bridge = f"{_PREFIX}{self.run_id}br"
        self.namespaces = {n: f"{_PREFIX}{self.run_id}-{n}" for n in self.nodes}
        self.veths = {n: f"{_PREFIX}{self.run_id}{n}"[:15] for n in self.nodes}
        self.subnet = _pick_subnet(rng)
        hosts = list(self.subnet.hosts())
        self.ips = {n: str(hosts[i]) for i, n in enumerate(self.nodes)}
        self.harness_ip = str(hosts[253])
        self.links: tuple[Link, ...] = tuple(
            (s, d) for s in self.nodes for d in self.nodes if s != d
        )
        self._blocked: frozenset[Link] = frozenset()
        self._latency = (0.0, 0.0)
        self._shaped: set[str] = set()  # nodes whose eth0 has the latency qdiscs
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name), in creation order
        self.stats = {"dropped": 0}

    # ---- addresses ------------------------------------------------------------------

    @property
    def peer_addresses(self) -> dict[str, Address]:
        return {n: (self.ips[n], PEER_PORT) for n in self.nodes}

    @property
    def client_addresses(self) -> dict[str, Address]:
        return {n: (self.ips[n], CLIENT_PORT) for n in self.nodes}

    def address(self, src: str, dst: str) -> Address:
        """Where ``src`` dials ``dst``: its real address (no proxy in between)."""
        return self.peer_addresses[dst]

    def placement(self) -> Placement:
        """What :class:`jepsen_like.db.LocalDB` needs to put the nodes here."""
        return Placement(
            peer=self.peer_addresses,
            client=self.client_addresses,
            spawn=self.spawn,
            header=[
                "# A node's view of the jepsen-like test cluster (--net netns): each node has",
                f"# its own network namespace ({_PREFIX}{self.run_id}-<node>) and dials its "
                "peers' real addresses.",
            ],
            tls=True,  # 10.x addresses: the store refuses them without TLS
        )

    # ---- lifecycle ------------------------------------------------------------------

    def setup(self) -> None:
        """Create the namespaces, veths and bridge (everything recorded for teardown)."""
        if self._made:
            raise NetnsError("already set up")
        prefix = self.subnet.prefixlen
        _LIVE[id(self)] = self
        self._made.append(("link", self.bridge))
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.harness_ip}/{prefix}", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            ns, veth = self.namespaces[node], self.veths[node]
            self._made.append(("netns", ns))
            self._ip("netns", "add", ns)
            self._made.append(("link", veth))
            self._ip("link", "add", veth, "type", "veth", "peer", "name", _DEV, "netns", ns)
            self._ip("link", "set", veth, "master", self.bridge, "up")
            self._batch(
                ns,
                [
                    f"addr add {self.ips[node]}/{prefix} dev {_DEV}",
                    f"link set {_DEV} up",
                    "link set lo up",
                ],
            )

    async def start(self) -> None:
        self.setup()

    async def close(self) -> None:
        self.teardown()

    def teardown(self) -> list[str]:
        """Delete everything this network made, by name; returns what could not be.
        Each step is tried whatever happened to the others (an error path must clean up
        as much as it can)."""
        failed: list[str] = []
        namespaces = [name for kind, name in self._made if kind == "netns"]
        for ns in namespaces:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._kill_inside(ns)
        # In reverse order of creation, so each veth (whose deletion takes its pair at
        # once) goes before its namespace (whose devices go when the kernel gets round
        # to it), and the bridge last.
        for kind, name in reversed(self._made):
            try:
                if kind == "link" and _link_exists(name):
                    _run(["ip", "link", "del", name])
                    if _link_exists(name):
                        failed.append(name)
                elif kind == "netns" and name in _namespaces():
                    _run(["ip", "netns", "del", name])
                    if name in _namespaces():
                        failed.append(name)
            except (OSError, subprocess.SubprocessError):
                failed.append(name)
        self._made.clear()
        self._shaped.clear()
        self._blocked = frozenset()
        _LIVE.pop(id(self), None)
        return failed

    def leftovers(self) -> list[str]:
        """This run's namespaces and links that exist now (empty after teardown)."""
        names = set(self.namespaces.values())
        links = {self.bridge, *self.veths.values()}
        return sorted((names & set(_namespaces())) | {n for n in links if _link_exists(n)})

    def _kill_inside(self, ns: str) -> None:
        """SIGKILL what still runs in the run's own namespace (node processes the
        harness started and failed to stop): a namespace with a process in it would
        outlive its name."""
        out = _run(["ip", "netns", "pids", ns])
        pids = [int(p) for p in out.stdout.split() if p.isdigit()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.01)

    # ---- processes ------------------------------------------------------------------

    def spawn(
        self,
        node: str,
        config_path: Path,
        cfg: NodeConfig,
        extra: Sequence[str],
        wrapper: Sequence[str] = (),
    ) -> int:
        """Start ``node`` inside its namespace: :func:`kvstore.cluster.spawn_node` behind
        ``ip netns exec`` (then ``wrapper``: libfaketime's), which execs, so the pid
        returned is the node's."""
        ns = ["ip", "netns", "exec", self.namespaces[node]]
        return spawn_node(config_path, cfg, extra, wrapper=[*ns, *wrapper])

    # ---- faults (the nemesis's Net) -------------------------------------------------

    def blocked(self) -> Grudge:
        return self._blocked

    def partition(self, grudge: Iterable[Link]) -> None:
        """Block exactly the links of ``grudge`` (healing every other link): ``(i, j)``
        makes ``i``'s packets to ``j`` vanish (which stalls TCP both ways: see above)."""
        wanted = frozenset(grudge)
        unknown = wanted - set(self.links)
        if unknown:
            raise ValueError(f"no such links: {sorted(unknown)}")
        for node in self.nodes:
            lines = [
                f"neigh replace {self.ips[dst]} lladdr {_NOWHERE_MAC} dev {_DEV} nud permanent"
                for src, dst in sorted(wanted - self._blocked)
                if src == node
            ] + [
                f"neigh del {self.ips[dst]} dev {_DEV}"
                for src, dst in sorted(self._blocked - wanted)
                if src == node
            ]
            if lines:
                self._batch(self.namespaces[node], lines)
        self._blocked = wanted

    def set_latency(self, delay_s: float, jitter_s: float) -> None:
        """Delay every packet a node sends a peer by ``delay ± jitter`` (netem);
        (0, 0) removes the delay."""
        if delay_s < 0 or jitter_s < 0:
            raise ValueError("delay and jitter must be >= 0")
        if delay_s == 0 and jitter_s == 0:
            for node in sorted(self._shaped):
                self._tc(self.namespaces[node], [f"qdisc del dev {_DEV} root"], strict=False)
                self._shaped.discard(node)
            self._latency = (0.0, 0.0)
            return
        self._set_leaf(f"netem delay {round(delay_s * 1e6)}us {round(jitter_s * 1e6)}us")
        self._latency = (delay_s, jitter_s)

    def _set_leaf(self, qdisc: str) -> None:
        """Put ``qdisc`` on every node's peer traffic (see :meth:`_shaping`)."""
        for node in self.nodes:
            lines = [] if node in self._shaped else self._shaping()
            self._shaped.add(node)  # first: a half-made tree is deleted all the same
            leaf = f"qdisc replace dev {_DEV} parent 1:20 handle 20: {qdisc}"
            self._tc(self.namespaces[node], [*lines, leaf])

    def _shaping(self) -> list[str]:
        """HTB root: the harness's address (and non-IP) undelayed in 1:10, the rest of
        the node subnet (the peers) through 1:20, whose leaf :meth:`_set_leaf` sets."""
        classes = "htb rate 10gbit quantum 60000"
        return [
            f"qdisc replace dev {_DEV} root handle 1: htb default 10",
            f"class add dev {_DEV} parent 1: classid 1:10 {classes}",
            f"class add dev {_DEV} parent 1: classid 1:20 {classes}",
            f"filter add dev {_DEV} parent 1: protocol ip prio 1 u32 "
            f"match ip dst {self.harness_ip}/32 flowid 1:10",
            f"filter add dev {_DEV} parent 1: protocol ip prio 2 u32 "
            f"match ip dst {self.subnet} flowid 1:20",
        ]

    def drop_connections(self) -> int:
        """Reset every peer connection (``ss -K`` on the dialer's side, so each
        connection once); returns how many were reset."""
        total = 0
        for node in self.nodes:
            out = _run(
                [
                    "ip", "netns", "exec", self.namespaces[node],
                    "ss", "-K", "-t", "-n", "-H", f"dport = :{PEER_PORT}",
                ]
            )  # fmt: skip
            if out.returncode != 0:
                raise NetnsError(f"ss -K in {self.namespaces[node]}: {_first_line(out.stderr)}")
            total += sum(1 for line in out.stdout.splitlines() if line.strip())
        self.stats["dropped"] += total
        return total

    def heal(self) -> None:
        """Every link open, no latency."""
        for node in self.nodes:
            ns = self.namespaces[node]
            self._batch(ns, [f"neigh flush dev {_DEV} nud permanent"])
        self._blocked = frozenset()
        self.set_latency(0.0, 0.0)

    # ---- what a verifier reads (jepsen_like.observe) ----------------------------------

    def link_blocked(self, link: Link) -> bool:
        """Whether ``src``'s namespace really holds the entry that cuts ``dst`` off (read
        back from the kernel, not from what this object last asked for)."""
        src, dst = link
        out = _run(["ip", "-n", self.namespaces[src], "neigh", "show", self.ips[dst]])
        return out.returncode == 0 and any(
            _NOWHERE_MAC in line and "PERMANENT" in line for line in out.stdout.splitlines()
        )

    def link_latency(self, link: Link) -> tuple[float, float]:
        return self._latency

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    async def probe(self, src: str, dst: str, address: Address, timeout: float) -> dict[str, Any]:
        """A TCP connect from inside ``src``'s namespace to ``address`` (dst's real peer
        address): a cut link loses the SYN (silence); an open one connects or is refused."""
        code = (
            "import socket,sys\n"
            "s=socket.socket()\n"
            f"s.settimeout({timeout!r})\n"
            "try:\n"
            f"  s.connect(({address[0]!r},{address[1]!r}))\n"
            "  print('connected')\n"
            "except socket.timeout:\n"
            "  print('silent')\n"
            "except OSError as e:\n"
            "  print('refused',e.errno)\n"
        )
        argv = ["ip", "netns", "exec", self.namespaces[src], sys.executable, "-c", code]
        out = await asyncio.to_thread(_run, argv)
        seen = out.stdout.strip() or _first_line(out.stderr)
        ms = f"{timeout * 1000:.0f} ms"
        return {
            "reached": seen != "silent",
            "observed": f"connect silent for {ms}" if seen == "silent" else seen,
        }

    # ---- commands -------------------------------------------------------------------

    def _ip(self, *args: str) -> None:
        out = _run(["ip", *args])
        if out.returncode != 0:
            raise NetnsError(f"ip {' '.join(args)}: {_first_line(out.stderr)}")

    def _batch(self, ns: str, lines: list[str]) -> None:
        out = _run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(lines) + "\n")
        if out.returncode != 0:
            raise NetnsError(f"ip -n {ns}: {_first_line(out.stderr)}")

    def _tc(self, ns: str, lines: list[str], strict: bool = True) -> None:
        """``strict=False``: a deletion, where "there was nothing to delete" is fine."""
        out = _run(["tc", "-n", ns, "-batch", "-"], stdin="\n".join(lines) + "\n")
        errors = [
            line
            for line in out.stderr.splitlines()
            if line.strip() and "Warning" not in line and "Command failed" not in line
        ]
        if not strict:
            errors = [e for e in errors if "No such file" not in e and "handle of zero" not in e]
        if out.returncode != 0 and (strict or errors):
            raise NetnsError(f"tc -n {ns}: {errors[0] if errors else 'failed'}")


def _namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name]).returncode == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith("Z")


def _teardown_all() -> None:
    for net in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            net.teardown()


atexit.register(_teardown_all)
