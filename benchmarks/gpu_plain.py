"""The plain way beside each row of benchmarks/gpu.py, and the timing both sides share.

Each function trains as someone without hftk would: a nanoGPT-style loop around transformers' GPT2LMHeadModel, a
timm + torchvision + DataLoader loop, the transformers object-detection guide's Trainer. Each takes the resolved hftk
recipe of the run beside it, so model, data, batch, optimizer, clipping and schedule are the same, and returns the
seconds of its timed steps. Both sides are timed alike: from the end of the warm-up steps (where torch.compile
compiles) to the end of the last step, the GPU synchronised at both ends and nowhere between (``time_steps`` for a
loop, ``step_timer`` for a Trainer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import QUIET_TRAINING, RECIPE_OPTIMIZATION_KEYS


@dataclass(frozen=True)
class Loop:
    """How both sides of a row train and are timed."""

    warmup: int  # untimed steps first (torch.compile compiles in the first)
    steps: int  # timed steps
    bf16: bool  # bf16 autocast
    compile: bool  # torch.compile
    fused: bool  # fused AdamW (a CUDA kernel)
    workers: int  # dataloader workers: as many as hftk takes
    cpu: bool  # train on the CPU even where there is a GPU (--smoke)


def device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step: Callable[[], Any], warmup: int, steps: int) -> float:
    """Seconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - start


def step_timer(warmup: int) -> Any:
    """A TrainerCallback timing a Trainer as ``time_steps`` times a loop; ``.seconds()`` once training ends."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, state.max_steps):  # synchronise only here: never slow the steps between
                sync()
                self.marks[state.global_step] = time.perf_counter()

        def seconds(self) -> float:
            if len(self.marks) != 2:
                raise RuntimeError(f"step timer saw steps {sorted(self.marks)}; expected {warmup} and the last")
            return max(self.marks.values()) - min(self.marks.values())

    return StepTimer()


def _optimizer(model: Any, recipe: Any, loop: Loop) -> Any:
    """AdamW with the recipe's settings and TrainingArguments' defaults, no weight decay on biases and norms."""
    import torch

    train = recipe.train
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.get("weight_decay", 0.0)}, {"params": rest, "weight_decay": 0.0}]
    betas = (train.get("adam_beta1", 0.9), train.get("adam_beta2", 0.999))
    return torch.optim.AdamW(groups, lr=train.get("learning_rate", 5e-5), betas=betas, fused=loop.fused)


def _schedule(optimizer: Any, recipe: Any, loop: Loop) -> Any:
    """The recipe's learning-rate schedule as transformers builds it (a warmup below 1 is a fraction of the steps)."""
    from transformers import get_scheduler

    total = loop.warmup + loop.steps
    warmup = float(recipe.train.get("warmup_steps", 0))
    warmup_steps = round(warmup * total) if warmup < 1 else int(warmup)
    return get_scheduler(recipe.train.get("lr_scheduler_type", "linear"), optimizer, warmup_steps, total)


def _update(model: Any, loss: Any, optimizer: Any, schedule: Any, recipe: Any) -> None:
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.get("max_grad_norm", 1.0))
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def _where(loop: Loop) -> Any:
    import torch

    from hftk.training import configure_threads

    configure_threads(0)
    torch.manual_seed(42)
    return torch.device("cpu") if loop.cpu else device()


def plain_gpt(config: Any, stream: Any, recipe: Any, loop: Loop) -> float:
    """nanoGPT's loop (random blocks of the token stream, pinned and copied ahead) around GPT2LMHeadModel."""
    import torch
    from transformers import GPT2LMHeadModel

    where = _where(loop)
    block, batch = recipe.data.block_size, recipe.train["per_device_train_batch_size"]
    model = GPT2LMHeadModel(config).to(where)
    optimizer = _optimizer(model, recipe, loop)
    schedule = _schedule(optimizer, recipe, loop)
    compiled = torch.compile(model) if loop.compile else model
    data = torch.from_numpy(stream)

    def step() -> None:
        starts = torch.randint(len(data) - block, (batch,)).tolist()
        x = torch.stack([data[i : i + block] for i in starts])
        x = x.pin_memory().to(where, non_blocking=True) if where.type == "cuda" else x
        with torch.autocast(where.type, dtype=torch.bfloat16, enabled=loop.bf16):
            loss = compiled(input_ids=x, labels=x, use_cache=False).loss
        _update(model, loss, optimizer, schedule, recipe)

    return time_steps(step, loop.warmup, loop.steps)


def plain_vision(recipe: Any, loop: Loop) -> tuple[float, float]:
    """A timm + torchvision + DataLoader loop on the recipe's images; seconds of the timed steps, then of as many
    steps on one batch kept on the device (the model alone, no data loading)."""
    import timm
    import torch
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    from hftk.data.images import load_image_data

    where = _where(loop)
    size, batch = recipe.data.image_size, recipe.train["per_device_train_batch_size"]
    train = load_image_data(recipe.data)["train"]
    classes = train.features["label"].num_classes
    model = timm.create_model(recipe.model.name, num_classes=classes, **recipe.model.model_args).to(where)
    channels_last = where.type == "cuda" and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    if channels_last:  # a CNN: tensor-core convolutions want NHWC
        model = model.to(memory_format=torch.channels_last)
    data = timm.data.resolve_data_config({}, model=model)
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(data["mean"], data["std"]),
        ]
    )

    def to_pixels(examples: dict) -> dict:
        return {"x": [transform(im.convert("RGB")) for im in examples["image"]], "y": examples["label"]}

    def collate(rows: list[dict]) -> tuple:
        return torch.stack([r["x"] for r in rows]), torch.tensor([r["y"] for r in rows])

    loader = DataLoader(
        train.with_transform(to_pixels),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=loop.workers,
        pin_memory=where.type == "cuda",
        collate_fn=collate,
    )
    batches = _forever(loader)
    optimizer = _optimizer(model, recipe, loop)
    schedule = _schedule(optimizer, recipe, loop)
    last: dict = {}

    def step(reuse: bool = False) -> None:
        if not reuse:
            x, y = next(batches)
            memory = torch.channels_last if channels_last else torch.preserve_format
            last.update(x=x.to(where, non_blocking=True, memory_format=memory), y=y.to(where, non_blocking=True))
        with torch.autocast(where.type, dtype=torch.bfloat16, enabled=loop.bf16):
            loss = torch.nn.functional.cross_entropy(model(last["x"]), last["y"])
        _update(model, loss, optimizer, schedule, recipe)

    seconds = time_steps(step, loop.warmup, loop.steps)
    return seconds, time_steps(lambda: step(reuse=True), 0, loop.steps)


def _forever(loader: Any) -> Iterator:
    while True:
        yield from loader


def plain_detection(recipe: Any, run_dir: Path, loop: Loop, out: Path) -> float:
    """The transformers object-detection guide's Trainer (as benchmarks/object_detection.py's plain_trainer) on the
    model config and image processor of the hftk run in ``run_dir``, with the speed settings hftk picks."""
    import torch
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection, Trainer, TrainingArguments

    from hftk.data.shapes import shapes_dir
    from hftk.training import gpu_defaults

    _where(loop)
    folder = shapes_dir(recipe.data.shapes.spec())
    coco = json.loads((folder / "annotations" / "instances_train.json").read_text())
    boxes: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        boxes[ann["image_id"]].append(ann)
    rows = {
        "image": [str(folder / "train" / im["file_name"]) for im in coco["images"]],
        "image_id": [im["id"] for im in coco["images"]],
        "annotations": [json.dumps(boxes[im["id"]]) for im in coco["images"]],
    }
    train = Dataset.from_dict(rows).cast_column("image", ImageFeature())
    processor = AutoImageProcessor.from_pretrained(run_dir)
    flip = v2.RandomHorizontalFlip(recipe.data.augment.hflip)

    def transform(batch: dict) -> dict:
        images, targets = [], []
        for image, image_id, anns in zip(batch["image"], batch["image_id"], batch["annotations"]):
            anns = json.loads(anns)
            pixels = v2.functional.pil_to_tensor(image.convert("RGB"))
            box = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            pixels, box = flip(pixels, tv_tensors.BoundingBoxes(box, format="XYWH", canvas_size=pixels.shape[-2:]))
            images.append(pixels)
            objects = [
                {"bbox": b, "category_id": a["category_id"] - 1, "area": b[2] * b[3], "iscrowd": 0}
                for a, b in zip(anns, box.tolist())
            ]
            targets.append({"image_id": image_id, "annotations": objects})
        encoded = processor(images=images, annotations=targets, return_tensors="pt")
        return {"pixel_values": list(encoded["pixel_values"]), "labels": list(encoded["labels"])}

    def collate(features: list[dict]) -> dict:
        return {
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
            "labels": [f["labels"] for f in features],
        }

    model = AutoModelForObjectDetection.from_config(AutoConfig.from_pretrained(run_dir))
    values = {
        **{k: v for k, v in recipe.train.items() if k in RECIPE_OPTIMIZATION_KEYS},
        **QUIET_TRAINING,
        **({"use_cpu": True} if loop.cpu or device().type == "cpu" else gpu_defaults()),  # hftk's GPU speed settings
        "max_steps": loop.warmup + loop.steps,
        "bf16": loop.bf16,
        "optim": "adamw_torch_fused" if loop.fused else "adamw_torch",
        "remove_unused_columns": False,
        "dataloader_drop_last": True,
    }
    timer = step_timer(loop.warmup)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(out), **values),
        train_dataset=train.with_transform(transform),
        data_collator=collate,
        callbacks=[timer],
    )
    trainer.train()
    return timer.seconds()
