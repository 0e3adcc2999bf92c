"""The task registry: task id -> the module that declares its ``SPEC``. Adding a task = one module + one line here.

Every task module builds one ``hftk.tasks.contract.TaskSpec`` named ``SPEC``, so train/evaluate/predict/demo/card/
push/export are written once for all tasks.
"""

from __future__ import annotations

import importlib

from hftk.errors import HftkError, did_you_mean
from hftk.tasks.contract import TaskSpec

# task id (Hugging Face pipeline vocabulary) -> module; imported on first use so one task's heavy
# dependencies never slow down another's.
TASKS: dict[str, str] = {
    "image-classification": "hftk.tasks.image_classification",
    "text-generation": "hftk.tasks.text_generation",
    "object-detection": "hftk.tasks.object_detection",
    "seq2seq-chat": "hftk.tasks.seq2seq_chat",
    "image-segmentation": "hftk.tasks.image_segmentation",
}


def get_task(task_id: str) -> TaskSpec:
    """The spec of task ``task_id`` (its module imported on first use)."""
    if task_id not in TASKS:
        guess = f"; {hint}" if (hint := did_you_mean(task_id, list(TASKS))) else ""
        raise HftkError(f"unknown task '{task_id}'{guess} (expected one of: {', '.join(TASKS)})")
    spec = getattr(importlib.import_module(TASKS[task_id]), "SPEC", None)
    if not isinstance(spec, TaskSpec) or spec.task != task_id:
        raise TypeError(
            f"{TASKS[task_id]} must define SPEC = TaskSpec(task='{task_id}', ...) (hftk/tasks/contract.py)"
        )
    return spec
