"""Auth at the client gateway: the real ClientServer and AsyncClient over 127.0.0.1 with
``LocalEngine`` (one replica, no Raft): logins, tokens on the connection, permissions,
root-only admin ops, sessions bound to users, re-login on expiry, and what a raw
client that does not play along gets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvstore import protocol as p
from kvstore.bench import BenchConfig, run_bench
from kvstore.client import (
    AsyncClient,
    AuthFailed,
    BadRequest,
    FailedPrecondition,
    NoSpace,
    PermissionDenied,
    WatchEnded,
)
from kvstore.commands import AlarmType
from kvstore.server import ConnectionLimits
from tests.kvstore.test_server_client import (
    Node,
    client,
    cluster,
    frame,
    raw_connect,
    read_frame,
    run,
)

pytestmark = pytest.mark.timeout(60)

PASSWORDS = {"root": "root-pw", "alice": "alice-pw", "bob": "bob-pw"}


def as_user(node: Node, user: str, **kwargs: Any) -> AsyncClient:
    return client(node, user=user, password=PASSWORDS[user], **kwargs)


async def bootstrap(node: Node) -> None:
    """As etcd is set up: users and roles made while auth is off, then auth on.
    alice: readwrite on a/, read on pub/; bob: read on pub/."""
    async with client(node) as c:
        for name, pw in PASSWORDS.items():
            await c.user_add(name, pw)
        await c.user_grant_role("root", "root")
        await c.role_add("rw")
        await c.role_add("ro")
        await c.role_grant_permission("rw", "readwrite", "a/")
        await c.role_grant_permission("ro", "read", "pub/")
        for user, role in (("alice", "rw"), ("alice", "ro"), ("bob", "ro")):
            await c.user_grant_role(user, role)
        await c.put("pub/x", "1")
        await c.auth_enable()
        assert await c.auth_status() == (True, node.sm.auth.revision)


def test_the_token_ttl_comes_from_the_client_settings() -> None:
    from kvstore.config import ClientSettings

    assert ConnectionLimits.from_settings(ClientSettings(token_ttl_ms=1500)).token_ttl == 1.5
    assert ConnectionLimits.from_settings(ClientSettings()).token_ttl == 300.0


def test_the_client_refuses_locally_what_the_server_would() -> None:
    with pytest.raises(ValueError, match="control"):
        AsyncClient(["127.0.0.1:1"], user="a\nb", password="x")
    with pytest.raises(ValueError, match="password"):
        AsyncClient(["127.0.0.1:1"], user="a", password="")

    async def body() -> None:
        async with cluster("n1") as [n1], client(n1) as c:
            for bad in (lambda: c.user_add("", "pw"), lambda: c.user_add("u", "\udcff")):
                with pytest.raises(BadRequest):
                    await bad()
            with pytest.raises(BadRequest):
                await c.role_get("x" * 300)
            assert n1.engine.proposals == 0  # nothing was sent

    run(body)


def test_auth_enable_needs_root() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1], client(n1) as c:
            with pytest.raises(FailedPrecondition, match="root"):
                await c.auth_enable()
            await c.user_add("root", "pw")
            with pytest.raises(FailedPrecondition, match="root"):
                await c.auth_enable()
            assert not n1.sm.auth.enabled

    run(body)


def test_with_auth_on_every_op_checks_its_user() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            async with client(n1) as anon:
                with pytest.raises(AuthFailed, match="AUTH_REQUIRED"):
                    await anon.get("pub/x")
                with pytest.raises(AuthFailed):
                    await anon.put("a/1", "v")
                assert (await anon.status()).node == "n1"  # status needs no login
            async with as_user(n1, "alice") as alice:
                await alice.put("a/1", "v")
                assert (await alice.get("pub/x")).value == b"1"
                assert [kv.key for kv in (await alice.scan("a/")).kvs] == [b"a/1"]
                with pytest.raises(PermissionDenied):
                    await alice.put("b/1", "v")
                with pytest.raises(PermissionDenied):
                    await alice.put("pub/x", "2")
                with pytest.raises(PermissionDenied):
                    await alice.scan("")  # every key: more than she may read
                with pytest.raises(PermissionDenied):
                    await alice.user_add("mallory", "pw")
                with pytest.raises(PermissionDenied):
                    await alice.user_list()
            async with as_user(n1, "bob") as bob:
                with pytest.raises(PermissionDenied):
                    await bob.put("pub/x", "2")  # read-only
                with pytest.raises(PermissionDenied):
                    await bob.cas("pub/x", new_value="2", expected_value="1")
            async with client(n1, user="alice", password="wrong") as bad:
                with pytest.raises(AuthFailed, match="wrong user name or password"):
                    await bad.get("pub/x")
            async with client(n1, user="nobody", password="x") as ghost:
                with pytest.raises(AuthFailed, match="wrong user name or password"):
                    await ghost.get("pub/x")
            async with as_user(n1, "root") as root:
                assert await root.user_list() == ("alice", "bob", "root")
                assert (await root.role_get("rw")).permissions == (("readwrite", b"a/"),)
                assert (await root.user_get("alice")).roles == ("ro", "rw")
            assert n1.sm.get(b"b/1") is None and n1.sm.get(b"pub/x").value == b"1"  # type: ignore[union-attr]

    run(body)


def test_admin_ops_need_root() -> None:
    """issue 11: anyone could remove members and move leadership. Now: refused."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            token = n1.sm.auth.issue_token("alice", 2**62)  # far in the future: valid
            r, w = await raw_connect(n1)
            try:
                for i, req in enumerate(
                    (
                        {"op": "member_remove", "node": "n1"},
                        {"op": "transfer_leader", "to": "n1"},
                        {"op": "member_add", "node": "n2"},
                    )
                ):
                    w.write(frame(id=i, **req))
                    assert (await read_frame(r))["code"] == "AUTH_REQUIRED"  # type: ignore[index]
                w.write(frame(id=9, op="auth_token", token=token))
                assert (await read_frame(r))["code"] == "OK"  # type: ignore[index]
                w.write(frame(id=10, op="member_remove", node="n1"))
                assert (await read_frame(r))["code"] == "PERMISSION_DENIED"  # type: ignore[index]
            finally:
                w.close()
            assert n1.engine.status().voters == ("n1",)

    run(body)


def test_another_users_session_id_is_refused_at_the_gateway() -> None:
    """issue 11: a victim's write was answered OK and never applied after another
    client reused its session id. Now the thief is refused; the victim goes on."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "alice") as alice:
                await alice.put("a/1", "v1")
                stolen = alice.client_id
                token = n1.sm.auth.issue_token("bob", 2**62)
                r, w = await raw_connect(n1)
                try:
                    w.write(frame(id=1, op="auth_token", token=token))
                    assert (await read_frame(r))["code"] == "OK"  # type: ignore[index]
                    w.write(
                        frame(id=2, op="put", key=b"a/1", value=b"bob", client=stolen, seq=3, ack=2)
                    )
                    resp = await read_frame(r)
                    assert resp is not None and resp["code"] == "PERMISSION_DENIED"
                finally:
                    w.close()
                await alice.put("a/1", "v2")  # her seq 3, unharmed
                assert (await alice.get("a/1")).value == b"v2"

    run(body)


def test_a_write_in_flight_when_its_permission_is_revoked_does_not_land() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "alice") as alice, as_user(n1, "root") as root:
                await alice.put("a/0", "v")  # session open, token bound
                n1.engine.delays = [0.5]  # alice's next proposal waits; root's does not
                write = asyncio.ensure_future(alice.put("a/late", "v"))
                await asyncio.sleep(0.1)  # checked by the server, not yet applied
                await root.user_revoke_role("alice", "rw")
                with pytest.raises(PermissionDenied):
                    await write
                assert n1.sm.get(b"a/late") is None

    run(body)


def test_a_linearizable_read_sees_a_revoke_committed_before_it() -> None:
    """The read is checked after its read barrier: a revoke that the node applies
    while the read waits there (committed before the read began) refuses it."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "alice") as alice, as_user(n1, "root") as root:
                await alice.put("a/1", "v")
                await root.user_get("alice")  # root logged in before the barrier trick
                real = n1.engine.read_barrier

                async def catching_up(timeout: float) -> int:
                    n1.engine.read_barrier = real  # type: ignore[method-assign]
                    await root.user_revoke_role("alice", "rw")  # applied meanwhile
                    return await real(timeout)

                n1.engine.read_barrier = catching_up  # type: ignore[method-assign]
                with pytest.raises(PermissionDenied):
                    await alice.get("a/1")

    run(body)


def test_a_login_sees_a_user_added_before_it() -> None:
    """A login waits for a read barrier: a user whose creation committed before the
    login began can log in, even if the node applies it only meanwhile."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "root") as root:
                await root.user_list()  # root is logged in before the trick
                real = n1.engine.read_barrier

                async def catching_up(timeout: float) -> int:
                    n1.engine.read_barrier = real  # type: ignore[method-assign]
                    await root.user_add("carol", "carol-pw")  # applied meanwhile
                    return await real(timeout)

                n1.engine.read_barrier = catching_up  # type: ignore[method-assign]
                async with client(n1, user="carol", password="carol-pw") as carol:
                    lease = await carol.lease_grant(60_000)  # needs only a login
                    assert lease.id >= 1

    run(body)


def test_the_client_logs_in_again_when_its_token_expires_or_is_voided() -> None:
    async def body() -> None:
        limits = ConnectionLimits(token_ttl=0.3)
        async with cluster("n1", conn_limits=limits) as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "alice") as alice, as_user(n1, "root") as root:
                await alice.put("a/1", "v")
                await asyncio.sleep(0.5)  # the token expired
                await alice.put("a/2", "v")  # logs in again and carries on
                assert alice._logins == 2
                await root.user_passwd("alice", "new-pw")  # voids her token
                with pytest.raises(AuthFailed, match="wrong user name or password"):
                    await alice.get("a/1")  # and her old password no longer logs in
            async with client(n1, user="alice", password="new-pw") as again:
                assert (await again.get("a/2")).value == b"v"

    run(body)


def test_a_watch_opened_with_an_expired_token_logs_in_again() -> None:
    async def body() -> None:
        async with cluster("n1", conn_limits=ConnectionLimits(token_ttl=0.3)) as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "alice") as alice:
                await alice.get("pub/x")
                await asyncio.sleep(0.5)  # the token expired
                w = await alice.watch("a/", prefix=True)
                assert await w.__anext__() == () and alice._logins == 2
                await alice.put("a/1", "v")
                (ev,) = await w.__anext__()
                assert ev.kv.key == b"a/1"
                await w.close()

    run(body)


def test_a_client_started_before_auth_came_on_logs_in_and_opens_a_new_session() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1], as_user(n1, "alice") as early:
            await early.put("a/0", "v")  # auth off: no token, an anonymous session
            first_session = early.client_id
            await bootstrap(n1)
            await early.put("a/1", "v")  # AUTH_REQUIRED, logs in, new session
            assert early.client_id != first_session
            assert n1.sm.session_user(early.client_id) == (True, "alice")

    run(body)


def test_watch_needs_read_permission_on_its_range() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "bob") as bob:
                ok = await bob.watch("pub/", prefix=True)
                assert await ok.__anext__() == ()  # confirmed
                await ok.close()
                denied = await bob.watch("a/", prefix=True)
                with pytest.raises(WatchEnded, match="PERMISSION_DENIED"):
                    await denied.__anext__()
                await denied.close()

    run(body)


def test_an_open_watch_ends_when_its_read_permission_is_revoked() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            async with as_user(n1, "alice") as alice, as_user(n1, "root") as root:
                w = await alice.watch("a/", prefix=True)
                assert await w.__anext__() == ()
                await root.put("a/1", "seen")
                (ev,) = await w.__anext__()
                assert ev.kv.value == b"seen"
                await root.user_revoke_role("alice", "rw")
                await root.put("a/2", "secret")
                with pytest.raises(WatchEnded, match="PERMISSION_DENIED"):
                    await w.__anext__()  # the end, not the event she may no longer read
                await w.close()

    run(body)


def test_what_a_raw_client_gets_for_bad_tokens() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            host, port = n1.addr.split(":")
            r, w = await asyncio.open_connection(host, int(port))
            try:  # a forged token in the hello: accepted there, refused on use
                w.write(frame(hello="raftkv", version=p.PROTOCOL_VERSION, token=b"x" * 64))
                assert (await read_frame(r))["node"] == "n1"  # type: ignore[index]
                w.write(frame(id=1, op="get", key=b"pub/x"))
                resp = await read_frame(r)
                assert resp is not None and resp["code"] == "AUTH_FAILED"
                w.write(frame(id=2, op="auth_token", token=b"y" * 64))
                assert (await read_frame(r))["code"] == "AUTH_FAILED"  # type: ignore[index]
                w.write(frame(id=3, op="authenticate", user="alice", password=5))
                assert (await read_frame(r))["code"] == "BAD_REQUEST"  # type: ignore[index]
                w.write(frame(id=4, op="authenticate", user="alice", password="alice-pw"))
                resp = await read_frame(r)
                assert resp is not None and resp["code"] == "OK"
                w.write(frame(id=5, op="get", key=b"pub/x"))  # the login bound its token
                assert (await read_frame(r))["code"] == "OK"  # type: ignore[index]
            finally:
                w.close()
            r, w = await asyncio.open_connection(host, int(port))
            try:  # a token of the wrong type: the hello is refused
                w.write(frame(hello="raftkv", version=p.PROTOCOL_VERSION, token="text"))
                assert (await read_frame(r))["code"] == "BAD_REQUEST"  # type: ignore[index]
            finally:
                w.close()

    run(body)


def test_quota_and_alarms_under_auth() -> None:
    """The two features together: a write the user may not make raises no alarm (the
    permission check comes first); a permitted one past the quota does; any logged-in
    user may list the alarms (status shows them anyway), only root may disarm."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            n1.server._quota = n1.sm.data_bytes + 50
            async with as_user(n1, "alice") as alice:
                with pytest.raises(PermissionDenied):
                    await alice.put("zzz/x", "v" * 200)
                assert n1.sm.alarms() == []
                with pytest.raises(NoSpace):
                    await alice.put("a/x", "v" * 200)
                assert n1.sm.alarms() == [(AlarmType.NOSPACE, b"n1")]
                assert [a.alarm for a in await alice.alarm_list()] == ["NOSPACE"]
                with pytest.raises(PermissionDenied, match="root"):
                    await alice.alarm_disarm()
            async with as_user(n1, "root") as root:
                assert await root.alarm_disarm() == ()
            assert n1.sm.alarms() == []

    run(body)


def test_a_bench_user_without_write_permission_is_told_so() -> None:
    """The warm-up's refusal is the error reported (kv bench exits 7 for it), not a
    generic "is the cluster up?"."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            await bootstrap(n1)
            cfg = BenchConfig([n1.addr], clients=2, ops=4, user="bob", password=PASSWORDS["bob"])
            with pytest.raises(PermissionDenied):
                await run_bench(cfg)

    run(body)
