"""Seq2seq-chat benchmark: chrF, BLEU and ROUGE-L on the chatterbot test split after 3 and 10 CPU minutes of
training, beside the TF-IDF retrieval baseline (whole split and novel messages); training throughput against a
plain Seq2SeqTrainer script on the same model.

Usage:
    python benchmarks/seq2seq_chat.py                                          # everything: ~1.5 h on 2 cores
    python benchmarks/seq2seq_chat.py --variants minilm minilm-retrieve --minutes 10 --parts quality
    python benchmarks/seq2seq_chat.py --parts throughput                       # speed only (minutes)
    python benchmarks/seq2seq_chat.py --steps-per-second minilm=2.1 t5=3.0     # reuse measured rates

Variants: `t5` (recipes/chat/t5-chatterbot.yaml, T5 from scratch), `minilm` (minilm-chatterbot.yaml, the
default: pretrained MiniLM encoder warm start, EncoderDecoderModel) and `minilm-retrieve` (the same with
`data.retrieve=true`: retrieve and refine, the nearest training exchange is part of the model input).
flan-t5-small needs the network and is left out.

Fixed work, not a clock: a run "of 10 minutes" trains for the steps that fit in 10 minutes on this machine,
measured once per variant with a short throughput run (or given with --steps-per-second), so other load during
the run changes its duration, not its model. Each run has its own schedule (`train.max_steps=N`,
`budget.minutes=null`, the recipe's warmup fraction and linear decay to zero at its last step); evaluation and
checkpoints during training are off (they do not change the final model), the test split is scored once at the
end by hftk's own report: generated answers (the recipe's greedy decoding) and the retrieval baseline (the
response of the most similar training message) on the whole fixed test split and on its novel messages.

Throughput: training samples/s of hftk (``hftk.training.train``) and of a plain script (tokenize the same
pairs, ``DataCollatorForSeq2Seq``, ``Seq2SeqTrainer`` with the model config and tokenizer of an hftk run, the
same batch, learning rate, schedule and length grouping), alternating in this process, best of 2.

Results go to stdout, to benchmarks/seq2seq_chat.json (kept across runs, so parts can be measured separately)
and to the seq2seq-chat section of benchmarks/RESULTS.md rendered from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import (
    QUIET_OVERRIDES,
    QUIET_TRAINING,
    RECIPE_OPTIMIZATION_KEYS,
    ROOT,
    machine,
    markdown_table,
    train_run,
    write_section,
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "OMP_WAIT_POLICY" not in os.environ:  # as `hftk` itself does (hftk/cli.py): busy OpenMP waits cost 10x here
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

RAW = ROOT / "benchmarks" / "seq2seq_chat.json"
SECTION = "seq2seq-chat"
RECIPES = ROOT / "recipes" / "chat"
# variant: (recipe, overrides)
VARIANTS: dict[str, tuple[Path, list[str]]] = {
    "t5": (RECIPES / "t5-chatterbot.yaml", []),
    "minilm": (RECIPES / "minilm-chatterbot.yaml", []),
    "minilm-retrieve": (RECIPES / "minilm-chatterbot.yaml", ["data.retrieve=true"]),
}
METRICS = ("chrf", "bleu", "rougeL")
# runs that only time training: no evaluation or checkpoints on the way, a tiny test report at the end
_QUIET = [*QUIET_OVERRIDES, "data.max_eval_samples=8", "model.generation.max_new_tokens=8"]


EXTRA: list[str] = []  # --set: overrides added to every run (a smoke test's short evaluation)


def _overrides(variant: str, steps: int, extra: list[str] = ()) -> list[str]:
    return [*VARIANTS[variant][1], "budget.minutes=null", f"train.max_steps={steps}", *EXTRA, *extra]


def hftk_run(variant: str, steps: int, run_dir: Path, extra: list[str] = ()) -> dict:
    """Train the variant for ``steps`` with hftk into ``run_dir``; train results and test metrics."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train_run(str(VARIANTS[variant][0]), _overrides(variant, steps, extra), run_dir)


def steps_per_second(variant: str, out: Path, steps: int = 30) -> float:
    """hftk training steps per second of the variant on this machine (a short run, no warmup)."""
    result = hftk_run(variant, steps, out / f"rate-{variant}", [*_QUIET, "train.warmup_steps=0"])
    return result["train_steps"] / result["train_runtime"]


def quality(variant: str, minutes: float, rate: float, out: Path) -> dict:
    """Train for the steps of ``minutes`` at ``rate``; the test report's model and retrieval figures."""
    steps = max(1, round(minutes * 60 * rate))
    extra = ["train.eval_strategy=no", "train.save_strategy=no", "train.load_best_model_at_end=false"]
    start = time.perf_counter()
    result = hftk_run(variant, steps, out / f"{variant}-{minutes:g}min", extra)
    row = {
        "variant": variant,
        "minutes": minutes,
        "steps": steps,
        "rate": rate,
        "train_seconds": round(result["train_runtime"], 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "load": round(os.getloadavg()[0], 2),
        "num_examples": result["num_examples"],
        "num_novel": result["num_novel"],
    }
    for prefix in ("", "novel_", "retrieval_", "retrieval_novel_"):
        row.update({f"{prefix}{m}": result[f"{prefix}{m}"] for m in (*METRICS, "exact_match")})
    row["beats_retrieval"] = row["chrf"] > row["retrieval_chrf"]
    row["beats_retrieval_novel"] = row["novel_chrf"] > row["retrieval_novel_chrf"]
    print(
        f"{variant} {minutes:g} min ({steps} steps, {row['train_seconds']} s): chrF {row['chrf']:.2f} vs retrieval "
        f"{row['retrieval_chrf']:.2f} ({'beats' if row['beats_retrieval'] else 'does not beat'}), novel chrF "
        f"{row['novel_chrf']:.2f} vs {row['retrieval_novel_chrf']:.2f} "
        f"({'beats' if row['beats_retrieval_novel'] else 'does not beat'})",
        flush=True,
    )
    return row


def plain_trainer(variant: str, steps: int, run_dir: Path, out: Path) -> dict:
    """A plain Seq2SeqTrainer script: the model config and tokenizer of an hftk run, the same pairs and batch."""
    from datasets import Dataset
    from transformers import (
        AutoConfig,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    from hftk.config import load_recipe
    from hftk.data.chat import load_chat_data

    recipe = load_recipe(VARIANTS[variant][0], _overrides(variant, steps))
    cfg = recipe.data
    set_seed(recipe.train["seed"])
    train = load_chat_data(cfg)["train"]
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    turns = cfg.history_turns
    inputs = [
        cfg.turn_separator.join([*(history[-turns:] if turns else []), message])
        for history, message in zip(train["history"], train["message"])
    ]
    encoded = tokenizer(inputs, max_length=cfg.max_input_length, truncation=True)
    labels = tokenizer(text_target=list(train["response"]), max_length=cfg.max_target_length, truncation=True)
    train_ds = Dataset.from_dict({**encoded, "labels": labels["input_ids"]})
    model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(run_dir))
    keep = (*RECIPE_OPTIMIZATION_KEYS, "train_sampling_strategy")
    args = Seq2SeqTrainingArguments(
        output_dir=str(out / f"plain-{variant}"),
        **{k: v for k, v in recipe.train.items() if k in keep},
        **QUIET_TRAINING,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
    )
    return trainer.train().metrics


def throughput(variant: str, steps: int, rounds: int, out: Path) -> dict:
    """Training samples/s of hftk and the plain script on the same model, data and batch, alternating."""
    from hftk.config import load_recipe

    batch = load_recipe(VARIANTS[variant][0], _overrides(variant, steps)).train["per_device_train_batch_size"]
    config_dir = out / f"config-{variant}"
    hftk_run(variant, 2, config_dir, _QUIET)  # the model config and tokenizer both sides use
    ours, plain = [], []
    for _ in range(rounds):
        result = plain_trainer(variant, steps, config_dir, out)
        plain.append(steps * batch / result["train_runtime"])
        result = hftk_run(variant, steps, out / f"throughput-{variant}", _QUIET)
        ours.append(result["train_steps"] * batch / result["train_runtime"])
        print(f"throughput {variant}: plain {plain[-1]:.1f} samples/s, hftk {ours[-1]:.1f} samples/s", flush=True)
    return {"variant": variant, "steps": steps, "batch": batch, "rounds": rounds, "hftk": max(ours),
            "plain": max(plain), "hftk_all": ours, "plain_all": plain}  # fmt: skip


def _pair(row: dict, metric: str, novel: bool = False) -> str:
    part = "novel_" if novel else ""
    return f"{row[part + metric]:.2f}"


def render(recorded: dict) -> str:
    quality_rows = sorted(recorded.get("quality", {}).values(), key=lambda r: (r["minutes"], r["variant"]))
    lines = [
        "## seq2seq-chat: chatterbot test split after 3 and 10 CPU minutes, beside the retrieval baseline",
        "",
        "Each row trains a recipe for the steps that fit in its minutes on this 2-core CPU (fixed work, not a",
        "clock: steps = minutes x 60 x the variant's steps/s, measured once per variant with a 30-step hftk run",
        "before its runs, or given with --steps-per-second; the machine was shared with other work, so the",
        "rates are those of a busy machine, below a quiet one's), with its own linear schedule to zero at its last",
        "step and no evaluation on the way. `t5`: T5 from scratch (t5-chatterbot.yaml); `minilm`: the default,",
        "pretrained MiniLM encoder warm start (minilm-chatterbot.yaml); `minilm-retrieve`: the same with",
        "`data.retrieve=true` (retrieve and refine: the nearest training exchange is in the model input). Test split:",
        "the fixed 10% of chatterbot-english conversations; *novel*: its messages that never occur in training.",
        "Scores: sacrebleu chrF and BLEU, mean ROUGE-L F (x100 in hftk's report: all three on a 0-100 scale), greedy",
        "decoding as the recipe saves it. Retrieval: TF-IDF nearest training message's response (hftk's report).",
        "Goal: the best recipe beats the retrieval baseline on chrF within 10 minutes of CPU training, on the whole",
        "split and on the novel subset.",
        "",
    ]
    header = ["variant", "minutes", "steps (steps/s)", "chrF", "BLEU", "ROUGE-L", "novel chrF", "novel BLEU"]
    header += ["novel ROUGE-L", "beats retrieval (whole / novel chrF)", "train s", "recorded", "command"]
    table = []
    for r in quality_rows:
        beats = f"{'yes' if r['beats_retrieval'] else 'no'} / {'yes' if r['beats_retrieval_novel'] else 'no'}"
        table.append(
            [r["variant"], f"{r['minutes']:g}", f"{r['steps']} ({r['rate']:.2f})"]
            + [_pair(r, m) for m in METRICS]
            + [_pair(r, m, novel=True) for m in METRICS]
            + [beats, r["train_seconds"], r["recorded"], f"`{r['command']}`"]
        )
    if quality_rows:
        r = quality_rows[0]  # the baseline depends on the splits only: the same in every row
        table.append(
            ["retrieval (TF-IDF)", "-", "-"]
            + [f"{r['retrieval_' + m]:.2f}" for m in METRICS]
            + [f"{r['retrieval_novel_' + m]:.2f}" for m in METRICS]
            + ["-", "-", "-", "-"]
        )
        lines.append(markdown_table(header, table))
        lines += ["", f"Test split: {r['num_examples']} answers, {r['num_novel']} of them to novel messages.", ""]
        ten = [x for x in quality_rows if x["minutes"] <= 10]
        if ten:
            best = max(ten, key=lambda x: x["chrf"] + x["novel_chrf"])
            met = any(x["beats_retrieval"] and x["beats_retrieval_novel"] for x in ten)
            lines.append(
                f"Goal {'met' if met else 'not met'}: best within 10 minutes `{best['variant']}` "
                f"({best['minutes']:g} min) chrF {best['chrf']:.2f} vs retrieval {best['retrieval_chrf']:.2f}, "
                f"novel {best['novel_chrf']:.2f} vs {best['retrieval_novel_chrf']:.2f}."
            )
    rates = recorded.get("rates", {})
    if rates:
        measured = [f"{v} {r['steps_per_second']:.3f} (load {r['load']})" for v, r in sorted(rates.items())]
        lines += ["", "Rates measured (steps/s of a 30-step hftk run, 1-minute load average just after it): "]
        lines[-1] += "; ".join(measured) + "."
    t = recorded.get("throughput")
    if t:
        lines += [
            "",
            f"Throughput ({t['variant']}, batch {t['batch']}, {t['steps']} steps, best of {t['rounds']}, "
            f"alternating): plain Seq2SeqTrainer script {t['plain']:.1f} samples/s, hftk {t['hftk']:.1f} samples/s, "
            f"ratio {t['hftk'] / t['plain']:.3f} (target >= 0.95; {t['recorded']}; `{t['command']}`).",
        ]
    lines += ["", *recorded["notes"]] if recorded.get("notes") else []  # written by hand into the json
    return "\n".join(lines)


def _rates(values: list[str] | None) -> dict[str, float]:
    """``--steps-per-second 2.1`` (every variant) or ``minilm=2.1 t5=3.0``."""
    rates: dict[str, float] = {}
    for value in values or []:
        name, _, number = value.rpartition("=")
        for variant in [name] if name else VARIANTS:
            if variant not in VARIANTS:
                raise SystemExit(f"--steps-per-second {value}: unknown variant {variant}")
            rates[variant] = float(number)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--minutes", nargs="+", type=float, default=[3, 10])
    parser.add_argument(
        "--parts", nargs="*", default=["quality", "throughput"], help="quality, throughput (none: render only)"
    )
    parser.add_argument(
        "--steps-per-second", nargs="+", help="rates instead of measuring them: RATE (all) or VARIANT=RATE"
    )
    parser.add_argument("--rate-steps", type=int, default=30, help="steps of the run that measures a rate")
    parser.add_argument("--throughput-variant", default="minilm", choices=list(VARIANTS))
    parser.add_argument("--throughput-steps", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-seq2seq-chat"))
    parser.add_argument("--raw", default=str(RAW), help="json of every measurement (kept across runs)")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides for every run (smoke tests only)")
    args = parser.parse_args()
    EXTRA[:] = args.set
    import logging

    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = Path(args.raw)
    command = " ".join(["python benchmarks/seq2seq_chat.py", *sys.argv[1:]])
    stamp = machine()
    recorded = json.loads(raw.read_text()) if raw.is_file() else {}
    recorded.setdefault("quality", {})
    given = _rates(args.steps_per_second)
    if "quality" in args.parts:
        for variant in args.variants:
            rate = given.get(variant)
            if rate is None:
                rate = steps_per_second(variant, out, args.rate_steps)
                load = round(os.getloadavg()[0], 2)
                print(f"{variant}: {rate:.3f} steps/s (measured, {args.rate_steps} steps, load {load})", flush=True)
                recorded.setdefault("rates", {})[variant] = {
                    "steps_per_second": round(rate, 4),
                    "steps": args.rate_steps,
                    "load": load,
                    "recorded": stamp,
                }
            for minutes in args.minutes:
                row = quality(variant, minutes, rate, out)
                recorded["quality"][f"{variant}/{minutes:g}"] = {**row, "command": command, "recorded": stamp}
                raw.write_text(json.dumps(recorded, indent=1) + "\n")
    if "throughput" in args.parts:
        recorded["throughput"] = {
            **throughput(args.throughput_variant, args.throughput_steps, 2, out),
            "command": command,
            "recorded": stamp,
        }
        raw.write_text(json.dumps(recorded, indent=1) + "\n")
    section = render(recorded)
    print("\n" + section)
    if raw == RAW:
        write_section(SECTION, section)


if __name__ == "__main__":
    main()
