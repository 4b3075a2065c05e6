"""Describe a notebook's parameters and apply ``--set`` overrides to a preset, checked before anything runs.

The project's notebooks declare their parameters in ``nesylib.pipeline.param_model`` (one model, composed from
shared sections, that also writes their papermill ``parameters`` cells). A notebook of one's own, in
another folder, is read through papermill's parser: ``name: type = default  # help`` lines, typed by the
annotation (``int``, ``Optional[int]``, ``Union[str, dict]``; papermill's pattern takes no ``int | None``),
else by the default. ``nesylib params NOTEBOOK`` lists them (``describe_parameters``); ``nesylib run --set
KEY=VALUE`` changes a preset's values, each checked against the parameter it sets (``apply_overrides``).
"""
from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import yaml

from nesylib.errors import ConfigError
from nesylib.pipeline.param_model import NONE, NOTEBOOKS, Param, allowed, declared, literal
from nesylib.pipeline.runner import _declared_params, list_notebooks
from nesylib.pipeline.runs import NOTEBOOKS_DIR, REPO_ROOT, is_project_folder, load_preset, notebook_params

_TYPE_NAMES = {t.__name__: t for t in (int, float, str, bool, list, dict, tuple)}
_RUNNER_SET = ("preset", "run_root")  # the runner passes these itself
_ANY = (object,)


def annotation_types(text: str | None) -> tuple | None:
    """The types a parameter annotation allows: ``int`` -> (int,), ``Optional[int]`` -> (int, NoneType),
    ``Union[int, dict, None]``, ``list[str]`` -> (list,); None for no annotation (papermill's ``"None"``)
    or one that is not of these simple forms (then the default's type stands in)."""
    if not text or text.strip() in ("None", "Unknown type"):
        return None
    try:
        types = _annotation_types(ast.parse(text.strip().strip("'\""), mode="eval").body)
    except SyntaxError:
        return None
    return tuple(dict.fromkeys(types)) if types else None


def _annotation_types(node: ast.expr) -> list | None:
    if isinstance(node, ast.Constant) and node.value is None:
        return [NONE]
    if isinstance(node, ast.Name):
        return [_TYPE_NAMES[node.id]] if node.id in _TYPE_NAMES else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # int | None (papermill cannot parse it)
        left, right = _annotation_types(node.left), _annotation_types(node.right)
        return left + right if left and right else None
    if isinstance(node, ast.Subscript):
        head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head in ("list", "dict", "tuple", "List", "Dict", "Tuple"):  # list[str]: a list
            return [_TYPE_NAMES[head.lower()]]
        inner = [_annotation_types(a) for a in args]
        if head not in ("Optional", "Union") or not all(inner) or (head == "Optional" and len(args) != 1):
            return None
        return [t for ts in inner for t in ts] + ([NONE] if head == "Optional" else [])
    return None


def notebook_path(name: str, notebooks_dir: Path = NOTEBOOKS_DIR) -> Path:
    """The notebook ``name`` (``00_data`` or ``00_data.ipynb``); an unknown name is an error listing the known."""
    nbs = {p.stem: p for p in list_notebooks(notebooks_dir)}
    stem = name[:-len(".ipynb")] if name.endswith(".ipynb") else name
    if stem not in nbs:
        raise ConfigError(f"no notebook {name!r}; known notebooks: {', '.join(nbs)}")
    return nbs[stem]


def notebook_parameters(nb: Path) -> dict[str, Param]:
    """The notebook's parameters in cell order: the model's for a project notebook, else papermill's
    reading of its ``parameters`` cell (a default that is not a literal types nothing)."""
    if nb.stem in NOTEBOOKS and is_project_folder(nb.parent):
        return declared(nb.stem)
    import papermill as pm

    out = {}
    for name, p in pm.inspect_notebook(str(nb)).items():
        try:
            default = ast.literal_eval(p["default"])
            types = _ANY if default is None else (type(default),)  # a None default types nothing
        except (ValueError, SyntaxError):
            default, types = p["default"], _ANY
        types = annotation_types(p.get("inferred_type_name")) or types
        out[name] = Param(name, types, default, p.get("help") or "")
    return out


def describe_parameters(name: str, preset_name: str | None = None, notebooks_dir: Path = NOTEBOOKS_DIR) -> str:
    """A table of the notebook's parameters: type, default, help, and with ``preset_name`` the preset's value."""
    nb = notebook_path(name, notebooks_dir)
    params = notebook_parameters(nb)
    head = ["parameter", "type", "default"]
    given = {}
    if preset_name:
        preset = load_preset(preset_name)
        given = _declared_params(nb, preset, nb.stem)
        head.append(f"preset {preset['name']}")
    rows = [head + ["help"]]
    for p in params.values():
        row = [p.name, p.type_text(), literal(p.default)]
        if preset_name:
            row.append(json.dumps(given[p.name]) if p.name in given else
                       "(the run folder)" if p.name == "run_root" else "(default)")
        rows.append(row + [p.help])
    widths = [max([len(r[i]) for r in rows if len(r[i]) <= 28] or [0]) for i in range(len(head))]  # long ones overflow
    where = nb.relative_to(REPO_ROOT) if nb.is_relative_to(REPO_ROOT) else nb
    lines = [f"{nb.stem} ({where}): {len(params)} parameters"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths + [0])).rstrip() for r in rows]
    return "\n".join(lines)


class _OverrideLoader(yaml.SafeLoader):
    """YAML as presets read it, except that 5e-4 is a float (YAML 1.1 wants 5.0e-4)."""


_OverrideLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                      re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                      list("-+0123456789"))


def parse_override(arg: str) -> tuple[list[str], object]:
    """``SECTION.PARAM[.KEY...]=VALUE`` -> (path, value); the value is YAML (``[std,kard]`` a list, ``1`` an int)."""
    key, sep, text = arg.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"--set {arg!r}: expected SECTION.PARAMETER=VALUE, where SECTION is 'common' or a "
                          f"notebook, e.g. --set common.seed=1 or --set 05_baselines.methods='[std,kard]'")
    try:
        return path, yaml.load(text, Loader=_OverrideLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {arg!r}: the value is not valid YAML ({e})") from None


def _with_path(base, keys: list[str], value, arg: str):
    """``base`` (a parameter's current value) with ``value`` at the dotted ``keys`` inside it."""
    if not keys:
        return value
    base = {} if base is None else copy.deepcopy(base)
    if not isinstance(base, dict):
        raise ConfigError(f"--set {arg!r}: {keys[0]!r} cannot be set inside {base!r}, which is not a dict")
    inner = base.get(keys[0])
    if len(keys) == 1 and inner is not None and not allowed(value, (float,) if isinstance(inner, float) else (type(inner),)):
        raise ConfigError(f"--set {arg!r}: expects {type(inner).__name__} like the current value {inner!r}, "
                          f"got {value!r}")
    base[keys[0]] = _with_path(inner, keys[1:], value, arg)
    return base


def apply_overrides(preset: dict, sets: list[str], notebooks_dir: Path = NOTEBOOKS_DIR) -> tuple[dict, list[str]]:
    """The preset with each ``--set`` applied in order, and a line per override for the log.

    ``common.PARAM=V`` sets a common value (a parameter some notebook declares), ``NB.PARAM=V`` one
    notebook's; ``NB.PARAM.KEY=V`` sets a key inside a dict parameter (``train.lr``), starting from the
    value the preset gives that notebook. Each value is checked before anything runs, by the
    parameter's rule (``Param.problem``: its types or choices; ``train`` dicts against TrainConfig).
    Errors name the ``--set`` argument and what was expected.
    """
    preset = copy.deepcopy(preset)
    nbs = {p.stem: p for p in list_notebooks(notebooks_dir)}
    params_by_nb: dict[str, dict[str, Param]] = {}

    def params_of(stem):
        if stem not in params_by_nb:
            params_by_nb[stem] = notebook_parameters(nbs[stem])
        return params_by_nb[stem]

    lines = []
    for arg in sets:
        (section, name, *keys), value = parse_override(arg)
        if name in _RUNNER_SET:
            raise ConfigError(f"--set {arg!r}: {name!r} is set by the runner; use --{name.replace('_', '-')}")
        if section == "common":
            users = [s for s in nbs if name in params_of(s)]
            if not users:
                raise ConfigError(f"--set {arg!r}: no notebook declares a parameter {name!r} "
                                  f"(`python -m nesylib params NOTEBOOK` lists each notebook's)")
            target, base = preset["common"], preset["common"].get(name)
        elif section in nbs:
            users = [section]
            if name not in params_of(section):
                raise ConfigError(f"--set {arg!r}: notebook {section} has no parameter {name!r}; it declares "
                                  f"{', '.join(params_of(section))}")
            if preset["notebooks"].get(section) is None:
                preset["notebooks"][section] = {}
            target = preset["notebooks"][section]
            base = notebook_params(preset, section).get(name, params_of(section)[name].default)
        else:
            raise ConfigError(f"--set {arg!r}: {section!r} is neither 'common' nor a notebook; known: "
                              f"common, {', '.join(nbs)}")
        new = _with_path(base, keys, value, arg)
        for stem in users:
            problem = params_of(stem)[name].problem(new)
            if problem:
                raise ConfigError(f"--set {arg!r}: parameter {name!r} of {stem} {problem}")
        target[name] = new
        shadowed = [s for s in users if section == "common" and name in (preset["notebooks"].get(s) or {})]
        lines.append(f"--set {'.'.join([section, name, *keys])} = {json.dumps(value)}"
                     + (f" (not for {', '.join(shadowed)}, whose preset section sets {name})" if shadowed else ""))
    return preset, lines


def run_with_overrides(preset_name: str, sets: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
                       log=print, **kw) -> list[dict]:
    """``runs.run_preset`` on the preset with the ``--set`` arguments applied, each checked before
    any notebook runs and printed."""
    from nesylib.pipeline.runner import run_preset

    preset = load_preset(preset_name)
    if sets:
        preset, lines = apply_overrides(preset, sets, notebooks_dir)
        for line in lines:
            log(line)
    return run_preset(preset, notebooks_dir=notebooks_dir, log=log, **kw)
