"""Object-detection evaluation: COCO mAP on a split, batch by batch on the model's device, and the pictures that say
what the numbers mean: precision-recall curves per class, a confusion matrix with a background row and column, a
gallery of test images with true and predicted boxes, and the images with the most missed and false boxes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
from PIL import Image, ImageDraw
from transformers.utils import ModelOutput

from hftk.data.images import to_rgb
from hftk.evaluation import eval_dir, load_metric, plot_learning_curves, write_metrics
from hftk.evaluation import write_report as write_report_file

logger = logging.getLogger(__name__)

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
PALETTE += [(240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]
MATCH_IOU = 0.5  # a detection matches a true box of its class at this IoU (confusion matrix, missed/false counts)


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def post_process(processor: Any, logits: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> list[dict]:
    """Boxes in pixels of each image (``sizes``: height, width), best first, at most 100 per image (COCO's limit)."""
    outputs = ModelOutput(logits=logits.float(), pred_boxes=boxes.float())
    results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    kept = []
    for r in results:
        order = torch.argsort(r["scores"], descending=True)[:100]
        kept.append({k: r[k][order].cpu() for k in ("boxes", "scores", "labels")})
    return kept


def target_boxes(label: Any) -> dict:
    """A processed label (normalised cx, cy, w, h) back in pixels of the original image, as x1, y1, x2, y2."""
    from transformers.image_transforms import center_to_corners_format

    height, width = label["orig_size"].tolist()
    boxes = center_to_corners_format(label["boxes"].float().cpu().reshape(-1, 4))
    return {"boxes": boxes * torch.tensor([width, height, width, height]), "labels": label["class_labels"].cpu()}


def compute_map(predictions: list[dict], references: list[dict], names: list[str], pr_curves: bool = False) -> dict:
    """hftk's shipped detection metric on tensors (``{"boxes", "scores", "labels"}`` per image)."""

    def plain(item: dict) -> dict:
        return {k: v.tolist() for k, v in item.items()}

    return load_metric("detection").compute(
        predictions=[plain(p) for p in predictions],
        references=[plain(r) for r in references],
        class_names=names,
        pr_curves=pr_curves,
    )


@torch.no_grad()
def detect(model: Any, processor: Any, images: list[Image.Image]) -> list[dict]:
    """At most 100 boxes per image (x1, y1, x2, y2 in its pixels), best first, scores of every strength."""
    inputs = processor(images=images, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("pixel_values", "pixel_mask")}
    outputs = model(**inputs)
    sizes = torch.tensor([[im.height, im.width] for im in images])
    return post_process(processor, outputs.logits.cpu(), outputs.pred_boxes.cpu(), sizes)


@torch.no_grad()
def detect_like_pipeline(model: Any, processor: Any, images: list[Image.Image], threshold: float) -> list[list[dict]]:
    """What ``pipeline("object-detection")(image, threshold=...)`` returns for each image, run in batches.

    The pipeline runs one image at a time (and its batching cannot unbatch these models' outputs); this runs the
    same processor, model and ``post_process_object_detection`` on images of one size at a time, which changes no
    image's preprocessing. Boxes are ints, as the pipeline makes them.
    """
    names = model.config.id2label
    results: list[list[dict] | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.size, []).append(i)
    for indices in by_size.values():
        batch = [images[i] for i in indices]
        inputs = processor(images=batch, return_tensors="pt")
        inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("pixel_values", "pixel_mask")}
        outputs = model(**inputs)
        sizes = torch.tensor([[im.height, im.width] for im in batch])
        for i, found in zip(indices, processor.post_process_object_detection(outputs, threshold, sizes)):
            results[i] = [
                {"score": score, "label": names[label], "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box))}
                for score, label, box in zip(
                    found["scores"].tolist(), found["labels"].tolist(), found["boxes"].int().tolist()
                )
            ]
    return results


def truth(objects: dict) -> dict:
    """A split's ``objects`` (COCO x, y, w, h) as x1, y1, x2, y2 tensors."""
    boxes = torch.tensor(objects["bbox"], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return {"boxes": boxes, "labels": torch.tensor(objects["category"], dtype=torch.long)}


def evaluate_detector(
    run_dir: Path, recipe: Any, split: str, model: Any, processor: Any, data: Any, headline: list[str]
) -> dict[str, Any]:
    """Score ``data`` (iterated in batches, never loaded whole) and write everything under ``eval/``."""
    out = eval_dir(run_dir, split, recipe.eval.split)
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    predictions, references = [], []
    for batch in data.iter(batch_size=recipe.eval.batch_size):
        predictions += detect(model, processor, [to_rgb(im) for im in batch["image"]])
        references += [truth(objects) for objects in batch["objects"]]
    metrics = compute_map(predictions, references, names, pr_curves=True)
    curves = metrics.pop("pr_curves", {})
    metrics.update(split=split, num_examples=len(references), num_boxes=sum(len(r["labels"]) for r in references))
    matrix, per_image = confusion(predictions, references, len(names), recipe.eval.threshold)
    metrics["confusion_matrix"] = matrix.tolist()
    write_metrics(out, metrics)
    plot_pr_curves(curves, out / "pr_curves.png")
    plot_confusion(matrix, names, out / "confusion_matrix.png", recipe.eval.threshold)
    plot_learning_curves(run_dir, out / "learning_curves.png", "map")

    def image_at(i: int) -> Image.Image:
        return to_rgb(data[int(i)]["image"])

    shown = list(range(min(recipe.eval.gallery, len(references))))
    draw_grid(image_at, shown, predictions, references, names, recipe.eval.threshold, out / "gallery.png", "")
    worst = worst_images(per_image, recipe.eval.worst_examples)
    (out / "worst_images.jsonl").write_text("".join(json.dumps(w) + "\n" for w in worst))
    if worst:
        title = "most missed + false boxes (true: thin white, predicted: colour)"
        indices = [w["index"] for w in worst]
        draw_grid(
            image_at, indices, predictions, references, names, recipe.eval.threshold, out / "worst_images.png", title
        )
    if split == recipe.eval.split:
        save_examples(image_at, len(references), run_dir / "eval" / "examples", recipe.demo.examples)
    write_report(out / "report.md", recipe, metrics, headline, names, worst)
    logger.info("%s on %s: %s", recipe.name, split, {k: round(metrics[k], 4) for k in headline})
    return metrics


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou as iou

    if len(a) == 0 or len(b) == 0:
        return torch.zeros(len(a), len(b))
    return iou(a, b)


def match(pred: dict, ref: dict, threshold: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy matching, best score first, at IoU >= 0.5 whatever the class: (matched pairs, unmatched
    detections, unmatched true boxes). Detections below ``threshold`` are ignored."""
    keep = torch.nonzero(pred["scores"] >= threshold).flatten().tolist()
    iou = box_iou(pred["boxes"][keep], ref["boxes"])
    pairs, used = [], set()
    for row, k in enumerate(keep):
        candidates = [(float(iou[row, j]), j) for j in range(len(ref["labels"])) if j not in used]
        # prefer a true box of the same class, then the best overlap
        same = [(v, j) for v, j in candidates if v >= MATCH_IOU and ref["labels"][j] == pred["labels"][k]]
        any_class = [(v, j) for v, j in candidates if v >= MATCH_IOU]
        best = max(same or any_class, default=None)
        if best is not None:
            pairs.append((k, best[1]))
            used.add(best[1])
    matched = {k for k, _ in pairs}
    return pairs, [k for k in keep if k not in matched], [j for j in range(len(ref["labels"])) if j not in used]


def confusion(
    predictions: list[dict], references: list[dict], num_classes: int, threshold: float
) -> tuple[np.ndarray, list[dict]]:
    """The (K+1)x(K+1) matrix (rows: true class or background, columns: predicted) and per-image error counts."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    per_image = []
    for index, (pred, ref) in enumerate(zip(predictions, references)):
        pairs, false, missed = match(pred, ref, threshold)
        wrong_class = 0
        for k, j in pairs:
            t, p = int(ref["labels"][j]), int(pred["labels"][k])
            matrix[t, p] += 1
            wrong_class += t != p
        for k in false:
            matrix[num_classes, int(pred["labels"][k])] += 1
        for j in missed:
            matrix[int(ref["labels"][j]), num_classes] += 1
        per_image.append(
            {"index": index, "missed": len(missed), "false": len(false), "wrong_class": wrong_class,
             "boxes": len(ref["labels"])}
        )  # fmt: skip
    return matrix, per_image


def worst_images(per_image: list[dict], n: int) -> list[dict]:
    errors = [r for r in per_image if r["missed"] + r["false"] + r["wrong_class"]]
    return sorted(errors, key=lambda r: (-(r["missed"] + r["false"] + r["wrong_class"]), r["index"]))[:n]


def draw_detections(image: Image.Image, detections: list[dict], names: list[str] | None = None) -> Image.Image:
    """``image`` with boxes in the pipeline's format (``{"score", "label", "box": {xmin, ...}}``) drawn on it.

    Small images are enlarged first (at least 320 px wide) so that labels stay legible.
    """
    scale = max(1, round(320 / max(1, image.width)))
    canvas = to_rgb(image).resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    order = names or sorted({d["label"] for d in detections})
    for d in detections:
        box = [d["box"][k] * scale for k in ("xmin", "ymin", "xmax", "ymax")]
        c = colour(order.index(d["label"]) if d["label"] in order else 0)
        draw.rectangle(box, outline=c, width=2)
        text = f"{d['label']} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        y = box[1] - (bottom - top) - 2 if box[1] > bottom - top + 2 else box[1]
        draw.rectangle([box[0], y, box[0] + right - left + 2, y + bottom - top + 2], fill=c)
        draw.text((box[0] + 1, y), text, fill=(255, 255, 255))
    return canvas


def as_detections(pred: dict, names: list[str], threshold: float) -> list[dict]:
    """Post-processed tensors -> the pipeline's list of ``{"score", "label", "box"}`` (boxes as ints, as it does)."""
    rows = []
    for score, label, box in zip(pred["scores"].tolist(), pred["labels"].tolist(), pred["boxes"]):
        if score >= threshold:
            xmin, ymin, xmax, ymax = box.int().tolist()
            rows.append(
                {"score": score, "label": names[label], "box": dict(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax)}
            )
    return rows


def draw_grid(
    image_at, indices: list[int], predictions, references, names, threshold: float, path: Path, title: str
) -> None:
    """Images ``indices`` with their true boxes (thin white) and detections above ``threshold`` (class colours)."""
    if not indices:
        return
    tiles = []
    for i in indices:
        image = image_at(i)
        tile = draw_detections(image, as_detections(predictions[i], names, threshold), names)
        scale = tile.width / image.width
        draw = ImageDraw.Draw(tile)
        for box in references[i]["boxes"].tolist():
            draw.rectangle([v * scale for v in box], outline=(255, 255, 255), width=1)
        tiles.append(tile.resize((256, round(256 * tile.height / tile.width))))
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    head = 18 if title else 0
    grid = Image.new("RGB", (cols * 258, rows * (max(t.height for t in tiles) + 2) + head), (255, 255, 255))
    if title:
        ImageDraw.Draw(grid).text((4, 3), title, fill=(0, 0, 0))
    for k, tile in enumerate(tiles):
        grid.paste(tile, ((k % cols) * 258, head + (k // cols) * (tile.height + 2)))
    grid.save(path)


def plot_pr_curves(curves: dict[str, list[float]], path: Path) -> None:
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    recall = np.linspace(0, 1, 101)
    for k, (name, precision) in enumerate(curves.items()):
        p = np.asarray(precision)
        valid = p >= 0  # -1: recall level never reached
        ap = float(p[valid].sum() / len(p)) if valid.any() else 0.0
        ax.plot(recall[valid], p[valid], color=np.array(colour(k)) / 255, label=f"{name} (AP50 {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall at IoU 0.5")
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, threshold: float) -> None:
    labels = [*names, "background"]
    side = min(16, 3 + 0.5 * len(labels))
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true")
    ax.set_title(f"detections (score >= {threshold:g}, IoU >= {MATCH_IOU:g})", fontsize=9)
    ax.set_xticklabels(labels, rotation=90 if len(labels) > 8 else 0)
    ax.set_yticklabels(labels)
    if len(labels) <= 30:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(
                j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > matrix.max() / 2 else "black"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_examples(image_at, count: int, out: Path, n: int) -> None:
    """The first ``n`` images of the split, for the demo's examples."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for i in range(min(n, count)):
        image_at(i).save(out / f"{i:05d}.png")


def write_report(path: Path, recipe: Any, metrics: dict, headline: list[str], names: list[str], worst: list) -> None:
    per_class = ["| class | AP | AR@100 |", "|---|---|---|"]
    per_class += [f"| {n} | {metrics[f'ap_{n}']:.3f} | {metrics[f'ar100_{n}']:.3f} |" for n in names]
    rows = [
        f"- #{w['index']}: {w['missed']} missed, {w['false']} false, {w['wrong_class']} wrong class" for w in worst
    ]
    title = (
        f"Evaluation of {recipe.name} on the {metrics['split']} split "
        f"({metrics['num_examples']} images, {metrics['num_boxes']} boxes)"
    )
    intro = [
        "COCO metrics (pycocotools): mAP averages IoU 0.50:0.95; small/medium/large split objects at 32² and 96² px "
        "(-1: none of that size)."
    ]
    body = [
        "## Per class",
        "",
        *per_class,
        "",
        "![precision-recall](pr_curves.png)",
        "",
        f"Confusion matrix of detections scoring at least {recipe.eval.threshold:g}, matched to true boxes at IoU "
        f"{MATCH_IOU:g}: the background row holds false detections, the background column missed boxes.",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "## Gallery (true boxes thin white, detections in colour)",
        "",
        "![gallery](gallery.png)",
    ]
    write_report_file(
        path, title, intro, metrics, headline, body, ("Images with the most errors", rows, "worst_images.png")
    )
