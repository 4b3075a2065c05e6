"""The package's import graph has no cycles, counting imports inside functions too: two modules
that import each other (even lazily) are one module split in the wrong place."""
import ast
import importlib.util  # noqa: F401 (loads importlib.util for find_spec below)
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nesylib"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & known


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    mods = _modules()
    # a package's __init__ re-exporting its submodules is not a cycle of code
    graph = {m: {d for d in _imports(p, set(mods)) if d != m and not m.startswith(d + ".")}
             for m, p in mods.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _missing_nesylib_names(source: str, name: str) -> list[str]:
    """'file:line: module.name' for each name that ``source`` imports from nesylib, or reads as an attribute of
    an imported nesylib module (``runs.write_json``), which the package does not have."""
    import importlib

    tree = ast.parse(source, name)  # also: the source is valid Python
    modules, missing = {}, []  # local name -> imported nesylib module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nesylib":
            mod = importlib.import_module(node.module)
            for a in node.names:
                if hasattr(mod, "__path__") and importlib.util.find_spec(f"{node.module}.{a.name}") is not None:
                    modules[a.asname or a.name] = importlib.import_module(f"{node.module}.{a.name}")
                elif not hasattr(mod, a.name):
                    missing.append(f"{name}:{node.lineno}: {node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "nesylib" and a.asname:
                    modules[a.asname] = importlib.import_module(a.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            mod = modules[node.value.id]
            if not hasattr(mod, node.attr):
                missing.append(f"{name}:{node.lineno}: {mod.__name__}.{node.attr}")
    return missing


def test_the_notebooks_use_what_the_package_has():
    """The notebooks' sources (notebooks/*.py) are code the import graph sees: every nesylib name they import
    or read exists, so moving or renaming a function fails here rather than in a notebook kernel."""
    missing = []
    for src in sorted((PKG.parent / "notebooks").glob("[0-9][0-9]_*.py")):
        missing += _missing_nesylib_names(src.read_text(), src.name)
    assert not missing, missing
    assert _missing_nesylib_names("from nesylib.pipeline import runs\nruns.write_json\nruns.no_such_helper\n", "x.py") \
        == ["x.py:3: nesylib.pipeline.runs.no_such_helper"]
    assert _missing_nesylib_names("from nesylib.training.engine import no_such_name\n", "y.py") == \
        ["y.py:1: nesylib.training.engine.no_such_name"]
