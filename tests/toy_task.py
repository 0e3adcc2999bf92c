"""A fifth task written the way README's "Adding a task" says: one new module and one registry line.

``text-classification`` on a synthetic sentiment set (sentences of kind and unkind words), a tiny BERT from its
config with a word-level tokenizer trained on the split. It uses only the shared machinery (the model resolver, the
run side, the report's shape) and no change to shared code; ``tests/test_contract.py`` registers it and runs it
through the whole contract beside the shipped tasks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from hftk import runs
from hftk.data import check_path, finalize_splits
from hftk.evaluation import eval_dir, plot_learning_curves, read_metrics, write_metrics, write_report
from hftk.models import load_model
from hftk.sections import DataConfig, ModelConfig, Recipe, setting
from hftk.tasks.contract import TaskSpec, TrainerInputs

TASK = "text-classification"
RECIPE = Path(__file__).parent / "fixtures" / "toy-sentiment.yaml"
LABELS = ["negative", "positive"]
WORDS = {0: ["awful", "bad", "sad", "dull", "ugly"], 1: ["great", "good", "happy", "bright", "lovely"]}
FILLER = ["the", "day", "was", "a", "film", "very", "quite", "and", "so"]


@dataclass
class ToyModelConfig(ModelConfig):
    name: str = setting("bert", "a transformers model type, a Hub id or a local folder")


@dataclass
class ToyDataConfig(DataConfig):
    name: str | None = setting("toy-sentiment", "toy-sentiment (made here) or data.path: jsonl with text and label")
    size: int = setting(400, "sentences of toy-sentiment")


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(WORDS[label])]
    rng.shuffle(words)
    return " ".join(words)


def load_data(recipe: Recipe) -> DatasetDict:
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    if recipe.data.path:
        rows = [json.loads(line) for line in check_path(recipe.data.path).read_text().splitlines() if line.strip()]
    else:
        rng = random.Random(0)
        rows = [{"text": _sentence(rng, i % 2), "label": i % 2} for i in range(recipe.data.size)]
    splits = DatasetDict(train=Dataset.from_list(rows, features=features))
    return finalize_splits(splits, recipe.data, "label")


def build_model(recipe: Recipe, data: DatasetDict) -> tuple[Any, Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(data["train"]["text"], trainers.WordLevelTrainer(special_tokens=special))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fields = {"num_labels": 2, "id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    fields["vocab_size"] = len(fast)
    return load_model(recipe.model, AutoModelForSequenceClassification, fields), fast


def prepare_datasets(recipe: Recipe, data: DatasetDict, tokenizer: Any) -> DatasetDict:
    return DatasetDict({s: ds.map(lambda b: tokenizer(b["text"]), batched=True) for s, ds in data.items()})


def _accuracy(eval_pred) -> dict[str, float]:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return {"accuracy": float((np.argmax(logits, -1) == eval_pred.label_ids).mean())}


def build_trainer(inputs: TrainerInputs) -> Trainer:
    from transformers import DataCollatorWithPadding

    keep = ["input_ids", "attention_mask", "token_type_ids", "label"]
    datasets = {s: ds.select_columns([c for c in keep if c in ds.column_names]) for s, ds in inputs.datasets.items()}
    return Trainer(
        model=inputs.model,
        args=inputs.args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=DataCollatorWithPadding(inputs.processor),
        compute_metrics=_accuracy,
        processing_class=inputs.processor,
        callbacks=inputs.callbacks,
        optimizer_cls_and_kwargs=inputs.optimizer,
    )


def _load_tokenizer(run_dir: str, config: Any = None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run_dir)


def predict(run_dir: Path, inputs: list, stream: Any = None, *, top_k: int = 2) -> list[dict]:
    """``{"input", "label", "score"}`` per sentence, as ``pipeline("text-classification")`` ranks them."""
    model, tokenizer = runs.load_run_model(run_dir, AutoModelForSequenceClassification, _load_tokenizer)
    results = []
    with torch.no_grad():
        for text in inputs:
            probs = model(**tokenizer(str(text), return_tensors="pt")).logits.softmax(-1)[0]
            best = int(probs.argmax())
            results.append(
                {"input": text, "label": model.config.id2label[best], "score": round(float(probs[best]), 6)}
            )
            if stream is not None:
                stream.write(f"{text}: {results[-1]['label']}\n")
    return results


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    data = load_data(recipe)[split]
    found = predict(run_dir, data["text"])
    right = [r["label"] == LABELS[y] for r, y in zip(found, data["label"])]
    metrics = {"accuracy": float(np.mean(right)), "split": split, "num_examples": len(data)}
    out = eval_dir(run_dir, split, recipe.eval.split)
    write_metrics(out, metrics)
    plot_learning_curves(run_dir, out / "learning_curves.png", "accuracy")
    wrong = [f"- {r['input']} ({r['label']})" for r, ok in zip(found, right) if not ok][:5]
    write_report(out / "report.md", recipe.name, [], metrics, ["accuracy"], [], ("Mistakes", wrong, None))
    return metrics


def example_inputs(run_dir: Path, count: int) -> list[str]:
    return load_data(runs.load_run_recipe(run_dir))["test"]["text"][:count]


def demo(run_dir: Path):
    import gradio as gr

    with gr.Blocks(title=f"hftk · {Path(run_dir).name}") as blocks:
        text = gr.Textbox(label="sentence")
        label = gr.JSON(label="prediction")
        gr.Button("Classify").click(lambda t: predict(run_dir, [t])[0], text, label, api_name="classify")
        gr.Markdown(f"test accuracy: {read_metrics(Path(run_dir)).get('accuracy', '?')}")
    return blocks


SPEC = TaskSpec(
    task=TASK,
    pipeline_tag="text-classification",
    auto_model="AutoModelForSequenceClassification",
    default_recipe=RECIPE,
    headline=["accuracy"],
    config_classes={"model": ToyModelConfig, "data": ToyDataConfig},
    training_arguments=TrainingArguments,
    pipeline_example='print(pipe("a lovely day"))',
    tiny_overrides=[
        "model.model_args={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
        "train.max_steps=8",
        "train.per_device_train_batch_size=16",
        "train.learning_rate=3e-3",
        "train.eval_strategy=steps",
        "train.eval_steps=4",
        "train.save_strategy=steps",
        "train.save_steps=4",
        "train.logging_steps=2",
    ],
    load_data=load_data,
    build_model=build_model,
    prepare_datasets=prepare_datasets,
    build_trainer=build_trainer,
    evaluate_report=evaluate_report,
    example_inputs=example_inputs,
    predict=predict,
    demo=demo,
    train_defaults={"metric_for_best_model": "accuracy"},
)
