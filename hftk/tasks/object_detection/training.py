"""Object detection, what trains a run: the DETR family (RT-DETR, D-FINE, DETR, Conditional/Deformable DETR, YOLOS...).

Data: the embedded ``shapes`` set (drawn by hftk, written as COCO), COCO json in its common layouts, an imagefolder
with ``metadata.jsonl`` or a Hub dataset (``hftk/data/detection.py``). Models: ``hftk/models/detection.py``. The
Trainer's collator uses the run's image processor (``pixel_values``, ``pixel_mask``, ``labels`` as the DETR family
expects); validation runs ``post_process_object_detection`` with each image's size and COCO mAP, batch by batch.
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
from hftk.data.detection import class_names, load_detection_data
from hftk.data.detection_transforms import DetectionTransform, EpochCallback, collate
from hftk.errors import HftkError
from hftk.evaluation.detection import compute_map, post_process, target_boxes
from hftk.models.detection import (
    build_detector,
    detection_parts,
    frozen_batch_norms,
    log_trainable_parts,
    thaw_batch_norms,
)
from hftk.models.parts import ModelParts
from hftk.sections import Recipe
from hftk.tasks.contract import TrainerInputs
from hftk.tasks.object_detection.config import HEADLINE

logger = logging.getLogger(__name__)


def load_data(recipe: Recipe) -> DatasetDict:
    return load_detection_data(recipe.data)


def build_model(recipe: Recipe, data: DatasetDict) -> tuple[Any, Any]:
    return build_detector(recipe.model, class_names(data["train"]), recipe.data.image_size)


def model_parts(model: Any) -> ModelParts:
    """The backbone as layers (stem, then its stages' blocks); the head is everything after it: the transformer
    encoder and decoder and the class/box heads. ``model.freeze=backbone`` trains the detector on a fixed backbone,
    ``model.backbone_lr_multiplier=0.1`` lets a pretrained backbone learn slower than the rest."""
    return detection_parts(model)


def prepare_datasets(recipe: Recipe, data: DatasetDict, processor: Any) -> DatasetDict:
    raw = DatasetDict({s: data[s].cast_column("image", ImageFeature(decode=False)) for s in data})
    indexed = raw["train"].add_column("index", list(range(len(raw["train"]))))
    train = indexed.with_transform(DetectionTransform(processor, recipe.data.augment, recipe.train.get("seed", 42)))
    evaluation = DetectionTransform(processor)
    return DatasetDict(train=train, **{s: raw[s].with_transform(evaluation) for s in ("validation", "test")})


class DetectionMetrics:
    """``compute_metrics`` for ``batch_eval_metrics``: post-processes each batch, scores COCO mAP at the last one."""

    def __init__(self, processor: Any, names: list[str]):
        self.processor = processor
        self.names = names
        self.predictions: list[dict] = []
        self.references: list[dict] = []

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        logits, boxes = eval_pred.predictions
        labels = eval_pred.label_ids
        sizes = labels["orig_size"].cpu()
        self.predictions += post_process(self.processor, logits.cpu(), boxes.cpu(), sizes)
        for image_boxes, classes, size in zip(labels["boxes"].cpu(), labels["class_labels"].cpu(), sizes):
            kept = classes >= 0  # padding (-1 here, -100 from the Trainer's padding across processes)
            self.references.append(
                target_boxes({"boxes": image_boxes[kept], "class_labels": classes[kept], "orig_size": size})
            )
        if not compute_result:
            return {}
        metrics = compute_map(self.predictions, self.references, self.names)
        self.predictions, self.references = [], []
        return {k: metrics[k] for k in HEADLINE}


def stack_labels(labels: list[dict]) -> dict[str, torch.Tensor]:
    """A batch's labels (one dict per image, box counts differ) as tensors with the image first, boxes padded with
    class -1: the form the Trainer pads across processes and cuts back to the split's size when it gathers (a list
    of dicts would be cut tensor by tensor, and the last uneven batch would lose coordinates, not images)."""
    count = max((len(label["class_labels"]) for label in labels), default=0)
    device = labels[0]["orig_size"].device if labels else None
    boxes = torch.zeros(len(labels), count, 4, device=device)
    classes = torch.full((len(labels), count), -1, dtype=torch.long, device=device)
    for i, label in enumerate(labels):
        n = len(label["class_labels"])
        boxes[i, :n] = label["boxes"].reshape(-1, 4)
        classes[i, :n] = label["class_labels"]
    return {
        "boxes": boxes,
        "class_labels": classes,
        "orig_size": torch.stack([label["orig_size"] for label in labels]),
    }


class DetectionTrainer(compat.ConvertedCheckpointLoading, Trainer):
    """A Trainer that loads checkpoints through ``from_pretrained`` and whose evaluation keeps only the boxes.

    Checkpoints load through ``from_pretrained`` (``compat.ConvertedCheckpointLoading``: transformers#48805).
    ``prediction_step`` returns ``(logits, pred_boxes)`` instead of every output the model has (hidden states,
    auxiliary outputs) and the labels as padded tensors (``stack_labels``), for ``DetectionMetrics``.
    """

    def load_converted(self, folder: str, model: Any) -> bool:
        """Load ``folder``'s weights through ``from_pretrained`` (which converts their names); False if it cannot."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not (Path(folder) / "model.safetensors").is_file():
            return False
        model = self.accelerator.unwrap_model(model)
        with torch.random.fork_rng(devices=[]):  # building a model draws random numbers; the run's must not move
            loaded = type(model).from_pretrained(folder, config=model.config, use_safetensors=True)
        if not frozen_batch_norms(model):  # a random backbone's norms train (settle_backbone), so they load so
            thaw_batch_norms(loaded)
        model.load_state_dict(loaded.state_dict())  # strict: every tensor, or an error
        logger.info("loaded the model weights of %s", folder)
        return True

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = compat.prepare_inputs(self, inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = outputs.loss.detach() if outputs.get("loss") is not None else None
        if prediction_loss_only:
            return loss, None, None
        labels = inputs.get("labels")
        return loss, (outputs.logits.detach(), outputs.pred_boxes.detach()), labels and stack_labels(labels)


def build_trainer(inputs: TrainerInputs) -> Trainer:
    if not inputs.args.batch_eval_metrics:
        raise HftkError("train.batch_eval_metrics: object detection scores validation batch by batch; keep it true")
    log_trainable_parts(inputs.model)  # after model.freeze and any adapter: what really trains
    names = [inputs.model.config.id2label[i] for i in range(len(inputs.model.config.id2label))]
    return DetectionTrainer(
        model=inputs.model,
        args=inputs.args,
        train_dataset=inputs.datasets["train"],
        eval_dataset=inputs.datasets["validation"],
        data_collator=collate,
        compute_metrics=DetectionMetrics(inputs.processor, names),
        processing_class=inputs.processor,
        callbacks=[*inputs.callbacks, *_epoch_callbacks(inputs.datasets["train"])],
        optimizer_cls_and_kwargs=inputs.optimizer,
    )


def _epoch_callbacks(train: Any) -> list:
    transform = (getattr(train, "format", None) or {}).get("format_kwargs", {}).get("transform")
    return [EpochCallback(transform)] if isinstance(transform, DetectionTransform) else []
