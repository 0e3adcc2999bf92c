"""The model card of a run, and publishing a run folder to the Hugging Face Hub.

The card is a complete Hugging Face model card: metadata (library, pipeline tag, tags, datasets, base model,
license, metrics, a model-index with the task's headline results), what the model is, its data and splits, the
hyperparameters and training-results tables (transformers' own ``modelcard`` helpers), the evaluation results
and plots, how to use it, and the recipe that reproduces it. Every task fact comes from the task module.

The token is read by huggingface_hub itself (HF_TOKEN or `hf auth login`) and is never written to a recipe, a
log, a run folder or a card.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hftk.errors import HftkError
from hftk.sections import Recipe

logger = logging.getLogger(__name__)

# What a push uploads from a run folder (glob patterns, relative to it); checkpoints, optimizer states, the
# pickled training arguments and TensorBoard events stay local unless asked for.
# transformers 5 saves a tokenizer's chat template as chat_template.jinja
PUSH_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.py",
    "*.jinja",
    "README.md",
    "recipe.yaml",
    "samples.jsonl",
]
PUSH_EVAL = ["eval/**/*"]
PUSH_LOGS = ["runs/**/*"]
PUSH_CHECKPOINTS = ["checkpoint-*/**/*"]
HFTK_URL = "https://github.com/hftk/hftk"


def write_model_card(
    run_dir: Path,
    recipe: Recipe,
    metrics: dict[str, Any],
    trainer: Any = None,
    split_sizes: dict[str, int] | None = None,
) -> Path:
    """Write the run's ``README.md`` model card (validated metadata; sections as in the module docstring)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from hftk.tasks import get_task

    task = get_task(recipe.task)
    facts = task.facts(_run_config(run_dir))  # a task that trains several kinds of model: this run's kind
    dataset = recipe.data.name or Path(recipe.data.path or "local").name
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    headline = [k for k in task.headline if k in numbers]
    split = metrics.get("split", recipe.eval.split)
    results = [
        EvalResult(
            task_type=facts.pipeline_tag,
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=k,
            metric_value=round(float(numbers[k]), 5),
        )
        for k in headline
    ]
    packaged = packaged_weights(run_dir)
    adapter = _read_json(run_dir / "adapter_config.json")
    base_model = _base_model(recipe) or (packaged or {}).get("hub_id") or _adapter_base(adapter)
    data = ModelCardData(
        pipeline_tag=facts.pipeline_tag,
        tags=["hftk", recipe.task, *([recipe.model.name] if "/" not in recipe.model.name else []), *_method(adapter)],
        datasets=[dataset] if _is_hub_id(dataset) else None,
        base_model=base_model,
        license=recipe.hub.license,
        metrics=headline or None,
        model_name=recipe.name,
        eval_results=results or None,
        **_library(adapter, base_model),
    )
    sections = [
        f"# {recipe.name}",
        _description(run_dir, recipe, task, dataset, base_model, packaged),
        f"## Results ({split} split, {metrics.get('num_examples', '?')} examples)",
        _table(headline, numbers),
        *_plots(run_dir),
        "The full evaluation report, with per-example detail, is `eval/report.md`.",
        "## Training data",
        _data_section(recipe, dataset, split_sizes),
        "## Training procedure",
        *_training_tables(run_dir, trainer),
        "## How to use",
        _usage(run_dir, recipe, task),
        "## Reproduce",
        "The resolved recipe of this run (`recipe.yaml`); `hftk train recipe.yaml` trains it again:",
        "```yaml\n" + (run_dir / "recipe.yaml").read_text().strip() + "\n```",
        "## Framework versions",
        _versions(),
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    path = run_dir / "README.md"
    ModelCard(content).save(path)
    return path


def _is_hub_id(name: str) -> bool:
    return "/" in name and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~"))


def _base_model(recipe: Recipe) -> str | None:
    name = recipe.model.name
    return name if recipe.model.pretrained and _is_hub_id(name) else None


def _library(adapter: dict, base_model: str | None) -> dict[str, Any]:
    """Metadata for what the folder holds: a transformers model, or a PEFT adapter, which the Hub expects as
    ``library_name: peft`` with the ``base_model`` it goes on (``base_model_relation: adapter``)."""
    if not adapter:
        return {"library_name": "transformers"}
    if not base_model:
        logger.warning(
            "model card: the adapter's base model '%s' is not on the Hub, so the card names no base_model and the "
            "Hub cannot put the adapter on it",
            adapter.get("base_model_name_or_path"),
        )
        return {"library_name": "peft"}
    return {"library_name": "peft", "base_model_relation": "adapter"}


def _adapter_base(adapter: dict) -> str | None:
    """The Hub id a PEFT adapter was trained on (None when its base is a local folder)."""
    base = adapter.get("base_model_name_or_path") or ""
    return base if _is_hub_id(base) else None


def _method(adapter: dict) -> list[str]:
    """The adapter method as a tag (``lora``, ``dora``, ``ia3``...), as peft tags the adapters it saves."""
    method = str(adapter.get("peft_type") or "").lower()
    return ["dora" if adapter.get("use_dora") else method] if method else []


def packaged_weights(run_dir: Path) -> dict | None:
    """What the run's config records of pretrained weights a pip package shipped (``hftk.models.packaged``)."""
    from hftk.models.packaged import CONFIG_KEY

    for name in ("config.json", "model_config.json"):
        record = _read_json(run_dir / name).get(CONFIG_KEY)
        if record:
            return record
    return None


def _description(
    run_dir: Path, recipe: Recipe, task: Any, dataset: str, base_model: str | None, packaged: dict | None
) -> str:
    if packaged:
        weights = f"`{packaged['name']}` weights shipped by the pip package `{packaged['package']}`"
        weights += (
            f" (license {packaged['license']}; on the Hub: {base_model})"
            if base_model
            else f" (license {packaged['license']})"
        )
        origin = (
            f"its {packaged['part']} initialised from the {weights},"
            if packaged.get("part")
            else f"fine-tuned from the {weights}"
        )
    elif base_model:
        origin = f"fine-tuned from [{base_model}](https://huggingface.co/{base_model})"
    elif recipe.model.pretrained:
        origin = f"fine-tuned from `{recipe.model.name}`"
    else:
        origin = "trained from scratch (random init)"
    article = "An" if task.task[0] in "aeiou" else "A"
    text = f"{article} **{task.task}** model (`{recipe.model.name}`), {origin} on `{dataset}` with [hftk]({HFTK_URL})."
    counts = _read_json(run_dir / "all_results.json")
    if "total_parameters" in counts:
        share = 100 * counts["trainable_parameters"] / max(1, counts["total_parameters"])
        text += (
            f" {counts['total_parameters']:,} parameters, of which {counts['trainable_parameters']:,} "
            f"({share:.1f}%) were trained."
        )
    if (run_dir / "adapter_config.json").is_file():
        text += " This folder holds a PEFT adapter on top of the base model (`hftk merge` writes a merged model)."
    return text


def _table(keys: list[str], numbers: dict[str, Any]) -> str:
    rows = [f"| {k} | {numbers[k]:.4f} |" for k in keys]
    return "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "Not evaluated."


def _plots(run_dir: Path) -> list[str]:
    return [f"![{p.stem.replace('_', ' ')}](eval/{p.name})" for p in sorted((run_dir / "eval").glob("*.png"))]


def _data_section(recipe: Recipe, dataset: str, split_sizes: dict[str, int] | None) -> str:
    source = f"`{recipe.data.path}` (local)" if recipe.data.path else f"`{dataset}`"
    text = f"Data: {source}."
    if split_sizes:
        text += " Examples per split: " + ", ".join(f"{k} {v:,}" for k, v in split_sizes.items()) + "."
    text += " The test split is never used for training or model selection."
    return text


def _training_tables(run_dir: Path, trainer: Any) -> list[str]:
    """Hyperparameters and per-evaluation results, with transformers' own model-card helpers."""
    from transformers.modelcard import extract_hyperparameters_from_trainer, make_markdown_table, parse_log_history

    parts = []
    if trainer is not None:
        hyperparameters = extract_hyperparameters_from_trainer(trainer)
        parts += ["### Hyperparameters", "\n".join(f"- {k}: {v}" for k, v in hyperparameters.items())]
    history = _read_json(run_dir / "trainer_state.json").get("log_history", [])
    _, lines, _ = parse_log_history(history) if history else (None, None, None)
    if lines:
        parts += ["### Training results", make_markdown_table(lines).strip()]
    return parts


def _run_config(run_dir: Path) -> Any:
    """The run's model config (``model_config.json`` in an adapter run), or None before a model is saved."""
    from transformers import AutoConfig

    for name in ("config.json", "model_config.json"):
        if (run_dir / name).is_file():
            return AutoConfig.from_pretrained(str(run_dir / name))
    return None


def _usage(run_dir: Path, recipe: Recipe, task: Any) -> str:
    where = recipe.hub.model_id or "path/to/this/folder"
    config = run_dir / "config.json"
    remote = ", trust_remote_code=True" if config.is_file() and "auto_map" in config.read_text() else ""
    note = "  # the folder carries its model's code" if remote else ""
    facts = task.facts(_run_config(run_dir))
    pipeline_task = facts.pipeline_task or facts.pipeline_tag  # transformers lacks some: hftk registers them
    registers = ["import hftk", f"hftk.register()  # pipeline('{pipeline_task}')"] if facts.pipeline_task else []
    return "\n".join(
        [
            "```python",
            "from transformers import pipeline",
            *registers,
            "",
            f'pipe = pipeline("{pipeline_task}", model="{where}"{remote}){note}',
            task.pipeline_example,
            "```",
            "",
            f"With hftk: `hftk predict {where} INPUT...`, `hftk demo {where}` (a local Gradio app), "
            f"`hftk evaluate {where}`.",
        ]
    )


def _versions() -> str:
    import importlib.metadata as metadata

    names = ("hftk", "transformers", "torch", "datasets", "accelerate", "timm", "peft")
    lines = []
    for name in names:
        try:
            lines.append(f"- {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def push_files(run_dir: Path, include_checkpoints: bool = False, include_logs: bool = False) -> list[str]:
    """The files (relative paths) ``push_run`` uploads from ``run_dir``, sorted."""
    patterns = (
        PUSH_PATTERNS
        + PUSH_EVAL
        + (PUSH_LOGS if include_logs else [])
        + (PUSH_CHECKPOINTS if include_checkpoints else [])
    )
    files = set()
    for pattern in patterns:
        top_level = "/" not in pattern
        for path in run_dir.glob(pattern):
            if path.is_file() and (not top_level or path.parent == run_dir):
                files.add(path.relative_to(run_dir).as_posix())
    return sorted(f for f in files if not f.endswith((".tmp", ".bin", ".pt", ".pth", ".pkl")))


def check_repo_id(repo_id: str | None) -> str:
    """``name`` or ``owner/name`` as the Hub accepts it, or a one-line error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise HftkError("push: no repo id; set hub.model_id in the recipe or pass --repo-id user/name")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HftkError(
            f"push: repo id '{repo_id}' is not 'name' or 'owner/name' (letters, digits, '-', '_', '.'; "
            "at most 96 characters)"
        ) from None
    return repo_id


def push_run(
    run_dir: Path,
    repo_id: str | None,
    private: bool = True,
    revision: str | None = None,
    commit_message: str | None = None,
    include_checkpoints: bool = False,
) -> str:
    """Upload a finished run folder (model, processor, recipe, eval, card) to a Hub model repo.

    Creates the repo (and the ``revision`` branch) when needed. Returns the URL of the repo.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    repo_id = check_repo_id(repo_id)
    if not (run_dir / "config.json").is_file() and not (run_dir / "adapter_config.json").is_file():
        raise HftkError(f"push: {run_dir} holds no trained model (no config.json); train it first or check the path")
    files = push_files(run_dir, include_checkpoints)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(run_dir),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            allow_patterns=files,
            commit_message=commit_message or f"Upload {run_dir.name} with hftk",
        )
    except OfflineModeIsEnabled:
        raise HftkError(f"push to '{repo_id}': HF_HUB_OFFLINE=1 is set; unset it on a machine with network") from None
    except LocalTokenNotFoundError:
        raise HftkError(f"push to '{repo_id}': not logged in; run `hf auth login` or set HF_TOKEN") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = " (log in with `hf auth login` or set HF_TOKEN)" if "401" in first or "403" in first else ""
        raise HftkError(f"push to '{repo_id}' failed: {first[:200]}{hint}") from None
    logger.info("pushed %d files of %s to %s", len(files), run_dir, url)
    return str(url)
