"""kvstore.config: the shipped cluster.toml loads; every broken config is refused with
the file and the line to fix; generate_config round-trips through load_config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.config import (
    Address,
    ClientSettings,
    ConfigError,
    Fsync,
    RaftSettings,
    SourceLines,
    generate_config,
    load_config,
    parse_address,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = generate_config(3)


def write(tmp_path: Path, text: str, name: str = "cluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, marker: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``marker``; "<eof>" is the last line."""
    if marker == "<eof>":
        return len(text.splitlines())
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if marker in line]
    assert len(hits) >= nth, f"{marker!r} not in text {nth} times"
    return hits[nth - 1]


def sub(old: str, new: str, nth: int = 1) -> Callable[[str], str]:
    """Replace the ``nth`` occurrence of ``old``."""

    def edit(text: str) -> str:
        parts = text.split(old)
        assert len(parts) > nth, f"{old!r} not in text {nth} times"
        return old.join(parts[:nth]) + new + old.join(parts[nth:])

    return edit


def drop_nodes(text: str) -> str:
    return text[: text.index("[[nodes]]")]


# ---- the shipped file ------------------------------------------------------------------


def test_shipped_cluster_toml_loads_with_documented_defaults() -> None:
    cfg = load_config(ROOT / "cluster.toml")
    assert cfg.id == "local"
    assert cfg.raft == RaftSettings() and cfg.client == ClientSettings()
    assert cfg.raft.fsync is Fsync.ALWAYS and cfg.raft.tick_ms == 100
    assert [n.id for n in cfg.nodes] == ["n1", "n2", "n3"]
    assert cfg.node("n2").peer_address == Address("127.0.0.1", 7102)
    assert cfg.node("n2").client_address == Address("127.0.0.1", 7202)
    assert cfg.data_root == ROOT / "data"
    assert cfg.node("n3").data_dir == ROOT / "data" / "n3"


def test_shipped_cluster_toml_is_what_generate_config_describes() -> None:
    shipped = load_config(ROOT / "cluster.toml")
    assert parse_config(generate_config(3, 7100, "./data", "local"), base_dir=ROOT) == shipped


def test_helpers() -> None:
    cfg = parse_config(BASE, base_dir=Path("/srv/kv"))
    assert [n.id for n in cfg.peers_of("n2")] == ["n1", "n3"]
    assert cfg.peer_addresses("n1") == {"n2": ("127.0.0.1", 7102), "n3": ("127.0.0.1", 7103)}
    with pytest.raises(KeyError):
        cfg.node("n9")
    with pytest.raises(KeyError):
        cfg.peers_of("n9")
    core = cfg.raft.core_config("n1", applied=5)
    core.validate()
    assert (core.id, core.election_ticks, core.applied) == ("n1", 10, 5)
    assert str(Address("::1", 7101)) == "[::1]:7101" and str(Address("h", 1)) == "h:1"


def test_catchup_margin_reaches_the_core_and_may_be_zero() -> None:
    assert RaftSettings().core_config("n1").snapshot_catchup_entries == 1000
    cfg = parse_config(sub("snapshot_catchup_entries = 1000", "snapshot_catchup_entries = 0")(BASE))
    assert cfg.raft.core_config("n1").snapshot_catchup_entries == 0


def test_the_quota_may_exceed_the_frame_limit_and_need_not_agree() -> None:
    """An 8 GiB quota (etcd's suggested maximum) is fine: it is no frame size."""
    cfg = parse_config(sub("quota_bytes = 2147483648", "quota_bytes = 8589934592")(BASE))
    assert cfg.store.quota_bytes == 8 << 30
    assert "quota_bytes = 2147483648  # 2 GiB" in BASE


def test_minimal_config_takes_every_default(tmp_path: Path) -> None:
    text = (
        '[[nodes]]\nid = "a"\npeer_address = "localhost:9001"\nclient_address = "h.example:9002"\n'
    )
    cfg = load_config(write(tmp_path, text))
    assert (cfg.id, cfg.raft, cfg.client) == ("local", RaftSettings(), ClientSettings())
    assert cfg.nodes[0].data_dir == tmp_path / "data" / "a"


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    text = sub('id = "n1"', 'id = "n1"\ndata_dir = "../n1-disk"')(
        sub('id = "n2"', 'id = "n2"\ndata_dir = "/abs/n2"')(generate_config(3, 7100, "store"))
    )
    monkeypatch.chdir(tmp_path)
    write(conf_dir, text)
    cfg = load_config(Path("etc") / "cluster.toml")
    assert cfg.data_root == conf_dir / "store"
    assert cfg.node("n1").data_dir == tmp_path / "n1-disk"
    assert cfg.node("n2").data_dir == Path("/abs/n2")
    assert cfg.node("n3").data_dir == conf_dir / "store" / "n3"


# ---- broken configs: (id, edit of BASE, marker of the expected line, reason) ------------

Edit = Callable[[str], str]
BROKEN: list[tuple[str, Edit, tuple[str, int], str]] = [
    # unknown keys at every level
    ("top-level key", lambda t: "colour = 1\n" + t, ("colour", 1), "unknown key 'colour'"),
    ("cluster key", sub('id = "local"', 'id = "local"\nname = "x"'), ("name =", 1), "'name'"),
    ("raft key", sub("tick_ms = 100", "tick_ms = 100\ntick = 5"), ("tick = 5", 1), "'tick_ms'?"),
    ("client key", sub("\n[client]\n", "\n[client]\nmax_keys = 1\n"), ("max_keys", 1),
     "unknown key 'max_keys' in [client]"),
    ("node key", sub('id = "n2"', 'id = "n2"\nweight = 3'), ("weight", 1), "[[nodes]] #2"),
    ("sub-table", sub("\n[client]\n", "\n[raft.extra]\nx = 1\n[client]\n"), ("[raft.extra]", 1),
     "unknown key 'extra' in [raft]"),
    # wrong types
    ("int as string", sub("tick_ms = 100", 'tick_ms = "100"'), ("tick_ms", 1), "an integer"),
    ("bool as int", sub("election_ticks = 10", "election_ticks = true"), ("election_ticks", 1),
     "must be an integer, not a boolean"),
    ("int as bool", sub("pre_vote = true", "pre_vote = 1"), ("pre_vote =", 1), "a boolean"),
    ("float", sub("tick_ms = 100", "tick_ms = 100.0"), ("tick_ms =", 1), "not a float"),
    ("table type", sub("\n[raft]\n", "\n[[raft]]\n"), ("[[raft]]", 1),
     "must be a table, not an array"),
    ("data_root type", sub('data_root = "./data"', "data_root = 5"), ("data_root =", 1), "str"),
    ("node id type", sub('id = "n3"', "id = 3"), ("id = 3", 1), "must be a string"),
    ("node id chars", sub('id = "n3"', 'id = "../n3"'), ('"../n3"', 1), "letters"),
    ("cluster id", sub('id = "local"', 'id = ""'), ('id = ""', 1), "letters"),
    ("nodes type", lambda t: "nodes = 5\n" + drop_nodes(t), ("nodes = 5", 1), "array"),
    # values
    ("zero tick", sub("tick_ms = 100", "tick_ms = 0"), ("tick_ms = 0", 1), "[1, "),
    ("negative", sub("peer_queue_limit = 4096", "peer_queue_limit = -1"), ("peer_q", 1), "[1, "),
    ("negative margin", sub("snapshot_catchup_entries = 1000", "snapshot_catchup_entries = -1"),
     ("snapshot_catchup", 1), "[0, "),
    ("quota 0", sub("quota_bytes = 2147483648", "quota_bytes = 0"), ("quota_bytes = 0", 1),
     "there is no 'unlimited'"),
    ("quota huge", sub("quota_bytes = 2147483648", "quota_bytes = 1125899906842625"),
     ("quota_bytes", 1), "[1, 1125899906842624]"),
    ("election<=hb", sub("election_ticks = 10", "election_ticks = 1"), ("election_ticks", 1),
     "election_ticks = 1 must be greater than heartbeat_ticks = 1"),
    ("hb>=default", lambda t: sub("heartbeat_ticks = 1", "heartbeat_ticks = 10")(
        sub("election_ticks = 10\n", "")(t)), ("heartbeat_ticks =", 1), "heartbeat_ticks = 10"),
    ("fsync value", sub('fsync = "always"', 'fsync = "sometimes"'), ("fsync =", 1), "'never'"),
    ("fsync type", sub('fsync = "always"', "fsync = false"), ("fsync =", 1), "one of"),
    ("entry<request", sub("max_entry_bytes = 8388608", "max_entry_bytes = 4194304"),
     ("max_entry_bytes =", 1), "maximal client request"),
    ("frame<entry", sub("max_frame_bytes = 67108864", "max_frame_bytes = 8388608"),
     ("max_frame_bytes =", 1), "at least 65536 more"),
    ("request<value", sub("max_request_bytes = 4194304", "max_request_bytes = 1048576"),
     ("max_request_bytes =", 1), "max_key_bytes + max_value_bytes"),
    # nodes
    ("no nodes", drop_nodes, ("<eof>", 0), "at least one [[nodes]]"),
    ("empty nodes", lambda t: "nodes = []\n" + drop_nodes(t), ("nodes = []", 1), "no nodes"),
    ("dup id", sub('id = "n3"', 'id = "n1"'), ('id = "n1"', 2), "duplicate node id 'n1'"),
    ("missing address", sub('peer_address = "127.0.0.1:7102"\n', ""), ("[[nodes]]", 2),
     "missing 'peer_address'"),
    ("dup peer", sub("7102", "7101"), ("7101", 2), "already the peer_address of node 'n1'"),
    ("peer=client", sub("7203", "7102"), ("7102", 2), "already the peer_address of node 'n2'"),
    ("localhost alias", sub('"127.0.0.1:7103"', '"localhost:7101"'), ("localhost:7101", 1),
     "already"),
    ("dup data_dir", sub('id = "n2"', 'id = "n2"\ndata_dir = "data/n1"'), ("data_dir = \"d", 1),
     "shares data_dir"),
    ("no port", sub('"127.0.0.1:7102"', '"127.0.0.1"'), ('"127.0.0.1"', 1), "host:port"),
    ("big port", sub("7102", "70000"), ("70000", 1), "1..65535"),
    ("port 0", sub("7102", "0"), ('.1:0"', 1), "1..65535"),
    ("signed port", sub("7102", "+7102"), ("+7102", 1), "1..65535"),
    ("bad host", sub("127.0.0.1:7102", "bad_host!:7102"), ("bad_host", 1), "nor a hostname"),
    ("bad ipv4", sub("127.0.0.1:7102", "999.1.1.1:7102"), ("999.", 1), "not a valid IPv4"),
    ("bare ipv6", sub("127.0.0.1:7102", "::1:7102"), ("::1:", 1), "brackets"),
    ("bad ipv6", sub("127.0.0.1:7102", "[nope]:7102"), ("[nope]", 1), "not an IPv6"),
    ("wildcard", sub("127.0.0.1:7102", "0.0.0.0:7102"), ("0.0.0.0", 1), "any interface"),
    ("inline node", lambda t: 'nodes = [{id = "a", client_address = "h:1"}]\n' + drop_nodes(t),
     ("nodes = [", 1), "missing 'peer_address'"),
    # TOML syntax (tomllib's own line, plus the column)
    ("syntax", sub("tick_ms = 100", "tick_ms = = 100"), ("tick_ms", 1), "TOML syntax error"),
    ("dup key", sub("tick_ms = 100", "tick_ms = 100\ntick_ms = 5"), ("tick_ms", 2), "TOML syntax"),
    ("unclosed", sub('id = "n2"', 'id = "n2'), ('id = "n2', 1), "TOML syntax error"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "where", "reason"), [c[1:] for c in BROKEN],
                         ids=[c[0] for c in BROKEN])  # fmt: skip
def test_broken_config_names_file_and_line(
    tmp_path: Path, edit: Edit, where: tuple[str, int], reason: str
) -> None:
    text = edit(BASE)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    expected = line_of(text, *where)
    assert (err.source, err.line) == (str(path), expected), str(err)
    assert str(err).startswith(f"{path}:{expected}:")
    assert reason in str(err)


def test_syntax_error_includes_column(tmp_path: Path) -> None:
    text = sub("tick_ms = 100", "tick_ms = = 100")(BASE)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.col == 11
    assert f":{line_of(text, 'tick_ms')}:11: TOML syntax error" in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "latin1.toml")


# ---- addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:7101", Address("127.0.0.1", 7101)),
        ("localhost:1", Address("localhost", 1)),
        ("node-1.example.com:65535", Address("node-1.example.com", 65535)),
        ("[::1]:7101", Address("::1", 7101)),
        ("[fe80::1]:80", Address("fe80::1", 80)),
    ],
)
def test_parse_address_accepts(text: str, want: Address) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize(
    "text",
    ["", ":7101", "host", "host:", "host:x", "host:-1", "host:65536", "-bad-:1", "a..b:1",
     "1.2.3:1", "[::1:1", "[1.2.3.4]:1", "::1:7101", "[::]:1", "0.0.0.0:1", "h:\uff17"],
)  # fmt: skip
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# ---- SourceLines ------------------------------------------------------------------------

TRICKY = """\
# comment = 1
top = 1
[a]
x = '''
y = 2
[not.a.table]
'''
"q.k" = 3
b.c = 4          # dotted
arr = [
  1,
  "[fake]",
  { z = 5 },
]
s = "has # and = and [ ]"
[[t]]
k = 1
[[t]]
k = 2
[[t.sub]]
m = 3
[ "spaced" . key ]
n = \"\"\"
\\\"\"\" still inside
n2 = 0
\"\"\"
after = 1
"""


def test_source_lines_finds_headers_and_keys_despite_strings_and_arrays() -> None:
    import tomllib

    tomllib.loads(TRICKY)  # the helper is only meant for valid TOML
    lines = SourceLines(TRICKY).lines
    assert lines == {
        ("top",): 2,
        ("a",): 3,
        ("a", "x"): 4,
        ("a", "q.k"): 8,
        ("a", "b", "c"): 9,
        ("a", "arr"): 10,
        ("a", "s"): 15,
        ("t",): 16,
        ("t", 0): 16,
        ("t", 0, "k"): 17,
        ("t", 1): 18,
        ("t", 1, "k"): 19,
        ("t", 1, "sub"): 20,
        ("t", 1, "sub", 0): 20,
        ("t", 1, "sub", 0, "m"): 21,
        ("spaced", "key"): 22,
        ("spaced", "key", "n"): 23,
        ("spaced", "key", "after"): 27,
    }


def test_source_lines_falls_back_to_the_nearest_ancestor() -> None:
    src = SourceLines(TRICKY)
    assert src.line(("t", 1, "missing")) == 18
    assert src.line(("a", "arr", 2, "z")) == 10
    assert src.line(("nowhere",)) == 1


# ---- generate_config ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 99])
def test_generate_config_round_trips(tmp_path: Path, n: int) -> None:
    cfg = load_config(write(tmp_path, generate_config(n, 20000, "state", "bench")))
    assert cfg.id == "bench" and cfg.data_root == tmp_path / "state"
    assert [x.id for x in cfg.nodes] == [f"n{i}" for i in range(1, n + 1)]
    assert [x.peer_address.port for x in cfg.nodes] == list(range(20001, 20001 + n))
    assert [x.client_address.port for x in cfg.nodes] == list(range(20101, 20101 + n))
    assert all(x.data_dir == tmp_path / "state" / x.id for x in cfg.nodes)


def test_generate_config_overrides(tmp_path: Path) -> None:
    text = generate_config(
        3, raft={"fsync": Fsync.NEVER, "tick_ms": 20}, client={"max_key_bytes": 8}
    )
    cfg = load_config(write(tmp_path, text))
    want = dataclasses.replace(RaftSettings(), fsync=Fsync.NEVER, tick_ms=20)
    assert cfg.raft == want and cfg.client.max_key_bytes == 8
    with pytest.raises(ValueError, match="unknown setting"):
        generate_config(3, raft={"tick": 1})


@pytest.mark.parametrize(("n", "base"), [(0, 7100), (100, 7100), (3, 0), (3, 65440)])
def test_generate_config_rejects_impossible_layouts(n: int, base: int) -> None:
    with pytest.raises(ValueError):
        generate_config(n, base)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 9),
    base=st.integers(1, 65435 - 9),
    cluster=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    # A leading "~" names a user's home: whether it loads depends on this machine's
    # users, so it is tested on its own below.
    root=st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
    ).filter(lambda r: not r.startswith("~")),
)
def test_generate_config_round_trips_any_names(n: int, base: int, cluster: str, root: str) -> None:
    cfg = parse_config(generate_config(n, base, root, cluster), base_dir=Path("/x"))
    assert cfg.id == cluster and len(cfg.nodes) == n
    assert cfg.nodes[-1].client_address == Address("127.0.0.1", base + 100 + n)


def test_data_root_of_an_unknown_user_is_refused_naming_the_line() -> None:
    text = generate_config(3, 7100, "~no-such-user-here/data", "local")
    line = 1 + text.splitlines().index(
        next(x for x in text.splitlines() if x.startswith("data_root"))
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, base_dir=Path("/x"))
    assert err.value.line == line
    assert "cannot expand" in err.value.reason
