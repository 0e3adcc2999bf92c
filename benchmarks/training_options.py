"""Transfer learning, adapters and optimizers, measured offline on this machine (issue 12's numbers).

Usage:
    python benchmarks/training_options.py                 # all three parts (about 30 quiet CPU minutes)
    python benchmarks/training_options.py --parts transfer

Every run has a fixed number of steps, so the figures do not depend on the machine's load.

- pretrained: the ImageNet EfficientNet-Lite0 a pip package ships, fine-tuned, with layer decay, as a linear probe
  and from scratch on 10 and 100 mnist-5k images per class (same steps); and fine-tuned on all of mnist-5k for the
  quickstart's time, beside the quickstart.
- transfer: the quickstart model trained on mnist-5k, fine-tuned on scikit-learn digits (upscaled to the same 56 px),
  against the same network from scratch on digits with the same steps; on all of digits' training split and on
  100 of its images.
- adapters: LoRA vs full fine-tuning of (a) a ViT trained here on mnist-5k, fine-tuned on digits, (b) the GPT
  python-docs model fine-tuned on the English chatterbot conversations: run-folder size of the adapter vs the
  full model, trainable share, test quality.
- optimizers: SGD (momentum 0.9), AdamW, RMSprop and Adafactor with a cosine schedule, and AdamW with linear,
  cosine, constant-with-warmup and one-cycle-like (linear, 30% warmup) schedules, on the image quickstart
  (4 epochs) and the LSTM recipe (300 steps).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine, markdown_table, train_run, write_section

QUICK = "recipes/image-classification/resnet-mnist.yaml"
VIT = "recipes/image-classification/vit-mnist.yaml"
GPT = "recipes/text-generation/gpt-python-docs.yaml"
LSTM = "recipes/text-generation/lstm-python-docs.yaml"
NO_CHECKPOINTS = ["train.save_strategy=no", "train.load_best_model_at_end=false", "budget.minutes=null"]


def transfer(out: Path) -> str:
    pretrained = out / "mnist"
    mnist = train_run(QUICK, ["train.seed=42"], pretrained)
    rows = []
    for samples in (None, 100):
        limit = [f"data.max_train_samples={samples}"] if samples else []
        common = [
            "data.name=digits",
            "data.image_size=56",
            "train.max_steps=60",
            "train.eval_strategy=no",
            *NO_CHECKPOINTS,
            *limit,
        ]
        for label, model in (
            ("from mnist-5k", [f"model.name={pretrained}", "model.pretrained=true"]),
            ("from scratch", ["model.name=test_resnet"]),
        ):
            result = train_run(QUICK, [*common, *model], out / f"digits-{samples}-{label.split()[1]}")
            rows.append([samples or "all (1,437)", label, 60, f"{result['test_accuracy']:.4f}"])
    return "\n".join(
        [
            f"### Transfer: mnist-5k -> digits (quickstart network, 56 px; pretrained on mnist-5k to "
            f"{mnist['test_accuracy']:.4f} test accuracy)",
            "",
            markdown_table(["digits training images", "start", "steps", "digits test accuracy"], rows),
        ]
    )


LITE0 = "recipes/image-classification/lite0-transfer-mnist.yaml"
# what starts each row of the pretrained part: the same network, the same steps and data
STARTS = {
    "ImageNet, fine-tuned": [],
    "ImageNet, layer decay 0.75": ["model.layer_decay=0.75"],
    "ImageNet, linear probe": ["model.freeze=backbone", "train.learning_rate=1e-2"],
    "from scratch": ["model.pretrained=false"],
}


def pretrained(out: Path) -> str:
    """The packaged ImageNet EfficientNet-Lite0 beside the same network from scratch and a linear probe (frozen
    backbone), at two label budgets of mnist-5k, the same 300 steps; then fine-tuning on all of mnist-5k for the
    time the quickstart takes."""
    rows = []
    quiet = ["train.eval_strategy=no", *NO_CHECKPOINTS]
    for budget in (10, 100):
        for label, start in STARTS.items():
            run = out / f"lite0-{budget}-{label.split(',')[0].split()[0]}-{len(start)}"
            result = train_run(LITE0, [f"data.samples_per_class={budget}", *quiet, *start], run)
            rows.append([f"{budget} per class ({budget * 10})", label, 300, f"{result['test_accuracy']:.4f}"])
    quick = train_run(QUICK, quiet, out / "quickstart")
    probe = train_run(LITE0, ["data.samples_per_class=null", "train.max_steps=20", *quiet], out / "lite0-speed")
    steps = max(1, int(quick["train_runtime"] * probe["train_steps_per_second"]))
    same_time = ["data.samples_per_class=null", f"train.max_steps={steps}", *quiet]
    full = train_run(LITE0, same_time, out / "lite0-all")
    rows.append(
        [
            "all (3,800)",
            "quickstart: test_resnet from scratch, 56 px",
            quick["train_steps"],
            f"{quick['test_accuracy']:.4f}",
        ]
    )
    rows.append(
        ["all (3,800)", "ImageNet Lite0, fine-tuned, the quickstart's time", steps, f"{full['test_accuracy']:.4f}"]
    )
    return "\n".join(
        [
            "### Pretrained vs scratch vs linear probe: the packaged ImageNet EfficientNet-Lite0 on mnist-5k",
            "",
            markdown_table(["training images", "start", "steps", "test accuracy (1,000 images)"], rows),
            "",
            f"Recipe `{LITE0}` (64 px, batch 32, AdamW 1e-3 cosine; the probe at 1e-2); the label budget is",
            "`data.samples_per_class`. The last two rows train for the same time: the quickstart's "
            f"{quick['train_runtime']:.0f} s on this machine, which Lite0 spends on {steps} steps: it "
            + ("beats" if full["test_accuracy"] > quick["test_accuracy"] else "does not beat")
            + " the quickstart in the quickstart's time.",
        ]
    )


def _size(run: Path, names: tuple[str, ...]) -> int:
    return sum((run / n).stat().st_size for n in names if (run / n).is_file())


def adapters(out: Path) -> str:
    rows = []
    vit_base = out / "vit-mnist"
    train_run(VIT, ["train.max_steps=600", *NO_CHECKPOINTS, "train.eval_strategy=no"], vit_base)
    for method in ("none", "lora"):
        run = out / f"vit-digits-{method}"
        result = train_run(
            VIT,
            [
                f"model.name={vit_base}",
                "model.pretrained=true",
                f"model.peft.method={method}",
                "model.peft.r=8",
                "data.name=digits",
                "data.image_size=28",
                "train.max_steps=150",
                # each at its best of 5e-4..3e-3 (full) and 3e-3..2e-2 (LoRA) on this benchmark, 2026-11-26
                "train.learning_rate=1e-3" if method == "none" else "train.learning_rate=1e-2",
                "train.eval_strategy=no",
                *NO_CHECKPOINTS,
            ],
            run,
        )
        full = out / "vit-digits-none"
        rows.append(_adapter_row("ViT (digits accuracy)", method, run, full, result, f"{result['test_accuracy']:.4f}"))
    gpt_base = out / "gpt-docs"
    train_run(
        GPT, ["train.max_steps=800", *NO_CHECKPOINTS, "train.eval_strategy=no", "eval.dynamic_lr=null"], gpt_base
    )
    corpus = _chatterbot_text(out / "chatterbot.txt")
    for method, rank in (("none", 8), ("lora", 8), ("lora", 4)):
        run = out / (f"gpt-chat-{method}" + (f"-r{rank}" if method != "none" else ""))
        result = train_run(
            GPT,
            [
                f"model.name={gpt_base}",
                "model.pretrained=true",
                f"model.peft.method={method}",
                f"model.peft.r={rank}",
                f"data.path={corpus}",
                "data.name=null",
                "train.max_steps=200",
                "train.learning_rate=3e-4" if method == "none" else "train.learning_rate=1e-2",
                "train.eval_strategy=no",
                "eval.dynamic_lr=null",
                *NO_CHECKPOINTS,
            ],
            run,
        )
        label = f"GPT-2 style (chat bits/byte), r={rank}" if method != "none" else "GPT-2 style (chat bits/byte)"
        full = out / "gpt-chat-none"
        rows.append(_adapter_row(label, method, run, full, result, f"{result['bits_per_byte']:.4f}"))
    return "\n".join(
        [
            "### Adapters: LoRA vs full fine-tuning",
            "",
            markdown_table(
                ["model", "training", "run folder weights (KB)", "share of full", "trainable share", "test"], rows
            ),
            "",
            "Weights: model.safetensors for full fine-tuning; adapter_model.safetensors for LoRA (with the new head).",
            "Targets: hftk's defaults (the ViT's attention query/value; every linear layer of the GPT). The models",
            "are tiny (0.3M and 0.9M parameters), so an adapter is a larger share of them than of a Hub-sized one.",
        ]
    )


def _adapter_row(model: str, method: str, run: Path, full_run: Path, result: dict, quality: str) -> list:
    """One table row; ``full_run`` is the full fine-tuning run whose weights the sizes compare against."""
    size = _size(run, ("model.safetensors", "adapter_model.safetensors"))
    full = _size(full_run, ("model.safetensors",))
    share = result["trainable_parameters"] / result["total_parameters"]
    label = "full fine-tuning" if method == "none" else "LoRA"
    return [model, label, f"{size / 1024:,.0f}", f"{size / max(1, full):.1%}", f"{share:.1%}", quality]


def _chatterbot_text(path: Path) -> Path:
    import importlib.util

    import yaml

    root = Path(importlib.util.find_spec("chatterbot_corpus").origin).parent / "data" / "english"
    lines = []
    for file in sorted(root.glob("*.yml")):
        for conversation in yaml.safe_load(file.read_text()).get("conversations", []):
            lines += [str(turn) for turn in conversation]
    path.write_text("\n".join(lines) + "\n")
    return path


OPTIMIZERS = {
    "sgd": ["train.optim=sgd", "train.optim_args=momentum=0.9", "train.learning_rate=0.05"],
    "adamw_torch": ["train.optim=adamw_torch", "train.learning_rate=3e-3"],
    "rmsprop": ["train.optim=rmsprop", "train.learning_rate=1e-3"],
    "adafactor": ["train.optim=adafactor", "train.learning_rate=3e-3"],
}
SCHEDULES = {
    "linear": ["train.lr_scheduler_type=linear", "train.warmup_steps=0.05"],
    "cosine": ["train.lr_scheduler_type=cosine", "train.warmup_steps=0.05"],
    "constant_with_warmup": ["train.lr_scheduler_type=constant_with_warmup", "train.warmup_steps=0.05"],
    "one-cycle-like": ["train.lr_scheduler_type=linear", "train.warmup_steps=0.3"],
}


def optimizers(out: Path) -> str:
    rows = []
    image = ["train.num_train_epochs=4", "train.eval_strategy=no", *NO_CHECKPOINTS]
    lstm = ["train.max_steps=300", "train.eval_strategy=no", "eval.dynamic_lr=null", *NO_CHECKPOINTS]
    for recipe, common, metric, label in (
        (QUICK, image, "test_accuracy", "image quickstart, 4 epochs (120 steps)"),
        (LSTM, lstm, "bits_per_byte", "LSTM python-docs, 300 steps"),
    ):
        lrs = {"sgd": "0.05", "adamw_torch": "3e-3", "rmsprop": "1e-3", "adafactor": "3e-3"}
        if recipe == LSTM:
            lrs["sgd"] = "1.0"
        for optim, keys in OPTIMIZERS.items():
            keys = [
                k if not k.startswith("train.learning_rate") else f"train.learning_rate={lrs[optim]}" for k in keys
            ]
            result = train_run(
                recipe, [*common, *keys, *SCHEDULES["cosine"]], out / f"opt-{Path(recipe).stem}-{optim}"
            )
            rows.append([label, optim, lrs[optim], "cosine", f"{result[metric]:.4f}"])
        for schedule, keys in SCHEDULES.items():
            if schedule == "cosine":
                continue
            result = train_run(
                recipe, [*common, *OPTIMIZERS["adamw_torch"], *keys], out / f"sch-{Path(recipe).stem}-{schedule}"
            )
            rows.append([label, "adamw_torch", "3e-3", schedule, f"{result[metric]:.4f}"])
    return "\n".join(
        [
            "### Optimizers and schedules (image: test accuracy, higher is better; LSTM: bits/byte, lower is better)",
            "",
            markdown_table(["recipe and budget", "train.optim", "learning rate", "schedule", "test"], rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["pretrained", "transfer", "adapters", "optimizers"])
    args = parser.parse_args()
    sections = []
    with tempfile.TemporaryDirectory(prefix="hftk-bench-") as folder:
        for part in args.parts:
            parts = {"pretrained": pretrained, "transfer": transfer, "adapters": adapters, "optimizers": optimizers}
            text = parts[part](Path(folder))
            print(text, flush=True)
            sections.append(text)
            write_section(
                f"training-options-{part}",
                f"## Training options: {part}\n\n{text}\n\n"
                f"Recorded {machine()}; `python benchmarks/training_options.py --parts {part}`.",
            )


if __name__ == "__main__":
    main()
