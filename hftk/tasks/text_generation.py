"""Text generation: GPT-style decoders and LSTM/GRU language models, trained from scratch or fine-tuned.

Data: the embedded ``python-docs`` prose, local text/jsonl/csv, or a Hub dataset (``hftk/data/text.py``); with
``data.streaming`` any of them as a stream, for corpora bigger than memory (``hftk.data.lm.StreamBlocks``).
From scratch, a byte-level BPE tokenizer is trained on the training split and saved in the run; a
pretrained model brings its own. The headline metric is bits per byte on the test split.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset, DatasetDict
from transformers import Trainer, TrainingArguments

from hftk import generation, runs
from hftk.data import lm
from hftk.data.text import load_text_data, load_text_stream, sample_texts
from hftk.errors import HftkError
from hftk.evaluation import eval_dir, plot_learning_curves, read_metrics, write_metrics
from hftk.evaluation import text as report
from hftk.generation import DecodingOptions, context_length
from hftk.models.adapters import load_full_model
from hftk.models.parts import ModelParts
from hftk.models.parts import model_parts as read_parts
from hftk.models.text import RNN_CELLS, build_causal_lm, load_tokenizer
from hftk.sections import RECIPES_DIR, DataConfig, EvalConfig, ModelConfig, Recipe, setting
from hftk.tasks.contract import TaskSpec, TrainerInputs
from hftk.training import StreamLoading

logger = logging.getLogger(__name__)

TASK = "text-generation"
TINY_OVERRIDES = [
    "budget.minutes=null",
    "model.model_args={n_layer: 1, n_embd: 32, n_head: 2}",
    "data.vocab_size=320",
    "data.block_size=32",
    "data.max_train_samples=40",
    "data.max_eval_samples=8",
    "train.max_steps=8",
    "train.per_device_train_batch_size=8",
    "train.eval_steps=4",
    "train.save_steps=4",
    "train.logging_steps=2",
    "eval.sample_tokens=8",
    "eval.dynamic_lr=null",
]
HEADLINE = ["bits_per_byte", "dynamic_bits_per_byte", "perplexity", "loss"]  # dynamic: when eval.dynamic_lr is set
# what `hftk predict`, the demo and the report's samples draw with unless told otherwise
SAMPLING = DecodingOptions(max_new_tokens=100, temperature=0.8, top_k=0, top_p=0.95, repetition_penalty=1.0)


@dataclass
class TextModelConfig(ModelConfig):
    """The language model: gpt2 (or any transformers model type) from a config, lstm, gru, or pretrained."""

    name: str = setting("gpt2", "lstm, gru, a transformers model type (gpt2, llama...), a Hub id or a local folder")


@dataclass
class TextDataConfig(DataConfig):
    """Text: embedded python-docs, a .txt file or folder, jsonl/csv with a text column, or a Hub dataset."""

    name: str | None = setting("python-docs", "python-docs (embedded) or a Hub dataset id (e.g. Salesforce/wikitext)")
    text_column: str = setting("text", "column holding the text (jsonl, csv, Hub datasets)")
    join_rows: str | None = setting(
        None, "rows are lines of one text (WikiText): join each split's rows with this separator, e.g. ''"
    )
    encoding_errors: Literal["strict", "replace"] = setting(
        "strict", "files that are not UTF-8: stop, or replace bad bytes"
    )
    block_size: int = setting(256, "tokens per training example (at most the model's context)")
    packing: bool = setting(True, "pack the token stream into full blocks; false: one example per document")
    random_offsets: bool = setting(True, "packed blocks start anywhere in the stream (differs every epoch)")
    eval_stride: int | None = setting(None, "new tokens scored per evaluation window (None: block_size/2)")
    vocab_size: int = setting(4096, "size of the byte-level BPE vocabulary trained on the training split")
    min_frequency: int = setting(2, "BPE: pairs seen fewer times are not merged")
    tokenizer: str | None = setting(None, "use this tokenizer (folder or Hub id) instead of training one")
    streaming: bool = setting(
        False, "read the training data as a stream (any size; tokenized and packed as read); needs train.max_steps"
    )
    shuffle_buffer: int = setting(10000, "streaming: blocks read and shuffled together, one window at a time (0: off)")
    holdout_documents: int = setting(
        1000,
        "streaming, data without validation/test splits: the stream's first N documents are test, next N validation",
    )
    tokenizer_sample_mb: float = setting(
        20.0, "streaming: MB from the start of the training stream the BPE learns from"
    )


@dataclass
class TextEvalConfig(EvalConfig):
    """Evaluation: bits per byte on the split, and samples from fixed prompts."""

    batch_size: int = setting(16, "evaluation batch size (windows of block_size tokens)")
    prompts: list[str] = setting(
        ["The", "A function", "If the"], "prompts sampled at each evaluation and in the report"
    )
    sample_tokens: int = setting(48, "tokens generated per prompt sample")
    dynamic_lr: float | None = setting(
        None, "also score the split with dynamic evaluation: learning rate for adapting as it reads (None: off)"
    )
    dynamic_segment: int = setting(16, "dynamic evaluation: tokens scored between two updates")
    dynamic_optimizer: Literal["sgd", "rms"] = setting(
        "sgd",
        "dynamic evaluation: sgd (plain steps) or rms (steps scaled by each weight's gradient RMS; transformers)",
    )


def load_data(recipe: Recipe) -> DatasetDict | dict[str, Any]:
    """Documents per split; with ``data.streaming`` the training split is a ``hftk.data.text.DocumentStream``."""
    if recipe.data.streaming:
        _check_streaming(recipe)
        return load_text_stream(recipe.data)
    return load_text_data(recipe.data)


def _check_streaming(recipe: Recipe) -> None:
    """What a stream cannot do, said before anything is read: it has no length, so no epochs."""
    train, cfg = recipe.train, recipe.data
    if train.get("max_steps", -1) in (-1, None) and not recipe.budget.minutes:
        raise HftkError("data.streaming: set train.max_steps (a stream has no length, so epochs cannot end training)")
    for key in ("eval_strategy", "save_strategy"):
        if train.get(key) == "epoch":
            every = key.replace("strategy", "steps")
            raise HftkError(f"data.streaming: train.{key}=epoch never comes on a stream; use steps (train.{every})")
    if not cfg.packing:
        raise HftkError("data.packing=false: not with data.streaming (a stream is read as packed blocks)")
    if cfg.shuffle_buffer < 0 or cfg.tokenizer_sample_mb <= 0:
        raise HftkError("data.shuffle_buffer (>= 0) and data.tokenizer_sample_mb (> 0): expected sizes, not negatives")


def _check_data(recipe: Recipe) -> None:
    cfg = recipe.data
    if cfg.block_size < 2:
        raise HftkError(f"data.block_size {cfg.block_size}: expected at least 2 tokens")
    if cfg.vocab_size < 257 and not (recipe.model.pretrained or cfg.tokenizer):
        raise HftkError(f"data.vocab_size {cfg.vocab_size}: a byte-level BPE needs more than 256 tokens (try 4096)")
    if recipe.eval.dynamic_lr is not None and recipe.eval.dynamic_lr <= 0:
        raise HftkError(f"eval.dynamic_lr {recipe.eval.dynamic_lr}: expected a positive learning rate (null: off)")
    if recipe.eval.dynamic_segment < 1:
        raise HftkError(f"eval.dynamic_segment {recipe.eval.dynamic_segment}: expected at least 1 token")


def model_parts(model: Any) -> ModelParts:
    """Embeddings, the stacked layers (transformer blocks or recurrent layers), and the output layer when untied."""
    return read_parts(model, ["lm_head"])


def build_model(recipe: Recipe, data: DatasetDict) -> tuple[Any, Any]:
    """Pretrained weights and tokenizer, or a random-init model with a BPE tokenizer trained on ``train``."""
    _check_data(recipe)
    if recipe.model.pretrained:
        tokenizer = load_tokenizer(recipe.model)
    elif recipe.data.tokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(recipe.data.tokenizer)
        except (OSError, ValueError) as err:
            raise HftkError(f"data.tokenizer '{recipe.data.tokenizer}': cannot load it ({err})") from None
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    else:
        if recipe.data.streaming:  # the start of the stream: enough text for the merges, not the whole corpus
            texts = sample_texts(data["train"].documents(), int(recipe.data.tokenizer_sample_mb * 1e6))
        else:
            texts = data["train"]["text"]
        tokenizer = lm.train_bpe_tokenizer(texts, recipe.data.vocab_size, recipe.data.min_frequency)
    return build_causal_lm(recipe.model, tokenizer, recipe.data.block_size), tokenizer


def _is_recurrent(recipe: Recipe) -> bool:
    return recipe.model.name in RNN_CELLS or "hftk_rnn" in _read_config_text(recipe.model.name)


def _read_config_text(name: str) -> str:
    path = Path(name) / "config.json"
    return path.read_text() if path.is_file() else ""


def prepare_datasets(recipe: Recipe, data: DatasetDict, processor: Any) -> DatasetDict:
    """Training blocks (packed, or one per document) and evaluation windows that score every token once."""
    cfg = recipe.data
    stride = cfg.eval_stride or max(1, cfg.block_size // 2)
    if cfg.streaming:
        state = PartialState()  # each process reads its own part of the stream
        documents, keep = data["train"].part(state.process_index, state.num_processes)
        train = lm.StreamBlocks(
            documents,
            processor,
            cfg.block_size,
            cfg.shuffle_buffer,
            recipe.train.get("seed", 42),
            keep,
            separate_documents=cfg.join_rows is None,  # line-per-row data: no end-of-text between rows
        )
        logger.info("train: a stream of %d-token blocks, shuffled %d at a time", cfg.block_size, cfg.shuffle_buffer)
    elif cfg.packing:
        stream = lm.token_stream(processor, data["train"]["text"])
        train = lm.PackedBlocks(stream, cfg.block_size, cfg.random_offsets, recipe.train.get("seed", 42))
        logger.info("train: %s tokens in %d blocks of %d", f"{len(stream):,}", len(train), train.block_size)
    else:
        flatten = not _is_recurrent(recipe)  # GPT-style models take position_ids; recurrent ones get padding
        train = Dataset.from_list(lm.document_examples(processor, data["train"]["text"], cfg.block_size, flatten))
    out = {"train": train}
    for split in ("validation", "test"):
        out[split] = Dataset.from_list(
            lm.eval_windows(lm.token_stream(processor, data[split]["text"]), cfg.block_size, stride)
        )
    return out


def compute_metrics(eval_pred) -> dict[str, float]:
    """Bits per byte and perplexity from per-window [nats, tokens, bytes] (see ``build_trainer``)."""
    sums = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 3).sum(axis=0)
    metrics = report.language_model_metrics(sums[0], int(sums[1]), int(sums[2]))
    return {"bits_per_byte": metrics["bits_per_byte"], "perplexity": metrics["perplexity"]}


def build_trainer(inputs: TrainerInputs) -> Trainer:
    """A Trainer that reduces evaluation logits to per-window sums (no vocabulary-sized arrays are gathered)
    and samples from the recipe's prompts at each evaluation (TensorBoard and ``samples.jsonl``)."""
    tokenizer, cfg = inputs.processor, inputs.recipe.eval
    byte_lengths = torch.from_numpy(lm.token_byte_lengths(tokenizer))

    def window_nats(logits: Any, labels: torch.Tensor) -> torch.Tensor:
        logits = logits[0] if isinstance(logits, tuple) else logits
        return report.window_nats(logits, labels, byte_lengths)

    def sample(model: Any) -> list[dict]:
        return sample_continuations(model, tokenizer, list(cfg.prompts), cfg.sample_tokens)

    return TextTrainer(
        model=inputs.model,
        args=inputs.args,
        train_dataset=inputs.datasets["train"],
        eval_dataset=inputs.datasets["validation"],
        data_collator=lm.collate,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        callbacks=[*inputs.callbacks, generation.SampleCallback(sample), *_epoch_callbacks(inputs.datasets["train"])],
        optimizer_cls_and_kwargs=inputs.optimizer,
        preprocess_logits_for_metrics=window_nats,
    )


class TextTrainer(StreamLoading, Trainer):
    """The Trainer, reading a training stream through its own process-local loader (``hftk.training``)."""


def _epoch_callbacks(train: Any) -> list:
    return [lm.EpochCallback(train)] if hasattr(train, "set_epoch") and not isinstance(train, Dataset) else []


def prompt_inputs(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> tuple[dict, int]:
    """``[eos] + prompt`` as the model saw documents start, fitted to its context with the new tokens."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.eos_token_id, *ids] if tokenizer.eos_token_id is not None else ids
    ids, new = generation.fit_to_context(ids, max_new_tokens, context_length(model.config))
    tensor = torch.tensor([ids])
    return {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}, new


def sample_continuations(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """One sampled continuation per prompt (temperature 0.8, top-p 0.95, seed 0: comparable over steps; drawn from
    their own generator, so training's random stream goes on as if no sample had been drawn)."""
    samples = []
    for prompt in prompts:
        inputs, new = prompt_inputs(model, tokenizer, prompt, max_new_tokens)
        options = DecodingOptions(max_new_tokens=new, seed=0).over(SAMPLING).generate_kwargs()
        text = generation.generate_texts(model, tokenizer, inputs, **options)[0]
        samples.append({"prompt": prompt, "output": text})
    return samples


def load_run_tokenizer(run_dir: str, config: Any = None) -> Any:
    """The run's tokenizer, padding with its end-of-text token when it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def load_run_model(run_dir: str | Path) -> tuple[Any, Any]:
    """The run's final model (on the inference device) and tokenizer, loaded as any transformers user would."""
    from transformers import AutoModelForCausalLM

    return runs.load_run_model(run_dir, AutoModelForCausalLM, load_run_tokenizer)


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """Bits per byte, perplexity and loss on ``split``; writes metrics.json, report.md, learning curves."""
    if split == "train" and recipe.data.streaming:
        raise HftkError("--split train: a streamed training split has no end; evaluate validation or test")
    out = eval_dir(run_dir, split, recipe.eval.split)
    texts = load_data(recipe)[split]["text"]
    model, tokenizer = load_run_model(run_dir)
    context = context_length(model.config)
    block = min(recipe.data.block_size, context or recipe.data.block_size)
    stream, num_bytes = lm.token_stream(tokenizer, texts), report.total_bytes(texts)
    if context is None:  # recurrent: the state carries through the whole split, no windows needed
        nats, tokens = report.score_stream(model, stream, None, segment=512)
    else:
        windows = lm.eval_windows(stream, block, recipe.data.eval_stride or block // 2)
        nats, tokens = report.score_windows(model, windows, recipe.eval.batch_size, lm.collate)
    metrics = report.language_model_metrics(nats, tokens, num_bytes)
    metrics.update(split=split, num_examples=len(texts), block_size=block)
    if recipe.eval.dynamic_lr:
        metrics.update(dynamic_metrics(model, stream, context and block, num_bytes, recipe.eval))
    write_metrics(out, metrics)
    plot_learning_curves(run_dir, out / "learning_curves.png", "bits_per_byte")
    samples = sample_continuations(model, tokenizer, list(recipe.eval.prompts), recipe.eval.sample_tokens)
    history = generation.read_sample_history(run_dir)
    report.write_report(out / "report.md", recipe, metrics, HEADLINE, samples, history)
    logger.info("%s on %s: %s", recipe.name, split, {k: round(metrics[k], 4) for k in HEADLINE if k in metrics})
    return metrics


def dynamic_metrics(
    model: Any, stream: np.ndarray, context: int | None, num_bytes: int, cfg: TextEvalConfig
) -> dict[str, float]:
    """``dynamic_bits_per_byte`` and ``dynamic_loss``: the split scored while the model adapts to it."""
    nats, tokens = report.score_stream(
        model, stream, context, cfg.dynamic_segment, cfg.dynamic_lr, cfg.dynamic_optimizer
    )
    if not math.isfinite(nats):
        logger.warning("dynamic evaluation diverged at eval.dynamic_lr=%g: try a smaller rate", cfg.dynamic_lr)
        return {}
    metrics = report.language_model_metrics(nats, tokens, num_bytes)
    return {"dynamic_bits_per_byte": metrics["bits_per_byte"], "dynamic_loss": metrics["loss"]}


def iter_generate(
    run_dir: Path, prompt: str, stop: threading.Event | None = None, decoding: DecodingOptions = SAMPLING
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece as tokens are generated (``stop`` ends it early)."""
    kwargs = decoding.over(SAMPLING).generate_kwargs()
    model, tokenizer = load_run_model(run_dir)
    inputs, kwargs["max_new_tokens"] = prompt_inputs(model, tokenizer, prompt, kwargs["max_new_tokens"])
    yield from generation.stream_generate(model, tokenizer, inputs, stop, **kwargs)


def example_inputs(run_dir: Path, count: int) -> list[str]:
    """The recipe's sample prompts, then the first words of test documents."""
    recipe = runs.load_run_recipe(run_dir)
    prompts = list(recipe.eval.prompts)
    for text in load_data(recipe)["test"]["text"][:count]:
        words = text.split()[:4]
        if words and len(prompts) < count:
            prompts.append(" ".join(words))
    return prompts[:count]


def predict(
    run_dir: Path,
    inputs: list[str],
    stream: Any = None,
    *,
    decoding: DecodingOptions = SAMPLING,
) -> list[dict]:
    """Continue each prompt; ``stream`` (a file such as sys.stdout) shows the text as it is generated.

    ``decoding.temperature`` 0 is greedy; ``top_k`` 0 is off; ``seed`` makes sampling repeatable.

    Returns:
        One ``{"input": prompt, "generated_text": prompt + continuation, "continuation": str}`` per prompt,
        the shape ``pipeline("text-generation")`` uses for ``generated_text``.
    """
    decoding.over(SAMPLING).check()  # bad options fail before any output
    results = []
    for prompt in inputs:
        if stream is not None:
            stream.write(prompt)
            stream.flush()
        pieces = []
        for piece in iter_generate(Path(run_dir), str(prompt), decoding=decoding):
            pieces.append(piece)
            if stream is not None:
                stream.write(piece)
                stream.flush()
        if stream is not None:
            stream.write("\n")
        new = "".join(pieces)
        results.append({"input": prompt, "generated_text": prompt + new, "continuation": new})
    return results


def onnx_graphs(run_dir: Path, batch_size: int) -> list:
    """The language model as one ONNX graph: ``input_ids`` + ``attention_mask`` -> ``logits`` (no key/value cache:
    each call scores a whole window), dynamic batch and length up to the context, checked on test-split windows."""
    from transformers import AutoModelForCausalLM

    from hftk.export import NamedOutputs, OnnxGraph

    model = load_full_model(AutoModelForCausalLM, run_dir).eval()
    tokenizer = load_run_tokenizer(str(run_dir))
    recipe = runs.load_run_recipe(run_dir)
    context = context_length(model.config)
    length = min(recipe.data.block_size, 64, (context // 2) if context else 64)
    stream = lm.token_stream(tokenizer, load_data(recipe)["test"]["text"])
    rows = [stream[i * length : (i + 1) * length] for i in range(min(batch_size, len(stream) // length))]
    ids = torch.as_tensor(np.stack(rows), dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    axes = {0: "batch", 1: "sequence"}
    model.config.use_cache = False  # one window per call: no key/value cache in the graph
    module = NamedOutputs(model, list(inputs), ["logits"])
    sizes = {"sequence": context} if context else None
    return [OnnxGraph("model", module, inputs, ["logits"], {k: axes for k in inputs}, sizes, tolerance=1e-3)]


def demo(run_dir: Path):
    from hftk.demos.text_generation import build_demo

    metrics = read_metrics(Path(run_dir))
    return build_demo(Path(run_dir), iter_generate, metrics, HEADLINE, example_inputs(Path(run_dir), 5), SAMPLING)


SPEC = TaskSpec(
    task=TASK,
    pipeline_tag="text-generation",
    auto_model="AutoModelForCausalLM",
    default_recipe=RECIPES_DIR / TASK / "gpt-python-docs.yaml",
    headline=HEADLINE,
    config_classes={"model": TextModelConfig, "data": TextDataConfig, "eval": TextEvalConfig},
    training_arguments=TrainingArguments,
    pipeline_example='print(pipe("The", max_new_tokens=50, do_sample=True)[0]["generated_text"])',
    tiny_overrides=TINY_OVERRIDES,
    load_data=load_data,
    build_model=build_model,
    prepare_datasets=prepare_datasets,
    build_trainer=build_trainer,
    evaluate_report=evaluate_report,
    example_inputs=example_inputs,
    predict=predict,
    demo=demo,
    train_defaults={"metric_for_best_model": "bits_per_byte", "greater_is_better": False},
    model_parts=model_parts,
    quantizable=True,  # QLoRA on a pretrained language model (hftk.models.adapters)
    onnx_graphs=onnx_graphs,
)
