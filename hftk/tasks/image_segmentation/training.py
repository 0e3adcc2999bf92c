"""Image segmentation, what trains a run: semantic segmenters (SegFormer, MobileViT + DeepLabV3, UperNet...).

Data: the embedded ``shapes`` scenes with their class maps, an images + masks folder, a ``save_to_disk`` folder or a
Hub dataset (``hftk/data/segmentation.py``). Models: ``hftk/models/segmentation.py``. The collator stacks what the
run's image processor made (``pixel_values``, ``labels`` resized nearest-neighbour); validation upsamples the logits
to the labels' size, as the models' own losses do, and sums per-class pixel counts batch by batch for mean IoU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from datasets import Image as ImageFeature
from transformers import Trainer

from hftk import compat
from hftk.data.segmentation import class_names, label_space, load_segmentation_data
from hftk.data.segmentation_transforms import EpochCallback, SegmentationTransform
from hftk.evaluation.segmentation import IoUTotals
from hftk.models.parts import ModelParts
from hftk.models.segmentation import build_segmenter, segmentation_parts
from hftk.sections import Recipe
from hftk.tasks.contract import TrainerInputs
from hftk.tasks.image_segmentation.config import HEADLINE

logger = logging.getLogger(__name__)


def load_data(recipe: Recipe) -> DatasetDict:
    return load_segmentation_data(recipe.data)


def build_model(recipe: Recipe, data: DatasetDict) -> tuple[Any, Any]:
    names = class_names(data["train"])
    return build_segmenter(recipe.model, names, recipe.data.image_size, recipe.data.ignore_index)


def model_parts(model: Any) -> ModelParts:
    """The backbone as layers (stem, then stages or blocks); the head is the decode (and auxiliary) head, so
    ``model.freeze=backbone`` trains the head on a fixed backbone."""
    return segmentation_parts(model)


def prepare_datasets(recipe: Recipe, data: DatasetDict, processor: Any) -> DatasetDict:
    labels = label_space(recipe.data, class_names(data["train"]))
    raw = DatasetDict(
        {
            split: data[split]
            .select_columns(["image", "mask"])
            .cast_column("image", ImageFeature(decode=False))
            .cast_column("mask", ImageFeature(decode=False))
            for split in data
        }
    )
    indexed = raw["train"].add_column("index", list(range(len(raw["train"]))))
    seed = recipe.train.get("seed", 42)
    train = indexed.with_transform(SegmentationTransform(processor, labels, recipe.data.augment, seed))
    evaluation = SegmentationTransform(processor, labels)
    return DatasetDict(train=train, **{s: raw[s].with_transform(evaluation) for s in ("validation", "test")})


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": torch.stack([f["labels"] for f in features]),
    }


class SegmentationMetrics:
    """``compute_metrics`` for ``batch_eval_metrics``: class maps from each batch's logits (bilinear to the labels'
    size, then argmax), pixel counts summed over batches, mean IoU at the last one."""

    def __init__(self, names: list[str], ignore_index: int):
        self.names = names
        self.ignore_index = ignore_index
        self.totals = IoUTotals(names, ignore_index)

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        logits = torch.as_tensor(eval_pred.predictions).float()
        labels = torch.as_tensor(eval_pred.label_ids)
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = torch.nn.functional.interpolate(
                logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
            )
        predicted = logits.argmax(1).cpu().numpy()
        self.totals.add(list(predicted), list(labels.cpu().numpy()))
        if not compute_result:
            return {}
        metrics = self.totals.result()
        self.totals = IoUTotals(self.names, self.ignore_index)
        return {k: metrics[k] for k in HEADLINE}


class SegmentationTrainer(compat.ConvertedCheckpointLoading, Trainer):
    """A Trainer that loads checkpoints (resume, best model) through ``from_pretrained``, which converts their names
    (``compat.ConvertedCheckpointLoading``: transformers#48805; SegFormer saves ``encoder.block.N`` for the
    ``stages.N`` it builds, so the Trainer's own loading kept random weights)."""

    def load_converted(self, folder: str, model: Any) -> bool:
        """Load ``folder``'s weights through ``from_pretrained``; False (the Trainer's own loading) if it cannot."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not (Path(folder) / "model.safetensors").is_file():
            return False
        model = self.accelerator.unwrap_model(model)
        if hasattr(model, "peft_config"):  # an adapter's checkpoint holds the adapter: the Trainer's way
            return False
        with torch.random.fork_rng(devices=[]):  # building a model draws random numbers; the run's must not move
            loaded = type(model).from_pretrained(folder, config=model.config, use_safetensors=True)
        model.load_state_dict(loaded.state_dict())  # strict: every tensor, or an error (frozen norms drop counters)
        logger.info("loaded the model weights of %s", folder)
        return True


def build_trainer(inputs: TrainerInputs) -> Trainer:
    from hftk.errors import HftkError

    if not inputs.args.batch_eval_metrics:
        raise HftkError("train.batch_eval_metrics: segmentation sums pixel counts batch by batch; keep it true")
    config = inputs.model.config
    names = [config.id2label[i] for i in range(len(config.id2label))]
    train = inputs.datasets["train"]
    transform = (getattr(train, "format", None) or {}).get("format_kwargs", {}).get("transform")
    epochs = [EpochCallback(transform)] if isinstance(transform, SegmentationTransform) else []
    return SegmentationTrainer(
        model=inputs.model,
        args=inputs.args,
        train_dataset=train,
        eval_dataset=inputs.datasets["validation"],
        data_collator=collate,
        compute_metrics=SegmentationMetrics(names, inputs.recipe.data.ignore_index),
        processing_class=inputs.processor,
        callbacks=[*inputs.callbacks, *epochs],
        optimizer_cls_and_kwargs=inputs.optimizer,
    )
