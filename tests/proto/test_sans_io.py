"""The rule of ``revproxy/proto/``: sans-I/O only (DESIGN decision 1).

Every module there is read with ``ast`` (never imported, so a violation cannot hide behind an
import-time side effect): no I/O or event-loop modules, no clock, no global randomness. Time is
passed in by the caller; randomness, where a policy needs it, is an injected
``random.Random``, and that lives outside ``proto/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[2] / "revproxy" / "proto"

# Modules that do I/O, run an event loop, or read a clock or the system's randomness.
FORBIDDEN_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "ssl",
        "selectors",
        "select",
        "trio",
        "anyio",
        "uvloop",
        "threading",
        "subprocess",
        "time",
        "datetime",
        "random",
        "secrets",
    }
)
# Names that read a clock or draw randomness even when reached through another module.
FORBIDDEN_CALLS = frozenset({"urandom", "getrandom", "monotonic", "perf_counter", "time_ns"})


def proto_modules() -> list[Path]:
    return sorted(PROTO.rglob("*.py"))


def violations(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if node.level == 0 and root in FORBIDDEN_MODULES:
                found.append(f"line {node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if alias.name in FORBIDDEN_CALLS:
                    found.append(f"line {node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if isinstance(node.func, ast.Name):
                name = node.func.id
            if name in FORBIDDEN_CALLS or name == "__import__":
                found.append(f"line {node.lineno}: calls {name}()")
    return found


def test_proto_has_modules() -> None:
    names = {p.relative_to(PROTO).as_posix() for p in proto_modules()}
    assert {"events.py", "http1/exact.py", "h2/engine.py", "forwarding.py"} <= names


@pytest.mark.parametrize("path", proto_modules(), ids=lambda p: p.relative_to(PROTO).as_posix())
def test_proto_module_is_sans_io(path: Path) -> None:
    problems = violations(path.read_text(encoding="utf-8"))
    assert not problems, f"revproxy/proto/{path.name} must stay sans-I/O:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import socket as s",
        "from ssl import SSLContext",
        "import time",
        "from time import monotonic",
        "import random",
        "from random import Random",
        "import asyncio.streams",
        "import os\nos.urandom(4)",
        "def f():\n    import selectors",
        "__import__('socket')",
        "from datetime import datetime",
    ],
)
def test_the_checker_catches(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "import h11",
        "from revproxy.errors import ClientProtocolError",
        "from . import events",
        "import hashlib\nhashlib.sha256(b'')",
        "def timeout(deadline: float, now: float) -> float:\n    return deadline - now",
    ],
)
def test_the_checker_allows(source: str) -> None:
    assert not violations(source)
