"""``kv watch`` and ``kv lease``: change streams and leases from a shell.

``kv watch`` prints one line per event (``--json``: one JSON object per line) until
``--count`` events have arrived, or for ever (Ctrl-C ends it). Leases are granted,
renewed and revoked by id; ``kv put --lease ID`` attaches a key to one. Exit codes are
those of the other store commands (cli/kv_commands.py).
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import click

from cli.kv_commands import (
    ExitCode,
    arg_bytes,
    client_options,
    emit,
    fail,
    kv_json,
    printable,
    run_client,
)

if TYPE_CHECKING:
    from kvstore.client import AsyncClient


@click.command(short_help="Stream changes to a key or prefix.")
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option(
    "--rev",
    type=click.IntRange(min=1),
    help="Start from this revision (history permitting) instead of the next write.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option(
    "--endpoint", help="The node to watch on (any node serves watches) [default: the first]."
)
@client_options
def watch(
    key: str,
    prefix: bool,
    rev: int | None,
    count: int | None,
    endpoint: str | None,
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Print every change to KEY (or, with --prefix, to every key under it) as it is
    applied: ``PUT key = value (revision N)`` or ``DELETE key (revision N)``. A watch
    from a revision the history no longer holds exits 1 naming the oldest one kept."""
    from kvstore.client import Compacted

    async def stream(c: AsyncClient) -> int:
        w = await c.watch(arg_bytes(key), prefix=prefix, start_revision=rev, endpoint=endpoint)
        seen = 0
        try:
            async for batch in w:
                for ev in batch:
                    _print_event(ev, as_json)
                    seen += 1
                    if count is not None and seen >= count:
                        return seen
        except Compacted as exc:
            fail(
                ExitCode.ERROR,
                f"revision {rev} is compacted; the oldest kept is {exc.compact_revision + 1}",
                as_json=as_json,
                error="compacted",
            )
        finally:
            await w.close()
        return seen

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch for ever ends
        run_client(endpoints, config, timeout, as_json, stream)


def _print_event(ev: Any, as_json: bool) -> None:
    rev = ev.kv.mod_revision
    if as_json:
        obj: dict[str, Any] = {"type": ev.type, "revision": rev}
        obj["kv"] = kv_json(ev.kv) if ev.type == "put" else {"key": printable(ev.kv.key)}
        click.echo(json.dumps(obj), nl=True)
    elif ev.type == "put":
        click.echo(f"PUT {printable(ev.kv.key)} = {printable(ev.kv.value)} (revision {rev})")
    else:
        click.echo(f"DELETE {printable(ev.kv.key)} (revision {rev})")


@click.group(short_help="Grant, renew and revoke leases.")
def lease() -> None:
    """Leases: keys put with ``kv put --lease ID`` are deleted when the lease is revoked
    or expires (TTL measured by the leader's monotonic clock; a new leader gives every
    lease its full TTL plus one election timeout). A TTL shorter than 1.5 election
    timeouts is raised to that, as etcd does."""


@lease.command("grant", short_help="Grant a lease.")
@click.argument("ttl", type=click.FloatRange(min=0.001))
@client_options
def lease_grant(
    ttl: float, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """Grant a lease of TTL seconds; prints its id."""
    ttl_ms = max(1, round(ttl * 1000))
    got = run_client(endpoints, config, timeout, as_json, lambda c: c.lease_grant(ttl_ms))
    if as_json:
        emit(True, {"lease": got.id, "ttl_ms": got.ttl_ms}, "")
    else:
        click.echo(str(got.id))


@lease.command("keepalive", short_help="Restart a lease's TTL.")
@click.argument("lease_id", type=click.IntRange(min=1))
@client_options
def lease_keepalive(
    lease_id: int, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """Restart lease LEASE_ID's TTL once. Exit 3 if it has expired or was revoked."""
    got = run_client(endpoints, config, timeout, as_json, lambda c: c.lease_keepalive(lease_id))
    emit(as_json, {"lease": got.id, "ttl_ms": got.ttl_ms}, f"[green]OK[/] {got.ttl_ms} ms")


@lease.command("revoke", short_help="Revoke a lease, deleting its keys.")
@click.argument("lease_id", type=click.IntRange(min=1))
@client_options
def lease_revoke(
    lease_id: int, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """End lease LEASE_ID now; every key attached to it is deleted (one revision)."""
    r = run_client(endpoints, config, timeout, as_json, lambda c: c.lease_revoke(lease_id))
    emit(as_json, {"revision": r.revision}, f"[green]OK[/] revision {r.revision}")


COMMANDS = (watch, lease)


@lease.command("ttl", short_help="Show how long a lease has left.")
@click.argument("lease_id", type=click.IntRange(min=1))
@client_options
def lease_ttl(
    lease_id: int, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """Milliseconds lease LEASE_ID has left by the leader's clock. Exit 3 if it is gone."""
    got = run_client(endpoints, config, timeout, as_json, lambda c: c.lease_ttl(lease_id))
    emit(as_json, {"lease": got.id, "remaining_ms": got.ttl_ms}, f"{got.ttl_ms} ms left")
