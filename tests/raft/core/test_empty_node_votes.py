"""An empty node -- started to join a cluster, perhaps after its data was wiped -- gives
no vote (pre-vote or vote) until a leader has replicated the configuration to it: it
remembers none of the votes it gave before. Found by the fault harness (register under
--nemesis all): a member restarted with a configuration from before a node's removal
won an election with the wiped node's vote while another leader led a later term."""

from __future__ import annotations

import random

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Restored
from raft.messages import AppendEntries, RequestVote, VoteResp
from raft.types import ConfChange, ConfChangeKind, Entry, EntryKind


def answers(node: RawNode) -> list[VoteResp]:
    rd = node.ready()
    node.advance(rd)
    return [m for m in rd.messages if isinstance(m, VoteResp)]


def test_an_empty_node_grants_no_vote() -> None:
    node = RawNode(Config(id="n3"), Restored(), random.Random(1))
    for pre in (True, False):
        node.step(RequestVote(src="n2", dst="n3", term=4, last_index=16, last_term=3,
                              pre_vote=pre))  # fmt: skip
        (resp,) = answers(node)
        assert not resp.granted


def test_once_it_knows_the_cluster_it_votes_as_any_member() -> None:
    node = RawNode(Config(id="n3", check_quorum=False), Restored(), random.Random(1))
    conf = [
        Entry(1, i, EntryKind.CONF_CHANGE, ConfChange(ConfChangeKind.ADD_VOTER, n).encode())
        for i, n in enumerate(("n1", "n2", "n3"), start=1)
    ]
    node.step(AppendEntries(src="n1", dst="n3", term=1, prev_index=0, prev_term=0,
                            entries=tuple(conf), commit=3))  # fmt: skip
    rd = node.ready()
    node.advance(rd)  # the committed membership takes effect
    node.step(RequestVote(src="n2", dst="n3", term=5, last_index=3, last_term=1))
    (resp,) = answers(node)
    assert resp.granted
