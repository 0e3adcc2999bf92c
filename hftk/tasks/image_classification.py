"""Image classification: timm CNNs/ViTs and transformers ViT/ResNet/ConvNeXt on embedded, local or Hub images."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import DatasetDict
from transformers import Trainer

from hftk.config import RECIPES_DIR, DataConfig, Recipe, _field
from hftk.data.images import IMAGE_EXTENSIONS, load_image_data, to_rgb
from hftk.errors import HftkError
from hftk.evaluation import eval_dir, load_metric, plot_learning_curves, read_metrics, write_metrics
from hftk.models.vision import build_image_classifier, processor_spec

logger = logging.getLogger(__name__)

TASK = "image-classification"
DEFAULT_RECIPE = RECIPES_DIR / TASK / "resnet-mnist.yaml"
HEADLINE = ["accuracy", "top5_accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"]
TRAIN_DEFAULTS = {"metric_for_best_model": "accuracy"}


@dataclass
class AugmentConfig:
    """Training-time augmentation (validation and test images only go through the processor)."""

    random_resized_crop: list[float] | None = _field(None, "scale range [min, max] of RandomResizedCrop; None: off")
    crop_ratio: list[float] = _field([0.75, 1.3333], "aspect-ratio range of RandomResizedCrop")
    hflip: bool = _field(False, "random horizontal flips (not for digits or text)")
    degrees: float = _field(0.0, "random affine (applied to whole batches): max rotation in degrees")
    translate: float = _field(0.0, "random affine: max shift as a fraction of the size")
    scale: list[float] | None = _field(None, "random affine: zoom range [min, max]")
    randaugment: bool = _field(False, "RandAugment (2 ops)")
    randaugment_magnitude: int = _field(9, "RandAugment magnitude (0-30)")
    mixup_alpha: float = _field(
        0.0, "mixup alpha (0: off); soft targets, label smoothing from train.label_smoothing_factor"
    )
    cutmix_alpha: float = _field(0.0, "cutmix alpha (0: off)")


@dataclass
class ImageDataConfig(DataConfig):
    """Image data: embedded mnist-5k/digits, a local imagefolder, or a Hub dataset."""

    image_column: str = _field("image", "column holding the images")
    label_column: str = _field("label", "column holding the class labels")
    image_size: int | None = _field(None, "square input size; None: the model's own (224 for most)")
    on_bad_image: Literal["skip", "error"] = _field("skip", "unreadable images: skip with a warning, or stop")
    augment: AugmentConfig = _field(AugmentConfig(), "training augmentation")


CONFIG_CLASSES = {"data": ImageDataConfig}


def load_data(recipe: Recipe) -> DatasetDict:
    return load_image_data(recipe.data)


def build_model(recipe: Recipe, data: DatasetDict) -> tuple[Any, Any]:
    labels = data["train"].features["label"].names
    return build_image_classifier(recipe.model, labels, recipe.data.image_size)


class TrainTransform:
    """PIL images -> augmented, normalised ``pixel_values`` at the processor's size (picklable for workers)."""

    def __init__(self, aug: AugmentConfig, size: int, mean: list[float], std: list[float]):
        from torchvision.transforms import v2

        ops: list[Any] = [v2.ToImage()]
        if aug.random_resized_crop:
            ops.append(v2.RandomResizedCrop(size, scale=tuple(aug.random_resized_crop), ratio=tuple(aug.crop_ratio)))
        else:
            ops += [v2.Resize(size), v2.CenterCrop(size)]
        if aug.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if aug.randaugment:
            ops.append(v2.RandAugment(magnitude=aug.randaugment_magnitude))
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.transform = v2.Compose(ops)

    def __call__(self, batch: dict) -> dict:
        return {"pixel_values": [self.transform(to_rgb(im)) for im in batch["image"]], "labels": batch["label"]}


class EvalTransform:
    """PIL images -> ``pixel_values`` exactly as the saved processor (and so ``pipeline``) makes them."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, batch: dict) -> dict:
        pixels = self.processor(images=[to_rgb(im) for im in batch["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": list(pixels), "labels": batch["label"]}


def prepare_datasets(recipe: Recipe, data: DatasetDict, processor: Any) -> DatasetDict:
    size, mean, std = processor_spec(processor)
    train = data["train"].with_transform(TrainTransform(recipe.data.augment, size, mean, std))
    evaluation = EvalTransform(processor)
    return DatasetDict(train=train, **{s: data[s].with_transform(evaluation) for s in ("validation", "test")})


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
    }


def compute_metrics(eval_pred) -> dict[str, float]:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    metrics = load_metric("classification").compute(predictions=logits, references=eval_pred.label_ids)
    return {k: metrics[k] for k in ("accuracy", "top5_accuracy", "f1_macro")}


def random_affine(
    pixels: torch.Tensor, degrees: float, translate: float, scale: list[float] | None, fill: torch.Tensor
):
    """Rotate, shift and zoom every image of a normalised batch at once, filling the borders with ``fill``.

    One ``grid_sample`` call per batch instead of a torchvision RandomAffine per image: on the quickstart the
    per-image version took a third of the training time.
    """
    n = pixels.shape[0]
    angle = (torch.rand(n) * 2 - 1) * degrees * torch.pi / 180
    zoom = torch.empty(n).uniform_(*scale) if scale else torch.ones(n)
    shift = (torch.rand(n, 2) * 2 - 1) * translate * 2  # grid coordinates span [-1, 1]: a fraction f is 2f
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(pixels.dtype), list(pixels.shape), align_corners=False)
    shifted = pixels - fill  # zero padding of (x - fill) leaves ``fill`` at the borders
    return torch.nn.functional.grid_sample(shifted, grid, align_corners=False) + fill


class ImageClassificationTrainer(Trainer):
    """Trainer whose training batches get the random affine and, when asked, timm's mixup/cutmix.

    Both act on whole batches; evaluation batches pass through untouched.
    """

    degrees = 0.0
    translate = 0.0
    scale: list[float] | None = None
    mixup_alpha = 0.0
    cutmix_alpha = 0.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.degrees or self.translate or self.scale:
            if getattr(self, "_fill", None) is None:  # black, normalised as the processor normalises
                _, mean, std = processor_spec(self.processing_class)
                self._fill = (-torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1)
            pixels = random_affine(inputs["pixel_values"], self.degrees, self.translate, self.scale, self._fill)
            inputs = {**inputs, "pixel_values": pixels}
        if not (self.mixup_alpha or self.cutmix_alpha) or len(inputs["labels"]) % 2:  # timm mixes pairs
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from timm.data import Mixup

        if getattr(self, "_mixup", None) is None:
            self._mixup = Mixup(
                mixup_alpha=self.mixup_alpha,
                cutmix_alpha=self.cutmix_alpha,
                label_smoothing=self.args.label_smoothing_factor,
                num_classes=model.config.num_labels,
            )
        pixel_values, targets = self._mixup(inputs["pixel_values"], inputs["labels"])
        outputs = model(pixel_values=pixel_values)
        loss = torch.sum(-targets * torch.log_softmax(outputs.logits.float(), dim=-1), dim=-1).mean()
        return (loss, outputs) if return_outputs else loss


def build_trainer_class(recipe: Recipe) -> type[Trainer]:
    aug = recipe.data.augment
    if not (aug.mixup_alpha or aug.cutmix_alpha or aug.degrees or aug.translate or aug.scale):
        return Trainer
    settings = {"degrees": aug.degrees, "translate": aug.translate, "scale": aug.scale}
    settings.update(mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha)
    return type("ImageClassificationTrainer", (ImageClassificationTrainer,), settings)


@functools.lru_cache(maxsize=4)
def load_run_model(run_dir: str) -> tuple[Any, Any]:
    """The run's final model and processor, loaded from safetensors as any transformers user would."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(run_dir, use_safetensors=True).eval()
    return model, AutoImageProcessor.from_pretrained(run_dir)


@torch.no_grad()
def _logits(model: Any, processor: Any, images: list, batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        chunk = [to_rgb(im) for im in images[start : start + batch_size]]
        pixels = processor(images=chunk, return_tensors="pt")["pixel_values"]
        out.append(model(pixel_values=pixels).logits.float())
    return torch.cat(out).numpy()


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """Metrics on ``split``; writes metrics.json, report.md, confusion matrix, learning curves, worst examples."""
    from hftk.evaluation import images as report

    out = eval_dir(run_dir, split, recipe.eval.split)
    data = load_data(recipe)[split]
    model, processor = load_run_model(str(run_dir))
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    images, refs = data["image"], np.asarray(data["label"])
    logits = _logits(model, processor, images, recipe.eval.batch_size)
    metrics = load_metric("classification").compute(predictions=logits, references=refs, top_k=5, labels=names)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    metrics["loss"] = float(-np.log(np.clip(probs[np.arange(len(refs)), refs], 1e-12, None)).mean())
    metrics.update(split=split, num_examples=int(len(refs)))
    confusion = metrics.pop("confusion_matrix")
    write_metrics(out, metrics)
    (out / "confusion_matrix.json").write_text(json.dumps({"labels": names, "matrix": confusion}))
    report.plot_confusion_matrix(confusion, names, out / "confusion_matrix.png")
    plot_learning_curves(run_dir, out / "learning_curves.png", "accuracy")
    worst = report.write_worst_examples(images, refs, probs, names, out, recipe.eval.worst_examples)
    if split == recipe.eval.split:
        report.save_examples(images, refs, names, run_dir / "eval" / "examples", recipe.demo.examples)
    report.write_report(out / "report.md", recipe, metrics, HEADLINE, names, worst)
    logger.info("%s on %s: %s", recipe.name, split, {k: round(metrics[k], 4) for k in HEADLINE})
    return metrics


def _expand_inputs(inputs: list) -> list:
    expanded = []
    for item in inputs:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            files = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise HftkError(f"{item}: no images in this folder")
            expanded += files
        else:
            expanded.append(item)
    return expanded


def _open_image(item: Any):
    from PIL import Image, UnidentifiedImageError

    if not isinstance(item, (str, Path)):
        return item
    try:
        with Image.open(item) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise HftkError(f"{item}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise HftkError(f"{item}: not a readable image (expected PNG, JPEG, BMP, GIF, TIFF or WebP)") from None


@functools.lru_cache(maxsize=4)
def _pipeline(run_dir: str):
    from transformers import pipeline

    model, processor = load_run_model(run_dir)
    return pipeline("image-classification", model=model, image_processor=processor, device="cpu")


def predict(run_dir: str | Path, inputs: list, top_k: int = 5, **unused: Any) -> list[dict]:
    """Top-k labels for image files, folders or PIL images: what ``pipeline("image-classification")`` returns.

    Generation options (``stream``, ``temperature``...) that the CLI passes to every task are ignored.

    Returns:
        One ``{"input": name, "predictions": [{"label", "score"}, ...]}`` per image.
    """
    if top_k < 1:
        raise HftkError(f"--top-k {top_k}: expected a positive number")
    items = _expand_inputs(list(inputs))
    images = [_open_image(item) for item in items]
    classifier = _pipeline(str(run_dir))
    k = min(top_k, classifier.model.config.num_labels)
    results = classifier([to_rgb(im) for im in images], top_k=k)
    names = [str(i) if not isinstance(i, (str, Path)) else str(i) for i in items]
    return [{"input": n, "predictions": r} for n, r in zip(names, results)]


def demo(run_dir: str | Path):
    from hftk.demos.image_classification import build_demo

    return build_demo(Path(run_dir), predict, read_metrics(Path(run_dir)), HEADLINE)
