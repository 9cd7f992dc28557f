"""Import rules of docs/ARCHITECTURE.md, checked by parsing every module with ``ast``.

Why a test: the Raft core is only deterministic (and so only simulatable and
replayable) while it never touches clocks, sockets, files, threads or the global random
generator, and the layers only stay swappable while imports point down. Both erode one
innocent import at a time, so a machine checks them.

The checker walks whatever modules exist, so packages that have not landed yet are
simply absent. ``test_checker_*`` feed it known-bad source: a check that cannot fail is
worthless.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("raft", "kvstore", "cli", "jepsen_like")

# raft/core may import these project modules (and itself) ...
CORE_ALLOWED_PROJECT = ("raft.types", "raft.messages", "raft.errors", "raft.config")
# ... and only these stdlib modules: pure computation, no I/O, time, threads or globals.
# Extend deliberately: a module belongs here only if it cannot observe the outside world.
CORE_ALLOWED_STDLIB = frozenset(
    {
        "__future__",
        "dataclasses",
        "enum",
        "typing",
        "collections",
        "collections.abc",
        "itertools",
        "functools",
        "heapq",
        "bisect",
        "struct",
        "random",  # only for the type of the injected random.Random; calls are checked
        "math",
        "zlib",  # crc32 of a snapshot: a pure function of its bytes
    }
)
# Builtins that reach the outside world or dodge the import check.
CORE_FORBIDDEN_CALLS = frozenset({"open", "__import__", "exec", "eval", "input", "print"})

# Pure, deterministic state-machine modules of kvstore: every replica applies the same
# log and must reach the same state, so no event loop may leak in.
KV_STATE_MACHINE_MODULES = frozenset(
    {
        "kvstore.state_machine",
        "kvstore.mvcc",
        "kvstore.snapshot",
        "kvstore.vclock",
        "kvstore.commands",
        "kvstore.quota",
        "kvstore.auth",
        "kvstore.password",
    }
)
# jepsen_like drives the store from the outside, like any client; kvstore.cluster (which
# itself uses only client and config) starts and stops node processes by pid for it, and
# kvstore.lock is a recipe built on the client alone.
JEPSEN_ALLOWED_KVSTORE = ("kvstore.client", "kvstore.config", "kvstore.cluster", "kvstore.lock")
UPPER_OF_RAFT = ("kvstore", "cli", "jepsen_like")
UPPER_OF_KVSTORE = ("cli", "jepsen_like")


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # absolute dotted name of what is imported
    line: int
    from_names: tuple[str, ...] = ()  # names of ``from X import a, b``; () for ``import X``

    def targets(self) -> list[str]:
        """What the import may bind, for the project's own prefix rules: ``from raft
        import codec`` depends on raft.codec, not on raft. (For an imported attribute
        ``X.a`` is still under X, so prefix rules judge it as they would X.)"""
        if not self.from_names or "*" in self.from_names:
            return [self.module]
        return [f"{self.module}.{name}" for name in self.from_names]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(tree: ast.AST, module: str, package: bool = False) -> list[Import]:
    """Every import anywhere in ``tree`` (not just at top level: an import inside a
    function is still a dependency), with relative imports made absolute."""
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = tuple(alias.name for alias in node.names)
            if node.level == 0:
                assert node.module is not None
                found.append(Import(node.module, node.lineno, names))
                continue
            # ``from .x import y`` in a.b.c (module) resolves against a.b; in the
            # package a/b/__init__.py it resolves against a.b itself.
            base = module.split(".") if package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            if node.module:
                found.append(Import(".".join([*base, node.module]), node.lineno, names))
            else:  # ``from . import x, y`` imports submodules (or names) of base
                found += [Import(".".join([*base, n]), node.lineno) for n in names]
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _random_aliases(tree: ast.AST) -> set[str]:
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "random"
    }


def check_source(source: str, module: str, package: bool = False) -> list[str]:
    """Violations of the import rules in ``source`` as module ``module``; [] if clean."""
    tree = ast.parse(source)
    errors: list[str] = []
    imports = imports_of(tree, module, package)

    for imp in imports:
        for target in imp.targets():
            errors += [
                f"{module}:{imp.line}: imports {target} ({why})"
                for why in _layer_violations(module, target)
            ]
        if _under(module, "raft.core"):
            errors += _check_core_import(module, imp)

    if _under(module, "raft.core"):
        errors += _check_core_calls(tree, module)
    return errors


def _layer_violations(module: str, target: str) -> list[str]:
    """Why ``module`` may not depend on project module ``target``; [] if it may."""
    why: list[str] = []
    if _under(module, "raft"):
        why += [f"raft never imports {up}" for up in UPPER_OF_RAFT if _under(target, up)]
    if _under(module, "kvstore"):
        why += [f"kvstore never imports {up}" for up in UPPER_OF_KVSTORE if _under(target, up)]
    if _under(module, "jepsen_like"):
        if _under(target, "cli"):
            why.append("jepsen_like never imports cli")
        if _under(target, "kvstore") and not any(
            _under(target, ok) for ok in JEPSEN_ALLOWED_KVSTORE
        ):
            why.append(f"jepsen_like uses only {', '.join(JEPSEN_ALLOWED_KVSTORE)}")
    if module in KV_STATE_MACHINE_MODULES and _under(target, "asyncio"):
        why.append("state-machine modules must stay free of asyncio")
    if _under(module, "raft.core") and _under(target, "raft"):
        allowed = ("raft.core", *CORE_ALLOWED_PROJECT)
        if not any(_under(target, ok) for ok in allowed):
            why.append(f"raft.core may import only raft.core and {', '.join(CORE_ALLOWED_PROJECT)}")
    return why


def _check_core_import(module: str, imp: Import) -> list[str]:
    """Third-party and stdlib imports of raft.core (project imports are layer rules)."""
    where = f"{module}:{imp.line}: imports {imp.module}"
    if _under(imp.module, "raft"):
        return []
    if imp.module not in CORE_ALLOWED_STDLIB:
        return [f"{where} (not in the raft.core stdlib allow-list)"]
    if imp.module == "random" and imp.from_names:
        return [f"{where} (use `import random` for the type only; inject random.Random)"]
    return []


def _check_core_calls(tree: ast.AST, module: str) -> list[str]:
    """The core may name ``random.Random`` as a type but never call into the random
    module (``random.random()``, ``random.seed(...)``, even ``random.Random()``): all
    randomness comes from the injected, seeded instance."""
    errors: list[str] = []
    random_names = _random_aliases(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in random_names
        ):
            errors.append(
                f"{module}:{node.lineno}: calls {func.value.id}.{func.attr}() "
                "(use the injected random.Random)"
            )
        elif isinstance(func, ast.Name) and func.id in CORE_FORBIDDEN_CALLS:
            errors.append(f"{module}:{node.lineno}: calls {func.id}() (the core does no I/O)")
    return errors


def project_modules(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        pkg_dir = root / package
        if pkg_dir.is_dir():
            for path in sorted(pkg_dir.rglob("*.py")):
                yield module_name(path, root), path


# ---- the rules, applied to the real tree ----------------------------------------------

MODULES = list(project_modules())


def test_modules_found() -> None:
    """Guard against the walk silently finding nothing (e.g. after a move)."""
    names = {name for name, _ in MODULES}
    assert {"raft.types", "raft.messages", "raft.core.raw_node"} <= names


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_module_respects_import_rules(name: str, path: Path) -> None:
    errors = check_source(path.read_text(encoding="utf-8"), name, is_package(path))
    assert not errors, "\n".join(errors)


# ---- the checker itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "needle"),
    [
        ("raft.core.raft", "import asyncio\n", "asyncio"),
        ("raft.core.raft", "import time\n", "time"),
        ("raft.core.raft", "from os import path\n", "os"),
        ("raft.core.raft", "def f():\n    import socket\n", "socket"),
        ("raft.core.raft", "import threading\n", "threading"),
        ("raft.core.raft", "from raft.codec import encode\n", "raft.codec"),
        ("raft.core.raft", "from raft.sim import cluster\n", "raft.sim"),
        ("raft.core.raft", "from ..storage import wal\n", "raft.storage.wal"),
        ("raft.core.raft", "from raft import codec\n", "raft.codec"),
        ("raft.core.quorum", "from .. import sim\n", "raft.sim"),
        ("raft.core.raft", "from random import randint\n", "random"),
        ("raft.core.raft", "import random\nX = random.random()\n", "random.random()"),
        ("raft.core.raft", "import random\nrandom.seed(1)\n", "random.seed()"),
        ("raft.core.raft", "import random as r\ndef f():\n    r.randint(1, 2)\n", "r.randint()"),
        ("raft.core.raft", "def f():\n    open('x')\n", "open()"),
        ("raft.core.raft", "def f():\n    print('x')\n", "print()"),
        ("raft.types", "import kvstore.mvcc\n", "kvstore"),
        ("raft.runtime.node", "from cli.main import cli\n", "cli"),
        ("raft.sim.cluster", "from jepsen_like import checker\n", "jepsen_like"),
        ("kvstore.server", "from cli import main\n", "cli"),
        ("kvstore.node", "import jepsen_like.history\n", "jepsen_like"),
        ("kvstore.mvcc", "import asyncio\n", "asyncio"),
        ("kvstore.state_machine", "from asyncio import Queue\n", "asyncio"),
        ("jepsen_like.runner", "from kvstore.node import start\n", "kvstore.node"),
        ("jepsen_like.runner", "from cli.main import cli\n", "cli"),
    ],
)
def test_checker_reports_violation(module: str, source: str, needle: str) -> None:
    errors = check_source(source, module)
    assert errors, f"checker missed a violation in {module}: {source!r}"
    assert any(needle in e for e in errors), errors


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (
            "raft.core.raft",
            "from __future__ import annotations\n"
            "import random\n"
            "from collections.abc import Callable\n"
            "from raft.types import Entry\n"
            "from raft.core.log import RaftLog\n"
            "from .quorum import committed_index\n"
            "from . import progress\n"
            "def f(rng: random.Random) -> int:\n"
            "    return rng.randint(1, 2)\n",
        ),
        ("raft.runtime.node", "import asyncio\nimport os\nfrom raft.core import raw_node\n"),
        ("kvstore.server", "import asyncio\nfrom raft.errors import NotLeader\n"),
        ("jepsen_like.runner", "from kvstore.client import Client\nimport asyncio\n"),
        ("raft.core.log", "from raft import types\nfrom collections import abc, deque\n"),
        ("jepsen_like.models", "from kvstore import client, config\n"),
        ("cli.main", "from kvstore.client import Client\nimport rich\n"),
    ],
)
def test_checker_accepts_allowed_imports(module: str, source: str) -> None:
    assert check_source(source, module) == []


def test_relative_imports_resolve_in_packages() -> None:
    tree = ast.parse("from . import quorum\nfrom ..storage import wal\n")
    for found in (imports_of(tree, "raft.core", package=True), imports_of(tree, "raft.core.raft")):
        assert [t for i in found for t in i.targets()] == ["raft.core.quorum", "raft.storage.wal"]
