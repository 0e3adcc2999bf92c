"""Evaluation pieces every task's report uses: metric modules, the report's shape, learning curves, metrics files.

The task evaluates its own model and draws its own figures (``hftk/evaluation/<kind>.py``); ``hftk.runs.evaluate_run``
looks the task up. Nothing here knows a task.

Metric modules ship inside hftk (``evaluation/metrics/<name>/<name>.py``) and are loaded by path with
``evaluate.load``, because ``evaluate.load("accuracy")`` needs the network.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

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
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
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
    return True


def write_report(
    path: Path,
    title: str,
    intro: list[str],
    metrics: dict[str, Any],
    headline: list[str],
    body: list[str],
    worst: tuple[str, list[str], str | None] | None = None,
) -> None:
    """``report.md`` in the shape every task's report has: title, what was measured, the headline table, the task's
    own sections, the learning curves, and the worst examples (``(heading, lines, picture or None)``)."""
    lines = [f"# {title}", "", *intro, *([""] if intro else []), metrics_table(metrics, headline), "", *body, ""]
    lines += ["![learning curves](learning_curves.png)", ""]
    if worst is not None:
        heading, rows, picture = worst
        lines += [f"## {heading}", "", *(rows or ["none"]), ""]
        lines += [f"![{heading.lower()}]({picture})", ""] if picture and rows else []
    path.write_text("\n".join(lines))


def metrics_table(metrics: dict[str, Any], keys: list[str]) -> str:
    """A small Markdown table of the headline metrics present in ``metrics``."""
    rows = [f"| {k} | {metrics[k]:.4f} |" for k in keys if isinstance(metrics.get(k), (int, float))]
    return "\n".join(["| metric | value |", "|---|---|", *rows])
