"""The package's import structure: no module imports the package root, and the graph of
imports between modules (function-level imports included, ``TYPE_CHECKING`` blocks left
out) has no cycle, so no import needs to be deferred to dodge one; every module imports
on its own, first, in a fresh interpreter; the root exports exactly ``__all__``."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """module → the package's modules it imports (each module also imports its parent packages
    but the root), and every import of the root itself as "module:line"."""
    modules = _modules(package)
    root = package.name
    graph: dict[str, set[str]] = {}
    root_imports: list[str] = []
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()

        def visit(node: ast.AST) -> None:
            if _is_type_checking(node):
                return
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t == root:
                    root_imports.append(f"{name}:{node.lineno}")  # type: ignore[attr-defined]
                elif t in modules:
                    deps.add(t)
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text()))
        parts = name.split(".")
        ancestors = {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
        for d in list(deps):  # importing a.b.c runs a.b first (unless a.b is being imported already)
            parts = d.split(".")
            deps.update(".".join(parts[:k]) for k in range(2, len(parts)))
        deps -= ancestors
        graph[name] = deps
    return graph, root_imports


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := dfs(v)) is not None:
                return found
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := dfs(m)) is not None:
            return found
    return None


def test_no_module_imports_the_package_root() -> None:
    _, root_imports = import_graph(ROOT / "modnorm")
    assert root_imports == [], f"library modules import the package root: {root_imports}"


def test_the_import_graph_has_no_cycle() -> None:
    graph, _ = import_graph(ROOT / "modnorm")
    assert "modnorm.resolver" in graph and "modnorm.optim.factory" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_find_a_cycle_and_a_root_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b  # deferred: still an edge\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\nfrom .. import a as _a\nimport pkg\n"
    )
    graph, root_imports = import_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert root_imports == ["pkg.sub.b:5"]


def test_the_root_exports_its_listed_names_and_no_others() -> None:
    import inspect

    import modnorm

    public = {n for n in dir(modnorm) if not n.startswith("_") and not inspect.ismodule(getattr(modnorm, n))}
    assert public == set(modnorm.__all__) and len(set(modnorm.__all__)) == len(modnorm.__all__)
    assert len(modnorm.__all__) <= 30  # the rest is imported from its submodule (modnorm.optim, modnorm.rules, …)


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    names = [m for m in _modules(ROOT / "modnorm") if m != "modnorm.__main__"]
    script = textwrap.dedent(
        f"""
        import importlib, sys, torch
        failed = []
        for name in {names!r}:
            for m in [m for m in sys.modules if m == "modnorm" or m.startswith("modnorm.")]:
                del sys.modules[m]
            try:
                importlib.import_module(name)
            except Exception as e:
                failed.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
