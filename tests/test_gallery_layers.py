"""The gallery package has no import cycle: its modules form layers (records, models, db → faces, embeddings, files →
hits → vector stores → check, opening → Gallery), read from the source with ``ast``, function-local imports
counted (a local import that only hides a cycle is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (its ``__init__`` under the package's own name) → its file."""
    found = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports, anywhere in its file. ``from P import n`` counts P
    (its ``__init__`` runs, and ``n`` may be defined there) and P.n when that is a module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {target for target in found if target in known and target != name}


def cycles(root: Path, package: str) -> list[list[str]]:
    """The strongly connected components of more than one module in ``package``'s import graph (Tarjan)."""
    known = modules(root, package)
    graph = {name: sorted(imports(name, path, known)) for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_gallery_package_has_no_import_cycle():
    assert cycles(REPO, "facesearch.gallery") == []


def test_a_cycle_hidden_in_a_function_or_behind_the_package_init_is_found(tmp_path):
    """The check itself: a function-local import closing a cycle, and ``from pkg import sub`` reaching a package
    whose ``__init__`` imports the importer, are both cycles."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg.sub import b\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .c import C\n    return C\n")
    (pkg / "sub" / "c.py").write_text("import pkg.sub.b\nC = 2\n")
    (pkg / "d.py").write_text("from pkg import a\n")
    assert cycles(tmp_path, "pkg") == [["pkg.sub.b", "pkg.sub.c"]]
    (pkg / "a.py").write_text("from pkg import d\nA = 1\n")  # d imports from pkg, whose __init__ imports a
    assert sorted(cycles(tmp_path, "pkg")) == [["pkg", "pkg.a", "pkg.d"], ["pkg.sub.b", "pkg.sub.c"]]
