"""The task contract: what every module in ``hftk/tasks/`` provides, so shared code never names a task.

Training, evaluation, predict, the demo, the model card, push and export are written once, against this
surface. A task is a module (registered in ``hftk/tasks/__init__.py``); ``check_task`` verifies it at import,
and ``tests/test_contract.py`` runs every registered task through the whole contract with its tiny recipe.
Tasks share steps by calling plain functions (``hftk.models``, ``hftk.generation``, ``hftk.evaluation``),
never by inheriting from each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from hftk.errors import HftkError


@dataclass
class TrainerInputs:
    """Everything a task gets to build its Trainer (``build_trainer``)."""

    recipe: Any  # hftk.config.Recipe, with the task's own section classes
    model: Any  # the model from build_model
    processor: Any  # tokenizer or image processor: the Trainer's processing_class, saved with the model
    datasets: Any  # DatasetDict from prepare_datasets: train, validation, test
    args: Any  # an instance of the task's TRAINING_ARGUMENTS
    callbacks: list  # hftk's callbacks (checkpoint guard, budget, early stopping): pass them on
    optimizer: tuple | None = None  # pass on as the Trainer's optimizer_cls_and_kwargs (per-layer learning rates)


@runtime_checkable
class Task(Protocol):
    """The surface of a task module. Attributes are module constants; methods are module functions."""

    TASK: str
    """Task id, in Hugging Face pipeline vocabulary (``image-classification``)."""
    PIPELINE_TAG: str
    """The Hub ``pipeline_tag`` of the run's model (and the ``transformers.pipeline`` task that runs it)."""
    AUTO_MODEL: str
    """Name of the transformers Auto class a run folder loads with (``AutoModelForImageClassification``)."""
    DEFAULT_RECIPE: Path
    """The recipe `hftk train <task id>` runs."""
    TINY_OVERRIDES: list[str]
    """Overrides that turn the default recipe into a seconds-long run (contract test, `hftk check --tiny`)."""
    HEADLINE: list[str]
    """Metric names shown in tables and on the model card; the first one is the main metric."""
    CONFIG_CLASSES: dict[str, type]
    """Dataclasses replacing the base ``model``/``data``/``eval`` sections with the task's own fields."""
    TRAIN_DEFAULTS: dict[str, Any]
    """The task's defaults for ``train:`` (fields of ``TRAINING_ARGUMENTS``); a recipe's own keys win."""
    TRAINING_ARGUMENTS: type
    """``TrainingArguments`` or a subclass (``Seq2SeqTrainingArguments``); ``train:`` is validated against it."""
    PIPELINE_EXAMPLE: str
    """A call of ``pipe`` for the model card's usage snippet, e.g. ``pipe("digit.png")``."""

    def load_data(self, recipe: Any) -> Any:
        """The splits (``DatasetDict`` with train, validation and test), labels resolved, bad input rejected."""

    def build_model(self, recipe: Any, data: Any) -> tuple[Any, Any]:
        """``(model, processor)``: random init from a config or pretrained, through ``hftk.models.load_model``."""

    def prepare_datasets(self, recipe: Any, data: Any, processor: Any) -> Any:
        """The splits as the Trainer consumes them (transforms, tokenization)."""

    def build_trainer(self, inputs: TrainerInputs) -> Any:
        """The Trainer (collator, metrics, Trainer class), built with what the task needs to see."""

    def evaluate_report(self, run_dir: Path, recipe: Any, split: str) -> dict[str, Any]:
        """Evaluate the run's saved model on ``split`` on its device, batched; write metrics.json, report.md,
        plots and worst examples under ``eval/``; return the metrics (flat keys, the HEADLINE ones included)."""

    def example_inputs(self, run_dir: Path, count: int) -> list:
        """Up to ``count`` inputs from the test split as ``predict`` takes them (demo examples, checks)."""

    def predict(self, run_dir: Path, inputs: list, stream: Any = None, **options: Any) -> list[dict]:
        """JSON-able results, one per input; with ``stream`` (a text file) also written for people as they come.

        Options are keyword-only parameters with defaults and annotations: the CLI offers them as ``--name``.
        """

    def demo(self, run_dir: Path) -> Any:
        """The run's Gradio demo as a ``gradio.Blocks`` (not launched)."""


# Optional parts of the contract, used when a task has them:
#   PIPELINE_TASK: str, the ``transformers.pipeline`` task that runs the run's model when transformers has none under
#       PIPELINE_TAG (transformers 5 removed text2text-generation); the task module registers it when imported.
#   DETERMINISTIC_OVERRIDES: list[str], added to TINY_OVERRIDES where runs must match exactly across process
#       counts (the distributed equivalence test): switch off randomness drawn per process (augmentation) and
#       layers whose state differs under data parallelism (batch-norm running statistics).
#   model_parts(model) -> hftk.models.parts.ModelParts: the model's layers (stem first) and head, for model.freeze,
#       gradual unfreezing and per-layer learning rates; without it the generic reading applies, with no head.
#   QUANTIZABLE: bool, True where model.peft.quantize=4bit (QLoRA: a 4-bit base under the adapter) applies: tasks
#       whose pretrained models are language models built of linear layers.
#   chat(run_dir, input_fn, output, *, <options>) -> None: an interactive terminal session (`hftk chat RUN`);
#       input_fn() returns the user's next line (EOFError ends it), answers are written to ``output``.


def check_task(module: ModuleType) -> ModuleType:
    """Return ``module`` if it provides the whole contract; otherwise name what it lacks (a developer error)."""
    missing = [name for name in _contract_names() if not hasattr(module, name)]
    if missing:
        raise TypeError(f"task module {module.__name__} lacks {', '.join(missing)} (see hftk/tasks/contract.py)")
    return module


def _contract_names() -> list[str]:
    annotations = [name for name in Task.__annotations__]
    methods = [name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")]
    return annotations + methods


def predict_options(task: Any, function: Callable | None = None) -> dict[str, tuple[type, Any]]:
    """The keyword-only options of ``task.predict`` (or another of its functions): name -> (type, default)."""
    import inspect
    import typing

    function = function or task.predict
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    return {
        name: (hints.get(name, str), param.default)
        for name, param in signature.parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def parse_predict_options(task: Any, pairs: dict[str, str], function: Callable | None = None) -> dict[str, Any]:
    """Typed options from ``{"top_k": "3"}`` for ``task.predict`` (or ``function``); unknown ones are an error."""
    known = predict_options(task, function)
    options = {}
    for name, text in pairs.items():
        if name not in known:
            offered = ", ".join("--" + k.replace("_", "-") for k in known) or "none"
            raise HftkError(f"--{name.replace('_', '-')}: not an option of {task.TASK} runs (options: {offered})")
        kind = _plain_type(known[name][0])
        options[name] = _convert(name, text, kind)
    return options


def _plain_type(tp: Any) -> Callable:
    import types
    import typing

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
