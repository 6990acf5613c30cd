"""Layers only point down: every module of ``facesearch`` imports alone, the import graph has no cycle, and no
module imports a layer above its own.

The layers, lowest first. A module may import modules of its own group and of the groups in lower layers, never
a group beside it (same layer) or above it::

    0  errors (the one error hierarchy: every layer raises its errors)
    1  facesearch (the package: lazy names only), runtime (device, bf16, channels_last, threads, torchrun)
    2  data (photos, detection, prepare, manifest, the uint8 datasets)
    3  models (VGG16)
    4  checkpoint, teacher
    5  training, embed, visualize
    6  gallery
    7  search
    8  cluster, explain
    9  evaluation
   10  serve
   11  cli
   12  __main__ (``python -m facesearch``)

The graph is read from the source with ``ast``, function-local imports included: an import inside a function
keeps start-up fast, it does not make a cycle acceptable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facesearch"

LAYERS = (
    ("facesearch.errors",),
    ("facesearch", "facesearch.runtime"),
    ("facesearch.data",),
    ("facesearch.models",),
    ("facesearch.checkpoint", "facesearch.teacher"),
    ("facesearch.training", "facesearch.embed", "facesearch.visualize"),
    ("facesearch.gallery",),
    ("facesearch.search",),
    ("facesearch.cluster", "facesearch.explain"),
    ("facesearch.evaluation",),
    ("facesearch.serve",),
    ("facesearch.cli",),
    ("facesearch.__main__",),
)

# Imports the layers would allow but the design does not: the datasets are training data, not the checkpoints'.
FORBIDDEN = (("facesearch.checkpoint", "facesearch.data.datasets"),)

def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict) -> str | None:
    """The module ``name`` is, or lives in (``a.b.f`` for a function f of module a.b is a.b)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement (function-local ones too);
    ``from P import n`` counts P (its ``__init__`` runs first) and P.n when that is a module."""
    graph = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[:len(here) - node.level + 1]
                    base = ".".join(here + ([node.module] if node.module else []))
                targets.add(base)  # ``from P import n``: P's __init__ runs first, whatever n is
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for t in targets if (m := _resolve(t, known)) is not None and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest path through the graph from the component's first module back to itself."""
    start, inside = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph.get(path[-1], ())):
            if w == start:
                return path + [start]
            if w in inside and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return component


def group_of(module: str) -> tuple[int, str] | None:
    """(layer, group) of a module: the longest group of ``LAYERS`` it is or lies in (the root package only as
    itself); None when the table does not place it."""
    best = None
    for layer, groups in enumerate(LAYERS):
        for group in groups:
            inside = module == group or (group != "facesearch" and module.startswith(group + "."))
            if inside and (best is None or len(group) > len(best[1])):
                best = (layer, group)
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a group beside or above the importer's own, and each module the table does not place."""
    problems = [f"{m}: in no layer of LAYERS (add it there)" for m in sorted(graph) if group_of(m) is None]
    for a in sorted(graph):
        for b in sorted(graph[a]):
            ga, gb = group_of(a), group_of(b)
            if ga is None or gb is None or ga[1] == gb[1]:
                continue
            if gb[0] >= ga[0]:
                problems.append(f"{a} (layer {ga[0]}, {ga[1]}) imports {b} (layer {gb[0]}, {gb[1]})")
    return problems


def test_every_module_imports_alone():
    """Each module in a fresh state of the package (its modules dropped from sys.modules before each one; the
    third-party libraries stay loaded, which keeps this one subprocess fast)."""
    names = sorted(m for m in modules() if m != "facesearch.__main__")  # __main__ runs the CLI on import
    script = textwrap.dedent("""
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "facesearch" or m.startswith("facesearch.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except BaseException:
                failed.append(name + ":\\n" + traceback.format_exc(limit=-3))
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, f"modules that do not import alone:\n{done.stdout}{done.stderr[-3000:]}"
    assert len(names) > 50


def test_the_import_graph_has_no_cycle():
    graph = import_graph(modules())
    found = cycles(graph)
    assert not found, "import cycles (each ties all the modules listed):\n" + "\n".join(
        f"{', '.join(c)}: e.g. {' -> '.join(one_cycle(graph, c))}" for c in found)


def test_layers_only_point_down():
    graph = import_graph(modules())
    problems = upward_imports(graph)
    problems += [f"{a} imports {b}" for a, b in FORBIDDEN if b in graph.get(a, ())]
    assert not problems, "imports against the layer order (see this file's docstring):\n" + "\n".join(problems)


def test_the_graph_sees_imports_inside_functions():
    """The checks above rest on the graph: it holds top-level, function-local, relative and ``from pkg import
    module`` imports, and the checks report a cycle and an upward import."""
    graph = import_graph(modules())
    assert "facesearch.runtime" in graph["facesearch.training.run"]  # top level
    assert "facesearch.training" in graph["facesearch.cli.train"]  # inside a function (start-up)
    assert "facesearch.gallery.db" in graph["facesearch.gallery.store"]  # from facesearch.gallery import db
    fake = {"facesearch.data.a": {"facesearch.checkpoint"}, "facesearch.checkpoint": {"facesearch.data.a"}}
    assert cycles(fake) == [["facesearch.checkpoint", "facesearch.data.a"]]
    assert one_cycle(fake, cycles(fake)[0]) == ["facesearch.checkpoint", "facesearch.data.a", "facesearch.checkpoint"]
    assert upward_imports(fake) == ["facesearch.data.a (layer 2, facesearch.data) imports facesearch.checkpoint "
                                    "(layer 4, facesearch.checkpoint)"]
    assert upward_imports({"facesearch.training.x": {"facesearch.visualize.curves"}})  # beside: refused too
    assert upward_imports({"facesearch.nowhere": set()}) == ["facesearch.nowhere: in no layer of LAYERS (add it there)"]


def test_a_cycle_hidden_in_a_function_or_behind_a_package_init_is_found(tmp_path):
    """The graph on a package written for it: a function-local import closing a cycle, and ``from pkg import sub``
    reaching a package whose ``__init__`` imports the importer, are both cycles."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg.sub import b\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .c import C\n    return C\n")
    (pkg / "sub" / "c.py").write_text("import pkg.sub.b\nC = 2\n")
    (pkg / "d.py").write_text("from pkg import a\n")
    assert cycles(import_graph(modules(pkg))) == [["pkg.sub.b", "pkg.sub.c"]]
    (pkg / "a.py").write_text("from pkg import d\nA = 1\n")  # d imports from pkg, whose __init__ imports a
    assert sorted(cycles(import_graph(modules(pkg)))) == [["pkg", "pkg.a", "pkg.d"], ["pkg.sub.b", "pkg.sub.c"]]


def test_every_package_ships_in_the_wheel():
    """pyproject.toml lists packages one by one: a new package (e.g. ``training``) missing there would be left
    out of the wheel, and an installed facesearch could not import it."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, path in modules().items() if path.name == "__init__.py"}
    assert packages - listed == set()
