"""Build the committed notebooks from their sources, ``notebooks/<name>.py`` in jupytext's percent format.

    .venv/bin/python scripts/nbtool.py            # write each .py's parameters cell, rebuild every .ipynb
    .venv/bin/python scripts/nbtool.py --check    # exit 1 naming each notebook that differs from its source

The ``.py`` file is the source a linter, a type checker and a diff read: cells start at ``# %%`` lines,
``# %% [markdown]`` cells hold markdown as ``# ``-prefixed comment lines, and the cell tagged
``parameters`` (``# %% tags=["parameters"]``) is papermill's parameters cell. jupytext reads the same
files (``make lab`` pairs them, notebooks/jupytext.toml). The ``.ipynb`` is written without outputs, with
fixed cell ids and metadata, so the same source always gives the same bytes (the runner's cache keys
hash the notebook).

The parameters cell is not edited by hand: ``nesylib/pipeline/param_model.py`` declares every notebook's parameters
(shared sections written once) and this script writes the cell from it; ``--check`` also fails when a
``.py`` source's parameters cell differs from the model.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
_HEADER = re.compile(r"^# %%(?P<rest>.*)$")


def read_percent(path: Path) -> list[tuple[str, str, list[str]]]:
    """(cell type, source, tags) per cell of a percent-format script."""
    cells: list[tuple[str, str, list[str]]] = []
    kind, tags, lines = None, [], []

    def close():
        if kind is None:
            if any(line.strip() for line in lines):
                raise SystemExit(f"{path}: text before the first '# %%' cell marker")
            return
        text = "\n".join(lines).rstrip("\n")  # leading blank lines stay, as jupytext keeps them
        if kind == "markdown":
            body = []
            for n, line in enumerate(text.split("\n")):
                if line != "#" and not line.startswith("# "):
                    raise SystemExit(f"{path}: markdown cell {len(cells)}: line {n + 1} is not a '# ' comment: {line!r}")
                body.append(line[2:])
            text = "\n".join(body)
        cells.append((kind, text, tags))

    for line in path.read_text(encoding="utf-8").split("\n"):
        m = _HEADER.match(line)
        if m is None:
            lines.append(line)
            continue
        close()
        rest = m.group("rest").strip()
        kind = "markdown" if rest.startswith("[markdown]") else "code"
        tags = re.findall(r'"([^"]+)"', rest.split("tags=", 1)[1]) if "tags=" in rest else []
        lines = []
    close()
    return cells


_PARAMS_HEADER = '# %% tags=["parameters"]'


def with_model_parameters(source: Path) -> str:
    """The text of ``source`` with its parameters cell written from ``nesylib.pipeline.param_model``."""
    from nesylib.pipeline.param_model import NOTEBOOKS, parameters_cell

    if source.stem not in NOTEBOOKS:
        raise SystemExit(f"{source}: nesylib/pipeline/param_model.py declares no parameters for {source.stem!r}")
    lines = source.read_text(encoding="utf-8").split("\n")
    if lines.count(_PARAMS_HEADER) != 1:
        raise SystemExit(f"{source}: needs exactly one {_PARAMS_HEADER!r} line")
    start = lines.index(_PARAMS_HEADER) + 1
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or _HEADER.match(lines[i]))
    return "\n".join(lines[:start] + parameters_cell(source.stem).split("\n") + [""] + lines[end:])


def build(source: Path, out_dir: Path | None = None) -> Path:
    """Write ``<out_dir or notebooks>/<source stem>.ipynb`` from ``source``; refuse a bad parameters cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text, tags in read_percent(source):
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i:02d}"
    target = (out_dir or NOTEBOOKS) / f"{source.stem}.ipynb"
    nbformat.write(nb, str(target))
    _check_parameters(target, nb)
    return target


def _check_parameters(path: Path, nb) -> None:
    """papermill silently ignores parameter lines it cannot parse (e.g. '=' in a comment, or an annotation
    such as ``int | None`` that its pattern does not take): refuse them, and refuse a parameter without a
    type annotation (``name: type = default  # help``; ``--help-notebook`` and ``nesylib params`` show it)."""
    import papermill as pm

    src = [c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(src) != 1:
        raise SystemExit(f"{path}: needs exactly one cell tagged parameters, found {len(src)}")
    names = {line.split("=")[0].split(":")[0].strip() for line in src[0].splitlines()
             if "=" in line and not line.startswith("#")}
    parsed = pm.inspect_notebook(str(path))
    if names != set(parsed):
        raise SystemExit(f"{path}: papermill cannot parse parameter(s) {sorted(names - set(parsed))}")
    untyped = [name for name, p in parsed.items() if p["inferred_type_name"] == "None"]
    if untyped:
        raise SystemExit(f"{path}: parameter(s) {untyped} have no type annotation (write `name: type = default`)")


def sources() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", type=Path, help="percent scripts (default: every notebooks/NN_*.py)")
    ap.add_argument("--check", action="store_true", help="build into a temporary folder and compare, write nothing")
    args = ap.parse_args(argv)
    todo = args.sources or sources()
    if not args.check:
        for s in todo:
            text = with_model_parameters(s)
            if text != s.read_text(encoding="utf-8"):
                s.write_text(text, encoding="utf-8")
                print(f"{s.relative_to(REPO)}: parameters cell written from nesylib/pipeline/param_model.py")
            print(build(s).relative_to(REPO))
        return 0
    import tempfile

    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in todo:
            if with_model_parameters(s) != s.read_text(encoding="utf-8"):
                stale.append(f"{s.name} (its parameters cell differs from nesylib/pipeline/param_model.py)")
            built = build(s, Path(tmp))
            committed = s.with_suffix(".ipynb")
            if not committed.is_file() or committed.read_bytes() != built.read_bytes():
                stale.append(committed.name)
    if stale:
        print(f"differ from their .py source (rebuild: .venv/bin/python scripts/nbtool.py): {', '.join(stale)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
