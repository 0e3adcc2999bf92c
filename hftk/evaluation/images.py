"""Image-classification report pieces: confusion matrix, most confident mistakes, demo examples, report.md."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

from hftk.data.images import to_rgb
from hftk.evaluation import write_report as write_report_file


def plot_confusion_matrix(matrix: list[list[int]], names: list[str], out_png: Path) -> None:
    m = np.asarray(matrix)
    side = min(16, 2 + 0.45 * len(names))
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    ax.set(
        xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true", title="confusion matrix"
    )
    ax.set_xticklabels(names, rotation=90 if len(names) > 10 else 0)
    ax.set_yticklabels(names)
    if len(names) <= 30:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > m.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def write_worst_examples(
    image_at: Callable[[int], Any], refs: np.ndarray, probs: np.ndarray, names: list[str], out: Path, n: int
) -> list[dict]:
    """The ``n`` most confident mistakes as ``worst_examples.jsonl`` and a thumbnail grid PNG.

    ``image_at(i)`` gives image ``i`` of the split: only the few shown are decoded.
    """
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != refs)
    order = wrong[np.argsort(-probs[wrong, preds[wrong]])][:n]
    rows = [
        {
            "index": int(i),
            "true": names[refs[i]],
            "predicted": names[preds[i]],
            "confidence": round(float(probs[i, preds[i]]), 4),
        }
        for i in order
    ]
    (out / "worst_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not rows:
        return rows
    cols = min(8, len(rows))
    lines = (len(rows) + cols - 1) // cols
    fig = Figure(figsize=(1.7 * cols, 2.1 * lines + 0.5))
    axes = fig.subplots(lines, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.imshow(to_rgb(image_at(row["index"])))
        # one line per thumbnail: a two-line title of row 2 was hidden under row 1's images
        ax.set_title(f"{row['true']}→{row['predicted']} {row['confidence']:.2f}", fontsize=8, pad=3)
    fig.suptitle("most confident mistakes (true→predicted, confidence)", fontsize=9)
    fig.tight_layout(h_pad=1.2)
    fig.savefig(out / "worst_examples.png", dpi=100)
    return rows


def save_examples(image_at: Callable[[int], Any], refs: np.ndarray, names: list[str], out: Path, n: int) -> None:
    """A few test images, one class after another, for the demo's example gallery."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    chosen, seen = [], set()
    for i, label in enumerate(refs):  # first pass: one per class
        if label not in seen and len(chosen) < n:
            chosen.append(i)
            seen.add(label)
    chosen += [i for i in range(len(refs)) if i not in chosen][: max(0, n - len(chosen))]
    for i in chosen:
        to_rgb(image_at(i)).save(out / f"{i:05d}_{names[refs[i]]}.png".replace("/", "_"))


def write_report(
    path: Path, recipe: Any, metrics: dict, headline: list[str], names: list[str], worst: list[dict]
) -> None:
    per_class = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name in names:
        per_class.append(
            f"| {name} | {metrics[f'precision_{name}']:.3f} | {metrics[f'recall_{name}']:.3f} | "
            f"{metrics[f'f1_{name}']:.3f} | {metrics[f'support_{name}']} |"
        )
    mistakes = [
        f"- #{w['index']}: true {w['true']}, predicted {w['predicted']} ({w['confidence']:.2f})" for w in worst
    ]
    title = f"Evaluation of {recipe.name} on the {metrics['split']} split ({metrics['num_examples']} images)"
    body = ["## Per class", "", *per_class, "", "![confusion matrix](confusion_matrix.png)"]
    write_report_file(
        path, title, [], metrics, headline, body, ("Most confident mistakes", mistakes, "worst_examples.png")
    )
