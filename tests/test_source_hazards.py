"""Source rules a compiler (mypyc) relies on, checked on the whole package.

Within one function, an ``except ... as NAME`` name is bound to one exception type: a name
bound by clauses of different types gets one static type from the first clause and fails at
run time in the other when compiled (issue 18, item 5).
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
    assert rebound_exception_names(package) == [
        "pkg/m.py:1 f: exc <- ['OSError', 'ValueError']"
    ]
