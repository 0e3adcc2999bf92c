"""Training options users reach for: optimizers, early stopping, many processes, Hub data layouts, push."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from hftk.config import load_recipe
from hftk.data.images import load_image_data
from hftk.training import build_training_arguments

ROOT = Path(__file__).resolve().parent.parent
DIGITS = "recipes/image-classification/resnet-digits.yaml"


@pytest.mark.parametrize(
    "optim, expected", [("sgd", "SGD"), ("adamw_torch", "AdamW"), ("rmsprop", "RMSprop"), ("adafactor", "Adafactor")]
)
def test_train_optim_picks_the_optimizer(optim, expected, tmp_path):
    from transformers import Trainer

    from hftk.tasks import image_classification as task

    recipe = load_recipe(DIGITS, [f"train.optim={optim}", "train.eval_strategy=no"])
    model, _ = task.build_image_classifier(recipe.model, ["a", "b"], 8)
    trainer = Trainer(model=model, args=build_training_arguments(recipe, tmp_path))
    assert type(trainer.create_optimizer()).__name__ == expected


def test_early_stopping_stops_when_the_metric_stalls(cli, tmp_path):
    code, _, err = cli(
        "-q",
        "train",
        DIGITS,
        "train.learning_rate=0.0",
        "train.num_train_epochs=20",
        "train.load_best_model_at_end=true",
        "eval.early_stopping_patience=2",
        "train.logging_steps=100",
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 0, err
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["epoch"] <= 4  # lr 0: accuracy never improves, so 1 + patience evaluations then stop


def test_early_stopping_without_best_model_is_a_clear_error(cli, tmp_path):
    code, _, err = cli("train", DIGITS, "eval.early_stopping_patience=2", "--output-dir", tmp_path / "run")
    assert code == 2 and "load_best_model_at_end" in err


def test_hub_style_dataset_with_other_columns_and_no_validation(tmp_path):
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8), mode="L") for _ in range(40)]
    features = Features({"img": Image(), "fine_label": ClassLabel(names=["x", "y"]), "extra": ClassLabel(names=["u"])})
    ds = Dataset.from_dict(
        {"img": images, "fine_label": [i % 2 for i in range(40)], "extra": [0] * 40}, features=features
    )
    DatasetDict(train=ds.select(range(30)), test=ds.select(range(30, 40))).save_to_disk(tmp_path / "hubcopy")
    recipe = load_recipe(
        DIGITS,
        [
            f"data.path={tmp_path / 'hubcopy'}",
            "data.name=null",
            "data.image_column=img",
            "data.label_column=fine_label",
            "data.validation_size=0.2",
        ],
    )
    data = load_image_data(recipe.data)
    assert {k: len(v) for k, v in data.items()} == {"train": 24, "validation": 6, "test": 10}
    assert data["train"].column_names == ["image", "label"]
    assert np.bincount(data["validation"]["label"]).tolist() == [3, 3]  # stratified carve


@pytest.mark.parametrize("recipe_private", [True, False])
@pytest.mark.parametrize("flags", [(), ("--public",), ("--private",)])
def test_push_visibility_follows_the_recipe_unless_the_command_says(
    digits_run, monkeypatch, cli, tmp_path, recipe_private, flags
):
    import shutil

    import yaml

    run = shutil.copytree(digits_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["hub"]["private"] = recipe_private
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    seen = {}
    monkeypatch.setattr(
        "hftk.hub.push_run", lambda run_dir, repo_id, private, **_: seen.update(private=private) or "url"
    )
    code, _, err = cli("push", run, "--repo-id", "someone/digits", *flags)
    assert code == 0, err
    expected = {"--public": False, "--private": True}.get(flags[0] if flags else "", recipe_private)
    assert seen["private"] is expected
