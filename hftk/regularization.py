"""Regularization that works the same for every task: weight averaging (EMA), an L1 penalty, dropout overrides.

The rest lives where the ecosystem already has it: weight decay (``train.weight_decay``), label smoothing
(``train.label_smoothing_factor``), gradient clipping (``train.max_grad_norm``), early stopping
(``eval.early_stopping_patience``), stochastic depth (``model.model_args.drop_path_rate`` for timm and
ConvNeXt-style configs), mixup/cutmix (``data.augment`` of image tasks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hftk.errors import HftkError

logger = logging.getLogger(__name__)

EMA_FILE = "ema.safetensors"  # in each checkpoint: the averaged weights, so --resume continues the same average


class WeightAverage(TrainerCallback):
    """An exponential moving average of the trainable weights; at the end of training it replaces them.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so early, random weights fade fast. Validation
    during training sees the live weights; the saved model (and the closing test evaluation) is the average.
    The average is saved in every checkpoint and restored on resume, so a resumed run ends like a straight one.
    Must be registered before ``CheckpointGuard``, which lists a checkpoint's files once they are all written.
    """

    def __init__(self, decay: float, resume_from: Path | None = None):
        self.decay = decay
        self.resume_from = resume_from
        self.shadow: dict[str, torch.Tensor] | None = None

    def _params(self, model: Any) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = self._params(model)
        self.shadow = {n: p.detach().float().clone() for n, p in params.items()}
        if self.resume_from is not None and (self.resume_from / EMA_FILE).is_file():
            from safetensors.torch import load_file

            saved = load_file(self.resume_from / EMA_FILE, device=str(next(iter(params.values())).device))
            self.shadow.update({n: saved[n] for n in self.shadow if n in saved})

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        decay = min(self.decay, (1 + state.global_step) / (10 + state.global_step))
        for name, p in self._params(model).items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.shadow is not None:
            from safetensors.torch import save_file

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                save_file({n: t.contiguous().cpu() for n, t in self.shadow.items()}, str(folder / EMA_FILE))

    @torch.no_grad()
    def on_train_end(self, args, state, control, model=None, **kwargs):
        for name, p in self._params(model).items():
            p.copy_(self.shadow[name].to(p.dtype))
        logger.info("weights replaced by their moving average (regularization.ema_decay=%g)", self.decay)


class L1Penalty(TrainerCallback):
    """Adds the gradient of ``strength * sum(|w|)`` over the weight matrices before every optimizer step.

    Biases and normalisation parameters (1-D) are left alone, as weight decay conventionally leaves them. The
    gradient is added after clipping (``train.max_grad_norm`` clips the data loss's gradient only).
    """

    def __init__(self, strength: float):
        self.strength = strength

    @torch.no_grad()
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for p in model.parameters():
            if p.requires_grad and p.grad is not None and p.dim() > 1:
                p.grad.add_(torch.sign(p), alpha=self.strength)


def set_dropout(model: Any, probability: float) -> int:
    """Set every dropout layer of ``model`` (and its config's dropout fields) to ``probability``; return the count."""
    if not 0.0 <= probability < 1.0:
        raise HftkError(f"regularization.dropout {probability}: expected a probability in [0, 1)")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for layer in layers:
        layer.p = probability
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in config.to_dict().items():
            if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")) and hasattr(config, key):
                setattr(config, key, probability)
    if not layers and probability > 0:
        raise HftkError("regularization.dropout: this model has no dropout layers; remove the key")
    logger.info("dropout set to %g in %d layers", probability, len(layers))
    return len(layers)


def build_callbacks(cfg: Any, args: Any, resume_from: Path | None) -> list[TrainerCallback]:
    """The regularization callbacks a recipe asks for, checked against the training arguments."""
    import os

    callbacks: list[TrainerCallback] = []
    sharded = args.fsdp or os.environ.get("ACCELERATE_USE_FSDP") == "true" or args.deepspeed
    if cfg.ema_decay is not None and (sharded or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"):
        raise HftkError("regularization.ema_decay: not supported with FSDP or DeepSpeed (the weights are sharded)")
    if cfg.ema_decay is not None:
        if not 0.0 < cfg.ema_decay < 1.0:
            raise HftkError(f"regularization.ema_decay {cfg.ema_decay}: expected a decay in (0, 1), e.g. 0.999")
        if args.load_best_model_at_end:
            raise HftkError(
                "regularization.ema_decay with train.load_best_model_at_end: the saved model is the weight average, "
                "not a checkpoint; set train.load_best_model_at_end=false"
            )
        callbacks.append(WeightAverage(cfg.ema_decay, resume_from))
    if cfg.l1:
        if cfg.l1 < 0:
            raise HftkError(f"regularization.l1 {cfg.l1}: expected a non-negative strength, e.g. 1e-5")
        callbacks.append(L1Penalty(cfg.l1))
    return callbacks
