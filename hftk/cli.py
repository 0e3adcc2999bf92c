"""The `hftk` command: train, evaluate, predict, demo, push and list recipes.

Usage:
    hftk train image-classification train.num_train_epochs=1
    hftk train recipes/image-classification/resnet-mnist.yaml --output-dir runs/mine [--resume | --overwrite]
    hftk evaluate runs/resnet-mnist [--split validation]
    hftk predict runs/resnet-mnist digit.png more_digits/ [--top-k 3] [--json]
    hftk demo runs/resnet-mnist [--host 127.0.0.1] [--port 7860]
    hftk push runs/resnet-mnist --repo-id user/mnist-resnet
    hftk recipes [--keys [TASK]]
    accelerate launch -m hftk train <recipe>      (many processes / GPUs)
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
        print(metrics_table(metrics, get_task(recipe.task).HEADLINE))
        print(f"\nrun folder: {run_dir}  (report: {run_dir / 'eval' / 'report.md'})")
        print(f"open the demo:  hftk demo {run_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from hftk.evaluation import evaluate_run, load_run_recipe, metrics_table
    from hftk.tasks import get_task

    metrics = evaluate_run(args.run_dir, args.split)
    task = get_task(load_run_recipe(args.run_dir).task)
    print(metrics_table(metrics, task.HEADLINE))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from hftk.evaluation import load_run_recipe, require_model
    from hftk.tasks import get_task

    recipe = load_run_recipe(args.run_dir)
    require_model(Path(args.run_dir))
    options = {k: getattr(args, k) for k in PREDICT_OPTIONS if getattr(args, k) is not None}
    if not args.json:
        options["stream"] = sys.stdout  # tasks that generate text stream tokens as they come
    results = get_task(recipe.task).predict(args.run_dir, args.inputs, **options)
    for result in results:
        if args.json:
            print(json.dumps(result))
        elif "predictions" in result:
            preds = ", ".join(f"{p['label']} ({p['score']:.3f})" for p in result["predictions"])
            print(f"{result['input']}: {preds}")
    return 0


# Options of `hftk predict`, passed to the task's predict() when given (each task documents its own).
PREDICT_OPTIONS = ("top_k", "max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed")


def _demo(args: argparse.Namespace) -> int:
    from hftk.demos import launch

    launch(args.run_dir, host=args.host, port=args.port)
    return 0


def _push(args: argparse.Namespace) -> int:
    from hftk.evaluation import load_run_recipe
    from hftk.hub import push_run

    recipe = load_run_recipe(args.run_dir)
    url = push_run(Path(args.run_dir), args.repo_id or recipe.hub.model_id, private=not args.public)
    print(url)
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from hftk.config import RECIPES_DIR, describe_keys
    from hftk.tasks import TASKS, get_task

    if args.keys is not None:
        task_ids = [args.keys] if args.keys else list(TASKS)
        for task_id in task_ids:
            print(f"# keys of task {task_id}")
            for key, default, help_text in describe_keys(get_task(task_id)):
                print(f"  {key:38} {default:14} {help_text}")
        return 0
    for path in sorted(RECIPES_DIR.glob("*/*.yaml")):
        if path.parent.name == "accelerate":
            continue
        first = next((ln for ln in path.read_text().splitlines() if ln.startswith("#")), "#").lstrip("# ").strip()
        print(f"{str(path.relative_to(RECIPES_DIR.parent)):58} {first}")
    return 0


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

    p = sub.add_parser("evaluate", help="evaluate a run's model and write eval/")
    p.add_argument("run_dir")
    p.add_argument("--split", help="train, validation or test (default: the recipe's eval.split)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="predict with a run's model")
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders; prompts for text tasks")
    p.add_argument("--top-k", type=int, help="labels per image (default 5); for text: top-k sampling")
    p.add_argument("--max-new-tokens", type=int, help="text: tokens to generate")
    p.add_argument("--temperature", type=float, help="text: sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, help="text: nucleus sampling probability mass")
    p.add_argument("--repetition-penalty", type=float, help="text: penalty for repeated tokens (1: none)")
    p.add_argument("--seed", type=int, help="text: sampling seed, for repeatable samples")
    p.add_argument("--json", action="store_true", help="one JSON object per line (no streaming)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("demo", help="open the run's Gradio demo")
    p.add_argument("run_dir")
    p.add_argument("--host", help="interface to bind (default: the recipe's demo.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the recipe's demo.port or the first free from 7860)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("push", help="upload a run folder to the Hugging Face Hub")
    p.add_argument("run_dir")
    p.add_argument("--repo-id", help="user/name (default: the recipe's hub.model_id)")
    p.add_argument("--public", action="store_true", help="create a public repo (default: private)")
    p.set_defaults(func=_push)

    p = sub.add_parser("recipes", help="list shipped recipes, or document every recipe key")
    p.add_argument("--keys", nargs="?", const="", metavar="TASK", help="document recipe keys (of TASK, or all)")
    p.set_defaults(func=_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except HftkError as err:
        print(f"hftk: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hftk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
