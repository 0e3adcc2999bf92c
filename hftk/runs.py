"""The run side every task shares: a run folder's recipe, task and model, its inputs, and its evaluation.

A run folder (``runs/<name>/``) is the contract between train, evaluate, predict, demo, export and push. What each
task used to repeat to serve one lives here once:

- ``load_run`` reads the resolved recipe and looks its task up (the one place below the CLI that does);
- ``load_run_model`` loads the trained model (full, or base + adapter) and its processor once per folder and save;
- ``expand_inputs`` turns folders into their files, ``saved_examples`` lists the test images an evaluation kept;
- ``evaluate_run`` runs the task's evaluation and writes ``eval/``.

Usage:
    recipe, task = load_run("runs/resnet-mnist")
    model, processor = load_run_model("runs/resnet-mnist", AutoModelForImageClassification, load_image_processor)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hftk.config import load_recipe
from hftk.errors import HftkError
from hftk.sections import Recipe
from hftk.tasks import get_task
from hftk.tasks.contract import TaskSpec

CONFIG_FILES = ("config.json", "adapter_config.json", "model_config.json")  # rewritten by every save


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe of a finished (or running) run, with a clear error for a wrong folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HftkError(f"run folder '{run_dir}': no such folder")
    if not (run_dir / "recipe.yaml").is_file():
        raise HftkError(f"run folder '{run_dir}': no recipe.yaml, so not an hftk run (train one with `hftk train`)")
    return load_recipe(run_dir / "recipe.yaml")


def require_model(run_dir: str | Path) -> None:
    """A clear error unless ``run_dir`` holds a trained model (a full one, or an adapter)."""
    if not any((Path(run_dir) / name).is_file() for name in CONFIG_FILES[:2]):
        raise HftkError(
            f"run folder '{run_dir}': no trained model yet (training unfinished? use `hftk train --resume`)"
        )


def load_run(run_dir: str | Path, need_model: bool = True) -> tuple[Recipe, TaskSpec]:
    """``(recipe, task spec)`` of a run folder; with ``need_model`` an error unless it holds a trained model."""
    recipe = load_run_recipe(run_dir)
    if need_model:
        require_model(run_dir)
    return recipe, get_task(recipe.task)


def evaluate_run(run_dir: str | Path, split: str | None = None) -> dict[str, Any]:
    """Evaluate a run's final model on ``split`` (default: the recipe's eval split) and write ``eval/``."""
    recipe, task = load_run(run_dir)
    split = split or recipe.eval.split
    if split not in ("train", "validation", "test"):
        raise HftkError(f"--split '{split}': expected train, validation or test")
    return task.evaluate_report(Path(run_dir), recipe, split)


def _stamp(run_dir: str | Path) -> tuple:
    return tuple(f.stat().st_mtime_ns if f.is_file() else 0 for f in (Path(run_dir) / n for n in CONFIG_FILES))


def load_run_model(run_dir: str | Path, auto_class: type, load_processor: Callable[[str, Any], Any]) -> tuple:
    """The run's trained model (on the inference device, in eval mode) and its processor, loaded as any transformers
    user would (the full model, or its base with the run's adapter on top); once per folder and save.

    Args:
        run_dir: the run folder.
        auto_class: the task's Auto class (``AutoModelForImageClassification``).
        load_processor: ``(run_dir, model config) -> processor`` (image processor or tokenizer).
    """
    return _load_run_model(str(run_dir), auto_class, load_processor, _stamp(run_dir))


@functools.lru_cache(maxsize=4)
def _load_run_model(run_dir: str, auto_class: type, load_processor: Callable, stamp: tuple) -> tuple:
    from hftk.evaluation import inference_device
    from hftk.models.adapters import load_run_weights
    from hftk.models.registration import register

    register()  # a run of an LSTM/GRU loads through the Auto classes
    model = load_run_weights(auto_class, run_dir)
    return model.to(inference_device()).eval(), load_processor(run_dir, model.config)


def clear_run_cache() -> None:
    """Forget every loaded run model (a test that changes a run folder in place)."""
    _load_run_model.cache_clear()


def expand_inputs(inputs: Iterable, extensions: set[str], what: str) -> list:
    """Inputs with each folder replaced by its files with ``extensions`` (sorted, recursive); an empty folder is an
    error naming ``what`` it should hold."""
    expanded = []
    for item in inputs:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            files = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in extensions)
            if not files:
                raise HftkError(f"{item}: no {what} in this folder")
            expanded += files
        else:
            expanded.append(item)
    return expanded


def saved_examples(run_dir: str | Path, count: int) -> list[str]:
    """Test-split images the evaluation saved in ``eval/examples`` (one per class first), as file paths."""
    return sorted(str(p) for p in (Path(run_dir) / "eval" / "examples").glob("*.png"))[:count]
