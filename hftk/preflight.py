"""Preflight: check a recipe end to end on one batch before the GPU hours are spent.

Usage:
    hftk check recipes/image-classification/resnet-mnist.yaml [KEY=VALUE ...]
    accelerate launch --config_file recipes/accelerate/multi-gpu.yaml -m hftk check <recipe>

It builds the data and the model exactly as `hftk train` does, builds the task's Trainer, takes two training
steps (forward, backward, optimizer; the second one is timed) on a real batch, and reports the split sizes, the
label map, parameter counts, the distributed setup, the time of a step and an estimate of the memory training
and evaluation need at the configured batch sizes and precision. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hftk.errors import HftkError
from hftk.sections import Recipe

OPTIMIZER_STATES = {"adam": 2, "lion": 1, "sgd": 1, "rmsprop": 1, "adafactor": 0.1}  # fp32 states per parameter


def check(recipe: Recipe) -> dict[str, Any]:
    """Run the preflight for ``recipe`` and return its report (see the module docstring)."""
    from accelerate import PartialState

    from hftk.models import count_parameters
    from hftk.tasks.contract import TrainerInputs
    from hftk.training import build_training_arguments, configure_threads, prepare

    state = PartialState()
    configure_threads(recipe.train.get("dataloader_num_workers", 0))
    task, data, model, processor, datasets = prepare(recipe)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise HftkError("no trainable parameters: model.freeze froze everything; set model.freeze=none")
    with tempfile.TemporaryDirectory(prefix="hftk-check-") as folder:
        values = {
            "report_to": [],
            "save_strategy": "no",
            "eval_strategy": "no",
            "load_best_model_at_end": False,
            "push_to_hub": False,
        }
        args = build_training_arguments(_with_train(recipe, values), Path(folder), task.training_arguments)
        trainer = task.build_trainer(TrainerInputs(recipe, model, processor, datasets, args, []))
        batch = next(iter(trainer.get_train_dataloader()))
        activations, seconds = _measured_steps(trainer, batch)
    id2label = getattr(model.config, "id2label", None) or {}
    per_device = args.per_device_train_batch_size
    steps_per_epoch = math.ceil(len(datasets["train"]) / (per_device * args.world_size)) // max(
        1, args.gradient_accumulation_steps
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    states = next((n for key, n in OPTIMIZER_STATES.items() if key in str(args.optim)), 2)
    train_memory = weight_bytes + trainable * 4 * (1 + states) + activations
    eval_scale = args.per_device_eval_batch_size / max(1, per_device)
    return {
        "recipe": recipe.name,
        "task": recipe.task,
        "distributed": {
            "type": str(state.distributed_type).split(".")[-1],
            "processes": state.num_processes,
            "device": str(state.device),
            "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        },
        "splits": {name: len(rows) for name, rows in data.items()},
        "labels": {int(k): v for k, v in id2label.items()} if len(id2label) <= 100 else len(id2label),
        "parameters": {"total": total, "trainable": trainable},
        "batch": {
            "per_device": per_device,
            "processes": args.world_size,
            "accumulation": args.gradient_accumulation_steps,
            "global": per_device * args.world_size * args.gradient_accumulation_steps,
        },
        "step_seconds": round(seconds, 4),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch),
        "memory_estimate_mb": {
            "training": round(train_memory / 2**20, 1),
            "evaluation": round((weight_bytes + activations * eval_scale / 3) / 2**20, 1),
        },
    }


def _with_train(recipe: Recipe, values: dict) -> Recipe:
    import dataclasses

    return dataclasses.replace(
        recipe, train={**recipe.train, **values}, budget=dataclasses.replace(recipe.budget, minutes=None)
    )


def _measured_steps(trainer: Any, batch: dict) -> tuple[int, float]:
    """(activation bytes, seconds): two full training steps (forward, backward, optimizer) on ``batch``.

    The first counts the bytes of every module output that autograd keeps for the backward (an estimate of
    activation memory); the second is timed.
    """
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                total += tensor.numel() * tensor.element_size()

    model = trainer.model
    trainer.create_optimizer()
    model.train()
    seconds = 0.0
    for step in range(2):
        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())] if not step else []
        start = time.perf_counter()
        try:
            with trainer.compute_loss_context_manager():  # the Trainer's autocast and the like
                loss = trainer.compute_loss(model, dict(batch))  # the task's own loss; a copy: it may pop labels
            trainer.accelerator.backward(loss)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as err:  # shapes, dtypes, missing inputs
            text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise HftkError(f"check: a training step on a real batch failed ({type(err).__name__}: {text})") from None
        finally:
            for hook in hooks:
                hook.remove()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return total, seconds


def format_report(report: dict) -> str:
    """The report as the lines `hftk check` prints."""
    dist, batch, params = report["distributed"], report["batch"], report["parameters"]
    labels = report["labels"]
    shown = labels if isinstance(labels, int) else ", ".join(f"{k}: {v}" for k, v in list(labels.items())[:12])
    more = "" if isinstance(labels, int) or len(labels) <= 12 else f", ... ({len(labels)} labels)"
    memory = report["memory_estimate_mb"]
    return "\n".join(
        [
            f"recipe:        {report['recipe']} ({report['task']})",
            f"distributed:   {dist['processes']} process(es), {dist['type']}, device {dist['device']}, "
            f"mixed precision {dist['mixed_precision']}",
            "splits:        " + ", ".join(f"{k} {v:,}" for k, v in report["splits"].items()),
            f"labels:        {shown or 'none'}{more}",
            f"parameters:    {params['total']:,} total, {params['trainable']:,} trainable "
            f"({100 * params['trainable'] / max(1, params['total']):.1f}%)",
            f"batch:         {batch['per_device']} per device x {batch['processes']} process(es) x "
            f"{batch['accumulation']} accumulation = {batch['global']}",
            f"one step:      {report['step_seconds']:.3f} s (forward, backward, optimizer); "
            f"{report['steps_per_epoch']:,} steps per epoch; {report['total_steps']:,} steps "
            f"= about {report['total_steps'] * report['step_seconds'] / 60:.1f} min at this speed",
            f"memory (est.): training {memory['training']:,} MB, evaluation {memory['evaluation']:,} MB per device",
            "ok: the recipe builds and trains one step",
        ]
    )
