"""Write a Gradio Space for a run: ``app.py``, ``requirements.txt``, a README with Space metadata, and the model.

Usage:
    hftk space runs/resnet-mnist spaces/resnet-mnist                 # the run folder bundled under model/
    hftk space runs/resnet-mnist spaces/resnet-mnist --model-id me/mnist   # the app downloads the pushed run

The folder is a complete Space: push it with `hf upload <user>/<space> spaces/resnet-mnist --repo-type space`.
hftk itself is bundled as source (``hftk/``), so the Space needs nothing that is not on PyPI; ``requirements.txt``
lists hftk's own dependencies. The app serves on ``$GRADIO_SERVER_NAME`` (a Space sets 0.0.0.0) and on
127.0.0.1 when run anywhere else.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

from hftk.errors import HftkError

APP = '''"""Gradio Space for {name} ({task}), written by `hftk space`. Locally: python app.py [--port 7860]"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bundled hftk

from hftk.demos import app_main  # noqa: E402

MODEL_ID = {model_id!r}  # a Hub repo pushed with `hftk push`, or None: the run bundled in ./model


def run_folder() -> str:
    if MODEL_ID is None:
        return str(HERE / "model")
    from huggingface_hub import snapshot_download

    return snapshot_download(MODEL_ID)


if __name__ == "__main__":
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")  # a Space sets 0.0.0.0
    sys.exit(app_main("{name}", [run_folder(), "--host", host, *sys.argv[1:]]))
'''

README = """---
title: {title}
emoji: {emoji}
colorFrom: indigo
colorTo: blue
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: {license}
{models}tags:
- hftk
- {task}
---

# {name}

A Gradio demo of the `{task}` model `{name}`, trained with hftk. {model_note}
"""

EMOJI = {"image": "🖼️", "text": "📝", "chat": "💬", "detection": "🔎"}
SKIP = ("checkpoint-*", "runs", "onnx", "*.bin", "*.pt", "*.pth", "*.tmp", "__pycache__")


def write_space(run_dir: Path, out_dir: Path, model_id: str | None = None, overwrite: bool = False) -> Path:
    """Write the Space folder for ``run_dir`` into ``out_dir`` (which must be new or empty, unless ``overwrite``)."""
    from hftk.hub import check_repo_id
    from hftk.runs import load_run_recipe, require_model

    recipe = load_run_recipe(run_dir)
    if model_id is None:
        require_model(run_dir)
    else:
        check_repo_id(model_id)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise HftkError(f"{out_dir} is not empty; choose a new folder or pass --overwrite")
        if not (out_dir / "app.py").is_file():
            raise HftkError(f"--overwrite: {out_dir} is not a Space written by hftk (no app.py); not deleting it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    package = Path(__file__).resolve().parent
    shutil.copytree(package, out_dir / "hftk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if model_id is None:
        shutil.copytree(run_dir, out_dir / "model", ignore=shutil.ignore_patterns(*SKIP))
    (out_dir / "app.py").write_text(APP.format(name=recipe.name, task=recipe.task, model_id=model_id))
    (out_dir / "requirements.txt").write_text("\n".join(_requirements()) + "\n")
    emoji = next((e for key, e in EMOJI.items() if key in recipe.task), "🤗")
    note = (
        f"The model is [{model_id}](https://huggingface.co/{model_id})." if model_id else "The model is in `model/`."
    )
    (out_dir / "README.md").write_text(
        README.format(
            title=recipe.name[:30],
            emoji=emoji,
            gradio_version=importlib.metadata.version("gradio"),
            license=recipe.hub.license,
            models=f"models:\n- {model_id}\n" if model_id else "",
            task=recipe.task,
            name=recipe.name,
            model_note=note,
        )
    )
    return out_dir


def _requirements() -> list[str]:
    """hftk's runtime dependencies (no extras), as its installed metadata states them."""
    requirements = importlib.metadata.requires("hftk") or []
    return [r.split(";")[0].strip() for r in requirements if "extra ==" not in r and re.match(r"^[A-Za-z]", r)]
