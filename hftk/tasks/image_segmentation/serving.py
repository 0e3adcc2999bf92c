"""Image segmentation, what serves a run: mean-IoU evaluation, predict (class areas, overlays, masks), ONNX, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hftk import runs
from hftk.data.images import IMAGE_EXTENSIONS, open_image_file
from hftk.data.segmentation import label_space, load_segmentation_data
from hftk.errors import HftkError
from hftk.evaluation import read_metrics
from hftk.models.adapters import load_full_model
from hftk.sections import Recipe
from hftk.tasks.image_segmentation.config import HEADLINE


def load_processor(run_dir: str, config: Any = None) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(run_dir)


def load_run_model(run_dir: str | Path) -> tuple[Any, Any]:
    """The run's final model (on the inference device) and image processor, loaded as any transformers user would:
    the full model, or its base with the run's adapter on top."""
    from transformers import AutoModelForSemanticSegmentation

    return runs.load_run_model(run_dir, AutoModelForSemanticSegmentation, load_processor)


def class_names(model: Any) -> list[str]:
    return [model.config.id2label[i] for i in range(len(model.config.id2label))]


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """Mean IoU on ``split``; writes metrics.json, report.md, the per-class IoU chart, best and worst overlays."""
    from hftk.evaluation.segmentation import evaluate_segmenter

    model, processor = load_run_model(run_dir)
    data = load_segmentation_data(recipe.data)[split]
    labels = label_space(recipe.data, class_names(model))
    return evaluate_segmenter(run_dir, recipe, split, model, processor, data, labels)


def predict(
    run_dir: Path,
    inputs: list,
    stream: Any = None,
    *,
    out: str | None = None,
    masks: str | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """Class areas of each image's mask, the mask ``pipeline("image-segmentation")`` predicts.

    ``out`` writes the image with its classes tinted (an image file for one input, a folder for several); ``masks``
    a folder of class maps (palette PNGs whose values are class ids, named after the inputs).

    Returns:
        One ``{"input", "size": [width, height], "predictions": [{"label", "pixels", "fraction"}, ...]}`` per image,
        classes in id order as the pipeline lists them (plus ``"out"`` / ``"mask"``: the files written).
    """
    if batch_size < 1:
        raise HftkError(f"--batch-size {batch_size}: expected a positive number")
    items = runs.expand_inputs(inputs, IMAGE_EXTENSIONS, "images")
    target = _out_target(out, items)
    model, processor = load_run_model(run_dir)
    names = class_names(model)
    results = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = [open_image_file(item) for item in chunk]
        for index, (item, image, label_map) in enumerate(zip(chunk, images, segment_images(model, processor, images))):
            name = str(item) if isinstance(item, (str, Path)) else f"image {start + index}"
            result = {"input": name, "size": [image.width, image.height], "predictions": areas(label_map, names)}
            result.update(_write(image, label_map, names, name, target, masks))
            results.append(result)
            if stream is not None:
                shown = ", ".join(f"{p['label']} {100 * p['fraction']:.1f}%" for p in result["predictions"])
                stream.write(f"{name}: {shown}\n")
                stream.flush()
    return results


def segment_images(model: Any, processor: Any, images: list[Image.Image]) -> list[np.ndarray]:
    from hftk.evaluation.segmentation import segment

    return segment(model, processor, images)


def areas(label_map: np.ndarray, names: list[str]) -> list[dict]:
    """``{"label", "pixels", "fraction"}`` of each class present, in class-id order (the pipeline's order)."""
    ids, counts = np.unique(label_map, return_counts=True)
    total = max(1, int(label_map.size))
    return [
        {"label": names[int(i)], "pixels": int(c), "fraction": round(int(c) / total, 6)} for i, c in zip(ids, counts)
    ]


def _out_target(out: str | None, items: list) -> tuple[str, Path] | None:
    """("image" | "folder", path) for ``--out``, checked against the inputs before any work."""
    if not out:
        return None
    path = Path(out)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        if len(items) > 1:
            raise HftkError(f"--out {out}: {len(items)} inputs; give a folder to write the overlays into")
        return "image", path
    if path.exists() and not path.is_dir():
        raise HftkError(f"--out {out}: exists and is not a folder; expected an image file name or a folder")
    return "folder", path


def _write(image, label_map, names, name: str, target, masks: str | None) -> dict[str, str]:
    from hftk.evaluation.segmentation import overlay

    written = {}
    stem = Path(name).stem if name else "image"
    if target is not None:
        kind, path = target
        file = path if kind == "image" else path / f"{stem}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        overlay(image, label_map, names).save(file)
        written["out"] = str(file)
    if masks:
        folder = Path(masks)
        if folder.exists() and not folder.is_dir():
            raise HftkError(f"--masks {masks}: exists and is not a folder; expected a folder for the class maps")
        folder.mkdir(parents=True, exist_ok=True)
        mask_image(label_map, names).save(folder / f"{stem}.png")
        written["mask"] = str(folder / f"{stem}.png")
    return written


def mask_image(label_map: np.ndarray, names: list[str]) -> Image.Image:
    """A class map as a palette PNG: pixel values are class ids, shown in the classes' colours."""
    from hftk.evaluation.segmentation import colours

    if len(names) > 256:
        return Image.fromarray(label_map.astype(np.int32), "I")
    image = Image.fromarray(label_map.astype(np.uint8), "P")
    image.putpalette([v for c in colours(names) for v in (c or (0, 0, 0))])
    return image


def onnx_graphs(run_dir: Path, batch_size: int) -> list:
    """The segmenter as one ONNX graph: ``pixel_values`` (dynamic batch) -> ``logits`` (before the resize to each
    image's size and the argmax, which stay with the image processor), checked on test images."""
    from transformers import AutoModelForSemanticSegmentation

    from hftk.export import NamedOutputs, OnnxGraph

    model = load_full_model(AutoModelForSemanticSegmentation, run_dir).eval()
    processor = load_run_model(run_dir)[1]
    images = [open_image_file(p) for p in runs.saved_examples(run_dir, batch_size)]
    if not images:
        raise HftkError(
            f"{run_dir}: no test images in eval/examples to check the export on; run `hftk evaluate` first"
        )
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    module = NamedOutputs(model, ["pixel_values"], ["logits"])
    return [OnnxGraph("model", module, {"pixel_values": pixels}, ["logits"], {"pixel_values": {0: "batch"}})]


def demo(run_dir: Path):
    from hftk.demos.image_segmentation import build_demo

    model, processor = load_run_model(run_dir)
    examples = runs.saved_examples(run_dir, 64)
    return build_demo(Path(run_dir), predict, class_names(model), read_metrics(Path(run_dir)), HEADLINE, examples)
