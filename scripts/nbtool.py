"""Write a notebook from a list of cells (markdown strings start with '#md').

Used to author the committed notebooks: ``cells`` is a list of source strings; the one that starts
with '# parameters' gets the papermill ``parameters`` tag. Notebooks are written without outputs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat


REPO = Path(__file__).resolve().parents[1]


def write_notebook(path: str | Path, cells: list[str]) -> None:
    # NESYLIB_NOTEBOOK_DIR redirects the output (tests rebuild every notebook there and compare)
    out_root = os.environ.get("NESYLIB_NOTEBOOK_DIR")
    path = Path(out_root) / Path(path).name if out_root else REPO / path
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for src in cells:
        src = src.strip("\n")
        if src.startswith("#md"):
            nb.cells.append(nbformat.v4.new_markdown_cell(src[3:].lstrip("\n")))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if src.startswith("# parameters"):
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i:02d}"
    nbformat.write(nb, str(path))
    _check_parameters(path, cells)


def _check_parameters(path: Path, cells: list[str]) -> None:
    """papermill silently ignores parameter lines it cannot parse (e.g. '=' in a comment, or an annotation
    such as ``int | None`` that its pattern does not take): refuse them, and refuse a parameter without a
    type annotation (``name: type = default  # help``; ``--help-notebook`` and ``nesylib params`` show it)."""
    import papermill as pm

    src = next((c for c in cells if c.strip("\n").startswith("# parameters")), None)
    if src is None:
        raise SystemExit(f"{path}: no parameters cell")
    names = {line.split("=")[0].split(":")[0].strip() for line in src.splitlines()
             if "=" in line and not line.startswith("#")}
    parsed = pm.inspect_notebook(str(path))
    if names != set(parsed):
        raise SystemExit(f"{path}: papermill cannot parse parameter(s) {sorted(names - set(parsed))}")
    untyped = [name for name, p in parsed.items() if p["inferred_type_name"] == "None"]
    if untyped:
        raise SystemExit(f"{path}: parameter(s) {untyped} have no type annotation (write `name: type = default`)")


if __name__ == "__main__":
    sys.exit("import write_notebook from this module")
