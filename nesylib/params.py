"""A notebook's parameters as declared in its ``parameters`` cell, and ``--set`` overrides of a preset.

Each is declared ``name: type = default  # help``; papermill's parser reads the name, the annotation
(``int``, ``Optional[int]``, ``Union[str, dict]``: its pattern takes no ``int | None``), the default and the
help. ``nesylib params NOTEBOOK`` lists them (``describe_parameters``); ``nesylib run --set KEY=VALUE``
changes a preset's values, each checked against the notebook's declared parameters and its
``runs.start`` schema (else the parameter's annotation) before any notebook runs (``apply_overrides``).
"""
from __future__ import annotations

import ast
import copy
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nesylib.errors import ConfigError
from nesylib.runner import _declared_params, list_notebooks
from nesylib.runs import NOTEBOOKS_DIR, REPO_ROOT, load_preset, notebook_params, validate

NOT_LITERAL = object()  # a default that is an expression, not a literal: its type is unknown
_SCHEMA_NAMES = {t.__name__: t for t in (int, float, str, bool, list, dict, tuple, type)}
_NONE = type(None)
_RUNNER_SET = ("preset", "run_root")  # the runner passes these itself


@dataclass
class Parameter:
    """One parameter of a notebook's ``parameters`` cell, with the rule of its ``runs.start`` schema."""
    name: str
    source: str                 # the default as written in the cell
    default: object             # its value, or NOT_LITERAL
    help: str                   # the line's trailing comment
    rule: object = None         # the schema's rule for it, when the notebook states one statically
    annotation: str = ""        # its type annotation as written (``Optional[int]``), "" when it has none
    annotated: tuple | None = field(init=False, repr=False)  # the types the annotation allows, if understood

    def __post_init__(self):
        self.annotated = annotation_types(self.annotation)

    def type_text(self) -> str:
        if self.rule is not None:
            return rule_text(self.rule)
        if self.annotated is not None:
            return rule_text(self.annotated)
        if self.default is None or self.default is NOT_LITERAL:
            return "any"
        return type(self.default).__name__

    def problem(self, value) -> str | None:
        """Why ``value`` cannot be this parameter's value (its schema rule, else its annotation, else its
        default's type), or None."""
        if self.rule is not None:
            rules = self.rule if isinstance(self.rule, tuple) else (self.rule,)
            try:
                validate({self.name: value}, {self.name: self.rule})
            except ConfigError:
                return f"expects {self.type_text()}, got {value!r}"
            if isinstance(value, bool) and not isinstance(self.rule, list) and bool not in rules:
                return f"expects {self.type_text()}, got {value!r}"  # validate() takes True for an int
            return None
        if self.annotated is not None:
            return None if allowed(value, self.annotated) else f"expects {self.type_text()}, got {value!r}"
        if not compatible(value, self.default):
            return f"expects {self.type_text()} (its default is {self.source}), got {value!r}"
        return None


def rule_text(rule) -> str:
    if isinstance(rule, list):
        return f"one of {rule}"
    rules = rule if isinstance(rule, tuple) else (rule,)
    return " | ".join("None" if t is type(None) else t.__name__ for t in rules)


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
        return [_NONE]
    if isinstance(node, ast.Name):
        return [_SCHEMA_NAMES[node.id]] if node.id in _SCHEMA_NAMES else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # int | None (papermill cannot parse it)
        left, right = _annotation_types(node.left), _annotation_types(node.right)
        return left + right if left and right else None
    if isinstance(node, ast.Subscript):
        head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head in ("list", "dict", "tuple", "List", "Dict", "Tuple"):  # list[str]: a list
            return [_SCHEMA_NAMES[head.lower()]]
        inner = [_annotation_types(a) for a in args]
        if head not in ("Optional", "Union") or not all(inner) or (head == "Optional" and len(args) != 1):
            return None
        return [t for ts in inner for t in ts] + ([_NONE] if head == "Optional" else [])
    return None


def allowed(value, types: tuple) -> bool:
    """Whether ``value`` is of one of ``types`` (an annotation's): an int is a float, a bool is only a bool."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def agrees_with_rule(types: tuple, rule) -> bool:
    """Whether an annotation's ``types`` allow what a schema ``rule`` allows, no more and no less (a list
    of allowed values by its values' types; a float also takes an int, as ``(int, float)`` rules say)."""
    def widened(ts):
        ts = set(ts)
        return ts | {int} if float in ts else ts

    if isinstance(rule, list):
        rule_types = {type(v) for v in rule}
    else:
        rule_types = set(rule) if isinstance(rule, tuple) else {rule}
    return widened(types) == widened(rule_types)


def compatible(value, default) -> bool:
    """Whether ``value`` has the type of ``default`` (an int is a float; a default None takes anything)."""
    if default is None or default is NOT_LITERAL:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def notebook_path(name: str, notebooks_dir: Path = NOTEBOOKS_DIR) -> Path:
    """The notebook ``name`` (``00_data`` or ``00_data.ipynb``); an unknown name is an error listing the known."""
    nbs = {p.stem: p for p in list_notebooks(notebooks_dir)}
    stem = name[:-len(".ipynb")] if name.endswith(".ipynb") else name
    if stem not in nbs:
        raise ConfigError(f"no notebook {name!r}; known notebooks: {', '.join(nbs)}")
    return nbs[stem]


def static_schema(nb: Path) -> dict:
    """The ``schema=`` of the notebook's ``runs.start`` call, rule by rule, where it can be evaluated from
    the source alone (type names and constants of nesylib modules, e.g. ``experiment.SELECTION_SCHEMA``)."""
    import nbformat

    schema = {}
    for cell in nbformat.read(str(nb), as_version=4).cells:
        if cell.cell_type != "code" or "runs.start" not in cell.source:
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "start"):
                continue
            node = next((k.value for k in call.keywords if k.arg == "schema"), None)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    rule = _eval_rule(value)
                    if key is None and isinstance(rule, dict):  # **experiment.SELECTION_SCHEMA
                        schema.update(rule)
                    elif isinstance(key, ast.Constant) and rule is not NOT_LITERAL:
                        schema[key.value] = rule
    return schema


def _eval_rule(node: ast.expr):
    """A schema rule's value: type names, literals and attributes of nesylib modules only; else NOT_LITERAL."""
    names = {}
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id not in names:
            if n.id in _SCHEMA_NAMES:
                names[n.id] = _SCHEMA_NAMES[n.id]
            else:
                try:
                    names[n.id] = importlib.import_module(f"nesylib.{n.id}")
                except ImportError:
                    return NOT_LITERAL
    try:
        return eval(compile(ast.Expression(node), "<schema>", "eval"), {"__builtins__": {}}, names)  # noqa: S307
    except Exception:  # noqa: BLE001 - not statically evaluable: no rule
        return NOT_LITERAL


def notebook_parameters(nb: Path) -> dict[str, Parameter]:
    """The parameters the notebook's ``parameters`` cell declares (papermill's parser), in order."""
    import papermill as pm

    schema = static_schema(nb)
    out = {}
    for name, p in pm.inspect_notebook(str(nb)).items():
        try:
            default = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            default = NOT_LITERAL
        annotation = "" if p.get("inferred_type_name") in (None, "None") else p["inferred_type_name"]
        out[name] = Parameter(name, p["default"], default, p.get("help") or "", schema.get(name), annotation)
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
        row = [p.name, p.type_text(), p.source]
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
_DICT_PARAMS = ("train", "train_overrides")  # nesylib.train.TrainConfig fields


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
    if len(keys) == 1 and inner is not None and not compatible(value, inner):
        raise ConfigError(f"--set {arg!r}: expects {type(inner).__name__} like the current value {inner!r}, "
                          f"got {value!r}")
    base[keys[0]] = _with_path(inner, keys[1:], value, arg)
    return base


def _check_train(value: dict, arg: str) -> None:
    """A ``train`` dict: known TrainConfig fields of the fields' types, and TrainConfig's own checks."""
    import dataclasses

    from nesylib.train import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for k, v in value.items():
        if k not in fields:
            raise ConfigError(f"--set {arg!r}: {k!r} is not a TrainConfig field; allowed: {sorted(fields)}")
        f = fields[k]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(default, str) and not isinstance(v, str):  # str | list, bool | str: leave to validate()
            continue
        if not compatible(v, default):
            raise ConfigError(f"--set {arg!r}: TrainConfig.{k} expects {type(default).__name__} "
                              f"(default {default!r}), got {v!r}")
    try:
        TrainConfig(**value).validate()
    except ConfigError as e:
        raise ConfigError(f"--set {arg!r}: {e}") from None


def apply_overrides(preset: dict, sets: list[str], notebooks_dir: Path = NOTEBOOKS_DIR) -> tuple[dict, list[str]]:
    """The preset with each ``--set`` applied in order, and a line per override for the log.

    ``common.PARAM=V`` sets a common value (a parameter some notebook declares), ``NB.PARAM=V`` one
    notebook's; ``NB.PARAM.KEY=V`` sets a key inside a dict parameter (``train.lr``), starting from the
    value the preset gives that notebook. Each value is checked before anything runs: against the
    notebook's schema rule where ``static_schema`` finds one, else its type annotation, else its
    default's type; ``train`` dicts against TrainConfig. Errors name the ``--set`` argument and what was
    expected.
    """
    preset = copy.deepcopy(preset)
    nbs = {p.stem: p for p in list_notebooks(notebooks_dir)}
    declared: dict[str, dict[str, Parameter]] = {}

    def params_of(stem):
        if stem not in declared:
            declared[stem] = notebook_parameters(nbs[stem])
        return declared[stem]

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
            default = params_of(section)[name].default
            base = notebook_params(preset, section).get(name, None if default is NOT_LITERAL else default)
        else:
            raise ConfigError(f"--set {arg!r}: {section!r} is neither 'common' nor a notebook; known: "
                              f"common, {', '.join(nbs)}")
        new = _with_path(base, keys, value, arg)
        for stem in users:
            problem = params_of(stem)[name].problem(new)
            if problem:
                raise ConfigError(f"--set {arg!r}: parameter {name!r} of {stem} {problem}")
        if name in _DICT_PARAMS and isinstance(new, dict):
            _check_train(new, arg)
        target[name] = new
        shadowed = [s for s in users if section == "common" and name in (preset["notebooks"].get(s) or {})]
        lines.append(f"--set {'.'.join([section, name, *keys])} = {json.dumps(value)}"
                     + (f" (not for {', '.join(shadowed)}, whose preset section sets {name})" if shadowed else ""))
    return preset, lines


def run_with_overrides(preset_name: str, sets: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
                       log=print, **kw) -> list[dict]:
    """``runs.run_preset`` on the preset with the ``--set`` arguments applied, each checked before
    any notebook runs and printed."""
    from nesylib.runner import run_preset

    preset = load_preset(preset_name)
    if sets:
        preset, lines = apply_overrides(preset, sets, notebooks_dir)
        for line in lines:
            log(line)
    return run_preset(preset, notebooks_dir=notebooks_dir, log=log, **kw)
