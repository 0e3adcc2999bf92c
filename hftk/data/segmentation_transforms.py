"""Segmentation examples as the models train on them: the same crop, flip and rotation for an image and its class
map (torchvision.transforms.v2 on ``tv_tensors.Mask``: nearest-neighbour, ignore_index where no pixel is left), then
the run's image processor, which makes ``pixel_values`` and ``labels`` (resized nearest-neighbour) as the model and
``pipeline`` expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from hftk.data.images import open_image_file
from hftk.data.segmentation import LabelSpace, read_mask, row_name
from hftk.sections import setting


@dataclass
class SegmentationAugmentConfig:
    """Training augmentation applied alike to an image and its mask (nearest-neighbour for the mask)."""

    hflip: float = setting(0.5, "probability of a horizontal flip")
    vflip: float = setting(0.0, "probability of a vertical flip")
    crop_scale: list[float] | None = setting(
        None, "random resized crop: area range [min, max] as fractions of the image, back to its size; None: off"
    )
    degrees: float = setting(0.0, "largest rotation, degrees (the mask's new corners are ignore_index)")
    color_jitter: float = setting(0.0, "strength of brightness/contrast/saturation jitter (the image only)")


class SegmentationTransform:
    """Rows -> ``pixel_values`` and ``labels`` made by the run's image processor, after the recipe's augmentation.

    Random numbers come from (seed, epoch, example index), not torch's global stream: the dataloader fetches a batch
    ahead, so global draws would leave a checkpoint's random state a batch late and a resumed run would augment
    differently from the straight one. Images and masks are decoded here, so an unreadable file is named.
    """

    def __init__(self, processor: Any, labels: LabelSpace, augment: SegmentationAugmentConfig | None = None, seed=0):
        self.processor = processor
        self.labels = labels
        self.augment = build_augmentation(augment, labels.ignore_index) if augment is not None else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, batch: dict) -> dict:
        from torchvision.transforms.v2.functional import pil_to_tensor

        images, masks = [], []
        indices = batch.get("index") or [0] * len(batch["image"])
        for image, mask, index in zip(batch["image"], batch["mask"], indices):
            pixels = pil_to_tensor(open_image_file(image))
            label_map = torch.from_numpy(read_mask(mask, self.labels, row_name(mask, "mask", index)))
            if self.augment is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
                    pixels, label_map = self.augment(pixels, label_map)
            images.append(pixels)
            masks.append(label_map)
        return encode(self.processor, images, masks)


def encode(processor: Any, images: list, masks: list[torch.Tensor]) -> dict:
    """``pixel_values`` and ``labels`` from the processor; masks go in as uint8 (or int32 past 255), which its
    nearest-neighbour resize keeps exact."""
    wide = any(int(m.max(initial=0)) > 255 for m in (mask.numpy() for mask in masks))
    maps = [m.to(torch.int32 if wide else torch.uint8) for m in masks]
    out = processor(images=images, segmentation_maps=maps, return_tensors="pt")
    return {"pixel_values": list(out["pixel_values"]), "labels": [label.long() for label in out["labels"]]}


class PairAugment:
    """A torchvision v2 pipeline over an image tensor and its class map (``tv_tensors.Mask``: nearest-neighbour,
    filled with ignore_index where a rotation or crop leaves no pixel). Picklable, for dataloader workers."""

    def __init__(self, ops: list):
        from torchvision.transforms import v2

        self.transform = v2.Compose(ops)

    def __call__(self, pixels: torch.Tensor, label_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image, mask = self.transform(tv_tensors.Image(pixels), tv_tensors.Mask(label_map))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def build_augmentation(aug: SegmentationAugmentConfig, ignore_index: int) -> PairAugment | None:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    ops: list[Any] = []
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
    if aug.degrees:
        ops.append(v2.RandomRotation(aug.degrees, fill=fill))
    if aug.crop_scale:
        ops.append(_ResizedCropToInput(tuple(aug.crop_scale)))
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        ops.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.color_jitter:
        s = aug.color_jitter
        ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4)))
    return PairAugment(ops) if ops else None


class _ResizedCropToInput(torch.nn.Module):
    """``v2.RandomResizedCrop`` back to the input's own size (images of a set may differ in size)."""

    def __init__(self, scale: tuple[float, float]):
        super().__init__()
        self.scale = scale

    def forward(self, image, mask):
        from torchvision.transforms import v2

        crop = v2.RandomResizedCrop(tuple(image.shape[-2:]), scale=self.scale, antialias=True)
        return crop(image, mask)


class EpochCallback(TrainerCallback):
    """Tells the training transform which epoch begins (a run resumed mid-epoch resumes that epoch)."""

    def __init__(self, transform: SegmentationTransform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(math.floor(state.epoch + 1e-6))
