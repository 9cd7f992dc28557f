"""``kv auth``, ``kv user``, ``kv role``: etcd's auth model from a shell (docs/SECURITY.md).

Set up while auth is off (anyone may), then turn it on::

    kv user add root --new-password-file root.pw
    kv user grant-role root root
    kv auth enable
    kv --user root --password-file root.pw role add app
    kv --user root --password-file root.pw role grant-permission app readwrite app/

Passwords never appear on the command line: a new one comes from
``--new-password-file``, ``KV_NEW_PASSWORD`` or a prompt on a terminal. Exit codes are
those of the other store commands (cli/kv_commands.py), 7 for a refusal by auth.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.kv_commands import ExitCode, arg_bytes, client_options, emit, fail, printable, run_client

if TYPE_CHECKING:
    from kvstore.client import AsyncClient

Op = Callable[["AsyncClient"], Coroutine[Any, Any, Any]]


def _run(opts: dict[str, Any], op: Op) -> Any:
    return run_client(opts["endpoints"], opts["config"], opts["timeout"], opts["as_json"], op)


def _done(opts: dict[str, Any], what: str) -> None:
    emit(opts["as_json"], {}, f"[green]OK[/] {what}")


def _new_password(name: str, path: str | None, as_json: bool) -> str:
    """The new password for ``name``: --new-password-file, KV_NEW_PASSWORD, or a prompt
    (twice) on a terminal."""
    if path:
        try:
            password = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            fail(ExitCode.USAGE, f"--new-password-file {path}: {exc}", as_json=as_json)
    elif os.environ.get("KV_NEW_PASSWORD"):
        password = os.environ["KV_NEW_PASSWORD"]
    elif sys.stdin.isatty():
        password = click.prompt(
            f"new password for {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        fail(
            ExitCode.USAGE,
            "no new password: pass --new-password-file FILE or set KV_NEW_PASSWORD",
            as_json=as_json,
        )
    if not password:
        fail(ExitCode.USAGE, "the new password is empty", as_json=as_json)
    return password


new_password_option = click.option(
    "--new-password-file",
    type=click.Path(dir_okay=False),
    help="Read the new password from this file (else KV_NEW_PASSWORD, else a prompt).",
)


# ---- kv auth ----------------------------------------------------------------------------


@click.group(short_help="Turn client authentication on or off.")
def auth() -> None:
    """Client authentication (off until enabled; replicated, so it holds on every node)."""


@auth.command("enable", short_help="Turn authentication on.")
@client_options
def auth_enable(**opts: Any) -> None:
    """Turn authentication on. Refused unless user root exists with role root."""
    _run(opts, lambda c: c.auth_enable())
    _done(opts, "authentication enabled")


@auth.command("disable", short_help="Turn authentication off (root only).")
@client_options
def auth_disable(**opts: Any) -> None:
    """Turn authentication off: every client may do everything again."""
    _run(opts, lambda c: c.auth_disable())
    _done(opts, "authentication disabled")


@auth.command("status", short_help="Whether authentication is on.")
@client_options
def auth_status(**opts: Any) -> None:
    enabled, revision = _run(opts, lambda c: c.auth_status())
    state = "on" if enabled else "off"
    emit(
        opts["as_json"],
        {"enabled": enabled, "revision": revision},
        f"authentication {state} (auth revision {revision})",
    )


# ---- kv user ----------------------------------------------------------------------------


@click.group(short_help="Manage users.")
def user() -> None:
    """Users log in with a password and act with the permissions of their roles."""


@user.command("add", short_help="Add a user.")
@click.argument("name")
@new_password_option
@client_options
def user_add(name: str, new_password_file: str | None, **opts: Any) -> None:
    """Add user NAME (its password is hashed by the node, never stored in clear)."""
    password = _new_password(name, new_password_file, opts["as_json"])
    _run(opts, lambda c: c.user_add(name, password))
    _done(opts, f"user {name} added")


@user.command("delete", short_help="Delete a user.")
@click.argument("name")
@client_options
def user_delete(name: str, **opts: Any) -> None:
    _run(opts, lambda c: c.user_delete(name))
    _done(opts, f"user {name} deleted")


@user.command("passwd", short_help="Change a user's password.")
@click.argument("name")
@new_password_option
@client_options
def user_passwd(name: str, new_password_file: str | None, **opts: Any) -> None:
    """Set NAME's password; the user's login tokens stop working."""
    password = _new_password(name, new_password_file, opts["as_json"])
    _run(opts, lambda c: c.user_passwd(name, password))
    _done(opts, f"password of {name} changed")


@user.command("grant-role", short_help="Give a user a role.")
@click.argument("name")
@click.argument("role")
@client_options
def user_grant_role(name: str, role: str, **opts: Any) -> None:
    _run(opts, lambda c: c.user_grant_role(name, role))
    _done(opts, f"role {role} granted to {name}")


@user.command("revoke-role", short_help="Take a role from a user.")
@click.argument("name")
@click.argument("role")
@client_options
def user_revoke_role(name: str, role: str, **opts: Any) -> None:
    _run(opts, lambda c: c.user_revoke_role(name, role))
    _done(opts, f"role {role} revoked from {name}")


@user.command("list", short_help="List users.")
@client_options
def user_list(**opts: Any) -> None:
    names = _run(opts, lambda c: c.user_list())
    emit(opts["as_json"], {"users": list(names)}, "\n".join(names))


@user.command("get", short_help="Show a user's roles.")
@click.argument("name")
@client_options
def user_get(name: str, **opts: Any) -> None:
    info = _run(opts, lambda c: c.user_get(name))
    emit(
        opts["as_json"],
        {"user": info.name, "roles": list(info.roles)},
        f"user: {info.name}\nroles: {' '.join(info.roles) or '-'}",
    )


# ---- kv role ----------------------------------------------------------------------------


@click.group(short_help="Manage roles and their permissions.")
def role() -> None:
    """A role grants read, write or readwrite on key prefixes; role root grants all."""


@role.command("add", short_help="Add a role.")
@click.argument("name")
@client_options
def role_add(name: str, **opts: Any) -> None:
    _run(opts, lambda c: c.role_add(name))
    _done(opts, f"role {name} added")


@role.command("delete", short_help="Delete a role.")
@click.argument("name")
@client_options
def role_delete(name: str, **opts: Any) -> None:
    """Delete role NAME; users holding it lose it."""
    _run(opts, lambda c: c.role_delete(name))
    _done(opts, f"role {name} deleted")


@role.command("grant-permission", short_help="Grant a permission on a key prefix.")
@click.argument("name")
@click.argument("perm", type=click.Choice(["read", "write", "readwrite"]))
@click.argument("prefix", default="")
@client_options
def role_grant_permission(name: str, perm: str, prefix: str, **opts: Any) -> None:
    """Let role NAME PERM every key starting with PREFIX (omitted: every key). A grant
    on a prefix the role has already replaces it."""
    _run(opts, lambda c: c.role_grant_permission(name, perm, arg_bytes(prefix)))
    _done(opts, f"{perm} on {prefix!r} granted to {name}")


@role.command("revoke-permission", short_help="Revoke the permission on a key prefix.")
@click.argument("name")
@click.argument("prefix", default="")
@client_options
def role_revoke_permission(name: str, prefix: str, **opts: Any) -> None:
    _run(opts, lambda c: c.role_revoke_permission(name, arg_bytes(prefix)))
    _done(opts, f"permission on {prefix!r} revoked from {name}")


@role.command("list", short_help="List roles.")
@client_options
def role_list(**opts: Any) -> None:
    names = _run(opts, lambda c: c.role_list())
    emit(opts["as_json"], {"roles": list(names)}, "\n".join(names))


@role.command("get", short_help="Show a role's permissions.")
@click.argument("name")
@client_options
def role_get(name: str, **opts: Any) -> None:
    info = _run(opts, lambda c: c.role_get(name))
    rows = [{"perm": perm, "prefix": printable(prefix)} for perm, prefix in info.permissions]
    lines = [f"{r['perm']:<9} {r['prefix']!r}" for r in rows]
    emit(
        opts["as_json"],
        {"role": info.name, "permissions": rows},
        f"role: {info.name}\n" + ("\n".join(lines) or "(no permissions)"),
    )
