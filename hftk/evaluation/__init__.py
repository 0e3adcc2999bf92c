"""Evaluation of a run folder: metrics, report, plots. The task writes its own figures; shared pieces live here.

Metric modules ship inside hftk (``evaluation/metrics/<name>/<name>.py``) and are loaded by path with
``evaluate.load``, because ``evaluate.load("accuracy")`` needs the network.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from hftk.config import Recipe, load_recipe
from hftk.errors import HftkError
from hftk.tasks import get_task

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).parent / "metrics"


@functools.cache
def load_metric(name: str) -> Any:
    """Load one of hftk's shipped metric modules by path (offline)."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def inference_device() -> str:
    """Where evaluation, predict and demos run: the GPU when there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe of a finished (or running) run, with a clear error for a wrong folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HftkError(f"run folder '{run_dir}': no such folder")
    if not (run_dir / "recipe.yaml").is_file():
        raise HftkError(f"run folder '{run_dir}': no recipe.yaml, so not an hftk run (train one with `hftk train`)")
    return load_recipe(run_dir / "recipe.yaml")


def require_model(run_dir: Path) -> None:
    """A clear error unless ``run_dir`` holds a trained model (a full one, or an adapter)."""
    if not (run_dir / "config.json").is_file() and not (run_dir / "adapter_config.json").is_file():
        raise HftkError(
            f"run folder '{run_dir}': no trained model yet (training unfinished? use `hftk train --resume`)"
        )


def evaluate_run(run_dir: str | Path, split: str | None = None) -> dict[str, Any]:
    """Evaluate a run's final model on ``split`` (default: the recipe's eval split) and write ``eval/``."""
    recipe = load_run_recipe(run_dir)
    require_model(Path(run_dir))
    split = split or recipe.eval.split
    if split not in ("train", "validation", "test"):
        raise HftkError(f"--split '{split}': expected train, validation or test")
    return get_task(recipe.task).evaluate_report(Path(run_dir), recipe, split)


def eval_dir(run_dir: Path, split: str, default_split: str) -> Path:
    """``eval/`` for the recipe's split; ``eval/<split>/`` for the others, so they never overwrite it."""
    out = run_dir / "eval" if split == default_split else run_dir / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> None:
    """``metrics.json`` with flat keys (lists such as the confusion matrix kept as they are)."""
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "eval" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def plot_learning_curves(run_dir: Path, out_png: Path, metric: str) -> bool:
    """Train/validation loss and the validation ``metric`` over steps, from ``trainer_state.json``."""
    state_file = run_dir / "trainer_state.json"
    if not state_file.is_file():
        return False
    history = json.loads(state_file.read_text()).get("log_history", [])
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    val_metric = [(h["step"], h[f"eval_{metric}"]) for h in history if f"eval_{metric}" in h]
    if not (train or val):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for points, label in ((train, "train loss"), (val, "validation loss")):
        if points:
            axes[0].plot(*zip(*points), label=label, marker="." if len(points) < 30 else None)
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[0].legend()
    if val_metric:
        axes[1].plot(*zip(*val_metric), marker=".", color="tab:green")
    axes[1].set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True


def metrics_table(metrics: dict[str, Any], keys: list[str]) -> str:
    """A small Markdown table of the headline metrics present in ``metrics``."""
    rows = [f"| {k} | {metrics[k]:.4f} |" for k in keys if isinstance(metrics.get(k), (int, float))]
    return "\n".join(["| metric | value |", "|---|---|", *rows])
