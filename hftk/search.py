"""`hftk search`: a hyperparameter search over recipe keys with Optuna (TPE, median pruning), one run per trial.

Usage:
    hftk search image-classification/resnet-digits --trials 10 [--space space.yaml] [KEY=VALUE ...]

Every trial is a normal hftk run (``hftk.training.train``) of the recipe with the trial's values as overrides, in
``<search>/trial-NNN/``. The objective is the task's main validation metric (``train.metric_for_best_model``, the
task's ``headline[0]`` by default) in its direction (``train.greater_is_better``), as the run's model scores it: the
best evaluation when ``train.load_best_model_at_end`` keeps that model, else the last. Each evaluation is reported to
Optuna, whose median pruner stops a trial that trails the median of earlier trials at the same step. The search
folder gets ``report.md`` (a table and a plot of the trials) and ``best.yaml``, the best trial's resolved recipe:
``hftk train <search>/best.yaml`` trains that model again. Trial 0 is the recipe as given when its values lie in the
space, so the report shows what the search gained.

Optuna is driven directly rather than through ``Trainer.hyperparameter_search``, which fits hftk's contract badly: it
re-runs one Trainer with ``TrainingArguments`` changed per trial (and a ``model_init``), so keys that rebuild the data
or the model (augmentation, block size, LoRA rank) cannot vary; its trials are checkpoint folders (``run-N/``) without
a final model, recipe, evaluation or model card; and it cannot take the per-layer optimizer factories hftk passes.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from hftk.config import load_recipe, read_yaml
from hftk.errors import HftkError, did_you_mean
from hftk.sections import Recipe
from hftk.tasks import get_task

logger = logging.getLogger(__name__)

RANGE_KEYS = ("low", "high", "log", "step")
PEFT_RANKED = ("lora", "dora", "loha", "lokr")


@dataclass(frozen=True)
class Dimension:
    """One recipe key searched: a range (``low``..``high``, ``log`` scale, ``step``) or a list of ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    def suggest(self, trial: Any) -> Any:
        """The trial's value: categorical for choices, an integer range when low, high and step are integers."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1)):
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (trial 0 replays the recipe's own values)."""
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def samples(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def objective_of(recipe: Recipe) -> tuple[str, str]:
    """``(metric, "maximize" | "minimize")``: the task's main validation metric and its direction."""
    metric = recipe.train.get("metric_for_best_model") or get_task(recipe.task).headline[0]
    metric = metric.removeprefix("eval_")
    greater = recipe.train.get("greater_is_better")
    if greater is None:
        greater = not metric.endswith("loss")  # transformers' own rule for metric_for_best_model
    return metric, "maximize" if greater else "minimize"


def parse_space(raw: dict[str, Any], where: str) -> list[Dimension]:
    """Dimensions from a space mapping: ``key: {low, high[, log][, step]}`` or ``key: [choice, ...]``."""
    if not raw:
        raise HftkError(
            f"{where}: the search space is empty; give keys such as 'train.learning_rate: {{low: 1e-4, high: 1e-2}}'"
        )
    dimensions = []
    for key, spec in raw.items():
        at = f"{where}: {key}"
        if not isinstance(key, str) or "." not in key:
            raise HftkError(f"{at}: expected a dotted recipe key such as train.learning_rate")
        if isinstance(spec, list):
            if not spec:
                raise HftkError(f"{at}: an empty list of choices; give at least two values")
            if any(not isinstance(v, (bool, int, float, str)) for v in spec):
                raise HftkError(f"{at}: choices are numbers, strings or true/false, got {spec!r}")
            dimensions.append(Dimension(key, choices=list(spec)))
            continue
        if not isinstance(spec, dict):
            raise HftkError(f"{at}: expected {{low: ..., high: ...}} or a list of choices, got {spec!r}")
        for name in spec:
            if name not in RANGE_KEYS:
                hint = did_you_mean(name, list(RANGE_KEYS)) or f"expected {', '.join(RANGE_KEYS)}"
                raise HftkError(f"{at}: unknown range key '{name}'; {hint}")
        low, high = (_number(spec.get(k), f"{at}.{k}") for k in ("low", "high"))
        if not low < high:
            raise HftkError(f"{at}: empty range [{low}, {high}]; give low < high")
        if spec.get("log") and low <= 0:
            raise HftkError(f"{at}: a log range needs low > 0, got {low}")
        step = _number(spec["step"], f"{at}.step") if spec.get("step") is not None else None
        dimensions.append(Dimension(key, low, high, bool(spec.get("log")), step))
    return dimensions


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HftkError(f"{where}: expected a number, got {value!r}")
    return value


def default_space(recipe: Recipe) -> list[Dimension]:
    """Without --space: the learning rate (/10 to x10, log), weight decay, warmup (when a fraction) and LoRA rank."""
    lr = float(recipe.train.get("learning_rate", 5e-5))
    space = [Dimension("train.learning_rate", lr / 10, lr * 10, log=True), Dimension("train.weight_decay", 0.0, 0.2)]
    if float(recipe.train.get("warmup_steps", 0)) < 1:
        space.append(Dimension("train.warmup_steps", 0.0, 0.2))
    if recipe.model.peft.method in PEFT_RANKED:
        space.append(Dimension("model.peft.r", choices=[4, 8, 16, 32]))
    return space


def check_space(space: list[Dimension], recipe_ref: str, overrides: list[str], where: str) -> None:
    """Every key a recipe key, every value one it takes: the recipe is loaded with each end of each range."""
    for dim in space:
        for value in dim.samples():
            try:
                load_recipe(recipe_ref, [*overrides, f"{dim.key}={json.dumps(value)}"])
            except HftkError as err:
                raise HftkError(f"{where}: {dim.key}: {str(err).replace('command-line override: ', '')}") from None


def recipe_value(recipe: Recipe, key: str) -> Any:
    """The recipe's value at a dotted key (a TrainingArguments default for train keys it leaves unset)."""
    node: Any = recipe.to_dict()
    section, *rest = key.split(".")
    if section == "train" and rest and rest[0] not in recipe.train:
        fields = {f.name: f for f in dataclasses.fields(get_task(recipe.task).training_arguments)}
        field = fields.get(rest[0])
        return field.default if field is not None and field.default is not dataclasses.MISSING else None
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


class TrialReport(TrainerCallback):
    """Reports each validation evaluation to the Optuna trial and stops training when the pruner says so.

    Stopping (not raising ``TrialPruned`` inside the Trainer) lets the run end as every run does: saved, evaluated on
    the test split, with its model card; the search then records the trial as pruned.
    """

    def __init__(self, trial: Any, metric: str):
        self.trial = trial
        self.metric = metric
        self.values: list[tuple[int, float]] = []
        self.pruned_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None or not state.is_world_process_zero:
            return
        self.values.append((state.global_step, float(value)))
        self.trial.report(float(value), state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True


@dataclass
class SearchSettings:
    """What `hftk search` was asked: the recipe and overrides, trial count, space file, folder, sampler seed."""

    recipe: str
    overrides: list[str]
    trials: int
    space: str | None = None
    output_dir: str | None = None
    overwrite: bool = False
    seed: int = 42


def search(settings: SearchSettings) -> Path:
    """Run the search; returns the search folder (trial-NNN/ run folders, trials.json, report.md, best.yaml)."""
    try:
        import optuna
    except ImportError:
        raise HftkError("hftk search needs Optuna: pip install 'hftk[search]'") from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise HftkError("hftk search runs its trials one after another in one process; start it without accelerate")
    if settings.trials < 1:
        raise HftkError(f"--trials {settings.trials}: expected at least 1")
    recipe = load_recipe(settings.recipe, settings.overrides)
    if recipe.train.get("eval_strategy", "no") == "no":
        raise HftkError("hftk search needs validation evaluations: set train.eval_strategy (steps or epoch)")
    where = settings.space or "the default space"
    if settings.space and not Path(settings.space).is_file():
        raise HftkError(f"--space '{settings.space}': no such file (a YAML of recipe keys and their ranges)")
    space = parse_space(read_yaml(Path(settings.space)), where) if settings.space else default_space(recipe)
    check_space(space, settings.recipe, settings.overrides, where)
    folder = _search_folder(Path(settings.output_dir or Path("runs") / f"{recipe.name}-search"), settings.overwrite)
    metric, direction = objective_of(recipe)
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=min(10, max(3, settings.trials // 3)))
    study = optuna.create_study(direction=direction, sampler=sampler, pruner=optuna.pruners.MedianPruner())
    own = {dim.key: recipe_value(recipe, dim.key) for dim in space}
    baseline = all(dim.holds(own[dim.key]) for dim in space)
    if baseline:
        study.enqueue_trial(own)  # trial 0: the recipe as given, the baseline the search has to beat
    logger.info(
        "search: %d trials of %s over %s, %s validation %s", settings.trials, recipe.name, where, direction, metric
    )
    records: list[dict] = []

    def objective(trial: Any) -> float:
        values = {dim.key: dim.suggest(trial) for dim in space}
        record = _run_trial(trial, values, settings, recipe.name, folder, metric)
        record["baseline"] = baseline and trial.number == 0
        records.append(record)
        _write_trials(folder, records, metric, direction)
        if record["state"] == "pruned":
            raise optuna.TrialPruned()
        return record["value"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hftk logs each trial itself
    try:
        study.optimize(objective, n_trials=settings.trials)
    finally:  # a search stopped by an error or Ctrl-C still reports the trials it finished
        finished = [r for r in records if r["state"] == "complete" and math.isfinite(r["value"])]
        if finished:
            best = (max if direction == "maximize" else min)(finished, key=lambda r: r["value"])
            write_best_recipe(folder, best, metric, settings)
        write_report(folder, records, metric, direction, settings)
    return folder


def _search_folder(folder: Path, overwrite: bool) -> Path:
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise HftkError(f"{folder} already holds files; use --overwrite to replace that search or --output-dir")
        if not (folder / "trials.json").is_file():
            raise HftkError(f"--overwrite: {folder} is not an hftk search folder (no trials.json); not deleting it")
        import shutil

        logger.warning("--overwrite: deleting the previous search in %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_trial(trial: Any, values: dict, settings: SearchSettings, name: str, folder: Path, metric: str) -> dict:
    """Train one trial's run folder and return its record (values, objective, state, steps)."""
    from hftk.training import train

    run_dir = folder / f"trial-{trial.number:03d}"
    overrides = [
        *settings.overrides,
        *(f"{k}={json.dumps(v)}" for k, v in values.items()),
        f"name={name}-trial-{trial.number:03d}",
    ]
    recipe = load_recipe(settings.recipe, overrides)
    logger.info(
        "trial %d: %s",
        trial.number,
        ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()),
    )
    report = TrialReport(trial, metric)
    train(recipe, run_dir, callbacks=[report])
    gc.collect()
    state = json.loads((run_dir / "trainer_state.json").read_text())
    value = report.values[-1][1] if report.values else float("nan")
    if recipe.train.get("load_best_model_at_end") and state.get("best_metric") is not None:
        value = float(state["best_metric"])  # the run's model is its best checkpoint
    test = json.loads((run_dir / "eval" / "metrics.json").read_text()).get(metric)
    return {
        "number": trial.number,
        "state": "pruned" if report.pruned_at is not None else "complete",
        "values": values,
        "value": value,
        "test": test,
        "steps": state.get("global_step"),
        "curve": report.values,
        "run_dir": run_dir.name,
    }


def _write_trials(folder: Path, records: list[dict], metric: str, direction: str) -> None:
    data = {"metric": metric, "direction": direction, "trials": records}
    (folder / "trials.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_best_recipe(folder: Path, best: dict, metric: str, settings: SearchSettings) -> Path:
    """``best.yaml``: the best trial's resolved recipe, named ``<recipe>-best``, with the command that trains it."""
    recipe = load_recipe(folder / best["run_dir"] / "recipe.yaml")
    recipe.name = recipe.name.rsplit("-trial-", 1)[0] + "-best"
    path = folder / "best.yaml"
    header = (
        f"# The best of {settings.trials} trials of `hftk search {settings.recipe}`: trial {best['number']} "
        f"({best['run_dir']}/), validation {metric} {best['value']:.4g}.\n"
        f"# Run:  hftk train {path}\n"
        f"# Try:  hftk train {path} --output-dir runs/{recipe.name}\n"
    )
    path.write_text(header + yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return path


def write_report(folder: Path, records: list[dict], metric: str, direction: str, settings: SearchSettings) -> Path:
    """``report.md``: one row per trial (its values, validation objective, steps, test figure) and ``trials.png``."""
    keys = list(records[0]["values"]) if records else []
    finished = [r for r in records if r["state"] == "complete" and math.isfinite(r["value"])]
    pick = max if direction == "maximize" else min
    best = pick(finished, key=lambda r: r["value"]) if finished else None
    header = ["trial", "state", *keys, f"validation {metric}", "steps", f"test {metric}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        mark = " **best**" if r is best else ""
        cells = [f"[{r['number']}]({r['run_dir']}/){mark}", r["state"], *(_show(r["values"][k]) for k in keys)]
        cells += [_show(r["value"]), str(r["steps"]), _show(r["test"])]
        lines.append("| " + " | ".join(cells) + " |")
    plotted = _plot_trials(folder / "trials.png", records, metric, direction)
    summary = ["No trial finished."]
    if best is not None:
        summary = [
            f"Best: trial {best['number']}, validation {metric} {_show(best['value'])} (test {_show(best['test'])}); "
            f"its recipe is `best.yaml`: `hftk train {folder / 'best.yaml'}`."
        ]
        if records and records[0].get("baseline"):
            first = records[0]
            summary.append(
                f"Trial 0 is the recipe as given: validation {_show(first['value'])}, test {_show(first['test'])}."
            )
    text = [
        f"# hftk search: {settings.recipe}",
        "",
        f"{len(records)} trials, Optuna TPE (seed {settings.seed}) with median pruning; objective: {direction} the "
        f"validation `{metric}` of each run's model. Overrides: `{' '.join(settings.overrides) or 'none'}`; space: "
        f"{settings.space or 'the default (learning rate, weight decay, warmup, LoRA rank)'}.",
        "",
        *summary,
        "",
        *lines,
        "",
        *(["![trials](trials.png)"] if plotted else []),
    ]
    path = folder / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path


def _show(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def _plot_trials(path: Path, records: list[dict], metric: str, direction: str) -> bool:
    """The objective of each trial with the best so far, and each trial's validation curve."""
    if not records:
        return False
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    done = [r for r in records if r["state"] == "complete"]
    pruned = [r for r in records if r["state"] == "pruned"]
    left.scatter([r["number"] for r in done], [r["value"] for r in done], label="complete", color="tab:blue")
    left.scatter([r["number"] for r in pruned], [r["value"] for r in pruned], label="pruned", marker="x", color="grey")
    finished = [r for r in done if math.isfinite(r["value"])]
    if finished:
        frontier = itertools.accumulate((r["value"] for r in finished), max if direction == "maximize" else min)
        left.step(
            [r["number"] for r in finished], list(frontier), where="post", color="tab:green", label="best so far"
        )
    left.set(xlabel="trial", ylabel=f"validation {metric}", title="trials")
    left.xaxis.get_major_locator().set_params(integer=True)
    left.legend()
    for r in records:
        if r["curve"]:
            steps, values = zip(*r["curve"])
            right.plot(steps, values, marker=".", alpha=0.7, linestyle="--" if r["state"] == "pruned" else "-")
    right.set(xlabel="step", ylabel=f"validation {metric}", title="validation during training (dashed: pruned)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
