"""The simulated network: cuts really cut, the codec is on every hop, randomness is
seeded."""

from __future__ import annotations

import random

from raft.messages import AppendResp, Heartbeat
from raft.sim.network import NetConfig, Network


def hb(src: str, dst: str) -> Heartbeat:
    return Heartbeat(src=src, dst=dst, term=3, commit=7, ctx=b"x")


def test_message_round_trips_through_the_codec() -> None:
    net = Network(random.Random(1), NetConfig())
    m = AppendResp(src="n1", dst="n2", term=2, index=9, reject=True, hint_index=4, hint_term=1)
    payload, delays = net.transmit(m)
    assert isinstance(payload, bytes) and len(delays) == 1
    assert net.receive("n1", "n2", payload) == m


def test_split_cuts_both_directions_and_only_across_groups() -> None:
    net = Network(random.Random(1), NetConfig())
    net.split([["n1"], ["n2", "n3"]])
    for src, dst in [("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")]:
        assert net.transmit(hb(src, dst))[1] == []
    assert net.transmit(hb("n2", "n3"))[1] != []
    assert net.transmit(hb("n3", "n2"))[1] != []


def test_one_way_cut_is_asymmetric() -> None:
    net = Network(random.Random(1), NetConfig())
    net.add_partition([("n1", "n2")])
    assert net.transmit(hb("n1", "n2"))[1] == []
    assert net.transmit(hb("n2", "n1"))[1] != []


def test_message_in_flight_is_not_delivered_across_a_new_cut() -> None:
    net = Network(random.Random(1), NetConfig())
    payload, delays = net.transmit(hb("n1", "n2"))
    assert delays
    pid = net.split([["n1"], ["n2"]])
    assert net.receive("n1", "n2", payload) is None
    net.heal(pid)
    assert net.receive("n1", "n2", payload) == hb("n1", "n2")


def test_heal_one_partition_keeps_the_others() -> None:
    net = Network(random.Random(1), NetConfig())
    a = net.add_partition([("n1", "n2")])
    net.add_partition([("n2", "n3")])
    net.heal(a)
    assert net.transmit(hb("n1", "n2"))[1] != []
    assert net.transmit(hb("n2", "n3"))[1] == []
    net.heal()
    assert net.transmit(hb("n2", "n3"))[1] != []


def test_drops_duplicates_and_delays_are_seeded() -> None:
    def fates(seed: int) -> list[list[int]]:
        net = Network(random.Random(seed), NetConfig(drop_p=0.2, dup_p=0.2, long_delay_p=0.1))
        return [net.transmit(hb("n1", "n2"))[1] for _ in range(300)]

    a = fates(7)
    assert a == fates(7)
    assert a != fates(8)
    assert any(d == [] for d in a), "some messages are dropped"
    assert any(len(d) == 2 for d in a), "some are duplicated"
    assert any(x > 30 for d in a for x in d), "some are delayed long"
    assert all(1 <= x <= 500 for d in a for x in d)
