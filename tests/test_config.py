"""Recipes: every shipped recipe loads; overrides are typed; bad keys and values get one clear line."""

from pathlib import Path

import pytest
import yaml

from hftk.config import RECIPES_DIR, load_recipe, parse_overrides
from hftk.errors import HftkError

RECIPES = sorted(p for p in RECIPES_DIR.glob("*/*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_loads_and_starts_with_its_command(path):
    recipe = load_recipe(path)
    assert recipe.task == path.parent.name
    raw = yaml.safe_load(path.read_text())
    assert recipe.model.name == raw["model"]["name"] and recipe.name == path.stem  # the file's own, not a default
    head = path.read_text().splitlines()[:3]
    assert head[0].startswith("# ") and any("hftk train" in line for line in head), "recipes open with their command"


def test_task_id_means_its_default_recipe():
    recipe = load_recipe("image-classification")
    assert recipe.data.name == "mnist-5k"
    assert recipe.budget.minutes is None, "the default is fixed work (the same result on any machine), not a clock"
    assert recipe.train["num_train_epochs"] == 16


def test_overrides_are_yaml_typed_and_merge_into_sections():
    recipe = load_recipe(
        "image-classification",
        [
            "train.learning_rate=3e-4",
            "train.max_steps=20",
            "data.augment.hflip=true",
            "model.model_args.channels=[8,8,8,8]",
        ],
    )
    assert recipe.train["learning_rate"] == pytest.approx(3e-4)  # YAML reads 3e-4 as a string; coerced
    assert recipe.train["max_steps"] == 20
    assert recipe.data.augment.hflip is True
    assert recipe.model.model_args == {"channels": [8, 8, 8, 8]}
    assert recipe.data.augment.degrees == 10  # untouched keys keep the recipe's values


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rat=0.1", "did you mean 'learning_rate'?"),
        ("data.nmae=digits", "did you mean 'name'?"),
        ("trian.max_steps=3", "did you mean 'train'?"),
        ("train.max_steps=many", "train.max_steps: got 'many' (str); expected an integer"),
        ("data.augment.hflip=maybe", "data.augment.hflip: got 'maybe' (str); expected true/false"),
        ("train.output_dir=/tmp/x", "use --output-dir"),
        ("train.hub_token=hf_secret", "tokens never go into recipes"),
        ("task=image-clasification", "did you mean 'image-classification'?"),
        ("nokey", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_expected(override, message):
    with pytest.raises(HftkError, match=None) as err:
        load_recipe("image-classification", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    if "=" in override:  # the shipped file is fine: the error points at the override, not at the file
        assert str(err.value).startswith("command-line override") and ".yaml" not in str(err.value)


def test_a_bad_recipe_file_is_named_even_with_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: image-classification\ndata:\n  nmae: digits\n")
    with pytest.raises(HftkError, match=r"bad.yaml: data: unknown key 'nmae'; did you mean 'name'"):
        load_recipe(bad, ["train.max_steps=3"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: image-classification\nmodel:\n  name: [resnet18\n")
    with pytest.raises(HftkError, match=r"bad.yaml:\d+: malformed YAML"):
        load_recipe(bad)


def test_unknown_recipe_path_or_task(tmp_path):
    with pytest.raises(HftkError, match="no such file or task id; did you mean 'image-classification'"):
        load_recipe("image-clasification")


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1, "d": "x"}}, "e": [1, 2]}


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe("image-classification", ["train.seed=3"])
    recipe.save(tmp_path / "recipe.yaml")
    again = load_recipe(tmp_path / "recipe.yaml")
    assert again.to_dict() == recipe.to_dict()
    assert again.name == "resnet-mnist"


def test_cli_recipes_lists_every_recipe_and_documents_keys(cli):
    code, out, _ = cli("recipes")
    assert code == 0
    for path in RECIPES:
        assert str(Path("recipes") / path.parent.name / path.name) in out
    code, out, _ = cli("recipes", "--keys", "image-classification")
    assert code == 0
    assert "data.augment.mixup_alpha" in out and "budget.minutes" in out and "train.*" in out


def test_cli_bad_recipe_is_one_line_exit_2(cli, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("task: image-classification\nmodel:\n  nmae: resnet18\n")
    code, out, err = cli("train", bad, "--output-dir", tmp_path / "run")
    assert code == 2
    assert err.strip().count("\n") == 0 and "did you mean 'name'?" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_fresh_cli_process_prints_only_the_error_line(tmp_path):
    """What a user sees: no import-time warnings of the libraries (bitsandbytes, peft...) around the one line."""
    import subprocess
    import sys

    bad = tmp_path / "typo.yaml"
    bad.write_text("task: text-generation\ntrain:\n  max_step: 10\n")
    command = [sys.executable, "-m", "hftk.cli", "train", str(bad), "--output-dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"hftk: error: {bad}: train: unknown TrainingArguments field 'max_step'; did you mean 'max_steps'?"
    ]


def test_quickstart_fixes_its_work_and_evaluates_often():
    """The default recipe trains a fixed number of steps (no clock), with >= 8 validation points on its curve."""
    import math

    recipe = load_recipe("image-classification")
    assert recipe.budget.minutes is None  # a clock would make the result depend on the machine
    train_size = 4000 - round(4000 * recipe.data.validation_size)
    steps = recipe.train["num_train_epochs"] * math.ceil(train_size / recipe.train["per_device_train_batch_size"])
    evaluations = steps // recipe.train["eval_steps"] if recipe.train["eval_strategy"] == "steps" else None
    assert evaluations is not None and evaluations >= 8


def test_readme_shows_the_shipped_quickstart_recipe():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert (RECIPES_DIR / "image-classification" / "resnet-mnist.yaml").read_text().strip() in readme


@pytest.mark.parametrize("path", sorted((RECIPES_DIR / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_every_launch_config_is_a_valid_accelerate_config(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.compute_environment.value == "LOCAL_MACHINE"
    assert "# Run:" in path.read_text() and "-m hftk" in path.read_text()


def test_naming_another_model_drops_the_recipes_settings_for_its_model(caplog):
    caplog.set_level("INFO", logger="hftk.config")
    recipe = load_recipe("object-detection", ["model.name=conditional_detr"])
    assert recipe.model.model_args == {} and recipe.model.backbone is None and recipe.model.backbone_args == {}
    assert "model.name=conditional_detr replaces the recipe's rt_detr" in caplog.text
    same = load_recipe("object-detection", ["model.name=rt_detr", "model.model_args.num_queries=30"])
    assert same.model.model_args["num_queries"] == 30 and same.model.model_args["d_model"] == 128
    kept = load_recipe("object-detection", ["model.name=detr", "model.model_args={num_queries: 10}"])
    assert kept.model.model_args == {"num_queries": 10}
