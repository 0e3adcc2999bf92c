"""Every reach into a library's internals, in one file: upgrading transformers, timm or peft means reading this one.

Each entry says the version it was written against and why no public API serves. ``tests/test_compat.py`` checks
that every internal used here still exists with the shape relied on, so an upgrade that moves one fails there, by
name, instead of somewhere downstream. Elsewhere hftk uses public APIs only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- transformers 5.24: Trainer


class ConvertedCheckpointLoading:
    """Trainer mixin: checkpoints (resume, best model) load through ``from_pretrained``, which renames their keys.

    Workaround for huggingface/transformers#48805 (open in 5.24): ``save_pretrained`` writes checkpoints in the Hub's
    key format (RT-DETR: encoder.encoder.N..., fc1) while the Trainer loads them back with a plain, non-strict
    ``load_state_dict``, so a resumed run or the best model silently kept random weights for every renamed tensor.
    No public hook loads checkpoints; ``_load_from_checkpoint`` and ``_load_best_model`` are where the Trainer does.
    A subclass gives ``load_converted(folder, model) -> bool`` (False: let the Trainer load it its own way).
    """

    def load_converted(self, folder: str, model: Any) -> bool:
        raise NotImplementedError

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.load_converted(resume_from_checkpoint, model or self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self.load_converted(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()


class GatherForMetricsInEvaluation:
    """Seq2SeqTrainer mixin: generated answers are gathered with ``gather_for_metrics``, so every example counts once.

    transformers 5.24's ``Seq2SeqTrainer.evaluate`` gathers with ``accelerator.gather`` ("we don't want to drop
    samples"): on several processes the repeats that pad an uneven split's last batch reach the metrics. The Trainer
    keeps its gather in the attribute ``gather_function`` (no argument or hook sets it); it is set per evaluation.
    """

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        gather = self.accelerator.gather_for_metrics
        self.gather_function = functools.partial(gather, use_gather_object=self.args.eval_use_gather_object)
        return super().evaluation_loop(*args, **kwargs)


def set_optimizer_factory(trainer: Any, factory: tuple | None) -> None:
    """Give a Trainer its optimizer class and per-group arguments after construction.

    ``Seq2SeqTrainer.__init__`` (5.24) does not take ``optimizer_cls_and_kwargs``, which ``Trainer.__init__`` only
    stores in this attribute; ``create_optimizer`` reads it when training starts.
    """
    trainer.optimizer_cls_and_kwargs = factory


def save_model_without_push(trainer: Any, output_dir: Path) -> None:
    """``trainer.save_model`` without the Hub push transformers makes on a user's call when ``push_to_hub`` is on.

    hftk pushes the finished run itself (with its card and evaluation), once; ``_internal_call=True`` (5.24) is the
    only way to save without pushing.
    """
    trainer.save_model(str(output_dir), _internal_call=True)


def prepare_inputs(trainer: Any, inputs: dict) -> dict:
    """The Trainer's own device placement of a batch (``_prepare_inputs``, 5.24), for a ``prediction_step``
    override that must place inputs exactly as the Trainer's does."""
    return trainer._prepare_inputs(inputs)


def wrap_evaluate(trainer: Any, wrapper: Callable[[Callable], Callable]) -> None:
    """Replace ``trainer.evaluate`` on the instance by ``wrapper(evaluate)``.

    The Trainer's callbacks see an evaluation only after it ran (``on_evaluate``); nothing runs before one, so code
    that must bracket every evaluation (keeping training's random streams untouched) wraps the method.
    """
    trainer.evaluate = functools.wraps(trainer.evaluate)(wrapper(trainer.evaluate))


def set_lr_lambdas(scheduler: Any, factor: Callable[[int], float]) -> bool:
    """Make a ``LambdaLR`` (what the Trainer's schedules are) follow ``factor`` from now on; False when the scheduler
    is another kind. ``LambdaLR.lr_lambdas`` (torch 2.14) holds one function per parameter group; no API swaps it.
    """
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return False
    scheduler.lr_lambdas = [factor] * len(scheduler.lr_lambdas)
    return True


# ---------------------------------------------------------------- transformers 5.24: models and pipelines


def object_detection_model_types() -> list[str]:
    """Model types ``AutoModelForObjectDetection`` builds: its mapping of names (no public list exists)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    return sorted(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)


def image_processor_names(model_type: str) -> dict[str, str]:
    """``{"torchvision": class name, "pil": class name}`` of a model type's image processors, from the Auto class's
    mapping (5.24: a dict per type); ``AutoImageProcessor`` needs a checkpoint to tell, hftk builds from a type."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    return names if isinstance(names, dict) else {"pil": names}


def is_frozen_batch_norm(module: torch.nn.Module) -> bool:
    """A DETR-family backbone's frozen batch norm (``DetrFrozenBatchNorm2d``, ``RTDetrFrozenBatchNorm2d``...).

    Each model defines its own class with the same buffers; no shared base class or public list names them, so the
    class name's suffix does (5.24).
    """
    return type(module).__name__.endswith("FrozenBatchNorm2d")


def pipeline_generate_kwargs(pipeline: Any, generate_kwargs: dict) -> dict:
    """The ``generate()`` arguments a pipeline call uses: the call's, over those given at construction, with the
    pipeline's defaults (``Pipeline._prepare_generate_kwargs``, 5.24). A custom pipeline that calls ``generate``
    itself needs them to behave as transformers' own pipelines do."""
    return pipeline._prepare_generate_kwargs(generate_kwargs)


# ---------------------------------------------------------------- peft 0.21


def peft_default_targets() -> tuple[dict, dict, dict]:
    """peft's per-architecture default target modules: LoRA targets, IA3 targets, IA3 feed-forward modules.

    peft uses these tables itself when ``target_modules`` is None; hftk reads them to say which layers an adapter
    will touch before building it. They live in ``peft.utils.constants`` (not exported by ``peft``).
    """
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )

    return (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    )
