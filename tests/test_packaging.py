"""A plain (non-editable) install carries what hftk needs at run time (recipes, metric modules) and trains anywhere."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hftk.config import RECIPES_DIR
from hftk.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
LOCAL_ONLY = (".git", ".venv", "build", "runs", "*.egg-info", "__pycache__", ".*_cache")


def test_installed_package_trains_its_default_recipe_from_another_folder(tmp_path):
    # a copy of the sources: setuptools builds in the source tree's build/, whose stale files (a recipe renamed since
    # the last build) a plain `pip install .` would ship
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=shutil.ignore_patterns(*LOCAL_ONLY))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    installed = target / "hftk"
    shipped = sorted(p.relative_to(RECIPES_DIR) for p in RECIPES_DIR.glob("*/*.yaml"))
    assert sorted(p.relative_to(installed / "recipes") for p in (installed / "recipes").glob("*/*.yaml")) == shipped
    assert (installed / "evaluation" / "metrics" / "classification" / "classification.py").is_file()
    overrides = get_task("image-classification").tiny_overrides
    script = (
        f"import sys; sys.path.insert(0, {str(target)!r}); import hftk\n"
        f"assert hftk.__file__.startswith({str(target)!r})\n"
        "from hftk.cli import main\n"
        f"sys.exit(main(['-q', 'train', 'image-classification', *{overrides!r}, '--output-dir', 'run']))"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (work / "run" / "model.safetensors").is_file() and (work / "run" / "eval" / "metrics.json").is_file()
