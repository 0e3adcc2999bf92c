"""Recipes: a YAML file plus dotted ``KEY=VALUE`` overrides, validated into the dataclasses of ``hftk.sections``.

``train`` holds ``transformers.TrainingArguments`` fields under their own names and is checked against the task's
``training_arguments`` class; every other section is a dataclass (the task's own where its spec declares one).
Unknown keys and wrong types are errors that name the key and suggest the closest valid one.

Usage:
    recipe = load_recipe("recipes/image-classification/resnet-mnist.yaml", ["train.learning_rate=3e-4"])
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from hftk import tasks
from hftk.errors import HftkError, did_you_mean
from hftk.sections import BASE_SECTION_CLASSES, RECIPES_DIR, SECTIONS, TRAIN_DEFAULTS, Recipe
from hftk.tasks.contract import TaskSpec

__all__ = ["RECIPES_DIR", "Recipe", "describe_keys", "load_recipe", "parse_overrides", "resolve_recipe_path"]

logger = logging.getLogger(__name__)

# TrainingArguments fields that hftk owns: set from the CLI or never at all.
_RESERVED_TRAIN_KEYS = {
    "output_dir": "use --output-dir",
    "hub_token": "set HF_TOKEN or run `hf auth login`; tokens never go into recipes",
    "resume_from_checkpoint": "use --resume",
    "overwrite_output_dir": "use --overwrite",
}


def section_classes(spec: TaskSpec) -> dict[str, type]:
    """The dataclass of each section for a task (its own ModelConfig/DataConfig when it has them)."""
    return {**BASE_SECTION_CLASSES, **spec.config_classes}


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.learning_rate=3e-4", ...]`` into a nested dict of YAML-typed values."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise HftkError(f"override '{item}': expected KEY=VALUE with a dotted key, e.g. train.max_steps=20")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise HftkError(f"override '{item}': '{part}' is a value, not a section")
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "model_args":
            out[key] = _merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning syntax errors into one line with the file and line."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise HftkError(f"{where}: malformed YAML ({problem}); expected 'key: value' lines") from None
    except (OSError, UnicodeDecodeError) as err:
        raise HftkError(f"{path}: cannot read recipe ({err})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HftkError(f"{path}: a recipe is a YAML mapping of sections (task, model, data, train, ...)")
    return raw


def resolve_recipe_path(recipe: str) -> Path:
    """A YAML path, a task id (its default recipe), or ``<task>/<name>`` of a shipped recipe."""
    if recipe in tasks.TASKS:
        return tasks.get_task(recipe).default_recipe
    path = Path(recipe)
    if path.is_file():
        return path
    folder, _, rest = recipe.partition("/")
    if rest and folder in tasks.ALIASES:  # a shipped recipe under a renamed task's former id
        recipe = f"{tasks.current_id(folder)}/{rest}"
    shipped = RECIPES_DIR / (recipe if recipe.endswith(".yaml") else f"{recipe}.yaml")
    if "/" in recipe and shipped.is_file():  # <task>/<name>: a recipe shipped inside the package
        return shipped
    suggestion = "; " + (did_you_mean(recipe, list(tasks.TASKS)) or f"task ids: {', '.join(tasks.TASKS)}")
    raise HftkError(f"recipe '{recipe}': no such file or task id{suggestion} (`hftk recipes` lists recipes)")


def load_recipe(recipe: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file (or a task's default recipe), apply overrides and validate every key.

    Args:
        recipe: YAML path or task id.
        overrides: dotted ``KEY=VALUE`` strings; values are parsed as YAML (``3e-4``, ``true``, ``[1, 2]``).

    Returns:
        The validated recipe, with hftk's `train` defaults filled in.
    """

    path = resolve_recipe_path(str(recipe))
    extra = parse_overrides(overrides or [])
    from_file = read_yaml(path)
    try:
        return _validated(_merge(_for_another_model(from_file, extra), extra), path)
    except HftkError as err:
        if not extra:
            raise
        _validated(from_file, path)  # the file alone is at fault: its own error
        # the file is fine, so an override is wrong: say so, not the file's name (where a user would look)
        raise HftkError(str(err).replace(str(path), "command-line override", 1)) from None


def _validated(raw: dict[str, Any], path: Path) -> Recipe:
    """``raw`` (a recipe file's mapping, overrides merged in) checked key by key into a Recipe."""
    where = str(path)
    known = {"task", "name", "train", *SECTIONS}
    for key in raw:
        if key not in known:
            raise HftkError(_unknown_key(where, key, sorted(known)))
    task_id = raw.get("task")
    if not isinstance(task_id, str) or task_id not in tasks.TASKS:
        guess = f"; {hint}" if (hint := did_you_mean(task_id, list(tasks.TASKS))) else ""
        raise HftkError(f"{where}: task: unknown task '{task_id}'{guess} (expected one of: {', '.join(tasks.TASKS)})")
    task_id = tasks.current_id(task_id)  # a renamed task's former id: the resolved recipe says the new one
    task = tasks.get_task(task_id)
    sections = {}
    for name, cls in section_classes(task).items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise HftkError(f"{where}: {name}: expected a section of 'key: value' lines, got {value!r}")
        sections[name] = build_dataclass(cls, value, f"{where}: {name}")
    train = validate_train(raw.get("train") or {}, where, task.training_arguments)
    train = {**TRAIN_DEFAULTS, **task.train_defaults, **train}
    name = raw.get("name") or path.stem
    return Recipe(task=task_id, train=train, name=str(name), source=str(path), **sections)


def _for_another_model(raw: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The recipe without its per-architecture model settings when the overrides name another model: the recipe's
    RT-DETR config fields mean nothing to a DETR (``hftk train object-detection model.name=detr``)."""
    model, new = raw.get("model"), extra.get("model")
    if not isinstance(model, dict) or not isinstance(new, dict) or new.get("name") in (None, model.get("name")):
        return raw
    task_id = extra.get("task", raw.get("task"))
    if task_id not in tasks.TASKS:
        return raw
    cls = section_classes(tasks.get_task(task_id))["model"]
    tied = {f.name for f in dataclasses.fields(cls) if f.metadata.get("per_architecture")}
    dropped = sorted(k for k in model if k in tied and k not in new)
    if dropped:
        logger.info(
            "model.name=%s replaces the recipe's %s: its model.%s are not used",
            new["name"],
            model.get("name"),
            ", model.".join(dropped),
        )
    return {**raw, "model": {k: v for k, v in model.items() if k not in tied}}


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types with a precise message."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise HftkError(_unknown_key(where, key, list(fields)))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise HftkError(f"{where}.{key}: expected a section of 'key: value' lines, got {value!r}")
            kwargs[key] = build_dataclass(tp, value, f"{where}.{key}")
        else:
            kwargs[key] = coerce(value, tp, f"{where}.{key}")
    return cls(**kwargs)


@functools.cache
def _training_argument_types(arguments_class: type) -> dict[str, Any]:
    hints = typing.get_type_hints(arguments_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(arguments_class) if f.init}


def validate_train(values: dict[str, Any], where: str, arguments_class: type) -> dict[str, Any]:
    """Check `train:` keys against the task's ``TrainingArguments`` class and coerce their types."""
    if not isinstance(values, dict):
        raise HftkError(f"{where}: train: expected {arguments_class.__name__} fields as 'key: value' lines")
    types_ = _training_argument_types(arguments_class)
    out = {}
    for key, value in values.items():
        if key in _RESERVED_TRAIN_KEYS:
            raise HftkError(f"{where}: train.{key} is not set in recipes: {_RESERVED_TRAIN_KEYS[key]}")
        if key not in types_:
            raise HftkError(
                _unknown_key(f"{where}: train", key, list(types_), what=f"{arguments_class.__name__} field")
            )
        out[key] = coerce(value, types_[key], f"{where}: train.{key}")
    return out


def _unknown_key(where: str, key: str, valid: list[str], what: str = "key") -> str:
    hint = did_you_mean(key, valid)
    guess = hint or f"expected one of: {', '.join(sorted(valid)[:12])}"
    if not hint and len(valid) > 12:
        guess += ", ..."
    return f"{where}: unknown {what} '{key}'; {guess}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(origin or tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` as type ``tp`` or raise HftkError naming ``where`` and the expected type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is typing.Any:
        return value
    if value is False and tp is not bool and _accepts_str(tp):
        value = "no"  # YAML 1.1 reads `eval_strategy: no` as false
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except HftkError:
                continue
    elif origin is Literal:
        if value in args:
            return value
        if hint := did_you_mean(value, list(args)):
            raise HftkError(f"{where}: got {value!r}; expected {_type_name(tp)}; {hint}")
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            item_type = args[0] if args else Any
            return [coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        if value in {m.value for m in tp}:
            return value
        raise HftkError(f"{where}: got {value!r}; expected one of: {', '.join(str(m.value) for m in tp)}")
    else:
        return value  # types hftk does not check (TrainingArguments validates them itself)
    raise HftkError(f"{where}: got {value!r} ({type(value).__name__}); expected {_type_name(tp)}")


def _accepts_str(tp: Any) -> bool:
    if tp is str or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return True
    return typing.get_origin(tp) in (Union, types.UnionType) and any(_accepts_str(a) for a in typing.get_args(tp))


def describe_keys(spec: TaskSpec) -> list[tuple[str, str, str]]:
    """(key, default, help) for every recipe key of a task: the CLI's reference documentation."""
    rows = [("task", "", "task id (see `hftk recipes`)")]
    for section, cls in section_classes(spec).items():
        rows.extend(_describe(cls, section))
    arguments = spec.training_arguments
    rows.append(("train.*", "", f"any transformers.{arguments.__name__} field, passed through"))
    for key, value in {**TRAIN_DEFAULTS, **spec.train_defaults}.items():
        rows.append((f"train.{key}", repr(value), "hftk default"))
    return rows


def _describe(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(_describe(hints[f.name], f"{prefix}.{f.name}"))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f"{prefix}.{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
