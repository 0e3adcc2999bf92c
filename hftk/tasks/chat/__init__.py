"""Chat: models that answer a message given the conversation so far, encoder-decoder or decoder-only.

``config`` holds the task's facts and recipe sections, ``training`` what trains a run (``decoder`` the decoder-only
family's collator and Trainer), ``serving`` what serves one (evaluation beside a retrieval baseline, predict,
`hftk chat`, the demo). This module declares the task's spec; the task was called ``seq2seq-chat``, an id that still
works (``hftk.tasks.ALIASES``).

The spec's facts are the encoder-decoder family's, the default's (its Hub tag, its Auto class); ``model_facts`` gives
a decoder-only run its own (``AutoModelForCausalLM``, ``text-generation``: its card, `hftk merge`); it runs in
``pipeline("text-generation")`` as well as in ``pipeline("chat")``.
"""

from transformers import Seq2SeqTrainingArguments

from hftk.models import seq2seq
from hftk.sections import RECIPES_DIR
from hftk.tasks.chat import onnx, serving, training
from hftk.tasks.chat.config import (
    DETERMINISTIC_OVERRIDES,
    HEADLINE,
    TASK,
    TINY_OVERRIDES,
    ChatDataConfig,
    ChatEvalConfig,
    ChatModelConfig,
)
from hftk.tasks.contract import ModelFacts, TaskSpec


def model_facts(config) -> ModelFacts | None:
    """A decoder-only run is a text-generation model to the Hub (AutoModelForCausalLM); an encoder-decoder one keeps
    the spec's text2text-generation facts."""
    if getattr(config, "is_encoder_decoder", True):
        return None
    return ModelFacts("text-generation", "AutoModelForCausalLM", seq2seq.PIPELINE_TASK)


SPEC = TaskSpec(
    task=TASK,
    pipeline_tag="text2text-generation",  # the Hub's tag; transformers 5 removed that pipeline: see pipeline_task
    auto_model="AutoModelForSeq2SeqLM",
    default_recipe=RECIPES_DIR / TASK / "minilm-chatterbot.yaml",
    headline=HEADLINE,
    config_classes={"model": ChatModelConfig, "data": ChatDataConfig, "eval": ChatEvalConfig},
    training_arguments=Seq2SeqTrainingArguments,
    pipeline_example='print(pipe("Hello, how are you?")[0]["generated_text"])',
    tiny_overrides=TINY_OVERRIDES,
    load_data=training.load_data,
    build_model=training.build_model,
    prepare_datasets=training.prepare_datasets,
    build_trainer=training.build_trainer,
    evaluate_report=serving.evaluate_report,
    example_inputs=serving.example_inputs,
    predict=serving.predict,
    demo=serving.demo,
    train_defaults={"metric_for_best_model": "chrf", "greater_is_better": True, "predict_with_generate": True},
    pipeline_task=seq2seq.PIPELINE_TASK,  # pipeline("chat", model=RUN), both families
    deterministic_overrides=DETERMINISTIC_OVERRIDES,
    model_parts=training.model_parts,
    quantizable=True,  # QLoRA on a pretrained language model (hftk.models.adapters)
    chat=serving.chat,
    onnx_graphs=onnx.onnx_graphs,  # with the key/value cache, as Optimum lays out each family's graphs
    onnx_check=onnx.check_answers,  # greedy answers through the graphs equal generate's
    model_facts=model_facts,
)
