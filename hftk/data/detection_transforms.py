"""Detection examples as the DETR family trains on them: box-aware augmentation (torchvision.transforms.v2 on
``tv_tensors.BoundingBoxes``), then the run's image processor, which makes ``pixel_values`` (+ ``pixel_mask``) and
``labels`` (normalised cx, cy, w, h boxes and class labels) the way the model and ``pipeline`` expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from hftk.data.images import open_image_file
from hftk.sections import setting


@dataclass
class DetectionAugmentConfig:
    """Box-aware training augmentation (torchvision.transforms.v2 on tv_tensors.BoundingBoxes)."""

    hflip: float = setting(0.5, "probability of a horizontal flip")
    vflip: float = setting(0.0, "probability of a vertical flip")
    scale_jitter: list[float] | None = setting(
        None, "zoom range [min, max] around the centre (<1: zoom out); None: off"
    )
    translate: float = setting(0.0, "max shift as a fraction of the size (with scale_jitter's affine)")
    iou_crop: float = setting(0.0, "probability of an SSD-style crop that keeps boxes valid (RandomIoUCrop)")
    color_jitter: float = setting(0.0, "strength of brightness/contrast/saturation jitter (hue: a quarter of it)")
    min_box_size: float = setting(2.0, "boxes smaller than this (px) after augmentation are dropped")


class DetectionTransform:
    """Examples -> ``pixel_values`` (+ ``pixel_mask``) and ``labels`` made by the run's image processor.

    Training examples first go through the recipe's box-aware augmentation, with random numbers drawn from
    (seed, epoch, example index) rather than torch's global stream: the Trainer's dataloader fetches a batch ahead,
    so global draws made here would leave a checkpoint's saved random state one batch late, and a resumed run would
    augment differently from the straight one. Images are decoded here (not by datasets) so that an unreadable
    file is named in the error.
    """

    def __init__(self, processor: Any, augment: DetectionAugmentConfig | None = None, seed: int = 0):
        self.processor = processor
        self.augment = build_augmentation(augment) if augment is not None else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, batch: dict) -> dict:
        from torchvision.transforms.v2.functional import pil_to_tensor

        images, annotations = [], []
        indices = batch.get("index") or [0] * len(batch["image"])
        for image, image_id, objects, index in zip(batch["image"], batch["image_id"], batch["objects"], indices):
            pixels = pil_to_tensor(open_image_file(image))
            boxes, labels = objects["bbox"], objects["category"]
            if self.augment is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
                    pixels, boxes, labels = self.augment(pixels, boxes, labels)
            images.append(pixels)
            annotations.append(coco_target(image_id, boxes, labels))
        out = self.processor(images=images, annotations=annotations, return_tensors="pt")
        result = {"pixel_values": list(out["pixel_values"]), "labels": list(out["labels"])}
        if "pixel_mask" in out:
            result["pixel_mask"] = list(out["pixel_mask"])
        return result


class EpochCallback(TrainerCallback):
    """Tells the training transform which epoch begins (a run resumed mid-epoch resumes that epoch)."""

    def __init__(self, transform: DetectionTransform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(math.floor(state.epoch + 1e-6))


def coco_target(image_id: int, boxes: list, labels: list) -> dict:
    objects = [
        {"bbox": list(b), "category_id": int(c), "area": float(b[2] * b[3]), "iscrowd": 0}
        for b, c in zip(boxes, labels)
    ]
    return {"image_id": int(image_id), "annotations": objects}


class BoxAugment:
    """A torchvision v2 pipeline over an image tensor, its XYWH boxes and labels; boxes stay valid (clamped, tiny
    ones dropped). Picklable, so dataloader workers can use it."""

    def __init__(self, ops: list):
        from torchvision.transforms import v2

        self.transform = v2.Compose(ops)

    def __call__(self, pixels: torch.Tensor, boxes: list, labels: list) -> tuple[torch.Tensor, list, list]:
        from torchvision import tv_tensors

        size = tuple(pixels.shape[-2:])
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYWH", canvas_size=size
            ),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        image, target = self.transform(tv_tensors.Image(pixels), target)
        return image.as_subclass(torch.Tensor), target["boxes"].tolist(), target["labels"].tolist()


def build_augmentation(aug: DetectionAugmentConfig) -> BoxAugment | None:
    from torchvision.transforms import v2

    ops: list[Any] = []
    if aug.iou_crop:
        ops.append(v2.RandomApply([v2.RandomIoUCrop()], p=aug.iou_crop))
    if aug.scale_jitter or aug.translate:
        scale = tuple(aug.scale_jitter) if aug.scale_jitter else None
        ops.append(v2.RandomAffine(degrees=0, translate=(aug.translate, aug.translate), scale=scale))
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        ops.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.color_jitter:
        s = aug.color_jitter
        ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4)))
    if not ops:
        return None
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=aug.min_box_size)]
    return BoxAugment(ops)


def collate(features: list[dict]) -> dict[str, Any]:
    batch = {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": [f["labels"] for f in features],
    }
    if "pixel_mask" in features[0]:
        batch["pixel_mask"] = torch.stack([f["pixel_mask"] for f in features])
    return batch
