"""Client auth on a real 3-node cluster (issue 11): set up through ``kv`` with password
files, then every client attack of the issue replayed and refused once auth is on, and a
token from one node accepted by another."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kvstore import protocol as p
from kvstore.client import AuthFailed, Client, PermissionDenied, _Connection

from .conftest import LocalCluster
from .test_kv_cli import kv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def password_files(tmp: Path, **passwords: str) -> dict[str, Path]:
    out = {}
    for name, pw in passwords.items():
        f = tmp / f"{name}.pw"
        f.write_text(pw + "\n")  # an editor's trailing newline is not the password's
        f.chmod(0o600)
        out[name] = f
    return out


def ok(proc: object) -> None:
    assert proc.returncode == 0, (proc.stdout, proc.stderr)  # type: ignore[attr-defined]


def set_up_with_the_cli(lc: LocalCluster, pw: dict[str, Path]) -> None:
    """docs/SECURITY.md's recipe: root and roles while auth is off, then enable."""
    e = ("--endpoints", ",".join(lc.addrs))
    ok(kv("user", "add", "root", "--new-password-file", str(pw["root"]), *e))
    ok(kv("user", "grant-role", "root", "root", *e))
    ok(kv("auth", "enable", *e))
    as_root = ("--user", "root", "--password-file", str(pw["root"]))
    for args in (
        ("role", "add", "app"),
        ("role", "grant-permission", "app", "readwrite", "app/"),
        ("role", "add", "ro"),
        ("role", "grant-permission", "ro", "read", "app/"),
        ("user", "add", "alice", "--new-password-file", str(pw["alice"])),
        ("user", "grant-role", "alice", "app"),
        ("user", "add", "reader", "--new-password-file", str(pw["reader"])),
        ("user", "grant-role", "reader", "ro"),
    ):
        ok(kv(*as_root, *args, *e))


def test_auth_through_the_cli_and_every_client_attack_refused(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    lc = local_cluster
    pw = password_files(tmp_path, root="r00t-pw", alice="alice-pw", reader="reader-pw")
    set_up_with_the_cli(lc, pw)
    e = ("--endpoints", ",".join(lc.addrs))
    alice = ("--user", "alice", "--password-file", str(pw["alice"]))

    # The CLI: exit 7 for a refusal by auth; the password from a file or KV_PASSWORD.
    denied = kv("get", "app/1", "--json", *e)
    assert denied.returncode == 7 and json.loads(denied.stdout)["error"] == "auth_failed"
    ok(kv(*alice, "put", "app/1", "v1", *e))
    assert kv(*alice, "put", "other", "v", *e).returncode == 7
    wrong = kv("--user", "alice", "--password-file", str(pw["reader"]), "get", "app/1", *e)
    assert wrong.returncode == 7 and b"wrong user name or password" in wrong.stderr
    no_password = kv("--user", "alice", "get", "app/1", *e)  # no terminal: no prompt
    assert no_password.returncode == 2 and b"KV_PASSWORD" in no_password.stderr
    users = kv("--user", "root", "--password-file", str(pw["root"]), "user", "list", "--json", *e)
    ok(users)
    assert json.loads(users.stdout)["users"] == ["alice", "reader", "root"]
    role = kv(*alice, "role", "get", "app", *e)
    assert role.returncode == 7  # reading the auth state needs root
    status = kv("auth", "status", "--json", *e)  # open to all, as `kv cluster status`
    ok(status)
    assert json.loads(status.stdout)["enabled"] is True

    voters_before = lc.client(user="root", password="r00t-pw").member_list().voters
    leader_before = lc.leader()

    # Anonymous and non-root clients cannot remove members or move leadership.
    anon = lc.client()
    reader = lc.client(user="reader", password="reader-pw")
    other = next(n for n in lc.ids if n != leader_before)
    for c, error in ((anon, AuthFailed), (reader, PermissionDenied)):
        with pytest.raises(error):
            c.member_remove(other)
        with pytest.raises(error):
            c.transfer_leader(other)
        with pytest.raises(error):
            c.member_add(other, learner=True)
    assert lc.client(user="root", password="r00t-pw").member_list().voters == voters_before
    assert lc.leader() == leader_before

    # A read-only user cannot write.
    assert reader.get("app/1").value == b"v1"
    with pytest.raises(PermissionDenied):
        reader.put("app/1", "reader")

    # Reusing another user's session id: refused; the victim's writes go on and land.
    victim = lc.client(user="alice", password="alice-pw")
    victim.put("app/2", "a1")
    thief = lc.client(user="reader", password="reader-pw", client_id=victim.client_id)
    with pytest.raises(PermissionDenied, match="another user"):
        thief.put("app/2", "stolen")
    root_thief = lc.client(user="root", password="r00t-pw", client_id=victim.client_id)
    with pytest.raises(PermissionDenied, match="another user"):
        root_thief.put("app/2", "stolen")
    victim.put("app/2", "a2")
    assert victim.get("app/2").value == b"a2"

    # Root still may: the admin ops work with its credentials.
    root = lc.client(user="root", password="r00t-pw")
    assert root.transfer_leader(other) == other


def test_a_token_from_one_node_works_on_another(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    boot = lc.client()
    boot.user_add("root", "pw")
    boot.user_grant_role("root", "root")
    boot.put("k", "v")
    boot.auth_enable()
    n1 = lc.leader()  # a login is answered by the leader, after a read barrier
    n2 = next(n for n in lc.ids if n != n1)  # a follower: it never saw the login

    async def body() -> None:
        first = await _Connection.open(lc.addr(n1), 5.0)
        try:
            resp = await first.request(
                lambda rid: p.Authenticate(id=rid, user="root", password="pw"), 5.0
            )
            assert isinstance(resp, p.TokenResponse)
        finally:
            await first.close()
        # Another node, the token in its hello: accepted (the key is replicated).
        second = await _Connection.open(lc.addr(n2), 5.0, token=resp.token)
        try:
            got = await second.request(
                lambda rid: p.Get(id=rid, key=b"k", consistency=p.Consistency.SERIALIZABLE), 5.0
            )
            assert isinstance(got, p.GetResponse) and got.kv.value == b"v"
        finally:
            await second.close()
        # Without it, the same request on the same node: AUTH_REQUIRED.
        third = await _Connection.open(lc.addr(n2), 5.0)
        try:
            got = await third.request(
                lambda rid: p.Get(id=rid, key=b"k", consistency=p.Consistency.SERIALIZABLE), 5.0
            )
            assert isinstance(got, p.ErrorResponse) and got.code is p.Code.AUTH_REQUIRED
        finally:
            await third.close()

    asyncio.run(asyncio.wait_for(body(), 30))
    # And the library does the same across a leader change: one login, every node.
    c = Client(lc.addrs, user="root", password="pw", deadline=20.0)
    try:
        assert c.get("k").value == b"v"
        lead = lc.leader()
        c.transfer_leader(next(n for n in lc.ids if n != lead))
        c.put("k2", "v2")
        assert c._async._logins == 1
    finally:
        c.close()
