"""``kv get/put/del/scan/cas/bench``: the store from a shell.

Output has two audiences. People get rich text (and ``kv get`` prints just the value,
so ``kv get a`` prints ``1`` and composes with other tools); scripts pass ``--json`` and
read one JSON object from stdout, and branch on the exit code:

====  ===============================================================================
0     ok
1     error (bad request, value too large, internal error)
2     usage or config error (nothing was sent), a node's TLS certificate refused
      (JSON ``"error": "tls"``: the CA the tool trusts did not sign it, or it does
      not name the host dialled)
3     not found
4     compare failed (cas): nothing written
5     unavailable: the operation certainly did not happen; safe to retry
6     indeterminate: the write may or may not have happened
7     authentication failed or permission denied (auth is on): nothing done
====  ===============================================================================

Credentials (when the cluster has auth on, docs/SECURITY.md): ``kv --user NAME`` (or
``KV_USER``) with the password from ``--password-file FILE`` (or ``KV_PASSWORD_FILE``),
else ``KV_PASSWORD``, else a prompt if stdin is a terminal. Never on the command line.

Heavy modules (the client, asyncio, rich) are imported inside the commands, so ``kv
--help`` stays fast.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    import ssl

    from kvstore.client import AsyncClient, KeyValue

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "cluster.toml"


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    COMPARE_FAILED = 4
    UNAVAILABLE = 5
    INDETERMINATE = 6
    AUTH = 7


# ---- shared helpers (also used by cli/cluster.py) -----------------------------------------


def fail(code: ExitCode, message: str, *, as_json: bool = False, **extra: Any) -> NoReturn:
    """Report an error (stderr for people, a JSON object on stdout for scripts) and exit."""
    if as_json:
        error = extra.pop("error", None) or code.name.lower()
        click.echo(json.dumps({"ok": False, "error": error, "message": message, **extra}))
    else:
        click.echo(f"kv: {message}", err=True)
    sys.exit(int(code))


def load_config_or_exit(path: str, *, as_json: bool = False) -> Any:
    """The ClusterConfig at ``path``; exit 2 naming file:line if it is broken."""
    from kvstore.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(ExitCode.USAGE, str(exc), as_json=as_json)


def credentials(as_json: bool) -> tuple[str, str] | None:
    """(user, password) from the ``kv`` group's ``--user``/``--password-file`` (or their
    environment variables), ``KV_PASSWORD``, or a prompt on a terminal; None without a
    user. Exit 2 if a user is given and no password can be had."""
    flags = _global_flags()
    user, path = flags.user, flags.password_file
    if not user:
        return None
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(ExitCode.USAGE, f"--password-file {path}: {exc}", as_json=as_json)
        password = text.rstrip("\r\n")  # one trailing newline is the file's, not the password's
    elif os.environ.get("KV_PASSWORD"):
        password = os.environ["KV_PASSWORD"]
    elif sys.stdin.isatty():
        password = click.prompt(f"password for {user}", hide_input=True, err=True)
    else:
        fail(
            ExitCode.USAGE,
            f"--user {user}: no password; pass --password-file FILE or set KV_PASSWORD",
            as_json=as_json,
        )
    if not password:
        fail(ExitCode.USAGE, f"the password for {user} is empty", as_json=as_json)
    from kvstore.commands import name_problem

    problem = name_problem(user)
    if problem is not None:
        fail(ExitCode.USAGE, f"--user {user!r}: {problem}", as_json=as_json)
    return user, password


def resolve_endpoints(endpoints: str | None, config: str | None, as_json: bool) -> list[str]:
    """``--endpoints`` if given, else every client address of ``--config`` (default
    ./cluster.toml)."""
    from kvstore.config import parse_address

    if endpoints:
        out = [e.strip() for e in endpoints.split(",") if e.strip()]
        for e in out:
            try:
                parse_address(e)
            except ValueError as exc:
                fail(ExitCode.USAGE, f"--endpoints: {exc}", as_json=as_json)
        if out:
            return out
    path = config or DEFAULT_CONFIG
    if config is None and not Path(path).exists():
        fail(
            ExitCode.USAGE,
            f"no --endpoints given and no {DEFAULT_CONFIG} in {Path.cwd()}; "
            "pass --endpoints host:port,... or --config FILE",
            as_json=as_json,
        )
    cfg = load_config_or_exit(path, as_json=as_json)
    return [str(n.client_address) for n in cfg.nodes]


@dataclass(frozen=True, slots=True)
class GlobalFlags:
    """The ``kv`` group's options, kept in the click context: ``--cacert/--cert/--key``
    (TLS) and ``--user/--password-file`` (auth)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_file: str | None = None


def _global_flags() -> GlobalFlags:
    ctx = click.get_current_context(silent=True)
    flags = ctx.find_root().obj if ctx is not None else None
    return flags if isinstance(flags, GlobalFlags) else GlobalFlags()


def resolve_tls(endpoints: str | None, config: str | None, as_json: bool) -> ssl.SSLContext | None:
    """The TLS context for the nodes, or None for plain TCP. ``--cacert`` (with
    ``--cert``/``--key`` for client-certificate auth) wins; otherwise the config the
    endpoints come from (``--config``, or ./cluster.toml without ``--endpoints``) says,
    through its [security] ca_file and client certificate."""
    from kvstore.tls import client_context, config_client_context

    flags = _global_flags()
    try:
        if flags.cacert is not None:
            key = None if flags.key is None else Path(flags.key)
            cert = None if flags.cert is None else Path(flags.cert)
            return client_context(Path(flags.cacert), cert, key)
        if flags.cert is not None or flags.key is not None:
            fail(ExitCode.USAGE, "--cert/--key need --cacert (the CA that signed the nodes)")
        if config is None and (endpoints or not Path(DEFAULT_CONFIG).exists()):
            return None
        return config_client_context(load_config_or_exit(config or DEFAULT_CONFIG))
    except OSError as exc:  # ssl.SSLError included: a key that is not the cert's
        fail(ExitCode.USAGE, f"cannot use the TLS files: {exc}", as_json=as_json)


def text_or_b64(name: str, data: bytes) -> dict[str, str]:
    """``{name: text}`` for UTF-8 bytes, else ``{name + "_base64": ...}`` (JSON is text)."""
    try:
        return {name: data.decode()}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode()}


def kv_json(kv: KeyValue | None) -> dict[str, Any] | None:
    if kv is None:
        return None
    return {
        **text_or_b64("key", kv.key),
        **text_or_b64("value", kv.value),
        "version": kv.version,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
    }


def arg_bytes(s: str) -> bytes:
    """The exact bytes of a command-line argument (undoing Python's surrogateescape)."""
    return os.fsencode(s)


def printable(data: bytes) -> str:
    """Bytes as a terminal should show them: text, or a repr for binary."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return repr(data)


def client_options(f: F) -> F:
    """--endpoints, --config, --timeout and --json, shared by every store command."""
    f = click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")(f)
    f = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        help="Give up after this many seconds, retries included.",
    )(f)
    f = click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        help=f"Cluster config whose client addresses to use [default: ./{DEFAULT_CONFIG}].",
    )(f)
    f = click.option(
        "--endpoints",
        envvar="KV_ENDPOINTS",
        help="host:port,... of nodes' client addresses (env KV_ENDPOINTS).",
    )(f)
    return f


def consistency_option(f: F) -> F:
    return click.option(
        "--consistency",
        type=click.Choice(["linearizable", "serializable"]),
        default="linearizable",
        show_default=True,
        help="serializable: any node answers at once, possibly stale.",
    )(f)


def fail_for(exc: Exception, as_json: bool, key: bytes | None = None) -> NoReturn:
    """Exit with the code (and message) for a client exception; ``key`` names the key."""
    from kvstore import client as c

    if isinstance(exc, c.NotFound):
        what = f"key {printable(key)!r}" if key is not None else str(exc)
        fail(ExitCode.NOT_FOUND, f"not found: {what}", as_json=as_json)
    elif isinstance(exc, c.CompareFailed):
        fail(
            ExitCode.COMPARE_FAILED,
            f"compare failed: the key is {_describe(exc.current)}",
            as_json=as_json,
            current=kv_json(exc.current),
            revision=exc.revision,
        )
    elif isinstance(exc, c.Indeterminate):
        fail(
            ExitCode.INDETERMINATE,
            f"outcome unknown, the write may or may not have happened: {exc}",
            as_json=as_json,
        )
    elif isinstance(exc, c.CertificateError):
        fail(ExitCode.USAGE, str(exc), as_json=as_json, error="tls")
    elif isinstance(exc, c.Unavailable | c.SessionExpired):
        fail(ExitCode.UNAVAILABLE, f"unavailable (not applied): {exc}", as_json=as_json)
    elif isinstance(exc, c.TooLarge):
        fail(ExitCode.ERROR, f"too large: {exc}", as_json=as_json, error="too_large")
    elif isinstance(exc, c.BadRequest):
        fail(ExitCode.ERROR, f"rejected: {exc}", as_json=as_json, error="bad_request")
    elif isinstance(exc, c.LeaseNotFound):
        fail(
            ExitCode.NOT_FOUND, f"lease not found: {exc}", as_json=as_json, error="lease_not_found"
        )
    elif isinstance(exc, c.NoSpace):
        fail(ExitCode.ERROR, f"no space (not applied): {exc}", as_json=as_json, error="nospace")
    elif isinstance(exc, c.Conflict):
        fail(ExitCode.ERROR, f"refused (not applied): {exc}", as_json=as_json, error="conflict")
    elif isinstance(exc, c.AuthFailed):
        fail(ExitCode.AUTH, f"authentication failed: {exc}", as_json=as_json, error="auth_failed")
    elif isinstance(exc, c.PermissionDenied):
        fail(ExitCode.AUTH, f"permission denied: {exc}", as_json=as_json, error="permission_denied")
    elif isinstance(exc, c.FailedPrecondition):
        fail(ExitCode.ERROR, f"refused: {exc}", as_json=as_json, error="failed_precondition")
    fail(ExitCode.ERROR, str(exc), as_json=as_json)


def run_client(
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
    op: Callable[[AsyncClient], Coroutine[Any, Any, T]],
    key: bytes | None = None,
) -> T:
    """Run ``op`` with a client; map the client's exceptions onto exit codes. ``key``
    names the key in messages."""
    from kvstore import client as c

    addrs = resolve_endpoints(endpoints, config, as_json)
    tls = resolve_tls(endpoints, config, as_json)
    user, password = credentials(as_json) or (None, None)

    async def go() -> T:
        async with c.AsyncClient(
            addrs,
            timeout=min(5.0, timeout),
            deadline=timeout,
            tls=tls,
            user=user,
            password=password,
        ) as cl:
            return await op(cl)

    try:
        return asyncio.run(go())
    except c.ClientError as exc:
        fail_for(exc, as_json, key)


def _describe(kv: KeyValue | None) -> str:
    if kv is None:
        return "absent"
    return f"{printable(kv.value)!r} (version {kv.version})"


def console() -> Any:
    """A rich console for stdout; 120 columns when not a terminal (rich would use 80 and
    cut tables short in pipes and logs)."""
    from rich.console import Console

    c = Console(highlight=False)
    return c if c.is_terminal else Console(highlight=False, width=120)


def emit(as_json: bool, obj: dict[str, Any], human: str) -> None:
    if as_json:
        click.echo(json.dumps({"ok": True, **obj}))
    else:
        console().print(human)


# ---- commands ---------------------------------------------------------------------------


@click.command(short_help="Read a key.")
@click.argument("key")
@consistency_option
@client_options
def get(
    key: str,
    consistency: str,
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Print KEY's value (exactly its bytes, then a newline). Exit 3 if absent."""
    kv = run_client(
        endpoints,
        config,
        timeout,
        as_json,
        lambda c: c.get(arg_bytes(key), consistency=consistency),
        arg_bytes(key),
    )
    if as_json:
        click.echo(json.dumps({"ok": True, **(kv_json(kv) or {})}))
    else:
        sys.stdout.buffer.write(kv.value + b"\n")
        sys.stdout.buffer.flush()


@click.command(short_help="Write a key.")
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--lease",
    "lease_id",
    type=click.IntRange(min=1),
    help="Attach the key to this lease (kv lease grant): it goes when the lease does.",
)
@client_options
def put(
    key: str,
    value: str | None,
    lease_id: int | None,
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Set KEY to VALUE. Without VALUE, or with -, the value is stdin's bytes, exactly
    (``echo 1 | kv put a`` stores "1\\n"; use ``printf``)."""
    if value is None and sys.stdin.isatty():
        raise click.UsageError("no VALUE given; pass one, pipe it in, or use - to type it")
    data = sys.stdin.buffer.read() if value in (None, "-") else arg_bytes(value)
    k = arg_bytes(key)

    async def write(c: AsyncClient) -> tuple[int, KeyValue | None]:
        if lease_id is None:
            r = await c.put(k, data)
            return r.revision, r.prev
        from kvstore.client import PutOp, WriteOpResult

        t = await c.txn(success=[PutOp(k, data, lease_id)])
        (prev,) = t.responses
        assert isinstance(prev, WriteOpResult)
        return t.revision, prev.prev

    revision, prev = run_client(endpoints, config, timeout, as_json, write)
    emit(
        as_json, {"revision": revision, "prev": kv_json(prev)}, f"[green]OK[/] revision {revision}"
    )


@click.command("del", short_help="Delete a key.")
@click.argument("key")
@client_options
def delete(
    key: str, endpoints: str | None, config: str | None, timeout: float, as_json: bool
) -> None:
    """Delete KEY. Exit 3 if it did not exist (nothing changed)."""
    r = run_client(
        endpoints, config, timeout, as_json, lambda c: c.delete(arg_bytes(key)), arg_bytes(key)
    )
    emit(
        as_json,
        {"revision": r.revision, "prev": kv_json(r.prev)},
        f"[green]deleted[/] revision {r.revision}",
    )


@click.command(short_help="List keys with a prefix.")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many keys.")
@consistency_option
@client_options
def scan(
    prefix: str,
    limit: int | None,
    consistency: str,
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Keys starting with PREFIX (all keys if omitted), in byte order, one page."""
    r = run_client(
        endpoints,
        config,
        timeout,
        as_json,
        lambda c: c.scan(arg_bytes(prefix), limit=limit, consistency=consistency),
    )
    if as_json:
        kvs = [kv_json(kv) for kv in r.kvs]
        click.echo(json.dumps({"ok": True, "kvs": kvs, "more": r.more, "revision": r.revision}))
        return
    from rich.table import Table

    table = Table("key", "value", "version", "mod rev", box=None, header_style="bold")
    for kv in r.kvs:
        table.add_row(printable(kv.key), printable(kv.value), str(kv.version), str(kv.mod_revision))
    out = console()
    out.print(table)
    more = "; more keys follow (raise --limit)" if r.more else ""
    out.print(f"[dim]{len(r.kvs)} keys at revision {r.revision}{more}[/]")


@click.command(short_help="Compare-and-set a key.")
@click.argument("args", nargs=-1, required=True)
@click.option("--expected-version", type=click.IntRange(min=0), help="Required key version.")
@click.option("--absent", is_flag=True, help="Create KEY only if it does not exist.")
@client_options
def cas(
    args: tuple[str, ...],
    expected_version: int | None,
    absent: bool,
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Set a key only if it holds what you expect, atomically:

    \b
      kv cas KEY EXPECTED NEW                 value must be EXPECTED
      kv cas --expected-version N KEY NEW     version must be N (0: absent)
      kv cas --absent KEY NEW                 create if absent

    Exit 4 if the expectation did not hold (nothing written)."""
    if absent and expected_version not in (None, 0):
        raise click.UsageError("--absent contradicts --expected-version")
    if absent:
        expected_version = 0
    want = 2 if expected_version is not None else 3
    if len(args) not in (want, 3):
        form = "KEY NEW" if want == 2 else "KEY EXPECTED NEW"
        raise click.UsageError(f"expected {form}, got {len(args)} argument(s)")
    key, new = arg_bytes(args[0]), arg_bytes(args[-1])
    expected = arg_bytes(args[1]) if len(args) == 3 else None
    r = run_client(
        endpoints,
        config,
        timeout,
        as_json,
        lambda c: c.cas(
            key, new_value=new, expected_value=expected, expected_version=expected_version
        ),
    )
    emit(
        as_json,
        {"revision": r.revision, "prev": kv_json(r.prev)},
        f"[green]OK[/] revision {r.revision}",
    )


@click.command(short_help="Load-test a running cluster.")
@click.option("--clients", type=click.IntRange(min=1, max=4096), default=64, show_default=True)
@click.option("--ops", type=click.IntRange(min=1), help="Stop after this many operations.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    help="Stop after this many seconds [default: 10, unless --ops].",
)
@click.option(
    "--workload", type=click.Choice(["put", "get", "mixed"]), default="put", show_default=True
)
@click.option("--value-size", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True)
@consistency_option
@click.option("--seed", type=int, help="Seed for keys, values and op choice.")
@client_options
def bench(
    clients: int,
    ops: int | None,
    duration: float | None,
    workload: str,
    value_size: int,
    keys: int,
    consistency: str,
    seed: int | None,
    endpoints: str | None,
    config: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Closed-loop load: CLIENTS independent clients (one session and connection
    each) issue operations back to back; prints throughput and latency percentiles.
    Writes keys bench/00000000... in the cluster."""
    from kvstore.bench import BenchConfig, Workload, run_bench

    if ops is not None and duration is not None:
        raise click.UsageError("give --ops or --duration, not both")
    user, password = credentials(as_json) or (None, None)
    cfg = BenchConfig(
        endpoints=resolve_endpoints(endpoints, config, as_json),
        clients=clients,
        ops=ops,
        duration=duration or 10.0,
        workload=Workload(workload),
        value_size=value_size,
        keys=keys,
        consistency=consistency,
        seed=seed,
        op_deadline=timeout,
        tls=resolve_tls(endpoints, config, as_json),
        user=user,
        password=password,
    )
    from kvstore.client import ClientError, Unavailable

    try:
        result = asyncio.run(run_bench(cfg))
    except ClientError as exc:  # a failed warm-up is the cluster's being down
        fail_for(exc if type(exc) is not ClientError else Unavailable(str(exc)), as_json)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    from rich.table import Table

    table = Table(
        title=f"kv bench: {workload}, {clients} client{'s' if clients > 1 else ''}, "
        f"{value_size} B values, {keys} keys"
        + ("" if workload == "put" else f", {consistency} reads")
    )
    for col in ("op", "ok", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for name, st in result.latency.items():
        rate = st.count / result.elapsed if result.elapsed > 0 else 0.0
        table.add_row(
            name,
            str(st.count),
            f"{rate:,.0f}",
            *(f"{v * 1000:.2f}" for v in (st.p50, st.p90, st.p99, st.max)),
        )
    out = console()
    out.print(table)
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items())) or "none"
    out.print(f"{result.ok} ok in {result.elapsed:.2f} s; errors: {errors}")
    if result.errors:
        sys.exit(int(ExitCode.ERROR))


COMMANDS = (get, put, delete, scan, cas, bench)
