"""Two CPU processes vs one (issue 11): throughput ratio and the equivalence of the trained weights.

Usage:
    python benchmarks/distributed.py

For the image quickstart and the GPT recipe: 1 process with batch B and gradient accumulation 2 vs 2 processes
(`accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml`) with batch B each, the same global batch
and fixed steps; training samples per second from each run's all_results.json, and the largest weight difference.
On a 2-core machine two processes share the cores: the ratio shows the cost of the gloo all-reduce, not a speed-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, write_section

CASES = {
    "image quickstart": ("image-classification", ["train.max_steps=40", "train.per_device_train_batch_size=64"]),
    "GPT python-docs": (
        "text-generation",
        ["train.max_steps=40", "train.per_device_train_batch_size=8", "eval.dynamic_lr=null"],
    ),
}
COMMON = [
    "budget.minutes=null",
    "train.eval_strategy=no",
    "train.save_strategy=no",
    "train.load_best_model_at_end=false",
    "regularization.dropout=0",
]


def _train(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)


def main() -> None:
    from safetensors.torch import load_file

    rows = []
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/cpu-2proc.yaml"]
    with tempfile.TemporaryDirectory(prefix="hftk-ddp-") as folder:
        for label, (task_id, overrides) in CASES.items():
            one, two = Path(folder) / f"{task_id}-1", Path(folder) / f"{task_id}-2"
            train = ["-m", "hftk", "-q", "train", task_id, *COMMON, *overrides]
            _train([sys.executable, *train, "train.gradient_accumulation_steps=2", "--output-dir", str(one)])
            _train([*launch, *train, "--output-dir", str(two)])
            speed = [json.loads((d / "all_results.json").read_text())["train_samples_per_second"] for d in (one, two)]
            a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
            diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
            rows.append([label, f"{speed[0]:,.0f}", f"{speed[1]:,.0f}", f"{speed[1] / speed[0]:.2f}", f"{diff:.1e}"])
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "## Distributed: 2 CPU processes (gloo) vs 1 with the same global batch",
            "",
            markdown_table(
                ["recipe", "1 process samples/s", "2 processes samples/s", "ratio", "max weight diff"], rows
            ),
            "",
            f"Recorded {machine()}; `python benchmarks/distributed.py`; 40 steps. The image row differs by design:",
            "each process draws its own random affine, and batch norm keeps rank 0's statistics; without those",
            "(a ViT, no augmentation) the weights are equal, as tests/test_distributed.py checks for every task.",
        ]
    )
    print(text)
    write_section("distributed", text)


if __name__ == "__main__":
    main()
