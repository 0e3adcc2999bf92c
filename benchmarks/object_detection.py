"""Object-detection benchmark: COCO mAP on embedded shapes after 5 and 15 CPU minutes of training per architecture,
beside a plain transformers Trainer script with the same model; training throughput against that script; video
frames per second of `hftk predict` against the bare model forward.

Usage:
    python benchmarks/object_detection.py                                    # everything: hours on 2 cores
    python benchmarks/object_detection.py --archs rtdetr --minutes 5 15      # the default recipe only
    python benchmarks/object_detection.py --parts throughput video           # speed only (minutes)

Fixed work, not a clock: a run "of 5 minutes" trains for the steps that fit in 5 minutes on this machine when it
is quiet, measured once per architecture with a short throughput run (or given with --steps-per-second), so other
load during the run changes its duration, not its model. Each run has its own schedule (cosine to zero at its last
step). Quality is the test split of `shapes` (200 images) scored by hftk's shipped COCO metric, the same code for
both sides. The plain script is the transformers object-detection guide's: datasets from the COCO json,
torchvision v2 flips on tv_tensors boxes, the image processor in `with_transform`, `Trainer` with the same model
config (taken from the hftk run), batch, learning rate and schedule.

Results go to stdout, to benchmarks/object_detection.json (kept across runs, so parts can be measured
separately) and to a section of benchmarks/RESULTS.md rendered from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
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

RAW = ROOT / "benchmarks" / "object_detection.json"
DEFAULT = ROOT / "recipes" / "object-detection" / "rtdetr-lite0-shapes.yaml"

_TINY_RESNET = "{embedding_size: 32, hidden_sizes: [32, 64, 128, 256], depths: [1, 1, 1, 1], layer_type: basic"
# Architectures tried, as overrides of the default recipe (same data, batch, learning rate and steps). DETR and
# Conditional DETR read one feature map: stride 16 (8x8 at 128 px), as stride 32's 4x4 map loses the small shapes.
ARCHS: dict[str, list[str]] = {
    "rtdetr": [],  # the default: RT-DETR on the ImageNet EfficientNet-Lite0
    # the former default: the same RT-DETR on a small random ResNet-D (recipes/object-detection/rtdetr-shapes.yaml)
    "rtdetr-scratch": [
        "model.backbone=rt_detr_resnet",
        "model.backbone_pretrained=false",
        f"model.backbone_args={_TINY_RESNET}, out_indices: [2, 3, 4]}}",
        "train.learning_rate=1e-3",
    ],
    "detr": [
        "model.name=detr",
        "model.backbone=resnet",
        f"model.backbone_args={_TINY_RESNET}, out_indices: [3]}}",
        "model.model_args={d_model: 128, encoder_layers: 2, decoder_layers: 3, encoder_ffn_dim: 256, "
        "decoder_ffn_dim: 256, encoder_attention_heads: 4, decoder_attention_heads: 4, num_queries: 30}",
    ],
    "conditional_detr": [
        "model.name=conditional_detr",
        "model.backbone=resnet",
        f"model.backbone_args={_TINY_RESNET}, out_indices: [3]}}",
        "model.model_args={d_model: 128, encoder_layers: 2, decoder_layers: 3, encoder_ffn_dim: 256, "
        "decoder_ffn_dim: 256, encoder_attention_heads: 4, decoder_attention_heads: 4, num_queries: 30}",
    ],
    "deformable_detr": [
        "model.name=deformable_detr",
        "model.backbone=resnet",
        f"model.backbone_args={_TINY_RESNET}, out_indices: [2, 3, 4]}}",
        "model.model_args={d_model: 128, encoder_layers: 2, decoder_layers: 3, encoder_ffn_dim: 256, "
        "decoder_ffn_dim: 256, encoder_attention_heads: 4, decoder_attention_heads: 4, num_queries: 30, "
        "num_feature_levels: 3, two_stage: true, with_box_refine: true}",
    ],
}


def _recipe(arch: str, extra: list[str]):
    from hftk.config import load_recipe

    return load_recipe(DEFAULT, [*ARCHS[arch], *extra])


def _quiet(steps: int) -> list[str]:
    return [f"train.max_steps={steps}", *QUIET_OVERRIDES]


def hftk_train(arch: str, steps: int, out: Path, extra: list[str] = ()) -> tuple[Path, dict]:
    """Train the architecture for ``steps`` with hftk; returns the run folder and its train results."""
    from hftk.training import train

    run_dir = out / f"{arch}-{steps}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(_recipe(arch, [f"train.max_steps={steps}", *extra]), run_dir)
    return run_dir, json.loads((run_dir / "train_results.json").read_text())


def plain_trainer(arch: str, steps: int, config_dir: Path, out: Path, evaluate: bool):
    """The transformers guide's way, with the model config of an hftk run of the same architecture."""
    import torch
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForObjectDetection,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from hftk.data.shapes import shapes_dir

    recipe = _recipe(arch, [f"train.max_steps={steps}"])
    set_seed(recipe.train["seed"])
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
    train_ds = Dataset.from_dict(rows).cast_column("image", ImageFeature())
    processor = AutoImageProcessor.from_pretrained(config_dir)
    flip = v2.RandomHorizontalFlip(recipe.data.augment.hflip)

    def transform(batch):
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

    def collate(features):
        return {
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
            "labels": [f["labels"] for f in features],
        }

    model = AutoModelForObjectDetection.from_config(AutoConfig.from_pretrained(config_dir))
    if recipe.model.backbone_pretrained:  # the same ImageNet start as hftk's (timm's use_pretrained_backbone)
        from hftk.models.vision import load_backbone_weights, timm_weights

        load_backbone_weights(model, timm_weights(recipe.model.backbone, None, "model.backbone"))
    args = TrainingArguments(
        output_dir=str(out / f"plain-{arch}-{steps}"),
        **{k: v for k, v in recipe.train.items() if k in RECIPE_OPTIMIZATION_KEYS},
        **QUIET_TRAINING,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds.with_transform(transform), data_collator=collate)
    result = trainer.train().metrics
    metrics = _test_map(model.eval(), processor, recipe) if evaluate else {}
    return result, metrics


def _test_map(model, processor, recipe) -> dict:
    """hftk's COCO metric on the test split, for a model trained outside hftk."""
    from hftk.data.images import to_rgb
    from hftk.evaluation.detection import compute_map, detect, truth
    from hftk.tasks.object_detection.training import load_data

    test = load_data(recipe)["test"]
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    predictions, references = [], []
    for batch in test.iter(batch_size=32):
        predictions += detect(model, processor, [to_rgb(im) for im in batch["image"]])
        references += [truth(objects) for objects in batch["objects"]]
    return compute_map(predictions, references, names)


def steps_per_second(arch: str, out: Path, steps: int = 30) -> float:
    """hftk training steps per second on this machine (a short run after a few warm-up steps)."""
    from hftk.training import train

    run_dir = out / f"rate-{arch}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(_recipe(arch, [*_quiet(steps), "train.warmup_steps=0"]), run_dir)
    result = json.loads((run_dir / "train_results.json").read_text())
    return result["train_steps"] / result["train_runtime"]


def quality(arch: str, minutes: float, rate: float, out: Path, plain: bool) -> dict:
    steps = max(1, round(minutes * 60 * rate))
    run_dir, result = hftk_train(arch, steps, out)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    row = {
        "arch": arch,
        "minutes": minutes,
        "steps": steps,
        "train_seconds": round(result["train_runtime"], 1),
        "map": metrics["map"],
        "map_50": metrics["map_50"],
        "load": round(os.getloadavg()[0], 2),
    }
    if plain:
        plain_result, plain_metrics = plain_trainer(arch, steps, run_dir, out, evaluate=True)
        row.update(
            plain_map=plain_metrics["map"],
            plain_map_50=plain_metrics["map_50"],
            plain_seconds=round(plain_result["train_runtime"], 1),
        )
    print(f"{arch} {minutes:g} min ({steps} steps): {row}", flush=True)
    return row


def throughput(arch: str, steps: int, rounds: int, out: Path) -> dict:
    """Training images/s of hftk and the plain script on the same model, data and batch, alternating."""
    ours, plain = [], []
    recipe = _recipe(arch, [])
    batch = recipe.train["per_device_train_batch_size"]
    run_dir, _ = hftk_train(arch, 2, out, _quiet(2))  # the model config both sides build
    for _ in range(rounds):
        result, _ = plain_trainer(arch, steps, run_dir, out, evaluate=False)
        plain.append(steps * batch / result["train_runtime"])
        _, result = hftk_train(arch, steps, out, _quiet(steps))
        ours.append(steps * batch / result["train_runtime"])
    return {"arch": arch, "steps": steps, "batch": batch, "hftk": max(ours), "plain": max(plain), "rounds": rounds}


def video(run_dir: Path, out: Path, frames: int = 240) -> dict:
    """Frames/s of `hftk predict RUN clip.mp4 --out out.mp4` and of the bare processor + model forward."""
    import cv2
    import numpy as np
    import torch
    from PIL import Image

    from hftk.runs import saved_examples as example_inputs
    from hftk.tasks.object_detection.serving import load_run_model, predict

    images = [Image.open(p).convert("RGB") for p in example_inputs(run_dir, 8)]
    clip = out / "clip.mp4"
    size = images[0].size
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    for i in range(frames):
        writer.write(cv2.cvtColor(np.asarray(images[i % len(images)].resize(size)), cv2.COLOR_RGB2BGR))
    writer.release()
    predict(run_dir, [clip], threshold=0.5)  # warm up (model load, first calls)
    result = predict(run_dir, [clip], threshold=0.5, out=str(out / "annotated.mp4"))[0]
    no_out = predict(run_dir, [clip], threshold=0.5)[0]
    model, processor = load_run_model(run_dir)
    frames_ = [images[i % len(images)] for i in range(frames)]
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, frames, 8):
            inputs = processor(images=frames_[i : i + 8], return_tensors="pt")
            model(pixel_values=inputs["pixel_values"])
    bare = frames / (time.perf_counter() - start)
    return {"frames": frames, "size": list(size), "hftk_fps": result["fps"], "hftk_fps_no_out": no_out["fps"],
            "bare_fps": round(bare, 2)}  # fmt: skip


def render(recorded: dict) -> str:
    lines = [
        "## object-detection: COCO mAP on the embedded shapes test split after 5 and 15 CPU minutes",
        "",
        "Each row trains for the steps that fit in its minutes on a quiet 2-core CPU (measured steps/s beside it),",
        "with the default recipe's data, batch, learning rate and schedule; only the model differs. `rtdetr` is the",
        "default (RT-DETR on the packaged ImageNet EfficientNet-Lite0); `rtdetr-scratch` the same RT-DETR on a small",
        "random ResNet-D (the former default, its rows recorded with that recipe's learning rate 1e-3); the others",
        "start from random init too. `plain`: the transformers object-detection guide's Trainer script on the same",
        "model config and steps. Test split: 200 images of `shapes` (128 px, 3 classes, 12-120 px objects,",
        "clutter), COCO metric (pycocotools). Goal: mAP@50 >= 0.90 and mAP >= 0.60 within 15 minutes.",
        "",
        "| architecture | minutes | steps (steps/s) | mAP | mAP@50 | plain mAP | plain mAP@50 | recorded | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(recorded.get("quality", {}).values(), key=lambda r: (r["arch"], r["minutes"]))
    for r in rows:
        plain = f"{r['plain_map']:.3f} | {r['plain_map_50']:.3f}" if "plain_map" in r else "- | -"
        lines.append(
            f"| {r['arch']} | {r['minutes']:g} | {r['steps']} ({r['rate']:.2f}) | {r['map']:.3f} | {r['map_50']:.3f} "
            f"| {plain} | {r['recorded']} | `{r['command']}` |"
        )
    lines += ["", *recorded["notes"]] if recorded.get("notes") else []  # written by hand into the json
    t = recorded.get("throughput")
    if t:
        lines += [
            "",
            f"Throughput ({t['arch']}, batch {t['batch']}, {t['steps']} steps, best of {t['rounds']}, alternating): "
            f"plain Trainer script {t['plain']:.1f} images/s, hftk {t['hftk']:.1f} images/s, ratio "
            f"{t['hftk'] / t['plain']:.3f} (target >= 0.95; {t['recorded']}; `{t['command']}`).",
        ]
    v = recorded.get("video")
    if v:
        lines += [
            "",
            f"Video ({v['frames']} frames of {v['size'][0]}x{v['size'][1]} px, default model): `hftk predict RUN "
            f"clip.mp4 --out out.mp4` {v['hftk_fps']:.1f} frames/s (decode, model, drawing, encode; "
            f"{v['hftk_fps_no_out']:.1f} without writing the video), bare processor + model forward in batches "
            f"of 8 {v['bare_fps']:.1f} frames/s ({v['recorded']}; `{v['command']}`).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--minutes", nargs="+", type=float, default=[5, 15])
    parser.add_argument("--parts", nargs="+", default=["quality", "throughput", "video"])
    parser.add_argument(
        "--plain", nargs="*", default=["rtdetr"], help="architectures also trained by the plain script"
    )
    parser.add_argument("--steps-per-second", type=float, help="quiet-machine rate instead of measuring it")
    parser.add_argument("--throughput-steps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-object-detection"))
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/object_detection.py", *sys.argv[1:]])

    stamp = machine()
    recorded = json.loads(RAW.read_text()) if RAW.is_file() else {"quality": {}}
    if "quality" in args.parts:
        for arch in args.archs:
            rate = args.steps_per_second or steps_per_second(arch, out)
            print(f"{arch}: {rate:.3f} steps/s", flush=True)
            for minutes in args.minutes:
                row = quality(arch, minutes, rate, out, plain=arch in args.plain)
                recorded["quality"][f"{arch}/{minutes:g}"] = {
                    **row,
                    "rate": rate,
                    "command": command,
                    "recorded": stamp,
                }
                RAW.write_text(json.dumps(recorded, indent=1) + "\n")
    if "throughput" in args.parts:
        recorded["throughput"] = {
            **throughput("rtdetr", args.throughput_steps, 2, out),
            "command": command,
            "recorded": stamp,
        }
    if "video" in args.parts:
        run_dir, _ = hftk_train("rtdetr", 2, out, _quiet(2))
        recorded["video"] = {**video(run_dir, out), "command": command, "recorded": stamp}
    RAW.write_text(json.dumps(recorded, indent=1) + "\n")
    section = render(recorded)
    print("\n" + section)
    write_section("object-detection", section)


if __name__ == "__main__":
    main()
