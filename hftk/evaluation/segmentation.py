"""Semantic-segmentation evaluation: mean IoU, per-class IoU and pixel accuracy on a split (hftk's shipped
``mean_iou`` module, evaluate's own metric), with masks predicted exactly as ``pipeline("image-segmentation")`` makes
them, at each image's own size; and the pictures that say what the numbers mean: a per-class IoU chart and overlays
(image, truth, prediction side by side) of the best and the worst images.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
from PIL import Image, ImageDraw

from hftk.data.images import to_rgb
from hftk.data.segmentation import LabelSpace, read_mask
from hftk.evaluation import eval_dir, load_metric, plot_learning_curves, write_metrics
from hftk.evaluation import write_report as write_report_file

logger = logging.getLogger(__name__)

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
PALETTE += [(240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]
UNCOLOURED = ("background", "unlabeled", "unlabelled")  # left as they are in an overlay
IGNORED = (255, 255, 255)  # pixels of ignore_index in a truth overlay


def colours(names: list[str]) -> list[tuple[int, int, int] | None]:
    """A colour per class (None: not drawn); the palette first, then fixed colours from the class index."""
    out: list[tuple[int, int, int] | None] = []
    k = 0
    for i, name in enumerate(names):
        if name.lower() in UNCOLOURED:
            out.append(None)
            continue
        rng = np.random.default_rng(i)
        out.append(PALETTE[k] if k < len(PALETTE) else tuple(int(v) for v in rng.integers(40, 256, 3)))
        k += 1
    return out


@torch.no_grad()
def segment(model: Any, processor: Any, images: list[Image.Image]) -> list[np.ndarray]:
    """Each image's class map at its own size, as ``pipeline("image-segmentation")`` makes it: the processor, the
    model, ``post_process_semantic_segmentation`` (bilinear logits to the image's size, then argmax). Images of one
    size go through the model together, which changes no image's preprocessing."""
    maps: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.size, []).append(i)
    for indices in by_size.values():
        batch = [images[i] for i in indices]
        inputs = processor(images=batch, return_tensors="pt")
        outputs = model(pixel_values=inputs["pixel_values"].to(model.device, model.dtype))
        sizes = [(im.height, im.width) for im in batch]
        for i, found in zip(indices, processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)):
            maps[i] = found.cpu().numpy()
    return maps


AREAS = ("area_intersect", "area_union", "area_prediction", "area_reference")


class IoUTotals:
    """Per-class pixel counts summed batch by batch (hftk's shipped ``mean_iou`` counts each batch), so a split is
    scored without holding its masks; ``result`` is what the metric gives on the whole split at once."""

    def __init__(self, names: list[str], ignore_index: int):
        self.names = names
        self.ignore_index = ignore_index
        self.areas = np.zeros((len(AREAS), len(names)))

    def add(self, predictions: list, references: list) -> dict[str, Any]:
        """Count a batch of class maps; returns the metric on that batch alone."""
        result = load_metric("mean_iou").compute(
            predictions=predictions,
            references=references,
            num_labels=len(self.names),
            ignore_index=self.ignore_index,
            return_areas=True,
        )
        self.areas += np.stack([result[k] for k in AREAS])
        return result

    def result(self) -> dict[str, Any]:
        """Flat keys: mean_iou, pixel_accuracy, mean_accuracy, iou_<class> and accuracy_<class> (None for a class
        absent from both the references and the predictions)."""
        intersect, union, _, reference = self.areas
        with np.errstate(divide="ignore", invalid="ignore"):
            iou, accuracy = intersect / union, intersect / reference
        present = ~np.isnan(iou)
        metrics = {
            "mean_iou": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_accuracy": float(intersect.sum() / max(1.0, reference.sum())),
            "mean_accuracy": float(np.nanmean(accuracy)) if (~np.isnan(accuracy)).any() else 0.0,
        }
        for name, i, a in zip(self.names, iou, accuracy):
            metrics[f"iou_{name}"] = None if np.isnan(i) else float(i)
            metrics[f"accuracy_{name}"] = None if np.isnan(a) else float(a)
        return metrics


def evaluate_segmenter(
    run_dir: Path, recipe: Any, split: str, model: Any, processor: Any, data: Any, labels: LabelSpace
) -> dict[str, Any]:
    """Score ``data`` (iterated in batches, never loaded whole) and write everything under ``eval/``."""
    out = eval_dir(run_dir, split, recipe.eval.split)
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    totals = IoUTotals(names, labels.ignore_index)
    per_image = score_images(model, processor, data, labels, totals, recipe.eval.batch_size, split)
    metrics = totals.result()
    metrics.update(split=split, num_examples=len(per_image))
    write_metrics(out, metrics)
    plot_class_iou(metrics, names, out / "class_iou.png")
    plot_learning_curves(run_dir, out / "learning_curves.png", "mean_iou")
    ranked = sorted(per_image, key=lambda r: (r["mean_iou"], r["index"]))

    def triple(i: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        row = data[int(i)]
        image = to_rgb(row["image"])
        return image, read_mask(row["mask"], labels, f"{split} row {i}"), segment(model, processor, [image])[0]

    n = min(recipe.eval.overlays, len(ranked))
    # the best among images holding two classes or more: one class alone (a negative) is trivially right
    busy = [r for r in ranked if r["classes"] > 1] or ranked
    draw_overlays(triple, [r["index"] for r in busy[::-1][:n]], names, labels.ignore_index, out / "best.png")
    draw_overlays(triple, [r["index"] for r in ranked[:n]], names, labels.ignore_index, out / "worst.png")
    if split == recipe.eval.split:
        save_examples(lambda i: to_rgb(data[int(i)]["image"]), len(data), run_dir / "eval" / "examples", recipe)
    write_report(out / "report.md", recipe, metrics, names, ranked[: recipe.eval.worst_examples])
    logger.info("%s on %s: %s", recipe.name, split, {k: round(metrics[k], 4) for k in ("mean_iou", "pixel_accuracy")})
    return metrics


def score_images(model, processor, data, labels: LabelSpace, totals: IoUTotals, batch_size: int, split: str):
    """Predict every image of ``data`` and count it into ``totals``; per image: its index, its own mean IoU and how
    many classes its truth holds."""
    per_image = []
    for start, batch in zip(range(0, len(data), batch_size), data.iter(batch_size)):
        predicted = segment(model, processor, [to_rgb(im) for im in batch["image"]])
        truths = [read_mask(m, labels, f"{split} row {start + k}") for k, m in enumerate(batch["mask"])]
        for k, (p, t) in enumerate(zip(predicted, truths)):
            score = float(np.nan_to_num(totals.add([p], [t])["mean_iou"], nan=1.0))  # NaN: all pixels ignored
            classes = len(set(np.unique(t).tolist()) - {labels.ignore_index})
            per_image.append({"index": start + k, "mean_iou": round(score, 4), "classes": classes})
    return per_image


def overlay(image: Image.Image, label_map: np.ndarray, names: list[str], ignore_index: int | None = None):
    """``image`` with each class's pixels tinted its colour (half opacity), ignored pixels white."""
    pixels = np.asarray(to_rgb(image), np.float32).copy()
    for index, colour in enumerate(colours(names)):
        if colour is not None:
            where = label_map == index
            pixels[where] = 0.5 * pixels[where] + 0.5 * np.array(colour, np.float32)
    if ignore_index is not None:
        pixels[label_map == ignore_index] = IGNORED
    return Image.fromarray(pixels.round().astype(np.uint8))


def draw_overlays(triple: Callable, indices: list[int], names: list[str], ignore_index: int, path: Path) -> None:
    """One row per image: the image, its truth and the prediction (each tile 192 px wide), captioned, under a legend
    of the class colours."""
    if not indices:
        return
    rows = []
    for i in indices:
        image, truth, predicted = triple(i)
        tiles = [image, overlay(image, truth, names, ignore_index), overlay(image, predicted, names)]
        height = max(1, round(192 * image.height / image.width))
        rows.append([t.resize((192, height), Image.Resampling.NEAREST) for t in tiles])
    head = 16
    grid = Image.new("RGB", (3 * 194, head + sum(r[0].height + head for r in rows)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    x = 2
    for name, colour in zip(names, colours(names)):  # the legend: as many classes as fit on one line
        width = draw.textlength(name) + 18
        if colour is None or x + width > grid.width:
            continue
        draw.rectangle([x, 3, x + 10, 13], fill=colour)
        draw.text((x + 13, 2), name, fill=(0, 0, 0))
        x += width
    y = head
    for i, row in zip(indices, rows):
        for k, (tile, caption) in enumerate(zip(row, ("image", "truth", "prediction"))):
            draw.text((k * 194 + 2, y + 2), f"#{i} {caption}" if k == 0 else caption, fill=(0, 0, 0))
            grid.paste(tile, (k * 194, y + head))
        y += row[0].height + head
    grid.save(path)


def plot_class_iou(metrics: dict, names: list[str], path: Path) -> None:
    """A horizontal bar per class (at most the 30 worst and 30 best of a long list), the mean as a line."""
    scored = [(n, metrics[f"iou_{n}"]) for n in names if metrics.get(f"iou_{n}") is not None]
    scored.sort(key=lambda item: item[1])
    if len(scored) > 60:
        scored = scored[:30] + scored[-30:]
    fig = Figure(figsize=(6, 1.2 + 0.28 * max(1, len(scored))))
    ax = fig.subplots()
    ax.barh(range(len(scored)), [v for _, v in scored], color="tab:blue")
    ax.set_yticks(range(len(scored)), [n for n, _ in scored], fontsize=8)
    ax.axvline(metrics["mean_iou"], color="tab:red", linestyle="--", label=f"mean IoU {metrics['mean_iou']:.3f}")
    ax.set(xlim=(0, 1), xlabel="IoU", title="IoU per class")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_examples(image_at: Callable, count: int, out: Path, recipe: Any) -> None:
    """The first ``demo.examples`` images of the split, for the demo's examples and `example_inputs`."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for i in range(min(recipe.demo.examples, count)):
        image_at(i).save(out / f"{i:05d}.png")


def write_report(path: Path, recipe: Any, metrics: dict, names: list[str], worst: list[dict]) -> None:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    per_class = ["| class | IoU | accuracy |", "|---|---|---|"]
    per_class += [f"| {n} | {cell(metrics[f'iou_{n}'])} | {cell(metrics[f'accuracy_{n}'])} |" for n in names]
    title = f"Evaluation of {recipe.name} on the {metrics['split']} split ({metrics['num_examples']} images)"
    intro = [
        "Pixels counted over the whole split (evaluate's mean_iou): IoU per class, its mean over the classes present "
        "(mean_iou), the share of pixels right (pixel_accuracy) and the mean of per-class accuracies (mean_accuracy). "
        f"Pixels of {recipe.data.ignore_index} (data.ignore_index) count nowhere; masks are predicted at each "
        "image's own size, as pipeline('image-segmentation') predicts them."
    ]
    body = [
        "## Per class",
        "",
        *per_class,
        "",
        "![IoU per class](class_iou.png)",
        "",
        "## Best images holding two classes or more (image, truth, prediction)",
        "",
        "![best](best.png)",
    ]
    rows = [f"- #{w['index']}: mean IoU {w['mean_iou']:.3f}" for w in worst]
    write_report_file(path, title, intro, metrics, ["mean_iou", "pixel_accuracy", "mean_accuracy"], body,
                      ("Worst images (image, truth, prediction)", rows, "worst.png"))  # fmt: skip
