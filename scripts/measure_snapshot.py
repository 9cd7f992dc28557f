"""How long a state-machine snapshot holds the event loop, before and after capture.

    .venv/bin/python scripts/measure_snapshot.py 100000 1000000

For each key count: fills a KVStateMachine (16-byte values, 200 client sessions), then

- *before*: the whole snapshot encoded in one go, as the engine used to do on the
  event loop (building every row, then one ``msgpack.packb``);
- *after*: ``snapshot_capture()`` on the loop, then the encoder in a worker thread
  while the loop goes on applying writes; reports the capture time, the encoder's wall
  time and the longest the loop waited between two 1 ms sleeps meanwhile (the GIL is
  shared, so the loop is slowed but not stopped).

It also checks that the bytes equal a snapshot taken at the capture.
"""

from __future__ import annotations

import asyncio
import sys
import time

import msgpack  # type: ignore[import-untyped]

from kvstore.commands import Header, Noop, Put, encode_command
from kvstore.state_machine import SNAPSHOT_FORMAT_VERSION, KVStateMachine


def build(n: int) -> KVStateMachine:
    sm = KVStateMachine()
    for c in range(200):  # sessions, through the real apply path
        sm.apply(c + 1, encode_command(Header(bytes([c]) * 16, 1, 0, 1), Noop()))
    store = sm._store
    for i in range(n):  # keys directly: applying a million commands is slow to set up
        store.put(b"key/%08d" % i, b"v" * 16)
    return sm


def one_shot(sm: KVStateMachine) -> bytes:
    """The pre-capture encoder: every row built, then one packb (the old snapshot())."""
    sessions = [
        [cid, s.last_active, s.floor, [[q, s.results[q].to_obj()] for q in sorted(s.results)]]
        for cid, s in sorted(sm._sessions.items())
    ]
    leases = [[lid, e.ttl_ms, e.expiry_ms] for lid, e in sorted(sm._leases.items())]
    st = sm._store
    state = [
        SNAPSHOT_FORMAT_VERSION,
        sm.applied_index,
        sm.clock_ms,
        [st._revision, [kv.to_obj() for kv in st._kvs.values()], st._compacted,
         [e.to_obj() for e in st._events]],
        sessions,
        leases,
        sm._next_lease_id,
    ]  # fmt: skip
    data: bytes = msgpack.packb(state, use_bin_type=True)
    return data


async def captured(sm: KVStateMachine, reference: bytes) -> None:
    t0 = time.perf_counter()
    encode = sm.snapshot_capture()
    capture_s = time.perf_counter() - t0
    job = asyncio.ensure_future(asyncio.to_thread(encode))
    longest, writes, index = 0.0, 0, sm.applied_index
    t1 = last = time.perf_counter()
    while not job.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        index += 1
        writes += 1  # the loop keeps applying while the thread encodes
        sm.apply(
            index, encode_command(Header(b"\xff" * 16, writes, writes - 1, 2), Put(b"w", b"x"))
        )
    data = await job
    total = time.perf_counter() - t1
    assert data == reference, "captured snapshot differs from the state at capture"
    print(
        f"  after:  on loop {capture_s * 1000:.0f} ms (capture); encoder thread {total:.2f} s; "
        f"longest loop wait {longest * 1000:.0f} ms; {writes} writes applied meanwhile"
    )


def main(counts: list[int]) -> None:
    for n in counts:
        sm = build(n)
        t0 = time.perf_counter()
        reference = one_shot(sm)
        before = time.perf_counter() - t0
        print(f"{n} keys, {len(reference) / 1e6:.1f} MB snapshot")
        print(f"  before: on loop {before:.2f} s (one-shot encode)")
        asyncio.run(captured(sm, reference))


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
