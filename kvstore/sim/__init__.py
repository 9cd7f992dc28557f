"""Deterministic simulation of the real node composition (issue 9): the real Raft
runtime, state machine, request handling and lessor under virtual time, with a
simulated network, disk and clocks. ``python -m kvstore.sim --seeds N`` runs a sweep."""
