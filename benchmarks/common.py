"""Shared pieces of the benchmark scripts: offline environment, machine line, RESULTS.md sections, quick runs."""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
sys.path.insert(0, str(ROOT))


# TrainingArguments of the plain-script baselines that keep a timed run quiet: no evaluation, checkpoints, logging
# or progress bars in the measured time
QUIET_TRAINING = {
    "report_to": [],
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_steps": 10**6,
    "disable_tqdm": True,
}
# the same quiet training as recipe overrides, for the hftk run beside a baseline (no evaluation: no best model)
QUIET_OVERRIDES = [
    *(f"train.{key}={json.dumps(value)}" for key, value in QUIET_TRAINING.items()),
    "train.load_best_model_at_end=false",
]
# the recipe's train keys a plain baseline copies, so it optimises exactly as the hftk run beside it
RECIPE_OPTIMIZATION_KEYS = (
    "per_device_train_batch_size",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
    "max_steps",
    "optim",
    "adam_beta2",
)


def machine() -> str:
    """``2026-11-26 10:00, 2 CPU cores, torch 2.14.1`` (and the GPU when there is one)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"{stamp}, {cores} CPU cores{gpu}, torch {torch.__version__}"


def write_section(name: str, text: str) -> None:
    """Replace (or append) the ``<!-- name:start -->`` ... ``<!-- name:end -->`` section of RESULTS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    current = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in current and end in current:
        current = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, current, flags=re.S)
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current)


def train_run(recipe: str, overrides: list[str], out: Path) -> dict:
    """Train ``recipe`` with ``overrides`` into ``out`` (replacing it) and return all_results.json + eval metrics."""
    from hftk.config import load_recipe
    from hftk.training import train

    train(load_recipe(recipe, overrides), out, overwrite=out.exists())
    results = json.loads((out / "all_results.json").read_text())
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {**results, **metrics}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
