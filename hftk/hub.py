"""Model card and publishing a run folder to the Hugging Face Hub.

The token is read by huggingface_hub itself (HF_TOKEN or `hf auth login`) and is never written to a
recipe, a log, a run folder or a card.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hftk.config import Recipe
from hftk.errors import HftkError

logger = logging.getLogger(__name__)

# What never leaves the machine: checkpoints (optimizer state), TensorBoard events stay optional.
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.tmp", "**/.ipynb_checkpoints"]


def write_model_card(run_dir: Path, recipe: Recipe, metrics: dict[str, Any]) -> Path:
    """Write ``README.md``: Hub metadata (task, library, metrics as model-index) and how to use the model."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from hftk.tasks import get_task

    task = get_task(recipe.task)
    dataset = recipe.data.name or Path(recipe.data.path or "local").name
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    headline = [k for k in task.HEADLINE if k in numbers]
    results = [
        EvalResult(
            task_type=task.PIPELINE_TAG,
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=metrics.get("split", recipe.eval.split),
            metric_type=k,
            metric_value=round(float(numbers[k]), 5),
        )
        for k in headline
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task.PIPELINE_TAG,
        tags=["hftk", recipe.task, recipe.model.name],
        datasets=[dataset] if "/" in dataset else None,
        model_name=recipe.name,
        eval_results=results or None,
    )
    table = "\n".join(f"| {k} | {numbers[k]:.4f} |" for k in headline)
    config = run_dir / "config.json"
    custom = config.is_file() and "auto_map" in config.read_text()
    remote = ", trust_remote_code=True)  # the folder carries the model's code" if custom else ")"
    content = f"""---
{data.to_yaml()}
---

# {recipe.name}

A `{recipe.model.name}` model for **{recipe.task}**, trained with hftk on `{dataset}`.

## Results ({metrics.get("split", recipe.eval.split)} split)

| metric | value |
|---|---|
{table}

## Use

```python
from transformers import pipeline

pipe = pipeline("{task.PIPELINE_TAG}", model="{recipe.hub.model_id or "path/to/this/folder"}"{remote}
{task.PIPELINE_EXAMPLE}
```

Try it locally: `hftk demo <this folder>`. The full recipe is in `recipe.yaml`; plots and the evaluation
report are in `eval/`.
"""
    path = run_dir / "README.md"
    ModelCard(content).save(path)
    return path


def push_run(run_dir: Path, repo_id: str | None, private: bool = True, include_logs: bool = False) -> str:
    """Upload a finished run folder (model, processor, recipe, eval, card) to a Hub model repo.

    Returns:
        The URL of the repo.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not repo_id:
        raise HftkError("push: no repo id; set hub.model_id in the recipe or pass --repo-id user/name")
    if not (run_dir / "config.json").is_file():
        raise HftkError(f"push: {run_dir} holds no trained model (config.json missing)")
    ignore = PUSH_IGNORE + ([] if include_logs else ["runs/**"])
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(run_dir), repo_id=repo_id, repo_type="model", ignore_patterns=ignore)
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HftkError(
            f"push to '{repo_id}' failed: {str(err).splitlines()[0]} (log in with `hf auth login`)"
        ) from None
    logger.info("pushed %s to %s", run_dir, url)
    return str(url)
