"""Many processes (gloo on this CPU): 2 processes train exactly like 1 with gradient accumulation, for every task;
evaluation counts each example once; a killed 2-process run resumes to the same weights; one writer per run folder.

Launched as users launch: `accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m hftk train ...`.
Tolerance: weights within 1e-5 (the all-reduce sums in another order than accumulation; measured: equal).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from hftk.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/cpu-2proc.yaml"]


def _overrides(task_id: str) -> list[str]:
    task = get_task(task_id)
    return [
        *task.tiny_overrides,
        *task.deterministic_overrides,
        "regularization.dropout=0",  # each process draws its own dropout masks
        "data.max_eval_samples=7",  # an uneven last evaluation batch across 2 processes
        "train.per_device_eval_batch_size=2",
        "train.per_device_train_batch_size=4",
    ]


# 1 process with the same global batch: gradient accumulation by default; the DETR family normalises its losses by
# the boxes of the whole batch across processes, but each accumulated micro-batch by its own boxes (transformers),
# so for detection 2 processes equal 1 process taking the global batch in one step
ONE_PROCESS = {"object-detection": ["train.per_device_train_batch_size=8"]}


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _eval_logs(run_dir: Path) -> list[dict]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    # eval_loss is the Trainer's mean of per-batch means: the padded last batch of a process (its duplicate rows
    # are dropped from the predictions, not from that batch's mean loss) moves it by ~1e-4. The task metrics are
    # computed from the gathered predictions, exactly.
    drop = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_loss")
    return [
        {k: v for k, v in h.items() if k.startswith("eval_") and k not in drop} for h in history if "eval_loss" in h
    ]


@pytest.mark.parametrize("task_id", list(TASKS))
def test_two_processes_train_like_one_with_gradient_accumulation(task_id, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train = ["-m", "hftk", "-q", "train", task_id, *_overrides(task_id)]
    same_batch = ONE_PROCESS.get(task_id, ["train.gradient_accumulation_steps=2"])
    _run([sys.executable, *train, *same_batch, "--output-dir", str(one)])
    result = _run([*LAUNCH, *train, "--output-dir", str(two)])
    assert result.stdout.count("open the demo") == 1  # one process reports and writes
    assert json.loads((two / "all_results.json").read_text())["train_steps"] == 8
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0, msg=f"{task_id} {key}")
    # validation during training saw every one of the 7 examples once on 2 processes (same numbers as 1 process)
    logs_one, logs_two = _eval_logs(one), _eval_logs(two)
    assert logs_one and len(logs_one) == len(logs_two)
    for x, y in zip(logs_one, logs_two):
        assert y == pytest.approx(x, abs=1e-5)
    test_one, test_two = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two))
    numbers = {k for k, v in test_one.items() if isinstance(v, (int, float))}
    assert {k: test_two[k] for k in numbers} == pytest.approx({k: test_one[k] for k in numbers}, abs=1e-6)
    assert {k: v for k, v in test_two.items() if k not in numbers} == {
        k: v for k, v in test_one.items() if k not in numbers
    }  # a confusion matrix counts the same detections


# slow (~40 s): a kill mid-run is tested on one process in test_runs.py, 2-process equality above
@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train = ["-m", "hftk", "-q", "train", "text-generation", *_overrides("text-generation"), "train.max_steps=12"]
    _run([*LAUNCH, *train, "--output-dir", str(straight)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*LAUNCH, *train, "--output-dir", str(killed)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoint-4" / "hftk-complete.json").exists():
        time.sleep(0.05)
    # the launcher and both workers: torchrun starts each worker in a session of its own, so killing the launcher's
    # process group alone left the workers training beside the resumed run
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    proc.wait()
    psutil.wait_procs(workers, timeout=30)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), "a worker survived"
    assert not (killed / "model.safetensors").exists(), "killed before the end"
    _run([*LAUNCH, *train, "--output-dir", str(killed), "--resume"])
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
