"""Chat's facts and recipe sections: the model, data and evaluation settings a chat recipe has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hftk.generation import DecodingOptions
from hftk.sections import DataConfig, EvalConfig, ModelConfig, setting

TASK = "chat"
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
# batch then reaches the metrics twice; the tiny BPE writes one of the 64 answers in more than 256 tokens, and a
# sample left out makes an uneven last batch, which 2 processes fill with a repeated sample
DETERMINISTIC_OVERRIDES = [
    "model.model_args.dropout_rate=0.0",
    "train.train_sampling_strategy=random",
    "data.max_target_length=1024",
]
HEADLINE = ["chrf", "bleu", "rougeL", "exact_match", "novel_chrf", "retrieval_chrf", "retrieval_novel_chrf"]


@dataclass
class ChatModelConfig(ModelConfig):
    """The chat model: an encoder-decoder (t5 from a config, a seq2seq checkpoint, an encoder-decoder warm start) or
    a decoder-only chat model (a causal LM with a chat template: smollm2-135m-instruct, a folder or Hub id)."""

    name: str = setting(
        "t5",
        "t5 (random init), encoder-decoder (warm start), a seq2seq or causal chat model (folder, Hub id, "
        "smollm2-135m-instruct), or a causal model type (llama) with data.tokenizer",
    )
    encoder: str = setting("minilm", "encoder-decoder: pretrained encoder (minilm, a BERT-style folder or Hub id)")
    decoder: Literal["encoder", "random"] = setting(
        "encoder", "encoder-decoder: decoder initialised from the encoder's weights, or at random"
    )
    generation: DecodingOptions = setting(
        DecodingOptions(), "decoding saved with the model (unset: greedy, 128 new tokens at most)"
    )


@dataclass
class ChatDataConfig(DataConfig):
    """Conversations: embedded chatterbot-english, jsonl/csv (input/target or messages), or a Hub dataset."""

    name: str | None = setting("chatterbot-english", "chatterbot-english (embedded) or a Hub dataset id")
    input_column: str = setting("input", "column with the message (input/target layout)")
    target_column: str = setting("target", "column with the response (input/target layout)")
    messages_column: str = setting("messages", "column with a list of {role, content} turns (chat layout)")
    history_turns: int = setting(2, "earlier turns given to the model before the message (0: the message alone)")
    deduplicate: bool = setting(False, "train on each distinct (history, message, response) once")
    retrieve: bool = setting(
        False,
        "encoder-decoder: the model also reads the nearest training exchange (TF-IDF) and decides what to keep of "
        "its answer",
    )
    turn_separator: str = setting(" | ", "encoder-decoder: text between turns in the model input")
    max_input_length: int = setting(
        128, "prompt tokens (history, message, chat template); a longer prompt loses its oldest turns first"
    )
    max_target_length: int = setting(256, "answer tokens learnt (a sample whose answer is longer is left out)")
    on_long_sample: Literal["truncate", "drop", "error"] = setting(
        "truncate",
        "a message too long for max_input_length even alone: keep its end (truncate), leave the sample out (drop), "
        "or stop (error, also for a too long answer); counts are logged",
    )
    tokenizer: str | None = setting(
        None, "None: the pretrained model's own (or a trained one); 'train': BPE trained on the split; a folder/Hub id"
    )
    vocab_size: int = setting(4096, "size of a trained byte-level BPE vocabulary")
    min_frequency: int = setting(2, "BPE: pairs seen fewer times are not merged")


@dataclass
class ChatEvalConfig(EvalConfig):
    """Evaluation: generated answers scored beside a retrieval baseline; best and worst answers in the report."""

    batch_size: int = setting(32, "evaluation batch size (messages generated at once)")
    worst_examples: int = setting(8, "how many best and worst answers report.md shows")


# what a chat run generates with where its recipe leaves model.generation unset
ANSWERS = DecodingOptions(max_new_tokens=128, temperature=0.0, num_beams=1, no_repeat_ngram_size=0)
