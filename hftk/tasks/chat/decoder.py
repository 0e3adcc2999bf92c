"""Chat, decoder-only training: the collator and the Trainer of a causal chat model.

A sample is one sequence: the prompt (history and message through the model's chat template, with its generation
prompt) then the answer through the template's end-of-turn token, labels -100 on the prompt
(``hftk.data.chat_inputs``). Training pads on the right. Evaluation scores the loss and, with
``predict_with_generate`` (the task's default), generates an answer from each prompt, left-padded, as
``Seq2SeqTrainer`` does for the encoder-decoder family: both families are selected on the chrF of their answers.

Why not TRL's ``SFTTrainer`` (trl 1.16), which users know for exactly this (prompt-completion data, completion-only
loss), checked against its source:
- the task has one ``train:`` section validated against one ``TrainingArguments`` class, shared by both families;
  the encoder-decoder family needs ``Seq2SeqTrainingArguments`` (``predict_with_generate``, ``generation_*``), which
  ``SFTTrainer`` turns into an ``SFTConfig(**args.to_dict())`` that rejects those fields, and SFTConfig's own
  defaults (bf16 on when unset, gradient checkpointing on, learning rate 2e-5) would change what a recipe means;
- its truncation keeps the start of a sequence (``truncation_mode="keep_start"`` is the only mode left), so an
  over-long sample loses the end of its answer; this task cuts the oldest turns, then the message's start, and never
  the answer. Given tokens already cut (``input_ids`` and labels), SFTTrainer prepares nothing, and what remains is
  its padding collator;
- its evaluation is loss and token accuracy (through a fused LM head it patches into the model's forward); this task
  selects models on the chrF of generated answers, so its ``prediction_step`` must generate;
- it writes its own README.md model card into ``output_dir`` at every checkpoint, where the run's card is hftk's.
So trl would be a dependency for a 15-line collator. Where it would fit: packing and padding-free batches of long
instruction data on a GPU, as a task of its own whose ``train:`` section is an ``SFTConfig``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from hftk import compat


class CausalChatCollator:
    """Right padding: ``input_ids`` with the pad token, ``attention_mask`` 0, ``labels`` -100 (the ``length`` column
    is for the length-grouped sampler only)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])

        return {
            "input_ids": padded("input_ids", self.pad_token_id),
            "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", -100),
        }


def prompt_batch(inputs: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The prompts of a training batch (the tokens before each row's first learnt label), left-padded for
    ``generate()``."""
    lengths = (inputs["labels"] != -100).int().argmax(dim=1).tolist()
    width = max(lengths)
    ids = inputs["input_ids"].new_full((len(lengths), width), pad_token_id)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = inputs["input_ids"][row, :length]
        mask[row, width - length :] = 1
    return {"input_ids": ids, "attention_mask": mask}


class CausalChatTrainer(Trainer):
    """``Trainer`` whose evaluation also generates answers (``predict_with_generate``), at most ``answer_tokens``
    new tokens (``train.generation_max_length`` when set), with the model's own stop tokens and decoding."""

    def __init__(self, *args: Any, answer_tokens: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answer_tokens = answer_tokens

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if prediction_loss_only or not getattr(self.args, "predict_with_generate", False):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = compat.prepare_inputs(self, inputs)
        pad = self.processing_class.pad_token_id
        with torch.no_grad():
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, dict(inputs)).detach()
            prompts = prompt_batch(inputs, pad)
            new_tokens = self.args.generation_max_length or self.answer_tokens
            beams = {"num_beams": self.args.generation_num_beams} if self.args.generation_num_beams else {}
            output = self.model.generate(**prompts, max_new_tokens=new_tokens, pad_token_id=pad, **beams)
        answers = output[:, prompts["input_ids"].shape[1] :]
        answers = torch.nn.functional.pad(answers, (0, new_tokens - answers.shape[1]), value=pad)
        return loss, answers, inputs["labels"]
