"""Recipes: a YAML file plus dotted ``KEY=VALUE`` overrides, validated into dataclasses.

A recipe has the sections ``task``, ``model``, ``data``, ``train``, ``eval``, ``budget``, ``regularization``, ``hub``
and ``demo``.
``train`` holds ``transformers.TrainingArguments`` fields under their own names and is passed through; every
other section is a dataclass below (a task may extend ``model`` and ``data`` with fields of its own). Unknown
keys and wrong types are errors that name the key and suggest the closest valid one.

Usage:
    recipe = load_recipe("recipes/image-classification/resnet-mnist.yaml", ["train.learning_rate=3e-4"])
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from hftk.errors import HftkError, did_you_mean

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # shipped inside the package; ./recipes links here


def _field(default: Any, help: str, per_architecture: bool = False, **kwargs: Any) -> Any:
    """A dataclass field whose ``help`` is shown by ``hftk recipes --keys``.

    ``per_architecture``: a model setting that belongs to the recipe's ``model.name`` (config fields, a backbone);
    a ``model.name=...`` override that names another model drops the recipe's value of it.
    """
    metadata = {"help": help, "per_architecture": per_architecture}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class PeftConfig:
    """A PEFT adapter trained instead of the full model (the base stays frozen; the task's head trains in full)."""

    method: Literal["none", "lora", "dora", "ia3", "loha", "lokr"] = _field(
        "none", "adapter type (none: full training)"
    )
    r: int = _field(8, "rank of the LoRA/DoRA/LoHa/LoKr update")
    alpha: int = _field(16, "scaling of the update (alpha / r)")
    dropout: float = _field(0.05, "dropout on the adapter's input")
    target_modules: list[str] | None = _field(None, "layers to adapt (None: the architecture's sensible default)")
    quantize: Literal["none", "4bit"] = _field(
        "none", "4bit: QLoRA, the pretrained base in 4-bit NF4 (bitsandbytes; text tasks), the adapter trains"
    )


@dataclass
class ModelConfig:
    """Which network to train and how to initialise it."""

    name: str = _field("", "timm architecture (resnet18), transformers model type (vit), Hub id or local folder")
    pretrained: bool = _field(False, "load pretrained weights (Hub or local folder) instead of a random init")
    model_args: dict = _field(
        {}, "extra arguments: timm.create_model kwargs, or transformers config fields", per_architecture=True
    )
    freeze: str | int = _field(
        "none", "none, backbone (train only the head), or N: freeze the stem/embeddings and the first N blocks"
    )
    gradual_unfreeze: int = _field(0, "unfreeze this many frozen layers (from the top) at each new epoch (0: off)")
    backbone_lr_multiplier: float = _field(1.0, "learning-rate factor of everything but the head (e.g. 0.1)")
    layer_decay: float | None = _field(
        None, "layer-wise learning-rate decay: layer i of L (stem first) trains at lr x decay^(L - i), e.g. 0.75"
    )
    peft: PeftConfig = _field(PeftConfig(), "train a PEFT adapter (LoRA...) on the pretrained model")
    channels_last: bool | None = _field(None, "channels-last memory for convolutions (None: on for CNNs on a GPU)")
    revision: str | None = _field(None, "Hub revision (branch, tag or commit) of a pretrained model")
    trust_remote_code: bool = _field(False, "allow code from the model's Hub repo to run (off: safer)")


@dataclass
class DataConfig:
    """Where the examples come from and how they are split."""

    name: str | None = _field(None, "embedded data set name or Hub dataset id")
    path: str | None = _field(None, "local folder or file (used instead of name)")
    config_name: str | None = _field(None, "Hub dataset configuration name")
    revision: str | None = _field(None, "Hub dataset revision")
    train_split: str = _field("train", "split used for training")
    validation_split: str | None = _field("validation", "validation split; carved from train when missing")
    test_split: str | None = _field("test", "held-out split for the final evaluation; carved when missing")
    validation_size: float = _field(0.1, "fraction of train carved out for validation when there is none")
    test_size: float = _field(0.1, "fraction of train carved out as test when there is none")
    split_seed: int = _field(42, "seed of the validation/test carving (fixed splits stay fixed)")
    max_train_samples: int | None = _field(None, "truncate the training split (quick tries)")
    max_eval_samples: int | None = _field(None, "truncate the validation and test splits")


@dataclass
class EvalConfig:
    """The evaluation that ends training and that `hftk evaluate` runs."""

    split: str = _field("test", "split evaluated after training and by default in `hftk evaluate`")
    batch_size: int = _field(64, "evaluation batch size")
    worst_examples: int = _field(16, "how many of the most confident mistakes to keep")
    early_stopping_patience: int | None = _field(
        None, "stop after this many evaluations without improving train.metric_for_best_model (None: off)"
    )


@dataclass
class BudgetConfig:
    """Train for a wall-clock time instead of a number of steps."""

    minutes: float | None = _field(
        None,
        "stop training after this many minutes; without train.max_steps the LR schedule follows elapsed time "
        "(results then depend on the machine's speed), with it the schedule follows steps",
    )


@dataclass
class RegularizationConfig:
    """Regularization for every task (weight decay, label smoothing and clipping are `train:` fields)."""

    ema_decay: float | None = _field(
        None, "keep a moving average of the weights with this decay (e.g. 0.999); the saved model is the average"
    )
    l1: float = _field(0.0, "L1 penalty strength on weight matrices (0: off), e.g. 1e-5")
    dropout: float | None = _field(None, "set every dropout probability of the model to this (None: the model's)")


@dataclass
class HubConfig:
    """Publishing to the Hugging Face Hub (`hftk push`). The token comes from HF_TOKEN or `hf auth login`."""

    model_id: str | None = _field(None, "Hub repo id, e.g. user/mnist-resnet")
    private: bool = _field(True, "create the repo as private")
    push: bool = _field(
        False, "push the run to hub.model_id when training ends (checkpoints as train.hub_strategy says)"
    )
    license: str = _field("apache-2.0", "license in the model card (match it to your data and base model)")


@dataclass
class DemoConfig:
    """The Gradio demo (`hftk demo`)."""

    host: str = _field("127.0.0.1", "interface to bind; 0.0.0.0 exposes the demo to the network")
    port: int | None = _field(None, "port (None: the first free one from 7860)")
    examples: int = _field(8, "how many test examples the demo offers")


# hftk's defaults for `train:`; a recipe's own keys win. Every key is a TrainingArguments field.
TRAIN_DEFAULTS: dict[str, Any] = {
    "report_to": ["tensorboard"],  # TensorBoard events under <run>/runs
    "logging_steps": 10,
    "save_total_limit": 2,  # keep the newest checkpoints (the best one is kept too)
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "remove_unused_columns": False,  # tasks feed exactly the columns the model needs
}

# TrainingArguments fields that hftk owns: set from the CLI or never at all.
_RESERVED_TRAIN_KEYS = {
    "output_dir": "use --output-dir",
    "hub_token": "set HF_TOKEN or run `hf auth login`; tokens never go into recipes",
    "resume_from_checkpoint": "use --resume",
    "overwrite_output_dir": "use --overwrite",
}


@dataclass
class Recipe:
    """A fully resolved recipe: what `hftk train` runs and what a run folder records."""

    task: str
    model: ModelConfig
    data: DataConfig
    train: dict[str, Any]
    eval: EvalConfig
    budget: BudgetConfig
    regularization: RegularizationConfig
    hub: HubConfig
    demo: DemoConfig
    name: str = "run"
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, in section order, ready for YAML (no secrets: recipes hold none)."""
        out: dict[str, Any] = {"task": self.task, "name": self.name}
        for section in ("model", "data", "train", "eval", "budget", "regularization", "hub", "demo"):
            value = getattr(self, section)
            out[section] = dict(value) if isinstance(value, dict) else dataclasses.asdict(value)
        return out

    def save(self, path: Path) -> None:
        """Write the resolved recipe as YAML (the run's `recipe.yaml`)."""
        header = f"# Resolved recipe of run '{self.name}' (from {self.source or 'defaults'}).\n"
        path.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = ("model", "data", "eval", "budget", "regularization", "hub", "demo")
BASE_SECTION_CLASSES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "eval": EvalConfig,
    "budget": BudgetConfig,
    "regularization": RegularizationConfig,
    "hub": HubConfig,
    "demo": DemoConfig,
}


def section_classes(task_module: Any) -> dict[str, type]:
    """The dataclass of each section for a task (its own ModelConfig/DataConfig when it has them)."""
    classes = dict(BASE_SECTION_CLASSES)
    classes.update(getattr(task_module, "CONFIG_CLASSES", {}))
    return classes


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
    from hftk import tasks

    if recipe in tasks.TASKS:
        return tasks.get_task(recipe).DEFAULT_RECIPE
    path = Path(recipe)
    if path.is_file():
        return path
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
    from hftk import tasks

    where = str(path)
    known = {"task", "name", "train", *SECTIONS}
    for key in raw:
        if key not in known:
            raise HftkError(_unknown_key(where, key, sorted(known)))
    task_id = raw.get("task")
    if not isinstance(task_id, str) or task_id not in tasks.TASKS:
        guess = f"; {hint}" if (hint := did_you_mean(task_id, list(tasks.TASKS))) else ""
        raise HftkError(f"{where}: task: unknown task '{task_id}'{guess} (expected one of: {', '.join(tasks.TASKS)})")
    task = tasks.get_task(task_id)
    sections = {}
    for name, cls in section_classes(task).items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise HftkError(f"{where}: {name}: expected a section of 'key: value' lines, got {value!r}")
        sections[name] = build_dataclass(cls, value, f"{where}: {name}")
    train = validate_train(raw.get("train") or {}, where, task.TRAINING_ARGUMENTS)
    train = {**TRAIN_DEFAULTS, **getattr(task, "TRAIN_DEFAULTS", {}), **train}
    name = raw.get("name") or path.stem
    return Recipe(task=task_id, train=train, name=str(name), source=str(path), **sections)


def _for_another_model(raw: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The recipe without its per-architecture model settings when the overrides name another model: the recipe's
    RT-DETR config fields mean nothing to a DETR (``hftk train object-detection model.name=detr``)."""
    from hftk import tasks

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


def describe_keys(task_module: Any) -> list[tuple[str, str, str]]:
    """(key, default, help) for every recipe key of a task: the CLI's reference documentation."""
    rows = [("task", "", "task id (see `hftk recipes`)")]
    for section, cls in section_classes(task_module).items():
        rows.extend(_describe(cls, section))
    arguments = task_module.TRAINING_ARGUMENTS
    rows.append(("train.*", "", f"any transformers.{arguments.__name__} field, passed through"))
    for key, value in {**TRAIN_DEFAULTS, **getattr(task_module, "TRAIN_DEFAULTS", {})}.items():
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
