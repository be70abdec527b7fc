"""Modules of at most 400 lines and functions of at most 60, as docs/plugins.md section 7 states the rule.

A function's length is its body without the docstring: NumPy docstrings and typer's
``Annotated`` signatures say what a function does, and the rule is about how much it
does. The measurement is checked on a small source first, so the test cannot pass
because the walker found nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_import_graph import PACKAGES

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def function_lengths(source: str) -> dict[str, int]:
    """``qualified name -> body lines`` (docstring left out) of every function in ``source``."""
    out: dict[str, int] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                if (len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                        and isinstance(body[0].value.value, str)):
                    body = body[1:]
                end = child.end_lineno or child.lineno
                out[prefix + child.name] = end - body[0].lineno + 1
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return out


def test_the_measurement_counts_bodies_without_docstrings() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    src = f'class A:\n    def f(self):\n        """Doc.\n\n        More.\n        """\n        return 1\n\n' \
          f'def g():\n{body}\n    def inner():\n        pass\n'
    assert function_lengths(src) == {"A.f": 1, "g": 7, "g.inner": 1}


def test_no_module_over_400_lines_and_no_function_over_60() -> None:
    files = [p for pkg in PACKAGES for p in sorted(pkg.rglob("*.py"))]
    assert len(files) > 50  # the packages were found
    long_modules, long_functions = [], []
    for path in files:
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.name}: {len(text.splitlines())}")
        long_functions += [f"{path.name}:{name}: {n}" for name, n in function_lengths(text).items()
                           if n > MAX_FUNCTION_LINES]
    assert not long_modules, long_modules
    assert not long_functions, long_functions
