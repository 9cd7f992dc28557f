"""The observations that prove a fault took effect: process states read from /proc
(fake trees, and a real child process this test starts, stops, resumes and kills by
pid), a node's own account of what it recovered, probes through open and cut proxies,
the proxies' latency counter, and how evidence is judged."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jepsen_like.observe import (
    DEAD_STATES,
    Evidence,
    dir_listing,
    eventually,
    open_paths,
    probe_link,
    proc_state,
    startups,
)
from jepsen_like.proxy import LinkProxy

pytestmark = pytest.mark.timeout(30)


def test_proc_state_reads_the_letter_after_the_command_name(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    # The command name may hold spaces and parentheses: the state follows the last ")".
    (tmp_path / "42" / "stat").write_text("42 (kv (node) x) T 1 42 42 0 -1\n")
    assert proc_state(42, tmp_path) == "T"
    (tmp_path / "42" / "stat").write_text("42 (python) Z 1 42 42 0 -1\n")
    assert proc_state(42, tmp_path) == "Z" and "Z" in DEAD_STATES
    assert proc_state(43, tmp_path) is None and None in DEAD_STATES


def test_a_real_process_is_seen_stopped_resumed_and_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:

        async def body() -> None:
            assert proc_state(child.pid) in ("R", "S")
            os.kill(child.pid, signal.SIGSTOP)
            stopped, state = await eventually(lambda: proc_state(child.pid), lambda s: s == "T", 5)
            assert stopped, state
            os.kill(child.pid, signal.SIGCONT)
            resumed, state = await eventually(lambda: proc_state(child.pid), lambda s: s != "T", 5)
            assert resumed and state not in DEAD_STATES, state
            os.kill(child.pid, signal.SIGKILL)
            zombie, state = await eventually(
                lambda: proc_state(child.pid), lambda s: s in DEAD_STATES, 5
            )
            assert zombie and state == "Z", "killed, not yet reaped: a zombie"
            child.wait()
            assert proc_state(child.pid) is None

        asyncio.run(body())
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_open_paths_show_where_a_process_writes(tmp_path: Path) -> None:
    target = tmp_path / "raft" / "wal-1.log"
    target.parent.mkdir()
    code = f"f = open({str(target)!r}, 'w'); import time; print('ok', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ok"
        assert str(target) in open_paths(child.pid)
    finally:
        child.kill()
        child.wait()
    assert open_paths(child.pid) == []


def test_dir_listing_tells_absent_from_empty(tmp_path: Path) -> None:
    assert dir_listing(tmp_path / "nope") is None
    assert dir_listing(tmp_path) == []
    (tmp_path / "a").write_text("")
    assert dir_listing(tmp_path) == ["a"]


def test_startups_pair_each_start_with_the_pid_that_served() -> None:
    log = "\n".join(
        [
            "t INFO raft.runtime.node: n2: started at term 7, snapshot 100, 23 log entries",
            "t INFO kvstore.node: n2: serving (pid 111)",
            "t WARNING x: something else",
            "t INFO raft.runtime.node: n2: started at term 0, snapshot 0, 0 log entries",
            "t INFO kvstore.node: n2: serving (pid 222)",
            "t INFO raft.runtime.node: n2: started at term 0, snapshot 0, 0 log entries",
        ]
    )
    found = startups(log)
    assert [(s.pid, s.term, s.recovered_index) for s in found] == [
        (111, 7, 123),
        (222, 0, 0),
        (None, 0, 0),
    ]


def test_evidence_needs_every_check_and_at_least_one() -> None:
    assert Evidence().status == "unverified", "no observation is no proof"
    ev = Evidence()
    ev.add("a", True)
    assert ev.status == "verified"
    ev.add("b", False, "seen")
    assert ev.status == "unverified"
    assert Evidence.nothing("no leader").status == "not-applied"
    assert Evidence(error="boom").status == "error"
    assert ev.to_json()["checks"][1] == {"check": "b", "ok": False, "observed": "seen"}


class Refuser:
    """A peer port that reads a frame header and closes, as a node refusing a hello."""

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(9)
        writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def test_probe_reaches_through_an_open_proxy_and_not_through_a_cut_one() -> None:
    async def body() -> None:
        refuser = Refuser()
        target = await refuser.start()
        proxy = LinkProxy("n1", "n2", target, rng=random.Random(1))
        await proxy.start()
        try:
            open_ = await probe_link(proxy.address, 1.0)
            assert open_["reached"], open_
            proxy.block()
            cut = await probe_link(proxy.address, 0.3)
            assert not cut["reached"] and "silence" in cut["observed"], cut
            assert proxy.stats["discarded"] > 0, "the probe's bytes vanished in the proxy"
            proxy.heal()
            again = await probe_link(proxy.address, 1.0)
            assert again["reached"], again
        finally:
            await proxy.close()
            await refuser.close()

    asyncio.run(body())


def test_probe_of_a_dead_destination_reaches_an_answer() -> None:
    async def body() -> None:
        refuser = Refuser()
        target = await refuser.start()
        await refuser.close()  # nothing listens there now
        assert (await probe_link(target, 1.0))["reached"]
        proxy = LinkProxy("n1", "n2", target, rng=random.Random(1))
        await proxy.start()
        try:  # an open proxy in front of a dead node ends the connection: not a cut
            assert (await probe_link(proxy.address, 1.0))["reached"]
        finally:
            await proxy.close()

    asyncio.run(body())


def test_the_proxy_counts_chunks_it_held_back() -> None:
    async def body() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[:2]
        proxy = LinkProxy("n1", "n2", target, rng=random.Random(1))
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(b"x")
            await reader.readexactly(1)
            assert proxy.stats["delayed"] == 0, "no latency: nothing held back"
            proxy.set_latency(0.05)
            writer.write(b"y")
            await reader.readexactly(1)
            assert proxy.stats["delayed"] >= 1 and proxy.stats["delay_ms"] >= 40, proxy.stats
            writer.close()
        finally:
            await proxy.close()
            server.close()
            await server.wait_closed()

    asyncio.run(body())


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(100):
        writer.write(data)
        await writer.drain()
    writer.close()
