"""Every registered task through the whole contract, timm-style: one loop over the registry, tiny recipes.

For each task: its tiny recipe trains a few steps from the CLI and writes a complete run folder (loss going down,
headline metrics, a valid model card); the folder reloads with the task's Auto class and runs in
``transformers.pipeline``; ``predict`` returns one JSON-able result per input and the same results from a copy of
the folder; the demo serves its examples; a run resumed from its first checkpoint ends with the same weights; bad
input is one line and exit status 2.
"""

import json
import math
import shutil
import socket

import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import hftk
from hftk.config import load_recipe
from hftk.generation import DecodingOptions
from hftk.tasks import TASKS, get_task
from hftk.tasks.contract import TaskSpec, parse_predict_options, predict_options

# the shipped tasks, and a fifth one added as README's "Adding a task" says: a module (tests/toy_task.py) and one
# registry line, made here for this module's tests only
TOY = "text-classification"
TASK_IDS = [*TASKS, TOY]


@pytest.fixture(scope="module", autouse=True)
def toy_task_registered():
    TASKS[TOY] = "toy_task"
    yield
    del TASKS[TOY]


def _tiny(task_id: str) -> list[str]:
    return ["train", task_id, *get_task(task_id).tiny_overrides]


@pytest.fixture(scope="module", params=TASK_IDS)
def tiny_run(request, tmp_path_factory):
    from hftk.cli import main

    task_id = request.param
    run_dir = tmp_path_factory.mktemp("contract") / task_id
    assert main([*_tiny(task_id), "--output-dir", str(run_dir)]) == 0
    return get_task(task_id), run_dir


# the same decoding on both sides of the pipeline/predict comparison (greedy, a few tokens)
PIPELINE_OPTIONS = {"text-generation": {"do_sample": False, "max_new_tokens": 4}}
PREDICT_OPTIONS = {"text-generation": {"decoding": DecodingOptions(max_new_tokens=4, temperature=0)}}


def _main_answer(task, result):
    """What a pipeline and ``predict`` must agree on: the top label, the boxes' labels, the generated text."""
    boxes = result.get("detections") if isinstance(result, dict) else result
    if isinstance(boxes, list) and all("box" in d for d in boxes):  # object detection: labelled boxes
        return sorted((d["label"], *d["box"].values()) for d in boxes)
    result = result[0] if isinstance(result, list) else result
    if "predictions" in result:
        return result["predictions"][0]["label"]
    return result.get("generated_text", result.get("label"))


def _deterministic(task) -> dict:
    """``seed=0`` for a task whose predict samples (as `hftk predict RUN ... --seed 0` would pass it)."""
    return (
        parse_predict_options(task.task, {"seed": "0"}, task.predict)
        if "seed" in predict_options(task.predict)
        else {}
    )


def test_every_task_module_provides_the_contract():
    for task_id in TASK_IDS:
        task = get_task(task_id)
        assert isinstance(task, TaskSpec) and task.task == task_id
        assert load_recipe(task.default_recipe).task == task_id
        assert task.train_defaults["metric_for_best_model"] == task.headline[0], "models are selected on the headline"
        assert issubclass(task.training_arguments, transformers.TrainingArguments)
        assert hasattr(transformers, task.auto_model)


def test_tiny_run_writes_a_complete_run_folder(tiny_run):
    task, run_dir = tiny_run
    for name in ("config.json", "model.safetensors", "recipe.yaml", "README.md", "trainer_state.json"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], f"{task.task}: training loss does not go down: {losses}"
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert math.isfinite(metrics[task.headline[0]]) and metrics["split"] == "test"
    assert (run_dir / "eval" / "report.md").is_file()
    assert any(f"eval_{task.headline[0]}" in h for h in history), "validation metric logged during training"


def test_model_card_is_valid_hub_metadata(tiny_run):
    task, run_dir = tiny_run
    card = ModelCard.load(run_dir / "README.md")
    assert card.data.pipeline_tag == task.pipeline_tag and card.data.library_name == "transformers"
    reported = {r.metric_type: r.metric_value for r in card.data.eval_results}
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert reported[task.headline[0]] == pytest.approx(metrics[task.headline[0]], abs=1e-4)
    assert task.pipeline_example in card.text


def test_run_reloads_with_its_auto_class_and_runs_in_pipeline(tiny_run, tmp_path):
    task, run_dir = tiny_run
    model = getattr(transformers, task.auto_model).from_pretrained(run_dir)
    assert model.config.architectures
    hftk.register()  # hftk's pipeline tasks and model types, as the card's usage snippet says
    pipe = transformers.pipeline(task.pipeline_task or task.pipeline_tag, model=str(run_dir), device="cpu")
    example = task.example_inputs(run_dir, 1)[0]
    assert _main_answer(task, pipe(example, **PIPELINE_OPTIONS.get(task.pipeline_tag, {}))) == _main_answer(
        task, task.predict(run_dir, [example], **PREDICT_OPTIONS.get(task.pipeline_tag, {}))[0]
    ), "the pipeline on the run folder answers as hftk predict does"


def test_predict_shape_and_the_same_results_from_a_copy(tiny_run, tmp_path):
    task, run_dir = tiny_run
    inputs = task.example_inputs(run_dir, 3)
    assert 1 <= len(inputs) <= 3
    first = task.predict(run_dir, inputs, **_deterministic(task))
    assert len(first) == len(inputs) and all(isinstance(r, dict) and "input" in r for r in first)
    json.dumps(first)  # JSON-able, as `hftk predict --json` prints it
    copy = shutil.copytree(run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoint-*"))
    again = task.predict(copy, [str(i).replace(str(run_dir), str(copy)) for i in inputs], **_deterministic(task))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "input"} for r in rows]  # noqa: E731
    assert strip(again) == strip(first)


def test_demo_serves_its_examples(tiny_run):
    from gradio_client import Client

    task, run_dir = tiny_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = task.demo(run_dir)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        api = Client(demo.local_url, verbose=False).view_api(print_info=False, return_format="dict")
        assert api["named_endpoints"], "the demo offers at least one API endpoint"
    finally:
        demo.close()


def test_resume_from_the_first_checkpoint_ends_like_the_straight_run(tiny_run, tmp_path):
    from hftk.cli import main

    task, run_dir = tiny_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.copytree(checkpoints[0], resumed / checkpoints[0].name)
    shutil.copy(run_dir / "recipe.yaml", resumed / "recipe.yaml")
    assert main([*_tiny(task.task), "--output-dir", str(resumed), "--resume"]) == 0
    a, b = load_file(run_dir / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=f"{task.task}: {key}")


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rat=0.1", "did you mean 'learning_rate'?"),
        ("data.path=/no/such/data", "no such file or folder"),
        ("model.name=/no/such/model", "no such folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, task_id, override, message):
    code, _, err = cli(*_tiny(task_id), override, "--output-dir", tmp_path / "run")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_unknown_predict_option_names_the_task_options(tiny_run, cli):
    task, run_dir = tiny_run
    code, out, err = cli("predict", run_dir, "x", "--no-such-option", "3")
    assert code == 2 and out == "" and f"not an option of {task.task} runs" in err
