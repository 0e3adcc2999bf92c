"""PEFT adapters: small run folders on a pretrained base, reloaded by predict, merged by `hftk merge`; bad input."""

import json
import shutil

import pytest

from hftk import runs
from hftk.cli import main
from hftk.config import load_recipe
from hftk.errors import HftkError
from hftk.generation import DecodingOptions
from hftk.tasks import get_task

TASKS_WITH_ADAPTERS = ["image-classification", "text-generation", "chat", "object-detection"]


def _adapter_run(task_id, base, out, *extra):
    task = get_task(task_id)
    tiny = [o for o in task.tiny_overrides if not o.startswith("data.tokenizer=")]
    if hasattr(load_recipe(task_id).data, "tokenizer"):
        tiny.append("data.tokenizer=null")  # a pretrained model keeps its own tokenizer
    args = ["-q", "train", task_id, *tiny, f"model.name={base}", "model.pretrained=true", *extra, "--output-dir", out]
    assert main([str(a) for a in args]) == 0
    return out


@pytest.mark.parametrize("task_id", TASKS_WITH_ADAPTERS)
def test_lora_run_is_small_reloads_and_merges_to_the_same_predictions(task_id, pretrained_runs, tmp_path):
    import transformers

    task = get_task(task_id)
    base = pretrained_runs(task_id)
    run = _adapter_run(task_id, base, tmp_path / "lora", "model.peft.method=lora")
    assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()
    assert (run / "adapter_model.safetensors").stat().st_size < (base / "model.safetensors").stat().st_size
    results = json.loads((run / "all_results.json").read_text())
    assert results["trainable_parameters"] < results["total_parameters"]
    assert "PEFT adapter" in (run / "README.md").read_text()
    inputs = task.example_inputs(run, 2)
    options = {"decoding": DecodingOptions(seed=0)} if task_id == "text-generation" else {}
    first = task.predict(run, inputs, **options)
    copy = shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoint-*"))
    assert task.predict(copy, inputs, **options) == [{**r, "input": r["input"]} for r in first]
    assert main(["-q", "merge", str(run), str(tmp_path / "merged")]) == 0
    merged = getattr(transformers, task.auto_model).from_pretrained(tmp_path / "merged")
    assert not hasattr(merged, "peft_config")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "input"} for r in rows]  # noqa: E731
    again = task.predict(tmp_path / "merged", inputs, **options)
    for a, b in zip(strip(again), strip(first)):
        if "predictions" in a:  # scores agree to float precision once merged
            assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        elif "detections" in a:
            _same_detections(a["detections"], b["detections"])
        else:
            assert a == b


def _same_detections(a: list[dict], b: list[dict], tolerance: float = 1e-4) -> None:
    """The same boxes with the same scores to float precision. The detector keeps its top-k scores: the nearly tied
    ones at the cut (an untrained tiny detector scores many queries alike) may trade places once merged."""
    assert bool(a) == bool(b)
    if not a:
        return
    floor = max(min(d["score"] for d in a), min(d["score"] for d in b)) + tolerance
    scores = [{(d["label"], *d["box"].values()): d["score"] for d in found if d["score"] > floor} for found in (a, b)]
    assert scores[0].keys() == scores[1].keys()
    for key, score in scores[0].items():
        assert score == pytest.approx(scores[1][key], abs=tolerance / 10), key


@pytest.mark.parametrize(
    "task_id, method",
    [("text-generation", "dora"), ("text-generation", "ia3"), ("image-classification", "loha")],
)
def test_other_adapters_train(task_id, method, pretrained_runs, tmp_path):
    run = _adapter_run(task_id, pretrained_runs(task_id), tmp_path / method, f"model.peft.method={method}")
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["peft_type"].lower() == ("lora" if method == "dora" else method)
    assert config.get("use_dora", False) is (method == "dora")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.peft.method=lora", "model.peft.target_modules=[nonexistent]"], "nonexistent not in this model"),
        (["model.peft.quantize=4bit"], "trains an adapter on pretrained weights; set model.peft.method"),
        (["model.peft.method=lorra"], "did you mean 'lora'?"),
    ],
)
def test_bad_adapter_settings_are_one_line(cli, pretrained_runs, tmp_path, overrides, message):
    base = pretrained_runs("text-generation")
    task = get_task("text-generation")
    code, _, err = cli(
        "train",
        "text-generation",
        *task.tiny_overrides,
        f"model.name={base}",
        "model.pretrained=true",
        *overrides,
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 2 and message in err and "Traceback" not in err, err


def test_an_adapter_needs_pretrained_weights(cli, tmp_path):
    task = get_task("text-generation")
    code, _, err = cli(
        "train", "text-generation", *task.tiny_overrides, "model.peft.method=lora", "--output-dir", tmp_path / "r"
    )
    assert code == 2 and "an adapter trains on pretrained weights" in err


def test_an_adapter_on_a_warm_start_assembled_from_parts_is_one_line(cli, tmp_path):
    # the MiniLM encoder-decoder has new cross-attention layers: an adapter alone would leave them random
    code, _, err = cli(
        "train",
        "recipes/chat/minilm-chatterbot.yaml",
        "model.peft.method=lora",
        "data.max_train_samples=16",
        "data.max_eval_samples=4",
        "--output-dir",
        tmp_path / "r",
    )
    assert code == 2 and "a warm start assembled from parts" in err and "Traceback" not in err, err


def test_qlora_refuses_a_base_that_did_not_load_in_4_bits(tmp_path):
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel

    from hftk.models.adapters import wrap_adapter

    gpt = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=64))
    gpt.name_or_path = str(tmp_path)  # looks pretrained, but built in full precision
    cfg = SimpleNamespace(method="lora", quantize="4bit", target_modules=None, r=4, alpha=8, dropout=0.0)
    with pytest.raises(HftkError, match="did not load in 4 bits"):
        wrap_adapter(gpt, cfg, [])


def test_merge_of_a_full_run_and_a_missing_base_are_one_line(cli, pretrained_runs, tmp_path):
    base = pretrained_runs("text-generation")
    code, _, err = cli("merge", base, tmp_path / "out")
    assert code == 2 and "not an adapter run" in err
    moved = shutil.copytree(base, tmp_path / "base")
    run = _adapter_run("text-generation", moved, tmp_path / "lora", "model.peft.method=lora")
    shutil.rmtree(moved)  # the base the adapter names is gone
    runs.clear_run_cache()
    code, _, err = cli("predict", run, "The")
    assert code == 2 and "cannot put the adapter on its base model" in err


def test_default_adapter_targets_per_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    from hftk.models.adapters import default_targets

    gpt = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, eos_token_id=0, bos_token_id=0))
    # a decoder LM: every linear layer (attention and MLP), never the output embeddings
    assert default_targets(gpt, "lora", set()) == (["c_attn", "c_fc", "c_proj"], [])
    t5 = T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, vocab_size=64))
    assert default_targets(t5, "lora", set()) == (["q", "v"], [])  # peft's own choice for T5


def test_qlora_trains_an_adapter_on_a_4bit_base_and_predicts_on_the_full_one(tmp_path):
    import bitsandbytes as bnb

    from hftk.training import prepare

    tiny = [o for o in get_task("text-generation").tiny_overrides if not o.startswith("data.tokenizer=")]
    wide = "model.model_args={n_layer: 1, n_embd: 64, n_head: 2}"  # bitsandbytes quantizes blocks of 64 weights
    base = tmp_path / "base"
    assert main(["-q", "train", "text-generation", *tiny, wide, "--output-dir", str(base)]) == 0
    adapter = [wide, "model.peft.method=lora", "model.peft.quantize=4bit"]
    recipe = load_recipe("text-generation", [*tiny, f"model.name={base}", "model.pretrained=true", *adapter])
    model = prepare(recipe)[2]
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and not any(m.weight.requires_grad for m in quantized)  # the base stays 4-bit and frozen
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    run = _adapter_run("text-generation", base, tmp_path / "qlora", *adapter)
    assert "quantization_config" not in json.loads((run / "model_config.json").read_text())
    results = json.loads((run / "all_results.json").read_text())
    assert results["trainable_parameters"] < results["total_parameters"]
    first = get_task("text-generation").predict(run, ["The"], decoding=DecodingOptions(seed=0))
    assert first and first[0]["continuation"]
    assert main(["-q", "merge", str(run), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_qlora_is_for_the_text_tasks(cli, tmp_path):
    code, _, err = cli(
        "train", "image-classification", "model.peft.method=lora", "model.peft.quantize=4bit", "--output-dir", tmp_path
    )
    assert code == 2 and "for the text tasks" in err and "Traceback" not in err
