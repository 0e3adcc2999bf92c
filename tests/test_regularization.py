"""Regularization for every task: weight averaging (EMA) that survives resume, L1 penalty, dropout overrides."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from hftk.errors import HftkError
from hftk.regularization import EMA_FILE, L1Penalty, WeightAverage, set_dropout

DIGITS = "recipes/image-classification/resnet-digits.yaml"
STEPS = ["train.max_steps=8", "train.save_strategy=steps", "train.save_steps=4", "train.eval_strategy=no"]


class _State:
    global_step = 0
    is_world_process_zero = True


def test_weight_average_follows_its_formula_and_replaces_the_weights_at_the_end():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema, state = WeightAverage(0.5), _State()
    ema.on_train_begin(None, state, None, model=model)
    expected = torch.zeros(1, 2)
    for step, value in enumerate((1.0, 2.0, 3.0), start=1):
        model.weight.data.fill_(value)
        state.global_step = step
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        ema.on_step_end(None, state, None, model=model)
    ema.on_train_end(None, state, None, model=model)
    torch.testing.assert_close(model.weight.data, expected)


def test_l1_penalty_adds_the_sign_of_weight_matrices_only():
    model = torch.nn.Linear(2, 1)
    model.weight.data = torch.tensor([[2.0, -3.0]])
    model.weight.grad, model.bias.grad = torch.zeros(1, 2), torch.zeros(1)
    L1Penalty(0.1).on_pre_optimizer_step(None, None, None, model=model)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.1, -0.1]]))
    assert model.bias.grad.item() == 0.0


def test_dropout_override_reaches_every_layer_and_the_config():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30, n_positions=8))
    assert set_dropout(model, 0.3) > 0
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert model.config.resid_pdrop == 0.3 and model.config.attn_pdrop == 0.3
    with pytest.raises(HftkError, match="no dropout layers"):
        set_dropout(torch.nn.Linear(2, 2), 0.1)


def test_ema_run_saves_the_average_and_resumes_to_the_same_weights(cli, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ema = "regularization.ema_decay=0.9"
    assert cli("-q", "train", DIGITS, *STEPS, ema, "--output-dir", straight)[0] == 0
    final = load_file(straight / "model.safetensors")
    average = load_file(straight / "checkpoint-8" / EMA_FILE)
    for name, tensor in average.items():
        torch.testing.assert_close(final[name], tensor)  # the saved model is the average at the last step
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    shutil.copy(straight / "recipe.yaml", resumed / "recipe.yaml")
    assert cli("-q", "train", DIGITS, *STEPS, ema, "--output-dir", resumed, "--resume")[0] == 0
    again = load_file(resumed / "model.safetensors")
    for name in final:
        torch.testing.assert_close(again[name], final[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["regularization.ema_decay=1.5"], "expected a decay in (0, 1)"),
        (
            [
                "regularization.ema_decay=0.99",
                "train.load_best_model_at_end=true",
                "train.eval_strategy=steps",
                "train.eval_steps=4",
            ],
            "load_best_model_at_end=false",
        ),
        (["regularization.l1=-1"], "non-negative"),
        (["regularization.dropout=1.0"], "probability in [0, 1)"),
        (["regularization.dropot=0.1"], "did you mean 'dropout'?"),
    ],
)
def test_bad_regularization_settings_are_one_line(cli, tmp_path, overrides, message):
    code, _, err = cli("train", DIGITS, *STEPS, *overrides, "--output-dir", tmp_path / "run")
    assert code == 2 and message in err and "Traceback" not in err
