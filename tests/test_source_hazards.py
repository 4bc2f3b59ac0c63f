"""Source rules a compiler (mypyc) relies on, checked on the whole package.

Within one function, an ``except ... as NAME`` name is bound to one exception type: a name
bound by clauses of different types gets one static type from the first clause and fails at
run time in the other when compiled (issue 18, item 5). And three constructs mypyc refuses to
compile (measured on the hot modules, docs/performance.md): ``continue`` or ``break`` inside a
``try`` that has a ``finally``, a chained assignment in a class body (``__slots__ = _names =
...``), and a module-level name bound both by an import and by an assignment (the ``try:
from m import f`` / ``except ImportError: f = None`` idiom).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "revproxy"


def rebound_exception_names(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name:
                    kind = ast.unparse(node.type) if node.type is not None else "*"
                    types.setdefault(node.name, set()).add(kind)
            for name, kinds in types.items():
                if len(kinds) > 1:
                    rel = path.relative_to(package.parent)
                    found.append(f"{rel}:{fn.lineno} {fn.name}: {name} <- {sorted(kinds)}")
    return found


def _loop_exits(nodes: list[ast.stmt]) -> bool:
    """Whether ``nodes`` hold a ``continue``/``break`` of a loop around them (not one of a
    loop or function inside them)."""
    todo: list[ast.AST] = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Continue | ast.Break):
            return True
        if isinstance(
            node, ast.For | ast.AsyncFor | ast.While | ast.FunctionDef | ast.AsyncFunctionDef
        ):
            todo.extend(
                node.orelse if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else []
            )
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False


def uncompilable_constructs(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(package.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and node.finalbody:
                inside: list[ast.stmt] = [*node.body, *node.orelse]
                for handler in node.handlers:
                    inside.extend(handler.body)
                if _loop_exits(inside):
                    found.append(f"{rel}:{node.lineno} continue/break in try/finally")
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and len(stmt.targets) > 1:
                        found.append(f"{rel}:{stmt.lineno} chained assignment in class body")
        imported: dict[str, int] = {}
        assigned: dict[str, int] = {}
        todo: list[ast.stmt] = list(tree.body)
        while todo:  # module level, through if/try blocks
            stmt = todo.pop()
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                for alias in stmt.names:
                    imported[(alias.asname or alias.name).split(".")[0]] = stmt.lineno
            elif isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        assigned[target.id] = stmt.lineno
            elif isinstance(stmt, ast.If | ast.Try):
                todo.extend(stmt.body)
                todo.extend(stmt.orelse)
                if isinstance(stmt, ast.Try):
                    todo.extend(stmt.finalbody)
                    for handler in stmt.handlers:
                        todo.extend(handler.body)
        for name in sorted(imported.keys() & assigned.keys()):
            found.append(f"{rel}:{assigned[name]} {name} bound by an import and an assignment")
    return found


def test_no_construct_the_compiler_refuses() -> None:
    assert uncompilable_constructs() == []


def test_the_check_sees_each_construct(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        "try:\n    from fcntl import ioctl\nexcept ImportError:\n    ioctl = None\n"
        "class C:\n    __slots__ = _names = ('a',)\n"
        "def f():\n"
        "    while True:\n        try:\n            continue\n        finally:\n            pass\n"
        "def g():\n"
        "    try:\n        for x in ():\n            continue\n    finally:\n        pass\n"
    )
    assert sorted(uncompilable_constructs(package)) == [
        "pkg/m.py:4 ioctl bound by an import and an assignment",
        "pkg/m.py:6 chained assignment in class body",
        "pkg/m.py:9 continue/break in try/finally",
    ]


def test_an_except_name_has_one_type_per_function() -> None:
    assert rebound_exception_names() == []


def test_the_check_sees_a_rebound_name(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        "def f():\n"
        "    try:\n        pass\n    except OSError as exc:\n        pass\n"
        "    try:\n        pass\n    except ValueError as exc:\n        pass\n"
        "def g():\n"
        "    try:\n        pass\n    except OSError as exc:\n        pass\n"
        "    try:\n        pass\n    except OSError as exc:\n        pass\n"
    )
    assert rebound_exception_names(package) == ["pkg/m.py:1 f: exc <- ['OSError', 'ValueError']"]
