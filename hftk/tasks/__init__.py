"""The task registry: task id -> module. Adding a task = one module + one line in ``TASKS``.

Every task module provides the contract written in ``hftk/tasks/contract.py`` (checked when it is imported),
so train/evaluate/predict/demo/card/push are written once for all tasks.
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
    "object-detection": "hftk.tasks.object_detection",
    "seq2seq-chat": "hftk.tasks.seq2seq_chat",
}


def get_task(task_id: str) -> ModuleType:
    """Import and return the module implementing ``task_id`` (checked against the task contract)."""
    from hftk.tasks.contract import check_task

    if task_id not in TASKS:
        raise HftkError(f"unknown task '{task_id}'; expected one of: {', '.join(TASKS)}")
    return check_task(importlib.import_module(TASKS[task_id]))
