"""``--net netns``: real network namespaces, silent drops, netem, ss -K, and one real run
(over TLS: the nodes' addresses are not loopback).

Everything but the refusal tests needs root and a working ``ip netns add``, and is
skipped otherwise. Sockets "inside" a namespace are made by a short-lived thread that
enters the namespace (``setns`` is per thread) and creates the socket there: a socket
keeps its namespace, so the test thread then binds, connects and reads it as usual, and
no helper process is needed. Every network a test sets up is torn down, and what it
named is checked gone (``ip netns list``, ``ip link``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jepsen_like import db, netns
from jepsen_like.cli import main
from jepsen_like.netns import PEER_PORT, NetnsNet
from jepsen_like.runner import RunOptions, validate_options
from tests.jepsen_like.test_runs import CLOCK_STEPS, COMMON, assert_evidence, assert_valid, run

pytestmark = pytest.mark.timeout(60)

_SUPPORT = netns.support()
needs_netns = pytest.mark.skipif(
    _SUPPORT.problem is not None, reason=f"needs root and ip netns: {_SUPPORT.problem}"
)
_CLONE_NEWNET = 0x40000000
_BLOCKED_S = 0.5  # how long a connect must hang to count as silently dropped


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10).stdout


def _names_on_host() -> str:
    return _ip("netns", "list") + _ip("link")


@pytest.fixture
def net() -> Iterator[NetnsNet]:
    n = NetnsNet(["n1", "n2", "n3"])
    n.setup()
    try:
        yield n
    finally:
        assert n.teardown() == []
        assert n.leftovers() == []
        assert n.run_id not in _names_on_host()


def socket_in(ns: str) -> socket.socket:
    """A TCP socket that lives in network namespace ``ns``."""
    made: list[socket.socket | BaseException] = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            made.append(socket.socket())  # this thread ends here, in the namespace
        except BaseException as exc:
            made.append(exc)

    t = threading.Thread(target=enter_and_make)
    t.start()
    t.join(5)
    assert made, "setns thread hung"
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def listen_in(net: NetnsNet, node: str, port: int = PEER_PORT) -> socket.socket:
    s = socket_in(net.namespaces[node])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((net.ips[node], port))
    s.listen(16)
    return s


def connect(src: socket.socket, addr: tuple[str, int], timeout: float = _BLOCKED_S) -> str:
    """'ok', 'timeout' (silence: the packets vanished) or the error's name."""
    src.settimeout(timeout)
    try:
        src.connect(addr)
        return "ok"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, repr(exc))
    finally:
        src.close()


def dial(net: NetnsNet, src: str, dst: str) -> str:
    return connect(socket_in(net.namespaces[src]), (net.ips[dst], PEER_PORT))


# ---- refusals (run anywhere) ------------------------------------------------------------


def test_netns_is_refused_in_one_line_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    netns.support.cache_clear()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    try:
        with pytest.raises(ValueError, match="needs root"):
            validate_options(RunOptions(net="netns"))
        result = CliRunner().invoke(main, ["run", "--net", "netns", "--time-limit", "1"])
    finally:
        netns.support.cache_clear()
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --net netns needs root (network namespaces); use --net proxy"
    ]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unknown_net_is_refused() -> None:
    with pytest.raises(ValueError, match="--net must be one of proxy, netns"):
        validate_options(RunOptions(net="docker"))


@needs_netns
def test_faults_the_kernel_cannot_make_are_refused_up_front() -> None:
    assert validate_options(RunOptions(net="netns", nemesis="partition,kill,pause"))
    if not _SUPPORT.netem:
        with pytest.raises(ValueError, match="netem"):
            validate_options(RunOptions(net="netns", nemesis="latency"))
    if not _SUPPORT.kill_sockets:
        with pytest.raises(ValueError, match="ss -K"):
            validate_options(RunOptions(net="netns", nemesis="drop"))


# ---- the network ------------------------------------------------------------------------


@needs_netns
def test_setup_makes_one_namespace_per_node_and_teardown_removes_everything() -> None:
    n = NetnsNet(["n1", "n2", "n3"])
    n.setup()
    try:
        listed = _ip("netns", "list")
        assert all(ns in listed for ns in n.namespaces.values())
        assert n.bridge in _ip("link") and all(v in _ip("link") for v in n.veths.values())
        for node, ns in n.namespaces.items():
            assert "UP" in _ip("-n", ns, "-br", "link", "show", "lo")
            assert f"{n.ips[node]}/24" in _ip("-n", ns, "-br", "addr", "show", "eth0")
        assert f"{n.harness_ip}/24" in _ip("-br", "addr", "show", n.bridge)
        a, b = NetnsNet(["n1"]), n  # a second run coexists: other names, other subnet
        assert a.run_id != b.run_id and not a.subnet.overlaps(b.subnet)
    finally:
        assert n.teardown() == []
    assert n.leftovers() == [] and n.run_id not in _names_on_host()
    assert n.teardown() == []  # idempotent


@needs_netns
def test_a_setup_that_fails_half_way_is_torn_down_completely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = NetnsNet(["n1", "n2", "n3"])
    real, calls = n._batch, []

    def fail_on_the_second_node(ns: str, lines: list[str]) -> None:
        calls.append(ns)
        if len(calls) == 2:
            raise netns.NetnsError("injected")
        real(ns, lines)

    monkeypatch.setattr(n, "_batch", fail_on_the_second_node)
    with pytest.raises(netns.NetnsError, match="injected"):
        n.setup()
    assert n.namespaces["n2"] in _ip("netns", "list")  # half made ...
    assert n.teardown() == []
    assert n.leftovers() == [] and n.run_id not in _names_on_host()  # ... and all gone


@needs_netns
def test_teardown_kills_what_still_runs_inside_and_still_removes_everything() -> None:
    n = NetnsNet(["n1"])
    n.setup()
    proc = subprocess.Popen(["ip", "netns", "exec", n.namespaces["n1"], "sleep", "30"])
    try:
        # ip netns exec enters the namespace, then execs: the pid we hold becomes the
        # process in there (which is why the harness can signal nodes by pid).
        deadline = time.monotonic() + 5
        while not (
            Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sleep\0")
            and str(proc.pid) in _ip("netns", "pids", n.namespaces["n1"])
        ):
            assert time.monotonic() < deadline, "the process never ran in the namespace"
            time.sleep(0.02)
        assert n.teardown() == []
        proc.wait(5)  # (teardown may have reaped it already: then the code is lost)
        assert not Path(f"/proc/{proc.pid}").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        n.teardown()
    assert n.leftovers() == []


@needs_netns
def test_every_node_reaches_every_node_and_the_harness_reaches_them_all(net: NetnsNet) -> None:
    listeners = [listen_in(net, node) for node in net.nodes]
    try:
        for src in net.nodes:
            for dst in net.nodes:
                if src != dst:
                    assert dial(net, src, dst) == "ok", (src, dst)
        for node in net.nodes:
            assert connect(socket.socket(), (net.ips[node], PEER_PORT)) == "ok"
    finally:
        for s in listeners:
            s.close()


@needs_netns
def test_a_blocked_link_silently_drops_and_heal_restores(net: NetnsNet) -> None:
    listeners = [listen_in(net, node) for node in net.nodes]
    established = socket_in(net.namespaces["n1"])
    try:
        established.connect((net.ips["n2"], PEER_PORT))
        accepted, _ = listeners[1].accept()
        net.partition([("n1", "n2")])
        assert net.blocked() == {("n1", "n2")}
        # Silence, not an error: the dialer's SYNs vanish.
        assert dial(net, "n1", "n2") == "timeout"
        # The reverse dial's SYN arrives, but n1's SYN-ACK vanishes: per pair, a grudge
        # stalls TCP both ways (documented in jepsen_like.netns).
        assert dial(net, "n2", "n1") == "timeout"
        # Every other pair, and the harness, are unaffected.
        for src, dst in [("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")]:
            assert dial(net, src, dst) == "ok", (src, dst)
        for node in ("n1", "n2"):
            assert connect(socket.socket(), (net.ips[node], PEER_PORT)) == "ok"
        # An open connection loses what it sends meanwhile, without an error...
        established.sendall(b"held")
        accepted.settimeout(_BLOCKED_S)
        with pytest.raises(TimeoutError):
            accepted.recv(16)
        net.heal()
        assert net.blocked() == frozenset()
        # ... and TCP delivers it after the heal (retransmission), no hole in the stream.
        accepted.settimeout(10)
        assert accepted.recv(16) == b"held"
        assert dial(net, "n1", "n2") == "ok" and dial(net, "n2", "n1") == "ok"
        accepted.close()
    finally:
        established.close()
        for s in listeners:
            s.close()


@needs_netns
def test_partition_changes_only_what_differs(net: NetnsNet) -> None:
    listeners = [listen_in(net, node) for node in net.nodes]
    try:
        net.partition([("n1", "n2"), ("n3", "n1")])
        net.partition([("n3", "n1")])  # n1 -> n2 healed, n3 -> n1 kept
        assert dial(net, "n1", "n2") == "ok"
        assert dial(net, "n3", "n1") == "timeout"
        with pytest.raises(ValueError, match="no such links"):
            net.partition([("n1", "n9")])
    finally:
        for s in listeners:
            s.close()


@needs_netns
def test_drop_resets_every_peer_connection_once(net: NetnsNet) -> None:
    listeners = [listen_in(net, node) for node in net.nodes]
    dialed = []
    try:
        for src, dst in [("n1", "n2"), ("n2", "n3"), ("n3", "n1")]:
            s = socket_in(net.namespaces[src])
            s.connect((net.ips[dst], PEER_PORT))
            dialed.append(s)
        accepted = [listener.accept()[0] for listener in listeners]
        assert net.drop_connections() == 3
        for s in [*dialed, *accepted]:
            s.settimeout(5)
            with pytest.raises(OSError):  # aborted on the dialer's side, reset on the other
                if s.recv(1) == b"":
                    raise ConnectionResetError("EOF")
        assert net.drop_connections() == 0
        for s in accepted:
            s.close()
    finally:
        for s in [*dialed, *listeners]:
            s.close()


def _class_bytes(net: NetnsNet, node: str, classid: str) -> int:
    out = _ip("netns", "exec", net.namespaces[node], "tc", "-s", "class", "show", "dev", "eth0")
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"class htb {classid} "):
            return int(lines[i + 1].split()[1])  # " Sent N bytes ..."
    raise AssertionError(f"no class {classid} in {out}")


@needs_netns
def test_only_peer_traffic_goes_through_the_delayed_class(net: NetnsNet) -> None:
    """The classification half of the latency fault, with a plain FIFO where netem would
    go (so it runs on kernels without netem, too)."""
    listeners = [listen_in(net, node) for node in net.nodes]
    harness = socket.create_server((net.harness_ip, 0))
    try:
        net._set_leaf("pfifo")
        peers0 = _class_bytes(net, "n1", "1:20")
        for _ in range(5):
            assert dial(net, "n1", "n2") == "ok"
        peers1, other1 = _class_bytes(net, "n1", "1:20"), _class_bytes(net, "n1", "1:10")
        for _ in range(5):
            s = socket_in(net.namespaces["n1"])
            assert connect(s, harness.getsockname()) == "ok"
        peers2, other2 = _class_bytes(net, "n1", "1:20"), _class_bytes(net, "n1", "1:10")
        assert peers1 - peers0 > 0 and other2 - other1 > 0
        assert peers2 == peers1  # harness traffic never took the delayed class
        net.set_latency(0.0, 0.0)
        assert "htb" not in _ip("netns", "exec", net.namespaces["n1"], "tc", "qdisc", "show")
    finally:
        harness.close()
        for s in listeners:
            s.close()


def _connect_time(net: NetnsNet, src: str, addr: tuple[str, int]) -> float:
    s = socket_in(net.namespaces[src])
    began = time.monotonic()
    assert connect(s, addr, timeout=5) == "ok"
    return time.monotonic() - began


@needs_netns
@pytest.mark.skipif(not _SUPPORT.netem, reason="this kernel has no netem qdisc (sch_netem)")
def test_latency_delays_peer_traffic_only(net: NetnsNet) -> None:
    listeners = [listen_in(net, node) for node in net.nodes]
    harness = socket.create_server((net.harness_ip, 0))
    try:
        base = min(_connect_time(net, "n1", (net.ips["n2"], PEER_PORT)) for _ in range(3))
        net.set_latency(0.2, 0.05)
        slow = min(_connect_time(net, "n1", (net.ips["n2"], PEER_PORT)) for _ in range(3))
        to_harness = min(_connect_time(net, "n1", harness.getsockname()) for _ in range(3))
        assert slow > base + 0.1  # the SYN-ACK at least waited out the delay
        assert to_harness < slow / 2
        net.heal()
        healed = min(_connect_time(net, "n1", (net.ips["n2"], PEER_PORT)) for _ in range(3))
        assert healed < slow / 2
    finally:
        harness.close()
        for s in listeners:
            s.close()


# ---- a real run -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_node_or_namespace_left_behind() -> Iterator[None]:
    usable = _SUPPORT.problem is None
    before = set(_ip("netns", "list").split()) if usable else set()
    yield
    survivors = db.kill_survivors()
    assert not survivors, f"the run left node processes behind: {survivors}"
    if usable:
        left = {n for n in set(_ip("netns", "list").split()) - before if n.startswith("jl")}
        assert not left, f"namespaces left behind: {left}"


@needs_netns
@pytest.mark.slow
def test_register_partition_over_real_namespaces_is_linearizable(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "--net", "netns",
        "--workload", "register",
        "--nemesis", "partition",
        "--time-limit", "12",
        *COMMON,
    )  # fmt: skip
    assert_valid(*out)
    results = out[1]
    assert results["run"]["options"]["net"] == "netns"
    assert "--net netns" in results["run"]["command"]
    assert all(w["kind"].startswith("partition-") for w in results["stats"]["faults"])
    config = (out[2] / "config" / "n1.toml").read_text()
    assert "--net netns" in config and "127.0.0.1" not in config
    # Off loopback the nodes speak TLS with the run's certificates, never insecure.
    assert 'ca_file = "tls/ca.crt"' in config and "insecure" not in config
    tls = out[2] / "config" / "tls"
    assert {p.name for p in tls.iterdir()} >= {"ca.crt", "n1.crt", "n1.key", "client.crt"}


@needs_netns
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_clock_steps_inside_namespaces_take_effect_and_leases_hold(
    tmp_path: Path, libfaketime: Path
) -> None:
    """Both wrappers at once: ``ip netns exec`` execs ``env LD_PRELOAD=libfaketime``
    which execs the node (one pid). Every step is read back through the node's status
    over TLS, from outside its namespace, and the leases stay valid."""
    code, results, run_dir, output = run(tmp_path, "--net", "netns", *CLOCK_STEPS)
    assert_evidence(run_dir, results)
    assert results["verdict"] == "valid", (output, results["checkers"])
    assert code == 0
    assert results["run"]["options"]["net"] == "netns"
    steps = [f for f in results["stats"]["faults"] if f["kind"] == "clock-step-forward"]
    evidence = [f["details"]["evidence"] for f in steps]
    assert steps and all(e["status"] == "verified" for e in evidence), evidence
    reads = [c for e in evidence for c in e["checks"] if "wall clock +" in c["check"]]
    assert reads, "no step was read back (only skipped)"
