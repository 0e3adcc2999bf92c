"""The task registry: task id -> module. Adding a task = one module + one line in ``TASKS``.

Every task module exposes the same surface, so train/evaluate/predict/demo are written once:

- ``TASK``: the task id; ``DEFAULT_RECIPE``: path of the recipe `hftk train <task id>` runs.
- ``CONFIG_CLASSES``: optional ``{"model": ..., "data": ...}`` dataclasses extending the base sections.
- ``TRAIN_DEFAULTS``: optional task defaults for `train:` (TrainingArguments fields).
- ``load_data(recipe) -> DatasetDict``: train/validation/test splits with labels resolved.
- ``build_model(recipe, data) -> (model, processor)``: random init from a config, or pretrained.
- ``prepare_datasets(recipe, data, processor) -> DatasetDict``: the splits as the Trainer consumes them.
- ``collate(features) -> dict``: the Trainer's data collator.
- ``compute_metrics(eval_pred) -> dict``: metrics during training (validation split).
- ``build_trainer_class(recipe) -> type[Trainer]``: the Trainer class (a task says when it needs its own).
- ``evaluate_report(run_dir, recipe, split) -> dict``: metrics, report.md, plots, worst examples.
- ``predict(run_dir, inputs, **options) -> list``: used by the CLI, the demo and export checks.
- ``demo(run_dir) -> gradio.Blocks``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hftk.errors import HftkError

# task id (Hugging Face pipeline vocabulary) -> module; imported on first use so one task's heavy
# dependencies never slow down another's.
TASKS: dict[str, str] = {
    "image-classification": "hftk.tasks.image_classification",
    "text-generation": "hftk.tasks.text_generation",
}


def get_task(task_id: str) -> ModuleType:
    """Import and return the module implementing ``task_id``."""
    if task_id not in TASKS:
        raise HftkError(f"unknown task '{task_id}'; expected one of: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[task_id])
