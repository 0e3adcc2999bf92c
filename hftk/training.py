"""Task-agnostic training: builds a ``transformers.Trainer`` from a task module and a recipe.

Usage:
    from hftk.config import load_recipe
    from hftk.training import train
    run_dir = train(load_recipe("image-classification"), "runs/quick")

What hftk adds around the Trainer, and nothing more: thread count from the free cores, a run folder that
is never overwritten by accident, checkpoints that are only resumed once complete, wall-clock budgets whose
learning-rate schedule follows elapsed time, a final model saved whole (also under FSDP), and the closing
test evaluation and model card. The task builds the Trainer itself (``build_trainer``): this module names no task.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import ProgressCallback, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hftk import compat
from hftk.config import load_recipe
from hftk.errors import HftkError
from hftk.models import count_parameters
from hftk.models.parts import (
    GradualUnfreeze,
    ModelParts,
    apply_freeze,
    frozen_layers,
    lr_scales,
    model_parts,
    optimizer_factory,
)
from hftk.regularization import build_callbacks as build_regularization
from hftk.regularization import set_dropout
from hftk.sections import Recipe
from hftk.tasks import TASKS, get_task
from hftk.tasks.contract import TrainerInputs

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "hftk-complete.json"  # written last into a checkpoint; a checkpoint without it is ignored
STREAM_STATE = "stream_state.json"  # where each process's training stream stood, in a checkpoint
BUDGET_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


def configure_threads(num_workers: int = 0) -> int:
    """Set torch's intra-op threads from the cores this process may use, leaving room for dataloader workers.

    torch's default plus dataloader workers oversubscribes a small machine (one detection run here went 33x
    slower). Cores are shared by the local processes of `accelerate launch`; ``OMP_NUM_THREADS`` wins when
    set. Other busy programs are handled by a short OpenMP spin-wait (see ``hftk/__init__.py``), not by
    guessing from the load average, which lags by a minute and starved runs that began after a busy one.
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - num_workers)
    torch.set_num_threads(threads)
    return threads


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Make sure starting a run never destroys an earlier one unless asked to."""
    if resume and overwrite:
        raise HftkError("--resume and --overwrite contradict each other; choose one")
    contents = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    # only the recipe: a start that stopped at bad input before training; running again must not need --overwrite
    exists = bool(contents) and contents != ["recipe.yaml"]
    if resume:
        if not (output_dir / "recipe.yaml").is_file():
            raise HftkError(f"--resume: {output_dir} holds no hftk run (no recipe.yaml); nothing to resume")
        return
    if exists and not overwrite:
        raise HftkError(
            f"{output_dir} already holds files; use --resume to continue that run, --overwrite to replace it, "
            "or --output-dir to write elsewhere"
        )
    if exists:
        if not (output_dir / "recipe.yaml").is_file():
            raise HftkError(f"--overwrite: {output_dir} is not an hftk run folder (no recipe.yaml); not deleting it")
        logger.warning("--overwrite: deleting the previous run in %s", output_dir)
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [
        p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def is_complete_checkpoint(path: Path) -> bool:
    """True when every file the marker lists is present with its recorded size."""
    try:
        manifest = json.loads((path / COMPLETE_MARKER).read_text())
        return all(
            (path / name).is_file() and (path / name).stat().st_size == size
            for name, size in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint that was written completely; half-written ones (killed mid-save) are skipped."""
    complete = [p for p in _checkpoints(output_dir) if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointGuard(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it, then rotates old ones.

    The Trainer writes a checkpoint file by file; a SIGKILL in between leaves a folder that looks like a
    checkpoint. The marker (file names and sizes, written atomically last) tells complete ones apart, and
    rotation runs only after the marker, so a complete checkpoint always survives a kill.
    """

    def __init__(self, save_total_limit: int | None, budget: TimeBudget | None = None):
        self.save_total_limit = save_total_limit
        self.budget = budget

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not folder.is_dir():
            return
        files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        files.pop(COMPLETE_MARKER, None)
        manifest = {"files": files, "budget_elapsed_s": self.budget.elapsed() if self.budget else None}
        _write_atomic(folder / COMPLETE_MARKER, json.dumps(manifest))
        if self.save_total_limit:
            rotate_checkpoints(args.output_dir, self.save_total_limit, state.best_model_checkpoint, use_mtime=False)


@runtime_checkable
class TrainStream(Protocol):
    """A training stream (``hftk.data.lm.StreamBlocks``): endless, full batches, each process reading its own part.

    transformers 5.24 saves no dataset state in its checkpoints and resumes an IterableDataset by reading it again from
    the start and dropping the batches already trained on (``skip_first_batches``): for a corpus bigger than memory,
    re-reading and re-tokenizing all of it so far. (accelerate can checkpoint torchdata's ``StatefulDataLoader``, but
    the Trainer's checkpoints do not use it.) A stream says instead where it stands, and hftk saves that.
    """

    def state_at(self, examples: int) -> dict:
        """JSON-able position after this process's first ``examples`` examples."""

    def load_state_dict(self, state: dict) -> None:
        """Start the next iteration at a position ``state_at`` gave."""


class StreamLoading:
    """Trainer mixin: a ``TrainStream`` is read through a plain DataLoader in the main process.

    accelerate's ``prepare`` would split an IterableDataset over the processes once more (``IterableDatasetShard``
    keeps one batch in N, or process 0 reads for all with ``dispatch_batches``); the stream already reads this
    process's part. Its position is computed in this process, so no dataloader workers (each would hold its own).
    """

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, TrainStream):
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        if self.args.dataloader_num_workers:
            logger.info("train.dataloader_num_workers: a training stream is read in the main process")
        return DataLoader(
            self.train_dataset,
            batch_size=self.args.train_batch_size,
            collate_fn=self.data_collator,
            pin_memory=self.args.dataloader_pin_memory,
            # starting an iterator draws a seed from this generator, not from torch's global one: a resumed run
            # restores the global one before that draw (it skips no batches), which moved its dropout off the straight
            # run's
            generator=torch.Generator(),
        )


class StreamCheckpoint(TrainerCallback):
    """Saves every process's stream position in each checkpoint (``stream_state.json``), for ``--resume``.

    A stream never ends and its batches are full, so after ``global_step`` optimizer steps each process has trained on
    exactly ``global_step x gradient_accumulation_steps x batch`` examples, whatever its data loader read ahead.
    Placed before the checkpoint guard, so the file is part of the complete checkpoint.
    """

    def __init__(self, stream: TrainStream, args: Any):
        self.stream = stream
        self.per_step = args.train_batch_size * args.gradient_accumulation_steps

    def on_save(self, args, state, control, **kwargs):
        from accelerate.utils import gather_object

        positions = gather_object([self.stream.state_at(state.global_step * self.per_step)])
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            _write_atomic(folder / STREAM_STATE, json.dumps({"processes": len(positions), "positions": positions}))


def restore_stream(stream: TrainStream, checkpoint: Path, args: Any) -> None:
    """Continue ``stream`` where ``checkpoint`` left it, and stop the Trainer from skipping batches itself."""
    path = checkpoint / STREAM_STATE
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is None or saved["processes"] != args.world_size:
        was = f"written by {saved['processes']} processes" if saved else "without a stream position"
        logger.warning("%s was %s: the stream is read again from its start to skip what was trained", checkpoint, was)
        return
    stream.load_state_dict(saved["positions"][args.process_index])
    args.ignore_data_skip = True  # the stream itself continues where it was
    logger.info("--resume: the training stream continues where %s left it", checkpoint.name)


def _schedule_factor(kind: str, warmup: float, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` (0..1 of the budget) for a schedule with warmup fraction."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if kind in ("constant", "constant_with_warmup"):
        return 1.0
    rest = (progress - warmup) / max(1e-9, 1.0 - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - rest)
    return 0.5 * (1.0 + math.cos(math.pi * rest))  # cosine


class TimeBudget(TrainerCallback):
    """Stops training after a wall-clock budget; with ``follow_clock`` the LR schedule follows elapsed time too.

    Step counts guessed from the first batches wasted 26-52% of a 10-minute budget here when the machine's load
    changed; reading the clock at every step uses all of it whatever the load does. The price: the model then
    depends on the machine's speed, so a recipe that fixes its steps (``train.max_steps``) keeps a step-based
    schedule and the budget only stops it.
    """

    def __init__(
        self,
        minutes: float,
        schedule: str,
        warmup: float,
        already_elapsed: float = 0.0,
        follow_clock: bool = True,
        clock=time.perf_counter,
    ):
        self.seconds = minutes * 60.0
        self.schedule = schedule
        self.warmup = warmup
        self.already = already_elapsed
        self.follow_clock = follow_clock
        self.clock = clock
        self.started: float | None = None

    def elapsed(self) -> float:
        return self.already + (self.clock() - self.started if self.started is not None else 0.0)

    def factor(self, _step: int = 0) -> float:
        return _schedule_factor(self.schedule, self.warmup, self.elapsed() / self.seconds)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.clock()

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        if self.follow_clock and lr_scheduler is not None:
            compat.set_lr_lambdas(lr_scheduler, self.factor)

    def on_step_end(self, args, state, control, **kwargs):
        if self.elapsed() >= self.seconds:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
            control.should_evaluate = args.eval_strategy != "no"


BUDGET_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed} elapsed, {remaining} left{postfix}]"


class BudgetProgress(ProgressCallback):
    """The progress bar of a clock-driven run: seconds of the budget, not steps of a nominal huge ``max_steps``."""

    def __init__(self, budget: TimeBudget):
        super().__init__()
        self.budget = budget
        self.shown = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            total = round(self.budget.seconds)
            self.shown = min(total, round(self.budget.already))
            self.training_bar = tqdm(
                total=total,
                initial=self.shown,
                dynamic_ncols=True,
                desc="budget",
                bar_format=BUDGET_BAR,
            )
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            now = min(round(self.budget.elapsed()), self.training_bar.total)
            self.training_bar.set_postfix(step=state.global_step, refresh=False)
            self.training_bar.update(now - self.shown)
            self.shown = now


def build_training_arguments(recipe: Recipe, output_dir: Path, arguments_class: type = TrainingArguments) -> Any:
    """The task's TrainingArguments from `train:`, with the budget and checkpoint guard adjustments."""
    values = dict(recipe.train)
    values["save_total_limit"] = None  # CheckpointGuard rotates, after marking checkpoints complete
    values.setdefault("eval_accumulation_steps", 16)  # move gathered predictions to the CPU as evaluation goes
    if torch.cuda.is_available():  # the GPU speed path, unless the recipe says otherwise
        values.update({k: v for k, v in gpu_defaults().items() if k not in values})
    else:
        values.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator
        # transformers builds its distributed state for CPU processes (gloo) only with use_cpu; without it, two
        # processes launched on a CPU machine each train alone and both write the run folder
        values.setdefault("use_cpu", not _has_accelerator())
    if recipe.hub.push:  # transformers pushes checkpoints (train.hub_strategy); hftk pushes the finished run
        if not recipe.hub.model_id:
            raise HftkError("hub.push: set hub.model_id (user/name) to push to")
        from hftk.hub import check_repo_id

        values.update(
            push_to_hub=True, hub_model_id=check_repo_id(recipe.hub.model_id), hub_private_repo=recipe.hub.private
        )
    if _clock_schedule(recipe):
        values["max_steps"] = 10**9  # the budget stops training
        schedule = values.get("lr_scheduler_type", "linear")
        if schedule not in BUDGET_SCHEDULES:
            raise HftkError(
                f"budget.minutes works with train.lr_scheduler_type in {BUDGET_SCHEDULES}; got '{schedule}'"
            )
        if float(values.get("warmup_steps", 0)) >= 1:
            raise HftkError("budget.minutes: give train.warmup_steps as a fraction of the budget (< 1), e.g. 0.05")
    try:
        return arguments_class(output_dir=str(output_dir), **values)
    except (ValueError, TypeError) as err:
        raise HftkError(f"{recipe.source}: train: {' '.join(str(err).split())[:400]}") from None


def gpu_defaults() -> dict[str, Any]:
    """TrainingArguments hftk picks when CUDA is present and the recipe leaves them unset.

    bf16 autocast where the GPU supports it (Ampere and newer), TF32 matmuls, fused AdamW, dataloader workers with
    pinned memory (4 per process, within the cores). SDPA attention is transformers' default already;
    ``model.model_args.attn_implementation`` picks another (flash_attention_2); ``train.torch_compile`` compiles.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = max(0, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - 1)
    return {
        "bf16": torch.cuda.is_bf16_supported(),
        "tf32": torch.cuda.get_device_capability()[0] >= 8,
        "optim": "adamw_torch_fused",
        "dataloader_num_workers": min(4, per_process),
        "dataloader_pin_memory": True,
    }


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def _clock_schedule(recipe: Recipe) -> bool:
    """A budget without a fixed step count: training runs until the clock stops it, and the schedule follows it."""
    return bool(recipe.budget.minutes) and recipe.train.get("max_steps", -1) in (-1, None)


def log_trainable(model: torch.nn.Module) -> tuple[int, int]:
    """Log and return (trainable, total) parameter counts: a frozen backbone should never be a surprise."""
    trainable, total = count_parameters(model)
    logger.info(
        "parameters: %s trainable of %s (%.1f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(1, total)
    )
    if trainable == 0:
        raise HftkError("no trainable parameters: model.freeze froze everything; set model.freeze=none")
    return trainable, total


def _check_resume_recipe(recipe: Recipe, output_dir: Path) -> None:
    saved = load_recipe(output_dir / "recipe.yaml").to_dict()
    current = recipe.to_dict()
    changed = [
        f"{s}.{k}"
        for s in current
        if isinstance(current[s], dict)
        for k in current[s]
        if current[s].get(k) != (saved.get(s) or {}).get(k)
    ]
    if changed:
        logger.warning("--resume: recipe differs from the run's recipe.yaml in: %s", ", ".join(changed))


def prepare(recipe: Recipe) -> tuple[Any, Any, Any, Any, Any]:
    """``(task, data, model, processor, datasets)``: everything a run needs before its Trainer (seeded)."""
    from hftk.models.adapters import check_quantization
    from hftk.models.registration import register

    register()  # the LSTM/GRU model type: its runs save with their code and load through the Auto classes
    task = get_task(recipe.task)
    quantizable = [t for t in TASKS if get_task(t).quantizable]
    check_quantization(recipe, task.quantizable, quantizable)
    set_seed(recipe.train.get("seed", 42))
    data = task.load_data(recipe)
    model, processor = task.build_model(recipe, data)
    if recipe.regularization.dropout is not None:
        set_dropout(model, recipe.regularization.dropout)
    parts = parts_of(task, model)
    apply_freeze(model, parts, recipe.model.freeze)
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if recipe.model.channels_last or (
        recipe.model.channels_last is None and convolutional and torch.cuda.is_available()
    ):
        model = model.to(memory_format=torch.channels_last)  # tensor-core convolutions want NHWC
    if recipe.model.peft.method != "none":
        from hftk.models.adapters import wrap_adapter

        model = wrap_adapter(model, recipe.model.peft, parts.full_beside_adapter)
    datasets = task.prepare_datasets(recipe, data, processor)
    return task, data, model, processor, datasets


def isolate_evaluation(trainer: Any) -> None:
    """Evaluations leave training's random streams as they found them.

    Every DataLoader iterator draws its base seed from torch's global generator, even without workers, and
    evaluations may sample (generated answers, text samples): without this, how often a run evaluates changed the
    augmentation and dropout that follow, and so the trained model (eval_steps 10 vs 20: weights apart by 3.1).
    """
    import random

    import numpy as np

    def isolated(evaluate: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            states = random.getstate(), np.random.get_state()
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            try:
                with torch.random.fork_rng(devices=devices):
                    return evaluate(*args, **kwargs)
            finally:
                random.setstate(states[0])
                np.random.set_state(states[1])

        return run

    compat.wrap_evaluate(trainer, isolated)


def parts_of(task: Any, model: Any) -> ModelParts:
    """The task's reading of its model as layers and a head (the generic one, with no head, otherwise)."""
    return task.model_parts(model) if task.model_parts is not None else model_parts(model)


def layer_training(recipe: Recipe, task: Any, model: Any, args: Any) -> tuple[tuple | None, list]:
    """The optimizer factory (per-layer learning rates) and callbacks (gradual unfreezing) the recipe asks for."""
    cfg = recipe.model
    if cfg.backbone_lr_multiplier <= 0:
        raise HftkError(f"model.backbone_lr_multiplier {cfg.backbone_lr_multiplier}: expected a positive factor")
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
        raise HftkError(f"model.layer_decay {cfg.layer_decay}: expected a factor in (0, 1], e.g. 0.75")
    if cfg.gradual_unfreeze < 0:
        raise HftkError(f"model.gradual_unfreeze {cfg.gradual_unfreeze}: expected 0 (off) or a number of layers")
    if cfg.backbone_lr_multiplier == 1 and cfg.layer_decay is None and not cfg.gradual_unfreeze:
        return None, []
    parts = parts_of(task, model)
    callbacks = []
    if cfg.gradual_unfreeze:
        frozen, _ = frozen_layers(cfg.freeze, parts)
        if not frozen:
            raise HftkError("model.gradual_unfreeze: nothing is frozen to unfreeze; set model.freeze (backbone or N)")
        if args.world_size > 1:
            raise HftkError("model.gradual_unfreeze: not with several processes (DDP fixes the trained set at start)")
        callbacks.append(GradualUnfreeze(model, parts, frozen, cfg.gradual_unfreeze))
    scales = lr_scales(parts, cfg.backbone_lr_multiplier, cfg.layer_decay)
    return optimizer_factory(scales, args), callbacks


def train(
    recipe: Recipe,
    output_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train, save the final model, evaluate it on the test split and write the model card.

    Args:
        recipe: a validated recipe.
        output_dir: the run folder.
        resume: continue from the newest complete checkpoint in ``output_dir``.
        overwrite: delete an existing run in ``output_dir`` first.
        callbacks: more TrainerCallbacks for this run (`hftk search` reports evaluations to its trial with one).

    Returns:
        The run folder.
    """
    from accelerate import PartialState

    from hftk.hub import write_model_card
    from hftk.runs import evaluate_run

    output_dir = Path(output_dir)
    state = PartialState(cpu=recipe.train.get("use_cpu", not _has_accelerator()))  # as TrainingArguments makes it
    if state.is_main_process:
        prepare_output_dir(output_dir, resume, overwrite)
        if resume:
            _check_resume_recipe(recipe, output_dir)
        else:
            recipe.save(output_dir / "recipe.yaml")
    state.wait_for_everyone()
    threads = configure_threads(recipe.train.get("dataloader_num_workers", 0))
    logger.info("torch threads: %d; resolved recipe written to %s", threads, output_dir / "recipe.yaml")

    task, data, model, processor, datasets = prepare(recipe)
    trainable, total = log_trainable(model)
    checkpoint = last_complete_checkpoint(output_dir) if resume else None
    args = build_training_arguments(recipe, output_dir, task.training_arguments)
    budget = _budget(recipe, args, checkpoint)
    if resume and state.is_main_process:
        _remove_incomplete_checkpoints(output_dir)
    stream = datasets["train"] if isinstance(datasets["train"], TrainStream) else None
    if stream is not None and checkpoint:
        restore_stream(stream, checkpoint, args)
    extra = list(callbacks or [])
    callbacks = [
        *([budget] if budget else []),
        *build_regularization(recipe.regularization, args, checkpoint),  # before the guard: they add files
        *([StreamCheckpoint(stream, args)] if stream is not None else []),
        CheckpointGuard(recipe.train.get("save_total_limit"), budget),
        *extra,
    ]
    if recipe.eval.early_stopping_patience:
        callbacks.append(_early_stopping(recipe, args))
    optimizer, layer_callbacks = layer_training(recipe, task, model, args)
    callbacks += layer_callbacks
    trainer = task.build_trainer(TrainerInputs(recipe, model, processor, datasets, args, callbacks, optimizer))
    isolate_evaluation(trainer)
    if budget is not None and budget.follow_clock and not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BudgetProgress(budget))
    logger.info("training %s%s", recipe.name, f" from {checkpoint}" if checkpoint else "")
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = _train_metrics(result.metrics, trainer, _size(datasets["train"]))
    metrics.update(trainable_parameters=trainable, total_parameters=total)
    _save_final_model(trainer, output_dir)
    if state.is_main_process:
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    state.wait_for_everyone()
    if state.is_main_process:
        test_metrics = evaluate_run(output_dir, recipe.eval.split)
        trainer.save_metrics(
            recipe.eval.split, {f"{recipe.eval.split}_{k}": v for k, v in test_metrics.items() if _is_number(v)}
        )
        sizes = {split: size for split, rows in data.items() if (size := _size(rows)) is not None}  # streams: none
        write_model_card(output_dir, recipe, test_metrics, trainer=trainer, split_sizes=sizes)
        if recipe.hub.push:
            from hftk.hub import push_run

            push_run(output_dir, recipe.hub.model_id, private=recipe.hub.private)
    state.wait_for_everyone()
    return output_dir


def _budget(recipe: Recipe, args: Any, checkpoint: Path | None) -> TimeBudget | None:
    if not recipe.budget.minutes:
        return None
    already = 0.0
    if checkpoint:
        already = json.loads((checkpoint / COMPLETE_MARKER).read_text()).get("budget_elapsed_s") or 0.0
    warmup = float(recipe.train.get("warmup_steps", 0))
    return TimeBudget(
        recipe.budget.minutes, args.lr_scheduler_type.value, warmup, already, follow_clock=_clock_schedule(recipe)
    )


def _save_final_model(trainer: Any, output_dir: Path) -> None:
    """``trainer.save_model``, gathering a full state dict under FSDP so the run ends with one model.safetensors.

    With ``SHARDED_STATE_DICT`` (fast checkpoints) ``save_model`` writes no weights at all; accelerate's plugin
    takes a state-dict type override for exactly this case (train sharded, save the final model full).
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = trainer.accelerator.state.fsdp_plugin
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            plugin.set_state_dict_type("FULL_STATE_DICT")
    compat.save_model_without_push(trainer, output_dir)  # hftk pushes the finished run itself, with its card
    if hasattr(trainer.model, "peft_config") and trainer.args.should_save:
        from hftk.models.adapters import save_model_config

        save_model_config(trainer.model, output_dir)


def _early_stopping(recipe: Recipe, args: TrainingArguments) -> TrainerCallback:
    from transformers import EarlyStoppingCallback

    if not (args.load_best_model_at_end and args.metric_for_best_model) or args.eval_strategy.value == "no":
        raise HftkError(
            "eval.early_stopping_patience needs train.load_best_model_at_end=true, train.metric_for_best_model "
            "and an eval_strategy (steps or epoch) matching save_strategy"
        )
    return EarlyStoppingCallback(early_stopping_patience=recipe.eval.early_stopping_patience)


def _remove_incomplete_checkpoints(output_dir: Path) -> None:
    for path in _checkpoints(output_dir):
        if not is_complete_checkpoint(path):
            logger.warning("removing incomplete checkpoint %s (the process stopped while writing it)", path)
            shutil.rmtree(path, ignore_errors=True)


def _size(dataset: Any) -> int | None:
    """Examples in a split; None for a stream."""
    try:
        return len(dataset)
    except TypeError:
        return None


def _train_metrics(metrics: dict[str, Any], trainer: Any, num_examples: int | None) -> dict[str, Any]:
    """Throughput from the steps actually taken (the Trainer assumes max_steps, wrong under a budget)."""
    metrics = dict(metrics)
    steps = trainer.state.global_step
    runtime = metrics.get("train_runtime") or 1e-9
    batch = (
        trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size
    )
    metrics["train_steps"] = steps
    if num_examples is not None:
        metrics["train_samples"] = num_examples
    metrics["train_steps_per_second"] = round(steps / runtime, 3)
    metrics["train_samples_per_second"] = round(steps * batch / runtime, 3)
    metrics["epoch"] = round(trainer.state.epoch or 0.0, 4)
    return metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
