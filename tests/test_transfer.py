"""Transfer learning for every task: weights that really load from a local "pretrained" run, freezing by depth,
gradual unfreezing, and per-layer learning rates (backbone multiplier, layer-wise decay)."""

import json
import logging

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from hftk.config import load_recipe
from hftk.errors import HftkError
from hftk.models.parts import GradualUnfreeze, apply_freeze, lr_scales, model_parts, optimizer_factory
from hftk.tasks import TASKS, get_task
from hftk.training import build_training_arguments, prepare


@pytest.fixture(params=list(TASKS))
def pretrained_run(request, pretrained_runs):
    return request.param, pretrained_runs(request.param)


def test_fine_tuning_starts_from_the_saved_weights(pretrained_run, caplog):
    task_id, run = pretrained_run
    task = get_task(task_id)
    tiny = [o for o in task.tiny_overrides if not o.startswith("data.tokenizer=")]
    own_tokenizer = ["data.tokenizer=null"] if "tokenizer" in task.config_classes["data"].__dataclass_fields__ else []
    overrides = [*tiny, *own_tokenizer, f"model.name={run}", "model.pretrained=true"]
    with caplog.at_level(logging.INFO):
        _, _, model, _, _ = prepare(load_recipe(task_id, overrides))
    # The reloaded model, not the file: transformers 5 renames some families' keys between file and module
    # (SegFormer saves encoder.block.* and builds stages.*).
    saved = getattr(transformers, task.auto_model).from_pretrained(run).state_dict()
    state = model.state_dict()
    loaded = [k for k in saved if k in state and state[k].shape == saved[k].shape]
    assert len(loaded) >= 0.9 * len(saved)
    for key in loaded:
        torch.testing.assert_close(state[key], saved[key].to(state[key].dtype), msg=key)


def test_a_new_label_count_gets_a_new_head_and_the_log_names_it(tmp_path, caplog):
    from hftk.cli import main

    run = tmp_path / "digits"
    assert (
        main(
            [
                "-q",
                "train",
                "image-classification",
                *get_task("image-classification").tiny_overrides,
                "--output-dir",
                str(run),
            ]
        )
        == 0
    )
    folder = tmp_path / "three"
    from tests.test_image_classification import _imagefolder

    _imagefolder(folder, classes=("a", "b", "c"), per_class=6)
    overrides = [
        f"model.name={run}",
        "model.pretrained=true",
        f"data.path={folder}",
        "data.name=null",
        "data.image_size=16",
        "data.validation_size=0.2",
        "data.test_size=0.2",
    ]
    with caplog.at_level(logging.WARNING):
        _, _, model, _, _ = prepare(load_recipe("image-classification", overrides))
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    assert "timm_model.fc.weight" in caplog.text and "initialised" in caplog.text
    saved = load_file(run / "model.safetensors")
    torch.testing.assert_close(
        model.state_dict()["timm_model.layer1.0.conv1.weight"], saved["timm_model.layer1.0.conv1.weight"]
    )


def _gpt(layers: int = 4) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(n_layer=layers, n_embd=16, n_head=2, vocab_size=30, bos_token_id=0, eos_token_id=0)
    )


def test_freeze_n_blocks_freezes_the_embeddings_and_the_first_n():
    model = _gpt()
    parts = model_parts(model, ["lm_head"])
    assert parts.blocks == 4 and parts.layers[0] == ["transformer.wte.weight", "transformer.wpe.weight"]
    apply_freeze(model, parts, 2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(parts.layers[0] + parts.layers[1] + parts.layers[2])
    with pytest.raises(HftkError, match="model.freeze 5: the model has 4 blocks"):
        apply_freeze(_gpt(), parts, 5)
    with pytest.raises(HftkError, match="expected none, backbone, or a number"):
        apply_freeze(_gpt(), parts, "half")
    with pytest.raises(HftkError, match="model.freeze 'backbon': did you mean 'backbone'"):
        apply_freeze(_gpt(), parts, "backbon")


def test_gradual_unfreezing_unfreezes_from_the_top_each_epoch():
    model = _gpt()
    parts = model_parts(model, ["lm_head"])
    apply_freeze(model, parts, 4)  # stem + 4 blocks: all 5 layers
    callback = GradualUnfreeze(model, parts, frozen=5, per_epoch=2)
    params = dict(model.named_parameters())

    def trainable_layers():
        return [all(params[n].requires_grad for n in layer) for layer in parts.layers]

    for epoch, expected in ((0, [False] * 5), (1, [False, False, False, True, True]), (3, [True] * 5)):
        callback.on_epoch_begin(None, type("S", (), {"epoch": float(epoch)})(), None)
        assert trainable_layers() == expected


def test_layer_decay_and_backbone_multiplier_give_each_group_its_rate(tmp_path):
    from transformers import Trainer

    model = _gpt(2)
    parts = model_parts(model, ["transformer.ln_f"])
    scales = lr_scales(parts, 0.5, 0.8)
    assert scales["transformer.ln_f.weight"] == 1.0
    assert scales["transformer.h.1.attn.c_attn.weight"] == pytest.approx(0.5 * 0.8)
    assert scales["transformer.wte.weight"] == pytest.approx(0.5 * 0.8**3)
    recipe = load_recipe(
        "text-generation",
        [
            "train.learning_rate=0.01",
            "train.weight_decay=0.1",
            "train.eval_strategy=no",
            "train.load_best_model_at_end=false",
        ],
    )
    args = build_training_arguments(recipe, tmp_path)
    factory, kwargs = optimizer_factory(scales, args)
    optimizer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=(factory, kwargs)).create_optimizer()
    rates = {round(g["lr"], 8) for g in optimizer.param_groups}
    assert rates == {0.01, round(0.01 * 0.4, 8), round(0.01 * 0.32, 8), round(0.01 * 0.256, 8)}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.1}


def test_layer_settings_train_end_to_end(cli, tmp_path):
    code, _, err = cli(
        "-q",
        "train",
        "image-classification",
        *get_task("image-classification").tiny_overrides,
        "model.freeze=backbone",
        "model.gradual_unfreeze=2",
        "model.layer_decay=0.7",
        "train.num_train_epochs=3",
        "train.max_steps=-1",
        "data.max_train_samples=64",
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["train_steps"] > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.gradual_unfreeze=1", "nothing is frozen to unfreeze"),
        ("model.layer_decay=1.5", "expected a factor in (0, 1]"),
        ("model.backbone_lr_multiplier=0", "expected a positive factor"),
        ("model.freeze=99", "model.freeze 99: the model has"),
    ],
)
def test_bad_layer_settings_are_one_line(cli, tmp_path, override, message):
    code, _, err = cli(
        "train",
        "image-classification",
        *get_task("image-classification").tiny_overrides,
        override,
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 2 and message in err and "Traceback" not in err
