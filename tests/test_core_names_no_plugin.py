"""The core never uses a first-party model, dataset, binner, analyzer or protocol name as a value.

Every string constant in ``src/depthsel`` (docstrings excepted) is compared
with the names the first-party plugins register. A core that picks, say, the
``"sid"`` binner or the ``"synthetic"`` dataset by name depends on a plugin
being installed; defaults belong in the plugins (or the caller).
"""

from __future__ import annotations

import ast
from pathlib import Path

import depthsel
from depthsel.registry import get_plugin_manager

CORE = Path(depthsel.__file__).parent
KINDS = ("models", "datasets", "binners", "analyzers", "protocols", "results")

#: (file relative to src/depthsel, name): core front doors that run a named analyzer. They
#: predate issue 13's split and are left to whoever settles where dissection lives; no new
#: entry may be added here.
FRONT_DOORS = {
    ("quick.py", "dissection"), ("quick.py", "correction"), ("quick.py", "ablation"),
    ("cli/analyze.py", "dissection"),
}


def first_party_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for kind in KINDS:
        for name, entry in get_plugin_manager().entries(kind).items():
            if entry.source.startswith("depthsel:"):
                names.setdefault(name, kind)
    return names


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def string_constants(source: str) -> list[tuple[int, str]]:
    """``(line, value)`` of every string constant that is not a docstring (comments are not tokens)."""
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs]


def test_the_scan_sees_values_but_not_docstrings_or_comments() -> None:
    source = '"""Module doc naming sid."""\n# a comment naming sid\ndef f(b="sid"):\n    """Doc naming sid."""\n    return {"name": b}\n'
    assert string_constants(source) == [(3, "sid"), (5, "name")]


def test_the_first_party_names_are_known() -> None:
    names = first_party_names()
    assert {"fastdepth", "synthetic", "sid", "quantile", "dissection", "hu2019"} <= set(names)


def test_no_core_module_uses_a_first_party_name_as_a_value() -> None:
    names = first_party_names()
    hits = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE).as_posix()
        for line, value in string_constants(path.read_text()):
            if value in names and (rel, value) not in FRONT_DOORS:
                hits.append(f"src/depthsel/{rel}:{line}: {value!r} ({names[value]})")
    assert hits == []
