"""Text-generation benchmark: test bits per byte on python-docs after a few CPU minutes, and throughput.

Usage:
    python benchmarks/text_generation.py                      # GPT, LSTM, GRU for 3 and 10 minutes + throughput
    python benchmarks/text_generation.py --models gpt --minutes 3 --no-throughput

Quality: each recipe in recipes/text-generation/<model>-python-docs.yaml trains for ``budget.minutes`` and is
evaluated on the fixed python-docs test split (last 10% of the bytes). Anchors: xz -9e and gzip -9 given the
training part (first 90% of the bytes) as a prefix: bits = 8 * (len(c(train + test)) - len(c(train))) / bytes.

Throughput: training tokens/s of hftk's path (``hftk.training.train``) vs a plain run_clm-style Trainer script
(tokenize, concatenate, cut into blocks, ``default_data_collator``) on the same model, data and batch, run
alternately in this process. Results go to stdout, to benchmarks/text_generation.json (kept across runs, so
the 3- and 10-minute runs can be made separately) and to a section of benchmarks/RESULTS.md rendered from it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import QUIET_OVERRIDES, machine, write_section  # noqa: E402

RAW = ROOT / "benchmarks" / "text_generation.json"  # every measurement so far; RESULTS.md is rendered from it
RECIPES = {m: ROOT / "recipes" / "text-generation" / f"{m}-python-docs.yaml" for m in ("gpt", "lstm", "gru")}


def compressor_anchors() -> dict[str, float]:
    """Bits per byte of xz -9e and gzip -9 on the test split, given the training part as a prefix."""
    from hftk.data.text import PYTHON_DOCS_TEST_FRACTION, byte_split_points, python_docs_text

    data = python_docs_text().encode("utf-8")
    _, test_start = byte_split_points(len(data), data, PYTHON_DOCS_TEST_FRACTION, 0.0)
    train, test = data[:test_start], data[test_start:]
    xz = lambda b: len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))  # noqa: E731
    gz = lambda b: len(gzip.compress(b, compresslevel=9))  # noqa: E731
    return {name: 8 * (f(train + test) - f(train)) / len(test) for name, f in (("xz -9e", xz), ("gzip -9", gz))}


def train_recipe(model: str, minutes: float | None, out: Path) -> dict:
    """Train one recipe for ``minutes`` (None: as shipped, its fixed steps) and return its test metrics."""
    from hftk.config import load_recipe
    from hftk.training import train

    clock = [f"budget.minutes={minutes}", "train.max_steps=-1"]  # the clock decides
    recipe = load_recipe(RECIPES[model], clock if minutes else [])
    run_dir = out / (f"{model}-{minutes:g}min" if minutes else f"{model}-shipped")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(recipe, run_dir)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    state = json.loads((run_dir / "train_results.json").read_text())
    row = {"model": model, "minutes": minutes, "steps": state.get("train_steps"), "run": str(run_dir), **metrics}
    return {**row, "train_minutes": state.get("train_runtime", 0) / 60}


def _throughput_setup(steps: int):
    from hftk.config import load_recipe

    recipe = load_recipe(
        RECIPES["gpt"],
        [
            "budget.minutes=null",
            f"train.max_steps={steps}",
            *QUIET_OVERRIDES,
        ],
    )
    return recipe


def hftk_tokens_per_second(steps: int, out: Path) -> float:
    from hftk.training import train

    recipe = _throughput_setup(steps)
    run_dir = out / "throughput-hftk"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(recipe, run_dir)
    result = json.loads((run_dir / "train_results.json").read_text())
    batch = recipe.train["per_device_train_batch_size"]
    return result["train_steps"] * batch * recipe.data.block_size / result["train_runtime"]


def plain_tokens_per_second(steps: int, out: Path) -> float:
    """A run_clm-style script: the same tokenizer, model config, batch and block size, no hftk code in the loop."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator, set_seed

    from hftk.data import lm
    from hftk.data.text import load_text_data
    from hftk.models import build_config

    recipe = _throughput_setup(steps)
    set_seed(42)
    data = load_text_data(recipe.data)
    tokenizer = lm.train_bpe_tokenizer(data["train"]["text"], recipe.data.vocab_size, recipe.data.min_frequency)
    block = recipe.data.block_size
    ids = [t for doc in tokenizer(list(data["train"]["text"]))["input_ids"] for t in doc + [tokenizer.eos_token_id]]
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    train_ds = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    ids_ = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    fields = {"vocab_size": len(tokenizer), "n_positions": block, **ids_}
    model = AutoModelForCausalLM.from_config(build_config(recipe.model.name, recipe.model.model_args, fields))
    args = {k: v for k, v in recipe.train.items() if k not in ("metric_for_best_model", "greater_is_better")}
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(out / "throughput-plain"), **args),
        train_dataset=train_ds,
        data_collator=default_data_collator,
    )
    result = trainer.train().metrics
    return steps * recipe.train["per_device_train_batch_size"] * block / result["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt", "lstm", "gru"], choices=list(RECIPES))
    parser.add_argument("--minutes", nargs="+", type=float, default=[3, 10])
    parser.add_argument(
        "--as-shipped", action="store_true", help="train each recipe as shipped (its fixed steps) instead of minutes"
    )
    parser.add_argument("--no-throughput", action="store_true", help="skip the hftk vs plain Trainer comparison")
    parser.add_argument("--throughput-steps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-text-generation"))
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    anchors = compressor_anchors()
    command = " ".join(["python benchmarks/text_generation.py", *sys.argv[1:]])
    stamp = machine()
    recorded = json.loads(RAW.read_text()) if RAW.is_file() else {"runs": {}, "throughput": None}
    for minutes in [None] if args.as_shipped else args.minutes:
        for model in args.models:
            row = train_recipe(model, minutes, out)
            static = f"{row['bits_per_byte']:.4f}"
            print(f"{model} {_minutes(row)}: test bits/byte {static}, dynamic {_dynamic(row)}", flush=True)
            key = f"{model}/{minutes:g}" if minutes else f"{model}/shipped"
            recorded["runs"][key] = {**row, "command": command, "recorded": stamp}
    if not args.no_throughput:
        plain, ours = [], []
        for _ in range(2):  # alternate, so a change in machine load hits both
            plain.append(plain_tokens_per_second(args.throughput_steps, out))
            ours.append(hftk_tokens_per_second(args.throughput_steps, out))
        recorded["throughput"] = {
            "plain": max(plain),
            "hftk": max(ours),
            "steps": args.throughput_steps,
            "command": command,
            "recorded": stamp,
        }
    RAW.write_text(json.dumps(recorded, indent=1) + "\n")
    section = render(recorded, anchors)
    print("\n" + section)
    write_section("text-generation", section)


def _minutes(row: dict) -> str:
    """A budget row's minutes; a row trained as shipped says so, with the minutes its fixed steps took."""
    if row["minutes"]:
        return f"{row['minutes']:g}"
    return f"as shipped ({row['train_minutes']:.1f})"


def _dynamic(row: dict) -> str:
    return f"{row['dynamic_bits_per_byte']:.4f}" if "dynamic_bits_per_byte" in row else "-"


def render(recorded: dict, anchors: dict[str, float]) -> str:
    """The RESULTS.md section: every (model, minutes) measured so far, with the command and date of each."""
    lines = [
        "## text-generation: python-docs test bits per byte (lower is better)",
        "",
        "Each row: `budget.minutes` of training on the 2-core CPU (*as shipped*: the recipe's own fixed steps, with",
        "the minutes they took), then the test split (last 10% of the bytes).",
        "Static: the trained model scores the split as it is. Dynamic (`eval.dynamic_lr`): the same model scores",
        "the split left to right and takes a step on each segment after scoring it (Krause et al., 2018; the",
        "recipe's settings: LSTM/GRU an SGD step per 16 tokens; GPT since 2026-11-26 an RMS-scaled step, Adam",
        "without momentum as Krause et al. 2019 adapt transformers, per 8 tokens: 1.404 where SGD per 16 gave",
        "1.430 on the same model): each token is still predicted before the model learns from it, which is how",
        "the compressors below work too (xz codes the test part with a dictionary built from the training part",
        "and the test bytes already coded). A run_clm-style GPT-2 script reaches 2.01 (3 min) and 1.84 (10 min)",
        "static here (figures from issue 4). The GPT default moved on 2026-11-26 from a 4,096-token BPE (1,900",
        "steps) to a 1,024-token BPE (2,600 steps, the same minutes): at 4,096 it stops improving on validation",
        "from step 300; a sweep of vocabulary (512-4,096), dropout, depth, batch and learning rate chose 1,024",
        "(issue 12's note).",
        "",
        "| model | minutes | steps | test bits/byte (static) | dynamic | perplexity | recorded | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    runs = sorted(recorded["runs"].values(), key=lambda r: (r["minutes"] or 99, r["model"]))
    lines += [
        f"| {r['model']} | {_minutes(r)} | {r['steps']} | {r['bits_per_byte']:.4f} | {_dynamic(r)} "
        f"| {r['perplexity']:.1f} "
        f"| {r['recorded']} | `{r['command']}` |"
        for r in runs
    ]
    lines += [f"| {name}, train part as prefix | - | - | - | {bpb:.4f} | - | - | - |" for name, bpb in anchors.items()]
    t = recorded.get("throughput")
    if t:
        lines += [
            "",
            f"Throughput (GPT recipe, {t['steps']} steps, best of 2, alternating): plain run_clm-style Trainer "
            f"{t['plain']:,.0f} tokens/s, hftk {t['hftk']:,.0f} tokens/s, ratio {t['hftk'] / t['plain']:.3f} "
            f"({t['recorded']}; `{t['command']}`).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
