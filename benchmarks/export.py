"""ONNX export of each task's default model: parity with PyTorch and CPU latency at batch 1 and 32 (issue 13).

Usage:
    python benchmarks/export.py [--tasks image-classification text-generation ...]

Each task that can be exported trains its default recipe for a few fixed steps (the weights' quality does not
matter for latency or parity), then `hftk export` runs: ONNX Runtime vs PyTorch on test-split inputs within the
graph's tolerance, and the median latency of both on this CPU with the same threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import machine, markdown_table, train_run, write_section


def _models(task_id: str) -> list[tuple[str, list[str]]]:
    """(label, overrides) of the models exported for a task: its default; for detection also a Conditional DETR of
    the same size, whose graph takes a dynamic batch (RT-DETR's is traced at batch 1 and run once per image)."""
    if task_id != "object-detection":
        return [("default", [])]
    from object_detection import ARCHS

    return [("default", []), ("conditional_detr", ARCHS["conditional_detr"])]


def main() -> None:
    from hftk.errors import HftkError
    from hftk.export import export_run
    from hftk.tasks import TASKS, get_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument(
        "--run",
        nargs="*",
        default=[],
        metavar="TASK=RUN_DIR",
        help="export this trained run as the task's default instead of 10 steps (an untrained RT-DETR scores many "
        "queries alike, and ONNX Runtime may pick others among the ties)",
    )
    args = parser.parse_args()
    trained = dict(item.split("=", 1) for item in args.run)
    rows = [
        [t, Path(get_task(t).default_recipe).stem, "not exported: the task has no ONNX graphs yet", *["-"] * 7]
        for t in args.tasks
        if get_task(t).onnx_graphs is None
    ]
    args.tasks = [t for t in args.tasks if get_task(t).onnx_graphs is not None]
    with tempfile.TemporaryDirectory(prefix="hftk-export-") as folder:
        for task_id, (label, model) in [(t, m) for t in args.tasks for m in _models(t)]:
            task = get_task(task_id)
            name = Path(task.default_recipe).stem + ("" if label == "default" else f" + model.name={label}")
            run = Path(folder) / f"{task_id}-{label}"
            steps = [
                *model,
                "train.max_steps=10",
                "train.eval_strategy=no",
                "train.save_strategy=no",
                "budget.minutes=null",
                "train.load_best_model_at_end=false",
            ]
            if label == "default" and task_id in trained:
                run, name = Path(trained[task_id]), f"{name} (trained: {trained[task_id]})"
            else:
                train_run(str(task.default_recipe), steps, run)
            try:
                report = export_run(run)
            except HftkError as err:
                rows.append([task_id, name, f"refused: {err}", *["-"] * 7])
                continue
            for graph in report["graphs"]:
                rows.append(
                    [
                        task_id,
                        name,
                        graph["file"],
                        f"{graph['max_error']:.1e} ({graph['tolerance']:.0e})",
                        graph["torch_ms_batch1"],
                        graph["onnx_ms_batch1"],
                        f"{graph['torch_ms_batch1'] / graph['onnx_ms_batch1']:.1f}x",
                        graph["torch_ms_batch32"],
                        graph["onnx_ms_batch32"],
                        f"{graph['torch_ms_batch32'] / graph['onnx_ms_batch32']:.1f}x",
                    ]
                )
            answers = report.get("answers")
            if answers:  # chat: the graphs together, held to generate's greedy answers
                equal = f"greedy answers: {answers['equal']} of {answers['messages']} equal to generate's"
                speed = f"{answers['onnx_tokens_per_s'] / answers['torch_tokens_per_s']:.1f}x"
                tokens = [f"{answers['torch_tokens_per_s']} tok/s", f"{answers['onnx_tokens_per_s']} tok/s", speed]
                rows.append([task_id, name, equal, "-", *tokens, "-", "-", "-"])
            print(json.dumps(report["graphs"]), flush=True)
    header = [
        "task",
        "recipe",
        "graph",
        "error / output scale (tol.)",
        "torch ms b1",
        "onnx ms b1",
        "speed-up b1",
        "torch ms b32",
        "onnx ms b32",
        "speed-up b32",
    ]
    text = "\n".join(
        [
            "## Export: ONNX Runtime vs PyTorch on the CPU (median of 10 calls, same threads)",
            "",
            markdown_table(header, rows),
            "",
            f"Recorded {machine()}; `python benchmarks/export.py`. Parity on test-split inputs at the run's batch and",
            "at batch 1 (dynamic batch); text graphs score a window without a key/value cache. Chat graphs carry the",
            "key/value cache; their answers row times greedy decoding, one message at a time (b1 columns).",
        ]
    )
    print(text)
    write_section("export", text)


if __name__ == "__main__":
    main()
