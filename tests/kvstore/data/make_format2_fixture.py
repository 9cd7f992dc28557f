"""Write tests/kvstore/data/format2-n1 with the release before issue 9's item 4
(commit e4ff5f2): command format 2 (the leader's clock in every header, Tick, replicated
keep-alives), snapshot format 3. Run with that release's code first on sys.path::

    git worktree add /tmp/oldv e4ff5f2
    PYTHONPATH=/tmp/oldv .venv/bin/python tests/kvstore/data/make_format2_fixture.py OUT
"""

import asyncio
import shutil
import sys
from pathlib import Path

from kvstore.commands import (
    Header,
    LeaseGrant,
    LeaseKeepAlive,
    OpenSession,
    Put,
    PutOp,
    Tick,
    Txn,
    encode_command,
)
from kvstore.state_machine import KVStateMachine
from raft.config import Config
from raft.runtime.node import RaftEngine
from raft.storage.disk import DiskStorage

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)


async def main():
    sm = KVStateMachine()
    eng = RaftEngine(
        config=Config(id="n1"),
        storage=DiskStorage(out),
        state_machine=sm,
        bootstrap_voters=frozenset({"n1"}),
        tick_seconds=0.01,
        snapshot_threshold=40,
    )
    eng.start()
    while eng.status().role != "leader":
        await asyncio.sleep(0.01)
    a, b = b"a" * 16, b"b" * 16
    clock = 1_000_000

    async def do(cid, seq, cmd, now):
        return await eng.propose(encode_command(Header(cid, seq, seq - 1, now), cmd), 5)

    await do(a, 1, OpenSession(), clock)
    await do(b, 1, OpenSession(), clock)
    short = (await do(b, 2, LeaseGrant(5_000), clock + 50)).data[0]  # expires by a Tick in the log
    long_ = (await do(b, 3, LeaseGrant(3_600_000), clock + 51)).data[0]  # outlives the log
    await do(
        b, 4, Txn((), (PutOp(b"short", b"s", short), PutOp(b"long", b"l", long_)), ()), clock + 52
    )
    await do(b, 5, LeaseKeepAlive(long_), clock + 53)
    for i in range(2, 40):
        await do(a, i, Put(b"k%d" % i, b"v%d" % i), clock + 60 + i)
    while sm.applied_index < 45 or eng._snapshot_index == 0:
        await asyncio.sleep(0.01)
    for i in range(40, 50):
        await do(a, i, Put(b"k%d" % i, b"v%d" % i), clock + 100 + i)
    await eng.propose(encode_command(Header(bytes(16), 1, 0, clock + 6_000), Tick()), 5)
    await do(a, 50, Put(b"after-tick", b"x"), clock + 6_001)
    print(
        "applied",
        sm.applied_index,
        "snapshot",
        eng._snapshot_index,
        "leases",
        sm.lease_count,
        "short gone",
        sm.get(b"short") is None,
        "long",
        sm.get(b"long") is not None,
        "sessions",
        sm.session_count,
    )
    await eng.close()


asyncio.run(main())
