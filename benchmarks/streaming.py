"""Training on a text file several times bigger than the memory allowed (issue 24): data.streaming vs in memory.

Usage:
    python benchmarks/streaming.py                      # a 4 GB file, 1 GB allowed for data (about 15 minutes)
    python benchmarks/streaming.py --size-gb 0.4 --limit-gb 0.1 --steps 40   # the same ratio, a quick check

A generated text file (Python's documentation paragraphs, reshuffled until the size is reached) is trained on by the
GPT recipe in a child process whose address space may grow by ``--limit-gb`` beyond what it holds once torch,
transformers, datasets and hftk are imported (``resource.setrlimit(RLIMIT_AS)``; the imports alone are about 5 GB of
address space and 1.1 GB resident here, so a limit on the whole process would measure the libraries, not the data).
Rows: streaming the big file and the in-memory loader on it, under the limit; the in-memory loader on the small file
under the limit; both loaders on the small file without a limit, for the memory the in-memory loader needs. Each row
gives the peak resident memory (``ru_maxrss``), training tokens per second (steps x batch x block over the Trainer's
train runtime, which includes reading and tokenizing) and the held-out bits per byte.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, markdown_table, write_section

RECIPE = "recipes/text-generation/gpt-python-docs.yaml"
BLOCK, BATCH = 128, 16


def write_corpus(path: Path, size: int, seed: int = 0) -> None:
    """``size`` bytes of paragraphs from Python's documentation, in a new random order each round."""
    from hftk.data.text import python_docs_text

    paragraphs = [p.strip() for p in python_docs_text().split("\n\n") if p.strip()]
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            rng.shuffle(paragraphs)
            chunk = "\n\n".join(paragraphs) + "\n\n"
            f.write(chunk)
            written += len(chunk.encode("utf-8"))


def overrides(path: Path, steps: int, streaming: bool) -> list[str]:
    common = [
        f"data.path={path}",
        "data.name=null",
        f"data.block_size={BLOCK}",
        f"train.per_device_train_batch_size={BATCH}",
        f"train.max_steps={steps}",
        f"train.eval_steps={steps}",
        f"train.save_steps={steps}",
        "train.load_best_model_at_end=false",
        "eval.dynamic_lr=null",
        "data.max_eval_samples=200",
        "budget.minutes=null",
    ]
    if streaming:  # the in-memory loader splits a single file by bytes (test_size, validation_size)
        return [*common, "data.streaming=true", "data.holdout_documents=200"]
    return common


def child(spec: dict) -> dict:
    """Runs in the child process: import everything, then limit the address space, then train."""
    import resource

    import psutil

    import hftk.tasks.text_generation  # noqa: F401  (imported before the limit: libraries are not the data)
    from hftk.config import load_recipe
    from hftk.training import train

    base = psutil.Process().memory_info()
    if spec["limit_gb"] is not None:
        limit = base.vms + int(spec["limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    started = time.perf_counter()
    try:
        run = train(load_recipe(RECIPE, spec["overrides"]), spec["out"], overwrite=True)
    except MemoryError:
        return {"failed": "MemoryError", "seconds": time.perf_counter() - started, "base_rss": base.rss}
    results = json.loads((run / "all_results.json").read_text())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "base_rss": base.rss,
        "tokens_per_s": results["train_steps"] * BATCH * BLOCK / results["train_runtime"],
        "bits_per_byte": metrics["bits_per_byte"],
        "seconds": time.perf_counter() - started,
    }


def measure(label: str, path: Path, streaming: bool, limit_gb: float | None, args: argparse.Namespace, out: Path):
    spec = {"overrides": overrides(path, args.steps, streaming), "limit_gb": limit_gb, "out": str(out)}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "TOKENIZERS_PARALLELISM": "false"}
    env["MALLOC_ARENA_MAX"] = "2"  # glibc reserves 64 MB of address space per thread arena otherwise
    env.setdefault("GOMP_SPINCOUNT", "10000")  # as the hftk command sets it (hftk/cli.py): a busy neighbour costs less
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"failed": _failure(proc)}
    result["label"] = label
    print(label, result, flush=True)
    return result


def _failure(proc: subprocess.CompletedProcess) -> str:
    """What stopped a child that printed no result: tokenizers (Rust) aborts on a failed allocation."""
    said = [ln for ln in proc.stderr.splitlines() if "memory allocation" in ln or "MemoryError" in ln]
    signal = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return f"{signal}: {said[-1].strip()[:80]}" if said else f"{signal}: {(proc.stderr.strip() or '?')[-80:]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gb", type=float, default=4.0, help="size of the big generated file")
    parser.add_argument("--limit-gb", type=float, default=1.0, help="address space allowed beyond the imports")
    parser.add_argument("--fits-mb", type=float, default=20.0, help="the file both loaders train on")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--workdir", help="where the files go (default: a temporary folder, deleted after)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory(prefix="hftk-stream-", dir=args.workdir) as name:
        folder = Path(name)
        big, small = folder / "big.txt", folder / "small.txt"
        started = time.perf_counter()
        write_corpus(big, int(args.size_gb * 1e9))
        write_corpus(small, int(args.fits_mb * 1e6), seed=1)
        print(f"corpus written in {time.perf_counter() - started:.0f} s", flush=True)
        limited, free = f"{args.limit_gb:g} GB", "no limit"
        rows = [
            measure(f"streaming, {args.size_gb:g} GB file, {limited}", big, True, args.limit_gb, args, folder / "a"),
            measure(f"in memory, {args.size_gb:g} GB file, {limited}", big, False, args.limit_gb, args, folder / "b"),
            measure(
                f"in memory, {args.fits_mb:g} MB file, {limited}", small, False, args.limit_gb, args, folder / "c"
            ),
            measure(f"streaming, {args.fits_mb:g} MB file, {free}", small, True, None, args, folder / "d"),
            measure(f"in memory, {args.fits_mb:g} MB file, {free}", small, False, None, args, folder / "e"),
        ]
    write_section("streaming", report(rows, args))


def report(rows: list[dict], args: argparse.Namespace) -> str:
    def gb(value: float | None) -> str:
        return f"{value / 2**30:.2f}" if value else "-"

    table = [
        [
            r["label"],
            r.get("failed") or "trained",
            gb(r.get("base_rss")),
            gb(r.get("peak_rss")),
            f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "-",
            f"{r['bits_per_byte']:.3f}" if "bits_per_byte" in r else "-",
            f"{r.get('seconds', 0):.0f}",
        ]
        for r in rows
    ]
    header = ["run", "result", "RSS after imports (GB)", "peak RSS (GB)", "train tokens/s", "bits/byte", "seconds"]
    return "\n".join(
        [
            "## Streaming: training on a file bigger than the memory allowed (data.streaming)",
            "",
            markdown_table(header, table),
            "",
            f"Recorded {machine()}; `python benchmarks/streaming.py --size-gb {args.size_gb:g} --limit-gb "
            f"{args.limit_gb:g} --fits-mb {args.fits_mb:g} --steps {args.steps}`. GPT recipe (4 layers, 128 wide),",
            f"block {BLOCK}, batch {BATCH}, {args.steps} steps, BPE on at most 20 MB. Each run is a child process;",
            f"a limited one may grow its address space {args.limit_gb:g} GB beyond its size once torch, transformers,",
            "datasets and hftk are imported (RLIMIT_AS; MALLOC_ARENA_MAX=2). Tokens/s count the Trainer's train",
            "runtime, reading and tokenizing included. Streaming holds out the first 200 paragraphs as test and the",
            "next 200 as validation; the in-memory loader cuts a single file by bytes (last 10% test), so bits/byte",
            "compare loosely. The corpus repeats Python's documentation paragraphs (reshuffled each round): its",
            "bits/byte are no quality figure. Rows run one after another, so other load on the machine moves their",
            "tokens/s apart; peak memory does not depend on it.",
        ]
    )


if __name__ == "__main__":
    main()
