"""The `hftk` command: train, evaluate, predict, demo, push and list recipes, for every registered task.

Usage:
    hftk train TASK_ID|RECIPE.yaml [KEY=VALUE ...] [--output-dir runs/mine] [--resume | --overwrite]
    hftk check TASK_ID|RECIPE.yaml [KEY=VALUE ...]                  (preflight: one real step, memory)
    hftk search TASK_ID|RECIPE.yaml --trials N [--space space.yaml] [KEY=VALUE ...]   (Optuna, a run per trial)
    hftk evaluate RUN_DIR [--split validation]
    hftk predict RUN_DIR INPUT... [--json] [--OPTION VALUE ...]     (options: the run's task's own)
    hftk chat RUN_DIR [--OPTION VALUE ...]                          (tasks with an interactive mode)
    hftk demo RUN_DIR [--host 127.0.0.1] [--port 7860]
    hftk push RUN_DIR --repo-id user/name [--private | --public] [--revision BRANCH] [--commit-message MSG]
    hftk export RUN_DIR --format onnx [--out DIR]                   (ONNX + parity check vs PyTorch)
    hftk merge RUN_DIR OUT_DIR                                      (adapter + base -> a full model)
    hftk space RUN_DIR OUT_DIR [--model-id user/name]               (a Gradio Space folder)
    hftk recipes [--keys [TASK_ID]]
    accelerate launch -m hftk train RECIPE      (many processes / GPUs)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from hftk.errors import HftkError


def _train(args: argparse.Namespace) -> int:
    from hftk.config import load_recipe
    from hftk.evaluation import metrics_table, read_metrics
    from hftk.tasks import get_task
    from hftk.training import train

    recipe = load_recipe(args.recipe, args.overrides)
    output_dir = Path(args.output_dir or Path("runs") / recipe.name)
    run_dir = train(recipe, output_dir, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = read_metrics(run_dir)
        print(f"\n{recipe.name}: {recipe.eval.split} split ({metrics.get('num_examples', '?')} examples)")
        print(metrics_table(metrics, get_task(recipe.task).headline))
        print(f"\nrun folder: {run_dir}  (report: {run_dir / 'eval' / 'report.md'})")
        print(f"open the demo:  hftk demo {run_dir}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from hftk.search import SearchSettings, search

    settings = SearchSettings(
        args.recipe, args.overrides, args.trials, args.space, args.output_dir, args.overwrite, args.seed
    )
    folder = search(settings)
    print((folder / "report.md").read_text())
    if (folder / "best.yaml").is_file():
        print(f"best recipe: {folder / 'best.yaml'}  (train it again: hftk train {folder / 'best.yaml'})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from hftk.config import load_recipe
    from hftk.preflight import check, format_report

    report = check(load_recipe(args.recipe, args.overrides))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(report) if args.json else format_report(report))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from hftk.evaluation import metrics_table
    from hftk.runs import evaluate_run, load_run

    metrics = evaluate_run(args.run_dir, args.split)
    print(metrics_table(metrics, load_run(args.run_dir)[1].headline))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from hftk.runs import load_run
    from hftk.tasks.contract import parse_predict_options

    _, task = load_run(args.run_dir)
    options = parse_predict_options(task.task, _option_pairs(args.options), task.predict)
    stream = None if args.json else sys.stdout  # people read results as they come; --json prints objects
    results = task.predict(Path(args.run_dir), args.inputs, stream=stream, **options)
    if args.json:
        for result in results:
            print(json.dumps(result))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from hftk.runs import load_run
    from hftk.tasks.contract import parse_predict_options

    _, task = load_run(args.run_dir)
    if task.chat is None:
        raise HftkError(
            f"{args.run_dir}: {task.task} runs have no interactive mode; use `hftk predict` or `hftk demo`"
        )
    options = parse_predict_options(task.task, _option_pairs(args.options), task.chat)
    task.chat(Path(args.run_dir), input_fn=input, output=sys.stdout, **options)
    return 0


def _option_pairs(tokens: list[str]) -> dict[str, str]:
    """``["--top-k", "3", "--json-like=x"]`` -> ``{"top_k": "3", ...}``: the task's own predict options."""
    pairs, key = {}, None
    for token in tokens:
        if token.startswith("--"):
            name, sep, value = token[2:].partition("=")
            key = name.replace("-", "_")
            pairs[key] = value if sep else ""
            if sep:
                key = None
        elif key is not None and pairs[key] == "":
            pairs[key], key = token, None
        else:
            raise HftkError(f"predict: unexpected argument '{token}' after the options; inputs come first")
    return pairs


def _predict_epilog() -> str:
    """Each task's predict options, read from its ``predict`` signature (so this module names no task)."""
    from hftk.tasks import TASKS, get_task
    from hftk.tasks.contract import predict_options

    lines = ["options by the run's task (--name value):"]
    for task_id in TASKS:
        options = predict_options(get_task(task_id).predict)
        shown = ", ".join(f"--{k.replace('_', '-')} ({d})" for k, (_, d) in options.items()) or "none"
        lines.append(f"  {task_id}: {shown}")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from hftk.demos import launch

    launch(args.run_dir, host=args.host, port=args.port)
    return 0


def _push(args: argparse.Namespace) -> int:
    from hftk.hub import push_run
    from hftk.runs import load_run_recipe

    recipe = load_run_recipe(args.run_dir)
    private = recipe.hub.private if args.private is None else args.private
    url = push_run(
        Path(args.run_dir),
        args.repo_id or recipe.hub.model_id,
        private=private,
        revision=args.revision,
        commit_message=args.commit_message,
        include_checkpoints=args.include_checkpoints,
    )
    print(url)
    return 0


def _export(args: argparse.Namespace) -> int:
    from hftk.export import export_run

    report = export_run(Path(args.run_dir), args.format, Path(args.out) if args.out else None, args.batch_size)
    out = Path(args.out) if args.out else Path(args.run_dir) / "onnx"
    print(
        "| graph | error / scale (tolerance) | max abs error | onnx ms b1 | torch ms b1 | onnx ms b32 | torch ms b32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for g in report["graphs"]:
        print(
            f"| {g['file']} | {g['max_error']:.1e} ({g['tolerance']:.0e}) | {g['max_abs_error']:.1e} | "
            f"{g['onnx_ms_batch1']} | {g['torch_ms_batch1']} | {g['onnx_ms_batch32']} | {g['torch_ms_batch32']} |"
        )
    print(f"\nexport folder: {out}  (report: {out / 'export.json'})")
    return 0


def _merge(args: argparse.Namespace) -> int:
    import transformers

    from hftk.evaluation import read_metrics
    from hftk.hub import write_model_card
    from hftk.models.adapters import merge_run
    from hftk.runs import load_run, load_run_recipe

    _, task = load_run(args.run_dir, need_model=False)
    auto_model = task.facts(_model_config(Path(args.run_dir))).auto_model  # this run's kind of model
    out = merge_run(Path(args.run_dir), Path(args.out_dir), getattr(transformers, auto_model))
    write_model_card(out, load_run_recipe(out), read_metrics(out))
    print(f"merged model written to {out}; it loads with {auto_model}.from_pretrained('{out}')")
    return 0


def _model_config(run_dir: Path):
    from transformers import AutoConfig

    name = "model_config.json" if (run_dir / "model_config.json").is_file() else "config.json"
    return AutoConfig.from_pretrained(str(run_dir / name)) if (run_dir / name).is_file() else None


def _space(args: argparse.Namespace) -> int:
    from hftk.space import write_space

    out = write_space(Path(args.run_dir), Path(args.out_dir), model_id=args.model_id, overwrite=args.overwrite)
    print(f"Space written to {out}; try it with `python {out / 'app.py'}`, publish it with")
    print(f"  hf upload <user>/<space-name> {out} --repo-type space")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from hftk.config import RECIPES_DIR, describe_keys
    from hftk.tasks import TASKS, get_task

    if args.keys is not None:
        task_ids = [args.keys] if args.keys else list(TASKS)
        for task_id in task_ids:
            spec = get_task(task_id)
            print(f"# keys of task {task_id} (also offers: {', '.join(spec.offers()) or 'nothing more'})")
            for key, default, help_text in describe_keys(spec):
                print(f"  {key:38} {default:14} {help_text}")
        return 0
    for path in sorted(RECIPES_DIR.glob("*/*.yaml")):
        if path.parent.name == "accelerate":
            continue
        print(f"{str(path.relative_to(RECIPES_DIR.parent)):58} {_description(path)}")
    return 0


def _description(recipe: Path) -> str:
    """A recipe's opening comment (the lines before its ``# Run:`` line), as one line."""
    lines = []
    for line in recipe.read_text().splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or text.startswith(("Run:", "Try:")):
            break
        lines.append(text)
    return " ".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hftk", description="Train, evaluate, demo and publish Hugging Face models.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe", epilog="Every recipe key: `hftk recipes --keys`.")
    p.add_argument("recipe", help="recipe YAML path or task id (its default recipe)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=20")
    p.add_argument("--output-dir", help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=_train)

    p = sub.add_parser("check", help="preflight: build data and model, run one training step, estimate memory")
    p.add_argument("recipe", help="recipe YAML path or task id (its default recipe)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as for train")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_check)

    p = sub.add_parser(
        "search",
        help="search recipe keys with Optuna: a run folder per trial, report.md and the best recipe",
        epilog="space.yaml: `train.learning_rate: {low: 1e-4, high: 1e-2, log: true}` or `model.peft.r: [4, 8, 16]`.",
    )
    p.add_argument("recipe", help="recipe YAML path or task id (its default recipe)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides every trial gets")
    p.add_argument("--trials", type=int, required=True, help="how many trials (runs) to train")
    p.add_argument("--space", help="YAML of the keys to search (default: learning rate, weight decay, warmup, LoRA r)")
    p.add_argument("--output-dir", help="search folder (default: runs/<recipe name>-search)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing search folder")
    p.add_argument("--seed", type=int, default=42, help="seed of the TPE sampler")
    p.set_defaults(func=_search)

    p = sub.add_parser("evaluate", help="evaluate a run's model and write eval/")
    p.add_argument("run_dir")
    p.add_argument("--split", help="train, validation or test (default: the recipe's eval.split)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "predict",
        help="predict with a run's model",
        usage="hftk predict RUN_DIR INPUT... [--json] [--OPTION VALUE ...]",
        epilog=_LazyText(_predict_epilog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="what the run's task takes: files, folders or text")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_predict, options_allowed=True)

    p = sub.add_parser(
        "chat",
        help="talk with a run's model in the terminal (tasks with an interactive mode)",
        usage="hftk chat RUN_DIR [--OPTION VALUE ...]",
    )
    p.add_argument("run_dir")
    p.set_defaults(func=_chat, options_allowed=True)

    p = sub.add_parser("demo", help="open the run's Gradio demo")
    p.add_argument("run_dir")
    p.add_argument("--host", help="interface to bind (default: the recipe's demo.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the recipe's demo.port or the first free from 7860)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("push", help="upload a run folder to the Hugging Face Hub")
    p.add_argument("run_dir")
    p.add_argument("--repo-id", help="user/name (default: the recipe's hub.model_id)")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=None, help="a private repo")
    visibility.add_argument("--public", dest="private", action="store_false", help="a public repo")
    p.add_argument("--revision", help="branch to push to (created when missing; default: main)")
    p.add_argument("--commit-message", help="commit message (default: 'Upload <run> with hftk')")
    p.add_argument("--include-checkpoints", action="store_true", help="also upload checkpoint-* folders")
    p.set_defaults(func=_push)

    p = sub.add_parser("export", help="export a run's model (ONNX) and check it against PyTorch")
    p.add_argument("run_dir")
    p.add_argument("--format", default="onnx", help="export format (supported: onnx)")
    p.add_argument("--out", help="export folder (default: RUN_DIR/onnx)")
    p.add_argument("--batch-size", type=int, default=8, help="test-split examples the parity check runs on")
    p.set_defaults(func=_export)

    p = sub.add_parser("merge", help="merge a run's PEFT adapter into its base: a full model folder")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.set_defaults(func=_merge)

    p = sub.add_parser("space", help="write a Gradio Space (app.py, requirements, README, model) for a run")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--model-id", help="serve this pushed Hub repo instead of bundling the run folder")
    p.add_argument("--overwrite", action="store_true", help="replace a Space folder hftk wrote before")
    p.set_defaults(func=_space)

    p = sub.add_parser("recipes", help="list shipped recipes, or document every recipe key")
    p.add_argument("--keys", nargs="?", const="", metavar="TASK", help="document recipe keys (of TASK, or all)")
    p.set_defaults(func=_recipes)
    return parser


class _LazyText(str):
    """An argparse epilog computed only when help is shown (it imports the tasks)."""

    def __new__(cls, make):
        obj = super().__new__(cls, "")
        obj.make = make
        return obj

    def __str__(self) -> str:
        return self.make()

    def expandtabs(self, tabsize: int = 8) -> str:  # argparse's RawDescriptionHelpFormatter calls this
        return self.make().expandtabs(tabsize)


def configure_openmp() -> None:
    """A short OpenMP spin-wait, set before torch loads OpenMP (so here, at the start of the command).

    OpenMP threads that spin for long while waiting turn any other busy process into a 10x slowdown on a small
    machine. Measured here on 2 cores, test_resnet training at 2 threads, images/s (idle / one busy neighbour):
    libgomp's default 1240 / 51, OMP_WAIT_POLICY=PASSIVE 940 / 550, GOMP_SPINCOUNT=10000 1240 / 450. A user's own
    OMP_WAIT_POLICY or GOMP_SPINCOUNT wins. Only hftk's own processes get it, not programs importing hftk.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def main(argv: list[str] | None = None) -> int:
    configure_openmp()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if isinstance(getattr(args, "overrides", None), list):  # KEY=VALUE after an option: argparse stops at the option
        moved = [item for item in extra if "=" in item and not item.startswith("-")]
        args.overrides += moved
        extra = [item for item in extra if item not in moved]
    if extra and not getattr(args, "options_allowed", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = extra
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # bitsandbytes (QLoRA), imported by peft on every command, warns that an optional CPU kernel package is missing;
    # it falls back to its own code, so the line only alarms
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if args.quiet:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported
    try:
        if args.command != "recipes":  # commands that build or load models: transformers knows hftk's types
            from hftk.models.registration import register

            register()
        return args.func(args)
    except HftkError as err:
        print(f"hftk: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hftk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
