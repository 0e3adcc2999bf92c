"""The GPU speed path (skipped without CUDA; CI has none): bf16, TF32, fused AdamW, channels_last, torch.compile."""

import json

import pytest
import torch

from hftk.tasks import get_task
from hftk.training import build_training_arguments, gpu_defaults

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_gpu_defaults_fill_what_the_recipe_leaves_unset(tmp_path):
    from hftk.config import load_recipe

    args = build_training_arguments(load_recipe("image-classification", ["train.optim=sgd"]), tmp_path)
    defaults = gpu_defaults()
    assert args.bf16 == defaults["bf16"] and args.optim.value == "sgd"  # the recipe's own choice wins
    assert args.dataloader_pin_memory


@pytest.mark.parametrize("task_id", ["image-classification", "text-generation"])
def test_tiny_run_trains_on_the_gpu_with_bf16_and_compile(cli, tmp_path, task_id):
    overrides = [*get_task(task_id).tiny_overrides, "train.bf16=true", "train.torch_compile=true"]
    code, _, err = cli("-q", "train", task_id, *overrides, "--output-dir", tmp_path / "run")
    assert code == 0, err
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
