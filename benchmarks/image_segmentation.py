"""Image-segmentation benchmark: mean IoU on the embedded shapes test split after 10 CPU minutes of training with the
default recipe's model, beside the transformers semantic-segmentation guide's plain Trainer script with the same
model, data and steps; training throughput against that script.

Usage:
    python benchmarks/image_segmentation.py                          # quality (10 min) and throughput: ~35 minutes
    python benchmarks/image_segmentation.py --parts throughput       # speed only (minutes)
    python benchmarks/image_segmentation.py --steps-per-second 1.1   # skip measuring the quiet rate

Fixed work, not a clock: "10 minutes" is the steps that fit in 10 minutes on this machine when it is quiet, measured
with a short throughput run (or given with --steps-per-second), so other load during the run changes its duration,
not its model; the schedule is the recipe's (cosine to zero at the last step). Both sides start from the same
weights (the model hftk builds, saved once: the pretrained backbone and a random head), train on the same images
with the same flips, batch, optimizer and schedule, and are scored by the same code: masks predicted as
``pipeline("image-segmentation")`` predicts them, at each image's size, and hftk's shipped mean_iou module. The plain
script is the guide's: datasets from image and mask files, the image processor in ``with_transform`` (with
``segmentation_maps``), ``Trainer`` with ``remove_unused_columns=False``.

Results go to stdout, to benchmarks/image_segmentation.json (kept across runs, so parts can be measured
separately) and to a section of benchmarks/RESULTS.md rendered from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if "OMP_WAIT_POLICY" not in os.environ:  # as `hftk` itself does (hftk/cli.py): busy OpenMP waits cost 10x here
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import QUIET_OVERRIDES, QUIET_TRAINING, RECIPE_OPTIMIZATION_KEYS, machine, write_section  # noqa: E402

RAW = ROOT / "benchmarks" / "image_segmentation.json"
TASK = "image-segmentation"


def _recipe(extra: list[str]):
    from hftk.config import load_recipe

    return load_recipe(TASK, list(extra))


def _quiet(steps: int) -> list[str]:
    return [f"train.max_steps={steps}", *QUIET_OVERRIDES]


def hftk_train(steps: int, out: Path, extra: list[str] = ()) -> tuple[Path, dict]:
    """Train the default recipe for ``steps`` with hftk; returns the run folder and its train results."""
    from hftk.training import train

    run_dir = out / f"hftk-{steps}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(_recipe([f"train.max_steps={steps}", *extra]), run_dir)
    return run_dir, json.loads((run_dir / "train_results.json").read_text())


def initial_model(out: Path) -> Path:
    """The default recipe's model before training (as hftk builds it: seeded), saved as a folder both sides load."""
    from transformers import set_seed

    from hftk.tasks import get_task

    folder = out / "initial"
    if (folder / "config.json").is_file():
        return folder
    recipe = _recipe([])
    task = get_task(TASK)
    data = task.load_data(recipe)
    set_seed(recipe.train["seed"])
    model, processor = task.build_model(recipe, data)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _split_files(recipe, split: str) -> tuple[list[str], list[str]]:
    from hftk.data.shapes import shapes_dir, shapes_masks_dir

    spec = recipe.data.shapes.spec()
    images, masks = shapes_dir(spec) / split, shapes_masks_dir(spec) / split
    names = sorted(p.name for p in images.glob("*.png"))
    return [str(images / n) for n in names], [str(masks / n) for n in names]


def plain_trainer(steps: int, initial: Path, out: Path, evaluate: bool):
    """The transformers guide's way: files -> datasets, processor in with_transform, a plain Trainer."""
    import numpy as np
    import torch
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, Trainer, TrainingArguments, set_seed

    recipe = _recipe([f"train.max_steps={steps}"])
    set_seed(recipe.train["seed"])
    images, masks = _split_files(recipe, "train")
    train_ds = Dataset.from_dict({"image": images, "label": masks})
    train_ds = train_ds.cast_column("image", ImageFeature()).cast_column("label", ImageFeature())
    processor = AutoImageProcessor.from_pretrained(initial)
    flip = v2.RandomHorizontalFlip(recipe.data.augment.hflip)

    def train_transforms(batch):
        pixels, labels = [], []
        for image, label in zip(batch["image"], batch["label"]):
            image = tv_tensors.Image(v2.functional.pil_to_tensor(image.convert("RGB")))
            label = tv_tensors.Mask(torch.from_numpy(np.array(label)))
            image, label = flip(image, label)
            pixels.append(image.as_subclass(torch.Tensor))
            labels.append(label.as_subclass(torch.Tensor))
        return processor(pixels, segmentation_maps=labels, return_tensors="pt")

    model = AutoModelForSemanticSegmentation.from_pretrained(initial)
    args = TrainingArguments(
        output_dir=str(out / f"plain-{steps}"),
        **{k: v for k, v in recipe.train.items() if k in RECIPE_OPTIMIZATION_KEYS},
        **QUIET_TRAINING,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds.with_transform(train_transforms))
    result = trainer.train().metrics
    metrics = test_iou(model.eval(), processor, recipe) if evaluate else {}
    return result, metrics


def test_iou(model, processor, recipe) -> dict:
    """hftk's shipped mean_iou on the test split, masks predicted as the pipeline predicts them."""
    from PIL import Image

    from hftk.data.segmentation import label_space, read_mask
    from hftk.evaluation.segmentation import IoUTotals, segment

    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    labels = label_space(recipe.data, names)
    totals = IoUTotals(names, labels.ignore_index)
    images, masks = _split_files(recipe, "test")
    for start in range(0, len(images), 32):
        batch = [Image.open(p).convert("RGB") for p in images[start : start + 32]]
        truths = [read_mask(p, labels, p) for p in masks[start : start + 32]]
        totals.add(segment(model, processor, batch), truths)
    return totals.result()


def steps_per_second(out: Path, steps: int = 30) -> float:
    """hftk training steps per second on this machine (a short quiet run)."""
    _, result = hftk_train(steps, out, [*_quiet(steps), "train.warmup_steps=0"])
    return result["train_steps"] / result["train_runtime"]


def quality(minutes: float, rate: float, out: Path) -> dict:
    steps = max(1, round(minutes * 60 * rate))
    run_dir, result = hftk_train(steps, out)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    plain_result, plain_metrics = plain_trainer(steps, initial_model(out), out, evaluate=True)
    row = {
        "minutes": minutes,
        "steps": steps,
        "rate": rate,
        "train_seconds": round(result["train_runtime"], 1),
        "mean_iou": metrics["mean_iou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "plain_mean_iou": plain_metrics["mean_iou"],
        "plain_pixel_accuracy": plain_metrics["pixel_accuracy"],
        "plain_seconds": round(plain_result["train_runtime"], 1),
        "load": round(os.getloadavg()[0], 2),
    }
    print(f"{minutes:g} min ({steps} steps): {row}", flush=True)
    return row


def throughput(steps: int, rounds: int, out: Path) -> dict:
    """Training images/s of hftk and the plain script on the same model, data and batch, alternating rounds."""
    ours, plain = [], []
    batch = _recipe([]).train["per_device_train_batch_size"]
    initial = initial_model(out)
    for _ in range(rounds):
        result, _ = plain_trainer(steps, initial, out, evaluate=False)
        plain.append(steps * batch / result["train_runtime"])
        _, result = hftk_train(steps, out, _quiet(steps))
        ours.append(steps * batch / result["train_runtime"])
        print(f"throughput round: plain {plain[-1]:.2f}, hftk {ours[-1]:.2f} images/s", flush=True)
    return {"steps": steps, "batch": batch, "hftk": max(ours), "plain": max(plain), "rounds": rounds,
            "hftk_all": [round(v, 2) for v in ours], "plain_all": [round(v, 2) for v in plain]}  # fmt: skip


def render(recorded: dict) -> str:
    recipe = _recipe([])
    lines = [
        "## image-segmentation: mean IoU on the embedded shapes test split after 10 CPU minutes",
        "",
        f"The default recipe's model (`{recipe.model.name}`"
        + (f" on `{recipe.model.backbone}`" if recipe.model.backbone else "")
        + ") trained for the steps that fit in the minutes on a quiet 2-core",
        "CPU (measured steps/s beside them), with the recipe's data, flips, batch, learning rate and schedule.",
        "`plain`: the transformers semantic-segmentation guide's Trainer script, from the same initial weights, on",
        "the same images, flips and steps. Test split: 200 images of `shapes` (128 px; background, circle, square,",
        "triangle), masks predicted at each image's size as the pipeline predicts them, hftk's shipped mean_iou;",
        "hftk's seconds include the recipe's validation passes.",
        "Goal: mean IoU >= 0.90 within 10 minutes.",
        "",
        "| minutes | steps (steps/s) | mean IoU | pixel accuracy | plain mean IoU | plain pixel accuracy "
        "| hftk / plain seconds | recorded | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(recorded.get("quality", {}).values(), key=lambda r: r["minutes"]):
        lines.append(
            f"| {r['minutes']:g} | {r['steps']} ({r['rate']:.2f}) | {r['mean_iou']:.4f} | {r['pixel_accuracy']:.4f} "
            f"| {r['plain_mean_iou']:.4f} | {r['plain_pixel_accuracy']:.4f} | {r['train_seconds']:.0f} / "
            f"{r['plain_seconds']:.0f} | {r['recorded']} | `{r['command']}` |"
        )
    lines += ["", *recorded["notes"]] if recorded.get("notes") else []  # written by hand into the json
    t = recorded.get("throughput")
    if t:
        lines += [
            "",
            f"Throughput (batch {t['batch']}, {t['steps']} steps, best of {t['rounds']}, alternating): plain Trainer "
            f"script {t['plain']:.2f} images/s, hftk {t['hftk']:.2f} images/s, ratio {t['hftk'] / t['plain']:.3f} "
            f"(target >= 0.95; {t['recorded']}; `{t['command']}`).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", nargs="+", type=float, default=[10])
    parser.add_argument("--parts", nargs="+", default=["quality", "throughput"], choices=["quality", "throughput"])
    parser.add_argument("--steps-per-second", type=float, help="quiet-machine rate instead of measuring it")
    parser.add_argument("--throughput-steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-image-segmentation"))
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/image_segmentation.py", *sys.argv[1:]])
    stamp = machine()
    recorded = json.loads(RAW.read_text()) if RAW.is_file() else {"quality": {}}
    if "quality" in args.parts:
        rate = args.steps_per_second or steps_per_second(out)
        print(f"{rate:.3f} steps/s", flush=True)
        for minutes in args.minutes:
            row = quality(minutes, rate, out)
            recorded["quality"][f"{minutes:g}"] = {**row, "command": command, "recorded": stamp}
            RAW.write_text(json.dumps(recorded, indent=1) + "\n")
    if "throughput" in args.parts:
        recorded["throughput"] = {
            **throughput(args.throughput_steps, args.rounds, out),
            "command": command,
            "recorded": stamp,
        }
    RAW.write_text(json.dumps(recorded, indent=1) + "\n")
    section = render(recorded)
    print("\n" + section)
    write_section(TASK, section)


if __name__ == "__main__":
    main()
