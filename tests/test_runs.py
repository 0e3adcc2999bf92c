"""A run folder end to end: what `hftk train` writes, and evaluate/predict/resume/overwrite on it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

from hftk.training import (
    COMPLETE_MARKER,
    _schedule_factor,
    configure_threads,
    is_complete_checkpoint,
    last_complete_checkpoint,
)

ROOT = Path(__file__).resolve().parent.parent
DIGITS = "recipes/image-classification/resnet-digits.yaml"


def test_run_folder_holds_the_contract(digits_run):
    for name in (
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "all_results.json",
        "README.md",
        "trainer_state.json",
    ):
        assert (digits_run / name).is_file(), name
    results = json.loads((digits_run / "all_results.json").read_text())
    assert results["train_samples_per_second"] > 0 and results["train_steps"] == 30
    metrics = json.loads((digits_run / "eval" / "metrics.json").read_text())
    for key in (
        "accuracy",
        "top5_accuracy",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "loss",
        "f1_3",
        "support_3",
    ):
        assert key in metrics, key
    assert 0.2 < metrics["accuracy"] <= 1.0  # 30 steps of a tiny net: far above chance (0.1)
    assert results["test_accuracy"] == metrics["accuracy"]
    for name in ("report.md", "confusion_matrix.png", "learning_curves.png", "worst_examples.jsonl"):
        assert (digits_run / "eval" / name).is_file(), name
    assert list((digits_run / "runs").rglob("events.out.tfevents.*")), "TensorBoard events"
    assert len(list((digits_run / "eval" / "examples").glob("*.png"))) == 8
    card = (digits_run / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "accuracy" in card
    history = json.loads((digits_run / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0], "training loss goes down"


def test_predict_matches_transformers_pipeline(digits_run, cli):
    example = sorted((digits_run / "eval" / "examples").glob("*.png"))[0]
    code, out, _ = cli("predict", digits_run, example, "--top-k", "3", "--json")
    assert code == 0
    ours = json.loads(out.splitlines()[0])["predictions"]
    theirs = pipeline("image-classification", model=str(digits_run), device="cpu")(
        Image.open(example).convert("RGB"), top_k=3
    )
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert [p["score"] for p in ours] == pytest.approx([p["score"] for p in theirs], abs=1e-6)


def test_predict_a_folder_and_reject_a_non_image(digits_run, cli, tmp_path):
    code, out, _ = cli("predict", digits_run, digits_run / "eval" / "examples", "--top-k", "2")
    assert code == 0 and len(out.strip().splitlines()) == 8
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code, _, err = cli("predict", digits_run, bad)
    assert code == 2 and "notes.png: not a readable image" in err and "Traceback" not in err


def test_evaluate_other_split_writes_its_own_folder(digits_run, cli):
    before = (digits_run / "eval" / "metrics.json").read_text()
    code, out, _ = cli("evaluate", digits_run, "--split", "validation")
    assert code == 0 and "accuracy" in out
    assert json.loads((digits_run / "eval" / "validation" / "metrics.json").read_text())["split"] == "validation"
    assert (digits_run / "eval" / "metrics.json").read_text() == before


def test_no_file_of_the_run_holds_the_hub_token(digits_run):
    token = os.environ["HF_TOKEN"].encode()  # set by conftest before the run was trained
    for path in digits_run.rglob("*"):
        if path.is_file():
            assert token not in path.read_bytes(), path


def test_existing_run_is_never_overwritten_silently(digits_run, cli):
    stamp = (digits_run / "model.safetensors").stat().st_mtime_ns
    code, _, err = cli("train", DIGITS, "--output-dir", digits_run)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (digits_run / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "args, message",
    [
        (("evaluate", "/nonexistent/run"), "no such folder"),
        (("predict", "/nonexistent/run", "x.png"), "no such folder"),
        (("train", DIGITS, "data.name=nope"), "not an embedded data set"),
        (("train", DIGITS, "--overwrite", "data.name=nope"), "not an embedded data set"),  # override after an option
        (("train", DIGITS, "model.name=resnet1800"), "did you mean"),
        (("train", DIGITS, "data.path=/no/such/folder", "data.name=null"), "no such file or folder"),
        (("train", DIGITS, "--resume"), "nothing to resume"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, message):
    code, _, err = cli(*args, *(("--output-dir", tmp_path / "run") if args[0] == "train" else ()))
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_budget_schedule_follows_the_clock():
    assert _schedule_factor("cosine", 0.1, 0.05) == pytest.approx(0.5)
    assert _schedule_factor("cosine", 0.1, 0.1) == pytest.approx(1.0)
    assert _schedule_factor("cosine", 0.1, 0.55) == pytest.approx(0.5)
    assert _schedule_factor("linear", 0.0, 0.75) == pytest.approx(0.25)
    assert _schedule_factor("cosine", 0.0, 2.0) == pytest.approx(0.0)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_follows_the_clock_and_stops_when_it_is_spent():
    from transformers import TrainerControl, TrainerState

    from hftk.training import TimeBudget

    clock = FakeClock()
    budget = TimeBudget(1.0, "linear", 0.0, clock=clock)  # one minute
    args = type("Args", (), {"save_strategy": "steps", "eval_strategy": "no"})()
    state, control = TrainerState(), TrainerControl()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    budget.on_train_begin(args, state, control)
    for seconds, expected in ((0, 1.0), (15, 0.75), (45, 0.25)):
        clock.now = 100.0 + seconds
        budget.on_step_begin(args, state, control, lr_scheduler=scheduler)
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        budget.on_step_end(args, state, control)
        assert not control.should_training_stop
    clock.now = 160.0
    budget.on_step_end(args, state, control)
    assert control.should_training_stop and control.should_save and not control.should_evaluate


def test_budget_with_fixed_steps_only_stops_the_run():
    from hftk.training import TimeBudget

    budget = TimeBudget(1.0, "linear", 0.0, follow_clock=False, clock=FakeClock())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    budget.on_train_begin(None, None, None)
    budget.on_step_begin(None, None, None, lr_scheduler=scheduler)
    assert scheduler.lr_lambdas[0](0) == 0.5  # the step schedule is left alone


def test_budget_run_schedules_by_clock_and_shows_budget_progress(cli, tmp_path, capsys):
    code, _, err = cli(
        "-q",
        "train",
        DIGITS,
        "budget.minutes=0.05",
        "train.lr_scheduler_type=linear",
        "train.eval_strategy=no",
        "train.save_strategy=no",
        "train.logging_steps=1",
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 0, err
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert lrs[0] > lrs[-1] and lrs[-1] < 0.5 * 3e-3  # the clock's schedule decayed it
    assert state["global_step"] < 10**6  # the clock, not a step count, stopped it
    assert "/3 s [" in err and " left" in err and "1000000000" not in err  # seconds of the budget, not steps


def test_budget_with_max_steps_runs_every_step_on_the_step_schedule(cli, tmp_path):
    code, _, err = cli(
        "-q",
        "train",
        DIGITS,
        "budget.minutes=30",
        "train.max_steps=12",
        "train.lr_scheduler_type=linear",
        "train.eval_strategy=no",
        "train.save_strategy=no",
        "train.logging_steps=3",
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 0, err
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    lrs = {h["step"]: h["learning_rate"] for h in state["log_history"] if "learning_rate" in h}
    assert state["global_step"] == 12
    assert lrs[3] == pytest.approx(3e-3 * (12 - 2) / 12, rel=1e-6)  # linear by steps (logged after step 3's update)


def test_threads_follow_free_cores_and_local_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert configure_threads(0) == cores
    if cores > 1:
        assert configure_threads(1) == cores - 1  # room for a dataloader worker
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert configure_threads(0) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads(4) == 1


def _train_command(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hftk",
        "train",
        DIGITS,
        "train.max_steps=24",
        "train.save_strategy=steps",
        "train.save_steps=4",
        "train.eval_strategy=no",
        "train.save_total_limit=2",
        "train.disable_tqdm=true",
        "--output-dir",
        str(run_dir),
        *extra,
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    """Kill training hard after a checkpoint, resume, and compare with an uninterrupted run."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_command(straight), check=True, env=_env(), cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(
        _train_command(killed), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint-8" / COMPLETE_MARKER).exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "killed before the end"
    done = last_complete_checkpoint(killed)
    assert done is not None and int(done.name.split("-")[1]) < 24
    # A half-written newer checkpoint (killed mid-save) must never be picked up.
    fake = killed / "checkpoint-20"
    shutil.copytree(done, fake)
    (fake / COMPLETE_MARKER).unlink()
    (fake / "model.safetensors").write_bytes((fake / "model.safetensors").read_bytes()[:100])
    assert last_complete_checkpoint(killed) == done
    result = subprocess.run(_train_command(killed, "--resume"), env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"from {done}" in result.stderr and "removing incomplete checkpoint" in result.stderr
    assert is_complete_checkpoint(fake)  # re-written whole by the resumed run, not reused
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_how_often_a_run_evaluates_does_not_change_what_it_trains(tmp_path):
    from hftk.cli import main
    from hftk.tasks import get_task

    tiny = get_task("image-classification").tiny_overrides  # the default recipe: random augmentation on
    for every in (2, 8):
        args = [*tiny, f"train.eval_steps={every}", "train.save_steps=8", "--output-dir", tmp_path / str(every)]
        assert main(["-q", "train", "image-classification", *[str(a) for a in args]]) == 0
    often, rarely = (load_file(tmp_path / str(e) / "model.safetensors") for e in (2, 8))
    for key in often:
        assert torch.equal(often[key], rarely[key]), key
