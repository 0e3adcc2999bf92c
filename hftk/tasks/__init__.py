"""The task registry: task id -> the module that declares its ``SPEC``. Adding a task = one module + one line here.

Every task module builds one ``hftk.tasks.contract.TaskSpec`` named ``SPEC``, so train/evaluate/predict/demo/card/
push/export are written once for all tasks.
"""

from __future__ import annotations

import importlib
import logging

from hftk.errors import HftkError, did_you_mean
from hftk.tasks.contract import TaskSpec

logger = logging.getLogger(__name__)

# a task's former id -> its id now: recipes (`task: seq2seq-chat`), run folders and commands that name it still work
ALIASES: dict[str, str] = {"seq2seq-chat": "chat"}


class _Registry(dict):
    """Task id -> module, which also answers ``in`` and ``[]`` for a former id (shared code checks ids that way);
    iterating it lists the current ids only."""

    def __contains__(self, task_id: object) -> bool:
        return super().__contains__(ALIASES.get(task_id, task_id) if isinstance(task_id, str) else task_id)

    def __getitem__(self, task_id: str) -> str:
        return super().__getitem__(ALIASES.get(task_id, task_id))


# task id (Hugging Face pipeline vocabulary) -> module; imported on first use so one task's heavy
# dependencies never slow down another's.
TASKS: dict[str, str] = _Registry(
    {
        "image-classification": "hftk.tasks.image_classification",
        "text-generation": "hftk.tasks.text_generation",
        "object-detection": "hftk.tasks.object_detection",
        "chat": "hftk.tasks.chat",
        "image-segmentation": "hftk.tasks.image_segmentation",
    }
)
_RENAMES_LOGGED: set[str] = set()


def current_id(task_id: str) -> str:
    """``task_id``, or the id a renamed task has now (said once per process in the log)."""
    if task_id not in ALIASES:
        return task_id
    if task_id not in _RENAMES_LOGGED:
        _RENAMES_LOGGED.add(task_id)
        logger.warning("task '%s' is now called '%s'; the old id still works", task_id, ALIASES[task_id])
    return ALIASES[task_id]


def get_task(task_id: str) -> TaskSpec:
    """The spec of task ``task_id`` (its module imported on first use; a former id finds the task it became)."""
    task_id = current_id(task_id)
    if task_id not in TASKS:
        guess = f"; {hint}" if (hint := did_you_mean(task_id, list(TASKS))) else ""
        raise HftkError(f"unknown task '{task_id}'{guess} (expected one of: {', '.join(TASKS)})")
    spec = getattr(importlib.import_module(TASKS[task_id]), "SPEC", None)
    if not isinstance(spec, TaskSpec) or spec.task != task_id:
        raise TypeError(
            f"{TASKS[task_id]} must define SPEC = TaskSpec(task='{task_id}', ...) (hftk/tasks/contract.py)"
        )
    return spec
