"""The task contract: one declared, typed object per task (``TaskSpec``), so shared code never names a task.

Training, evaluation, predict, the demo, the model card, push and export are written once, against this object. A
task is a module in ``hftk/tasks/`` that builds one ``SPEC = TaskSpec(...)``, registered by one line in
``hftk/tasks/__init__.py``; ``tests/test_contract.py`` runs every registered task through the whole contract with its
tiny recipe. Required parts are fields without a default; optional parts have one (``None``: the task lacks it), so
shared code reads a field instead of probing a module with ``hasattr``. Tasks share steps by calling plain functions
(``hftk.models``, ``hftk.generation``, ``hftk.evaluation``, ``hftk.runs``), never by inheriting from each other.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftk.errors import HftkError
from hftk.sections import Recipe


@dataclass
class TrainerInputs:
    """Everything a task gets to build its Trainer (``TaskSpec.build_trainer``)."""

    recipe: Recipe  # with the task's own section classes
    model: Any  # the model from build_model (wrapped in an adapter when the recipe asks for one)
    processor: Any  # tokenizer or image processor: the Trainer's processing_class, saved with the model
    datasets: Any  # DatasetDict from prepare_datasets: train, validation, test
    args: Any  # an instance of the task's training_arguments
    callbacks: list  # hftk's callbacks (checkpoint guard, budget, early stopping): pass them on
    optimizer: tuple | None = None  # pass on as the Trainer's optimizer_cls_and_kwargs (per-layer learning rates)


@dataclass(frozen=True)
class ModelFacts:
    """What a run folder's model is to the Hub and to transformers: its pipeline tag and Auto class."""

    pipeline_tag: str
    auto_model: str
    pipeline_task: str | None = None  # the pipeline that runs it when transformers has none under pipeline_tag


@dataclass(frozen=True)
class TaskSpec:
    """One task: its facts, what trains a run, and what serves a run. Registered once, read by shared code."""

    # ---- facts
    task: str
    """Task id, in Hugging Face pipeline vocabulary (``image-classification``)."""
    pipeline_tag: str
    """The Hub ``pipeline_tag`` of the run's model (and the ``transformers.pipeline`` task that runs it)."""
    auto_model: str
    """Name of the transformers Auto class a run folder loads with (``AutoModelForImageClassification``)."""
    default_recipe: Path
    """The recipe `hftk train <task id>` runs."""
    headline: list[str]
    """Metric names shown in tables and on the model card; the first one is the main metric."""
    config_classes: dict[str, type]
    """Dataclasses replacing the base ``model``/``data``/``eval`` sections with the task's own fields."""
    training_arguments: type
    """``TrainingArguments`` or a subclass (``Seq2SeqTrainingArguments``); ``train:`` is validated against it."""
    pipeline_example: str
    """A call of ``pipe`` for the model card's usage snippet, e.g. ``pipe("digit.png")``."""
    tiny_overrides: list[str]
    """Overrides that turn the default recipe into a seconds-long run (contract test, `hftk check --tiny`)."""

    # ---- what trains a run
    load_data: Callable[[Recipe], Any]
    """``(recipe) -> DatasetDict`` with train, validation and test: labels resolved, bad input rejected."""
    build_model: Callable[[Recipe, Any], tuple[Any, Any]]
    """``(recipe, data) -> (model, processor)``: random init or pretrained, through ``hftk.models.load_model``."""
    prepare_datasets: Callable[[Recipe, Any, Any], Any]
    """``(recipe, data, processor) -> DatasetDict``: the splits as the Trainer consumes them."""
    build_trainer: Callable[[TrainerInputs], Any]
    """``(inputs) -> Trainer``: collator, metrics and Trainer class, built with what the task needs to see."""

    # ---- what serves a run
    evaluate_report: Callable[[Path, Recipe, str], dict[str, Any]]
    """``(run_dir, recipe, split) -> metrics``: evaluate the saved model on its device, batched; write metrics.json,
    report.md, plots and worst examples under ``eval/``; flat keys, the headline ones included."""
    example_inputs: Callable[[Path, int], list]
    """``(run_dir, count) -> inputs``: up to ``count`` test-split inputs as ``predict`` takes them."""
    predict: Callable[..., list[dict]]
    """``(run_dir, inputs, stream=None, *, <options>) -> results``: JSON-able results, one per input; with ``stream``
    (a text file) also written for people as they come. Keyword-only options with defaults and annotations are what
    the CLI offers as ``--name`` (a dataclass-typed option offers its fields)."""
    demo: Callable[[Path], Any]
    """``(run_dir) -> gradio.Blocks``: the run's demo, not launched."""

    # ---- optional parts
    train_defaults: dict[str, Any] = field(default_factory=dict)
    """The task's defaults for ``train:`` (fields of ``training_arguments``); a recipe's own keys win."""
    pipeline_task: str | None = None
    """The ``transformers.pipeline`` task that runs the run's model when transformers has none under pipeline_tag
    (transformers 5 removed text2text-generation); ``hftk.register()`` registers it (``hftk.models.registration``)."""
    deterministic_overrides: list[str] = field(default_factory=list)
    """Added to tiny_overrides where runs must match exactly across process counts (the distributed equivalence
    test): no randomness drawn per process (augmentation), no state that differs under data parallelism."""
    model_parts: Callable[[Any], Any] | None = None
    """``(model) -> hftk.models.parts.ModelParts``: the model's layers (stem first) and head, for model.freeze,
    gradual unfreezing and per-layer learning rates. None: the generic reading, with no head."""
    quantizable: bool = False
    """True where model.peft.quantize=4bit (QLoRA: a 4-bit base under the adapter) applies: tasks whose pretrained
    models are language models built of linear layers."""
    chat: Callable[..., None] | None = None
    """``(run_dir, input_fn, output, *, <options>)``: an interactive terminal session (`hftk chat RUN`)."""
    onnx_graphs: Callable[[Path, int], list] | None = None
    """``(run_dir, batch_size) -> [hftk.export.OnnxGraph]``: what `hftk export --format onnx` writes and checks."""
    onnx_check: Callable[[Path, Path], dict] | None = None
    """``(run_dir, export_dir) -> report``: a check of the whole export beyond each graph's tensor parity (chat: the
    greedy answers of a loop over the graphs equal ``generate``'s), run after the graphs are written; its dict joins
    export.json, and a failed check is an ``HftkError``. None: the graphs' parity is the whole check."""
    model_facts: Callable[[Any], ModelFacts | None] | None = None
    """``(model config) -> ModelFacts``, for a task that trains several kinds of model (chat: encoder-decoder and
    decoder-only): a run's card, `hftk merge` and pipelines follow the run's own model; None: the spec's facts."""

    def facts(self, config: Any = None) -> ModelFacts:
        """The facts of the run whose model config is ``config`` (the spec's own without one)."""
        own = ModelFacts(self.pipeline_tag, self.auto_model, self.pipeline_task)
        if config is None or self.model_facts is None:
            return own
        return self.model_facts(config) or own

    def offers(self) -> list[str]:
        """The optional parts this task has, for `hftk recipes --keys` and the docs."""
        parts = {
            "pipeline_task": self.pipeline_task,
            "model_parts": self.model_parts,
            "quantizable (QLoRA)": self.quantizable,
            "chat": self.chat,
            "onnx_graphs (export)": self.onnx_graphs,
        }
        return [name for name, value in parts.items() if value]


def predict_options(function: Callable) -> dict[str, tuple[type, Any]]:
    """The keyword-only options of a task's ``predict`` (or ``chat``): name -> (type, default).

    A dataclass-typed option (``decoding: DecodingOptions``) offers its fields, with the option's default values.
    """
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    options: dict[str, tuple[type, Any]] = {}
    for name, param in signature.parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        kind = hints.get(name, str)
        if dataclasses.is_dataclass(kind):
            inner = typing.get_type_hints(kind)
            for f in dataclasses.fields(kind):
                options[f.name] = (inner[f.name], getattr(param.default, f.name))
        else:
            options[name] = (kind, param.default)
    return options


def parse_predict_options(task: str, pairs: dict[str, str], function: Callable) -> dict[str, Any]:
    """Keyword arguments for ``function`` (a task's predict or chat) from ``{"top_k": "3"}``; unknown ones are an
    error naming the task's options. Fields of a dataclass-typed option are gathered back into it."""
    known = predict_options(function)
    values = {}
    for name, text in pairs.items():
        if name not in known:
            offered = ", ".join("--" + k.replace("_", "-") for k in known) or "none"
            raise HftkError(f"--{name.replace('_', '-')}: not an option of {task} runs (options: {offered})")
        values[name] = _convert(name, text, _plain_type(known[name][0]))
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    kwargs: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        kind = hints.get(name)
        if param.kind is inspect.Parameter.KEYWORD_ONLY and dataclasses.is_dataclass(kind):
            given = {f.name: values.pop(f.name) for f in dataclasses.fields(kind) if f.name in values}
            if given:
                kwargs[name] = dataclasses.replace(param.default, **given)
    return {**kwargs, **values}


def _plain_type(tp: Any) -> Callable:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp if tp in (int, float, str, bool) else str


def _convert(name: str, text: str, kind: Callable) -> Any:
    if kind is bool:
        if text.lower() in ("true", "1", "yes", ""):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    expected = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a value")
    raise HftkError(f"--{name.replace('_', '-')} {text!r}: expected {expected}")
