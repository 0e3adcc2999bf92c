"""`hftk check`: one real training step per task, the figures a user needs before a long run, one-line errors."""

import json

import pytest

from hftk.tasks import TASKS, get_task


@pytest.mark.parametrize("task_id", list(TASKS))
def test_check_reports_data_model_step_and_memory(cli, task_id):
    code, out, err = cli("-q", "check", task_id, *get_task(task_id).tiny_overrides, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["task"] == task_id and report["splits"]["train"] > 0 and report["splits"]["test"] > 0
    assert 0 < report["parameters"]["trainable"] <= report["parameters"]["total"]
    assert report["step_seconds"] > 0 and report["total_steps"] > 0
    assert report["memory_estimate_mb"]["training"] > report["parameters"]["total"] * 4 / 2**20
    assert report["distributed"]["processes"] == 1 and report["batch"]["global"] >= 1


def test_check_prints_a_readable_report_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("-q", "check", "image-classification", *get_task("image-classification").tiny_overrides)
    assert code == 0 and "labels:        0: 0, 1: 1" in out and "ok: the recipe builds" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.per_device_train_batch_siz=8", "did you mean 'per_device_train_batch_size'"),
        ("model.model_args.in_chans=1", "in_chans"),
    ],
)
def test_check_stops_with_one_line_on_bad_input(cli, override, message):
    code, _, err = cli("check", "image-classification", *get_task("image-classification").tiny_overrides, override)
    lines = [ln for ln in err.splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err
