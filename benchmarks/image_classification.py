"""Image-classification benchmark: quickstart quality for several seeds, throughput vs a plain Trainer, demo latency.

Usage:
    python benchmarks/image_classification.py                  # all three parts
    python benchmarks/image_classification.py --seeds 42 --no-throughput --no-demo

Quality: the quickstart recipe (recipes/image-classification/resnet-mnist.yaml, 16 fixed epochs) trained
with `hftk.training.train` for each seed; test accuracy on the fixed 1,000-image mnist-5k test split.

Throughput: training images/s of hftk's path vs a plain transformers Trainer script on the same timm model
(built with `timm.create_model`), the same mnist-5k training images, augmentation and batch size; the two run
alternately in this process, several rounds, so machine load affects both alike. The ratio is the median.

Demo: p50/p95 latency of one prediction through gradio_client, next to the bare processor + model forward.
Results go to stdout and to a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import QUIET_OVERRIDES, QUIET_TRAINING, write_section  # noqa: E402

QUICKSTART = ROOT / "recipes" / "image-classification" / "resnet-mnist.yaml"


def quality(seeds: list[int], out: Path) -> list[dict]:
    from hftk.config import load_recipe
    from hftk.training import train

    rows = []
    for seed in seeds:
        run_dir = out / f"quickstart-{seed}"
        train(load_recipe(QUICKSTART, [f"train.seed={seed}"]), run_dir)
        results = json.loads((run_dir / "all_results.json").read_text())
        load = os.getloadavg()[0]
        rows.append(
            {
                "seed": seed,
                "test_accuracy": results["test_accuracy"],
                "train_seconds": results["train_runtime"],
                "steps": results["train_steps"],
                "epochs": results["epoch"],
                "load": round(load, 2),
            }
        )
        print(f"quickstart seed {seed}: {rows[-1]}", flush=True)
    return rows


def rerun_difference(seed: int, out: Path) -> tuple[float, float]:
    """Train the quickstart with ``seed`` again: (accuracy difference, largest weight difference) to the first run."""
    from safetensors.torch import load_file

    from hftk.config import load_recipe
    from hftk.training import train

    first, again = out / f"quickstart-{seed}", out / f"quickstart-{seed}-again"
    train(load_recipe(QUICKSTART, [f"train.seed={seed}"]), again)
    accuracy = [json.loads((d / "all_results.json").read_text())["test_accuracy"] for d in (first, again)]
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    return abs(accuracy[0] - accuracy[1]), max(float((a[k] - b[k]).abs().max()) for k in a)


def _plain_trainer(steps: int, batch: int, out: Path):
    """The plain way: timm.create_model + a torchvision transform + transformers.Trainer."""
    import timm
    import torch
    from torchvision.transforms import v2
    from transformers import Trainer, TrainingArguments

    from hftk.config import load_recipe
    from hftk.data.images import load_image_data

    recipe = load_recipe(QUICKSTART)
    train_ds = load_image_data(recipe.data)["train"]
    model = timm.create_model(recipe.model.name, num_classes=10, **recipe.model.model_args)
    aug, size = recipe.data.augment, recipe.data.image_size
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size),
            v2.CenterCrop(size),
            v2.RandomAffine(aug.degrees, translate=(aug.translate, aug.translate), scale=aug.scale),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def to_pixels(examples):
        return {"x": [transform(im.convert("RGB")) for im in examples["image"]], "y": examples["label"]}

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, y):
            logits = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits}

    def collate(features):
        return {"x": torch.stack([f["x"] for f in features]), "y": torch.tensor([f["y"] for f in features])}

    args = TrainingArguments(
        output_dir=str(out / "plain"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=3e-3,
        optim="adamw_torch",
        **QUIET_TRAINING,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    return Trainer(
        model=Wrapped(model), args=args, train_dataset=train_ds.with_transform(to_pixels), data_collator=collate
    )


def _hftk_trainer(steps: int, batch: int, out: Path):
    """hftk's path, as `hftk train` builds it (task data, model, transforms, collate, Trainer class)."""
    from hftk.config import load_recipe
    from hftk.tasks import get_task
    from hftk.tasks.contract import TrainerInputs
    from hftk.training import build_training_arguments

    recipe = load_recipe(
        QUICKSTART,
        [
            f"train.max_steps={steps}",
            f"train.per_device_train_batch_size={batch}",
            "budget.minutes=null",
            *QUIET_OVERRIDES,
        ],
    )
    task = get_task(recipe.task)
    data = task.load_data(recipe)
    model, processor = task.build_model(recipe, data)
    datasets = task.prepare_datasets(recipe, data, processor)
    args = build_training_arguments(recipe, out / "hftk", task.training_arguments)
    return task.build_trainer(TrainerInputs(recipe, model, processor, datasets, args, []))


def throughput(rounds: int, steps: int, batch: int, out: Path) -> dict:
    from hftk.training import configure_threads

    configure_threads(0)
    speeds: dict[str, list[float]] = {"hftk": [], "plain": []}
    for _ in range(rounds):
        for name, make in (("hftk", _hftk_trainer), ("plain", _plain_trainer)):
            trainer = make(steps, batch, out)
            result = trainer.train()
            speeds[name].append(steps * batch / result.metrics["train_runtime"])
            print(f"throughput {name}: {speeds[name][-1]:.0f} images/s", flush=True)
    ratios = [a / b for a, b in zip(speeds["hftk"], speeds["plain"])]
    return {
        "hftk_images_per_s": statistics.median(speeds["hftk"]),
        "plain_images_per_s": statistics.median(speeds["plain"]),
        "ratio": statistics.median(ratios),
        "rounds": rounds,
        "steps": steps,
        "batch": batch,
    }


def demo_latency(run_dir: Path, calls: int) -> dict:
    import socket

    import torch
    from gradio_client import Client, handle_file
    from PIL import Image

    from hftk.demos import launch
    from hftk.tasks.image_classification import load_run_model

    example = sorted((run_dir / "eval" / "examples").glob("*.png"))[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(run_dir, port=port, prevent_thread_lock=True, quiet=True)
    client = Client(app.local_url, verbose=False)
    client.predict(handle_file(str(example)), api_name="/classify")  # warm up
    demo_ms = []
    for _ in range(calls):
        start = time.perf_counter()
        client.predict(handle_file(str(example)), api_name="/classify")
        demo_ms.append(1000 * (time.perf_counter() - start))
    app.close()
    model, processor = load_run_model(str(run_dir))
    image = Image.open(example).convert("RGB")
    bare_ms = []
    with torch.no_grad():
        for _ in range(calls):
            start = time.perf_counter()
            model(**processor(images=image, return_tensors="pt"))
            bare_ms.append(1000 * (time.perf_counter() - start))

    def pct(values, q):
        return statistics.quantiles(values, n=100)[q - 1]

    return {
        "demo_p50_ms": pct(demo_ms, 50),
        "demo_p95_ms": pct(demo_ms, 95),
        "model_p50_ms": pct(bare_ms, 50),
        "model_p95_ms": pct(bare_ms, 95),
        "calls": calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument("--steps", type=int, default=40, help="training steps per throughput round")
    parser.add_argument("--calls", type=int, default=40, help="demo predictions timed")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--no-demo", action="store_true")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="hftk-bench-"))
    lines = [
        "## Image classification",
        "",
        f"Command: `python benchmarks/image_classification.py {' '.join(sys.argv[1:])}`".replace(" `", " `").rstrip(),
        f"Machine: {os.cpu_count()} CPU cores, no GPU; date {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    runs = []
    if not args.no_quality:
        runs = quality(args.seeds, out)
        accs = [r["test_accuracy"] for r in runs]
        lines += [
            "### Quickstart (resnet-mnist.yaml, 16 epochs): test accuracy on the 1,000 held-out digits",
            "",
            "| seed | test accuracy | train s | steps | epochs | load avg |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['seed']} | {r['test_accuracy']:.4f} | {r['train_seconds']:.1f} | {r['steps']} "
            f"| {r['epochs']:.1f} | {r['load']} |"
            for r in runs
        ]
        lines += [
            "",
            f"min {min(accs):.4f}, mean {statistics.mean(accs):.4f} (target: >= 0.99 for every seed, about a minute "
            "of training on a quiet 2-core CPU).",
        ]
        acc_diff, weight_diff = rerun_difference(args.seeds[0], out)
        lines += [
            f"Seed {args.seeds[0]} trained again in the same benchmark: test accuracy differs by {acc_diff:.4f}, "
            f"weights by at most {weight_diff:.1e}.",
            "",
        ]
    if not args.no_throughput:
        t = throughput(args.rounds, args.steps, 128, out)
        lines += [
            "### Training throughput: hftk vs a plain Trainer script (same timm model, data and batch 128)",
            "",
            "| hftk images/s | plain images/s | ratio (median of rounds) |",
            "|---|---|---|",
            f"| {t['hftk_images_per_s']:.0f} | {t['plain_images_per_s']:.0f} | {t['ratio']:.3f} |",
            "",
            f"{t['rounds']} alternating rounds of {t['steps']} steps (target ratio >= 0.95). Both apply the recipe's "
            "random affine: the plain script per image (torchvision RandomAffine), hftk per batch (grid_sample).",
            "",
        ]
    if not args.no_demo:
        run_dir = out / f"quickstart-{args.seeds[0]}"
        if not run_dir.is_dir():
            from hftk.config import load_recipe
            from hftk.training import train

            train(load_recipe(QUICKSTART, ["train.num_train_epochs=2"]), run_dir)
        d = demo_latency(run_dir, args.calls)
        lines += [
            "### Demo latency: one prediction through gradio_client vs the bare processor + model forward",
            "",
            "| demo p50 ms | demo p95 ms | model p50 ms | model p95 ms |",
            "|---|---|---|---|",
            f"| {d['demo_p50_ms']:.1f} | {d['demo_p95_ms']:.1f} | {d['model_p50_ms']:.2f} | {d['model_p95_ms']:.2f} |",
            "",
            f"{d['calls']} calls after a warm-up call.",
            "",
        ]
    section = "\n".join(lines)
    print(section)
    write_section("image-classification", section)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
