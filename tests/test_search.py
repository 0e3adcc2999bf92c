"""hftk search: trials are normal run folders, the report and plot list them, best.yaml trains the best trial's model
again; the objective follows each task's spec; pruning stops a trial; a bad space is one line and exit 2."""

import json

import pytest
import yaml
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from hftk.cli import main
from hftk.config import load_recipe
from hftk.errors import HftkError
from hftk.search import Dimension, TrialReport, default_space, objective_of, parse_space
from hftk.tasks import TASKS, get_task

RECIPE = "image-classification/resnet-digits"
QUICK = ["train.max_steps=10", "train.eval_strategy=steps", "train.eval_steps=5", "train.save_strategy=no"]
SPACE = {
    "train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
    "train.per_device_train_batch_size": [16, 32],
}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    space = folder.parent / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    argv = ["search", RECIPE, *QUICK, "--trials", "3", "--space", str(space), "--output-dir", str(folder / "s")]
    assert main(argv) == 0
    return folder / "s"


def test_every_trial_is_a_run_folder_and_the_report_lists_them(searched):
    trials = json.loads((searched / "trials.json").read_text())
    assert trials["metric"] == "accuracy" and trials["direction"] == "maximize"
    assert [t["run_dir"] for t in trials["trials"]] == ["trial-000", "trial-001", "trial-002"]
    for trial in trials["trials"]:
        run = searched / trial["run_dir"]
        for name in ("model.safetensors", "recipe.yaml", "README.md", "eval/metrics.json"):
            assert (run / name).is_file(), f"{run}/{name}"
        recipe = load_recipe(run / "recipe.yaml")
        assert recipe.train["learning_rate"] == pytest.approx(trial["values"]["train.learning_rate"])
        assert 1e-3 <= recipe.train["learning_rate"] <= 1e-2 and recipe.train["per_device_train_batch_size"] in (
            16,
            32,
        )
        assert [step for step, _ in trial["curve"]] == [5, 10]  # each validation reported to the trial
    first = trials["trials"][0]  # the recipe as given: its values lie in the space
    assert first["baseline"] and first["values"] == {
        "train.learning_rate": 3e-3,
        "train.per_device_train_batch_size": 32,
    }
    report = (searched / "report.md").read_text()
    assert (
        report.count("](trial-0") == 3 and report.count("**best**") == 1 and "Trial 0 is the recipe as given" in report
    )
    assert (searched / "trials.png").stat().st_size > 1000


def test_best_yaml_trains_the_best_trials_model_again(searched, tmp_path):
    trials = json.loads((searched / "trials.json").read_text())["trials"]
    best = max(trials, key=lambda t: t["value"])
    assert f"trial {best['number']} ({best['run_dir']}/)" in (searched / "best.yaml").read_text().splitlines()[0]
    assert main(["train", str(searched / "best.yaml"), "--output-dir", str(tmp_path / "again")]) == 0
    a, b = (
        load_file(searched / best["run_dir"] / "model.safetensors"),
        load_file(tmp_path / "again" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert load_recipe(searched / "best.yaml").name == "resnet-digits-best"


@pytest.mark.parametrize("task_id", list(TASKS))
def test_the_objective_is_the_tasks_main_metric_in_its_direction(task_id):
    spec = get_task(task_id)
    metric, direction = objective_of(load_recipe(task_id))
    assert metric == spec.train_defaults.get("metric_for_best_model", spec.headline[0])
    lower = {"bits_per_byte"}  # every other task's main metric is better higher
    assert direction == ("minimize" if metric in lower else "maximize")


def test_a_pruned_trial_stops_training():
    class Trial:
        def __init__(self, prune):
            self.prune, self.reported = prune, []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return self.prune

    args = TrainingArguments(output_dir="unused", report_to=[])
    for prune in (False, True):
        trial, control = Trial(prune), TrainerControl()
        callback = TrialReport(trial, "accuracy")
        callback.on_evaluate(args, TrainerState(global_step=7), control, metrics={"eval_accuracy": 0.5})
        assert trial.reported == [(7, 0.5)] and control.should_training_stop is prune
        assert callback.pruned_at == (7 if prune else None)


def test_space_kinds_and_the_default_space():
    dims = parse_space(
        {"a.b": {"low": 1, "high": 4}, "c.d": {"low": "1e-4", "high": 0.1, "log": True}, "e.f": [1, 2]}, "x"
    )
    assert dims == [Dimension("a.b", 1, 4), Dimension("c.d", 1e-4, 0.1, log=True), Dimension("e.f", choices=[1, 2])]
    lora = load_recipe(RECIPE, ["model.peft.method=lora"])
    assert [d.key for d in default_space(lora)] == [
        "train.learning_rate",
        "train.weight_decay",
        "train.warmup_steps",
        "model.peft.r",
    ]
    with pytest.raises(HftkError, match="empty range"):
        parse_space({"train.weight_decay": {"low": 0.1, "high": 0.1}}, "x")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.learning_rat": {"low": 1e-4, "high": 1e-2}}, "train.learning_rat: train: unknown TrainingArguments "),
        ({"data.augment.degres": [0, 10]}, "did you mean 'degrees'?"),
        ({"train.learning_rate": {"low": 1e-2, "high": 1e-4}}, "empty range [0.01, 0.0001]; give low < high"),
        ({"train.per_device_train_batch_size": []}, "an empty list of choices"),
        ({"train.learning_rate": {"low": 0, "high": 1e-2, "log": True}}, "a log range needs low > 0"),
        ({"train.learning_rate": {"low": 1e-4, "hgh": 1e-2}}, "unknown range key 'hgh'; did you mean 'high'?"),
        ({"train.max_steps": [10, "many"]}, "train.max_steps: got 'many' (str); expected an integer"),
        ({}, "the search space is empty"),
    ],
)
def test_a_bad_space_is_one_line_and_exit_2_before_any_trial(cli, tmp_path, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    code, _, err = cli("search", RECIPE, *QUICK, "--trials", "2", "--space", path, "--output-dir", tmp_path / "s")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert str(path) in lines[0] and not (tmp_path / "s").exists()


def test_a_search_without_validation_or_trials_is_refused(cli, tmp_path):
    code, _, err = cli("search", RECIPE, "train.eval_strategy=no", "--trials", "2", "--output-dir", tmp_path / "s")
    assert code == 2 and "hftk search needs validation evaluations" in err
    code, _, err = cli("search", RECIPE, "--trials", "0", "--output-dir", tmp_path / "s")
    assert code == 2 and "--trials 0: expected at least 1" in err
