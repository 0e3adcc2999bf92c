"""hftk's cache ($HF_HOME/hftk): folders made once (the embedded shapes, converted pretrained weights), then reused.

``build_once`` writes a folder into a temporary sibling and renames it into place at the end, so a concurrent or
killed run never leaves (or reads) half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$HF_HOME/hftk``: beside the Hub's own cache, and moved with it."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hftk"


def build_once(target: Path, done: str, build: Callable[[Path], None]) -> bool:
    """Make ``target`` with ``build(empty folder)`` unless it holds the file ``done`` already; True when it built it.

    ``done`` is written last by ``build``: a folder without it is not finished. Another process that finishes first
    keeps its copy.
    """
    if (target / done).is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / done).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True
