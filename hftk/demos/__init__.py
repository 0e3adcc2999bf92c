"""Gradio demos: one builder per task (``hftk/demos/<task>.py``), launched on 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hftk.errors import HftkError
from hftk.runs import load_run

logger = logging.getLogger(__name__)


def metrics_line(metrics: dict, headline: list[str]) -> str:
    """``test split: accuracy 0.9920, ...`` for a demo's header (or that the run is not evaluated yet)."""
    scores = ", ".join(f"{k} {metrics[k]:.4f}" for k in headline if isinstance(metrics.get(k), (int, float)))
    split = metrics.get("split", "test")
    return f"{split} split: {scores}" if scores else "not evaluated yet"


def seed_value(value: Any) -> int | None:
    """A demo's seed field as a seed (-1 or empty: random)."""
    return int(value) if value not in (None, "", -1) else None


def build(run_dir: str | Path):
    """The run's demo as a ``gradio.Blocks`` (not launched)."""
    recipe, task = load_run(run_dir)
    return task.demo(Path(run_dir)), recipe


def launch(run_dir: str | Path, host: str | None = None, port: int | None = None, **kwargs):
    """Build and serve the demo on the recipe's ``demo.host`` (127.0.0.1 by default); returns the Blocks."""
    blocks, recipe = build(run_dir)
    host = host or recipe.demo.host
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("the demo listens on %s: anyone who can reach this machine can use it", host)
    blocks.launch(server_name=host, server_port=port or recipe.demo.port, **kwargs)
    return blocks


def app_main(description: str, argv: list[str] | None = None) -> int:
    """The body of every ``apps/<task>.py``: parse a run folder (default ``.``, as on a Space) and serve it."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_dir", nargs="?", default=".", help="run folder (default: this folder, as on a Space)")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    args = parser.parse_args(argv)
    try:
        launch(args.run_dir, host=args.host, port=args.port)
    except HftkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
