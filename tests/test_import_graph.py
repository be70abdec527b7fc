"""The import graph of ``src/depthsel`` and ``plugins/depthsel_plugins`` has no cycle.

Every ``import`` counts: at module level, inside functions (a lazy import only
hides a cycle until the function runs) and under ``if TYPE_CHECKING:`` (a
cycle in the types is one in the design). Relative imports are resolved;
``from pkg import name`` is an edge to ``pkg.name`` when that is a module and
to ``pkg`` otherwise. Importing a submodule also runs its parent packages'
``__init__``, but that is not drawn: every submodule would close a loop with
its package, which says nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "src" / "depthsel", ROOT / "plugins" / "depthsel_plugins")


def module_files(packages: tuple[Path, ...] = PACKAGES) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out: dict[str, tuple[Path, bool]] = {}
    for pkg in packages:
        for path in sorted(pkg.rglob("*.py")):
            parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _imported(node: ast.AST, here: list[str], modules: dict[str, tuple[Path, bool]]) -> list[str]:
    """The modules of ``modules`` that one import statement loads (``here``: the importer's package)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [n for n in names if n in modules]


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere in its file."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {t for node in ast.walk(tree) for t in _imported(node, here, modules) if t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_src_and_plugins_import_graph_is_acyclic() -> None:
    graph = import_graph(module_files())
    assert "depthsel.results" in graph and "depthsel_plugins.analyses.dissection" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_graph_sees_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    # The checker itself must be able to fail: each of these tiny packages has a cycle
    # that a module-level-only or absolute-only scan would miss.
    cases = {
        "lazy": {"a.py": "def f():\n    from . import b\n", "b.py": "from .a import f\n"},
        "typing": {"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
                   "b.py": "from .a import A\n"},
        "package": {"a.py": "from . import VERSION\n", "sub/__init__.py": "", "sub/c.py": "",
                    "__init__.py_extra": "from .a import x\n"},
        "parent": {"sub/__init__.py": "from ..a import x\n", "a.py": "import pkg.sub\n"},
    }
    for label, files in cases.items():
        pkg = tmp_path / label / "pkg"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(files.pop("__init__.py_extra", ""))
        for rel, text in files.items():
            (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
            (pkg / rel).write_text(text)
        cycle = find_cycle(import_graph(module_files((pkg,))))
        assert cycle is not None and cycle[0] == cycle[-1], label
    acyclic = tmp_path / "fine" / "pkg"
    (acyclic / "sub").mkdir(parents=True)
    (acyclic / "__init__.py").write_text("")
    (acyclic / "a.py").write_text("from .sub import c\nimport pkg.sub.c\n")
    (acyclic / "sub" / "__init__.py").write_text("")
    (acyclic / "sub" / "c.py").write_text("from ..b import y\n")
    (acyclic / "b.py").write_text("def g():\n    import os\n")
    assert find_cycle(import_graph(module_files((acyclic,)))) is None
