"""Object detection: the DETR family (RT-DETR, D-FINE, DETR, Conditional/Deformable DETR, YOLOS...) on COCO-style data.

Data: the embedded ``shapes`` set (drawn by hftk, written as COCO), COCO json in its common layouts, an imagefolder
with ``metadata.jsonl`` or a Hub dataset (``hftk/data/detection.py``). Models: ``hftk/models/detection.py``. The
Trainer's collator uses the run's image processor (``pixel_values``, ``pixel_mask``, ``labels`` as the DETR family
expects); validation runs ``post_process_object_detection`` with each image's size and COCO mAP, batch by batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import DatasetDict
from datasets import Image as ImageFeature
from transformers import Trainer, TrainingArguments

from hftk.config import RECIPES_DIR, DataConfig, EvalConfig, ModelConfig, Recipe, _field
from hftk.data.detection import class_names, load_detection_data
from hftk.data.detection_transforms import (
    DetectionAugmentConfig,
    DetectionTransform,
    EpochCallback,
    collate,
)
from hftk.data.images import open_image_file
from hftk.data.shapes import ShapesSpec
from hftk.data.video import VIDEO_EXTENSIONS, is_video
from hftk.errors import HftkError
from hftk.evaluation import inference_device, read_metrics
from hftk.evaluation.detection import compute_map, post_process, target_boxes
from hftk.models.adapters import cached_per_run, load_full_model, load_run_weights
from hftk.models.detection import (
    build_detector,
    detection_parts,
    frozen_batch_norms,
    log_trainable_parts,
    thaw_batch_norms,
)
from hftk.models.parts import ModelParts
from hftk.tasks.contract import TrainerInputs

logger = logging.getLogger(__name__)

TASK = "object-detection"
PIPELINE_TAG = "object-detection"
AUTO_MODEL = "AutoModelForObjectDetection"
DEFAULT_RECIPE = RECIPES_DIR / TASK / "rtdetr-shapes.yaml"
TINY_OVERRIDES = [
    "data.shapes={train: 48, validation: 8, test: 8, image_size: 64}",
    "data.image_size=64",
    "model.backbone_args={embedding_size: 8, hidden_sizes: [8, 16, 16, 32], depths: [1, 1, 1, 1]}",
    "model.model_args={encoder_hidden_dim: 32, encoder_ffn_dim: 64, d_model: 32, decoder_in_channels: [32, 32, 32], "
    "decoder_ffn_dim: 64, decoder_layers: 2, num_queries: 20, num_denoising: 10, "
    # scores start at 0.6, not 1/(classes+1): after 8 steps the pipeline's default threshold (0.5) still finds boxes
    "initializer_bias_prior_prob: 0.6}",
    "train.max_steps=8",
    "train.per_device_train_batch_size=8",
    "train.learning_rate=1e-3",
    "train.warmup_steps=0",
    "train.eval_strategy=steps",
    "train.eval_steps=4",
    "train.save_strategy=steps",
    "train.save_steps=4",
    "train.logging_steps=2",
    "eval.gallery=4",
]
# the distributed equivalence test: RT-DETR's batch norms (their running statistics follow one process under
# data parallelism) and its denoising queries (noise drawn per process) cannot match across process counts; a
# Conditional DETR with frozen backbone batch norms and no dropout can, and its losses are
# normalised by the boxes of all processes, so 2 processes equal 1 with the same global batch
DETERMINISTIC_OVERRIDES = [
    "model.name=conditional_detr",
    "model.backbone_batch_norm=frozen",
    "model.backbone=resnet",
    "model.backbone_args={embedding_size: 8, hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], layer_type: basic}",
    "model.model_args={d_model: 32, encoder_layers: 1, decoder_layers: 2, encoder_ffn_dim: 16, decoder_ffn_dim: 16, "
    "encoder_attention_heads: 2, decoder_attention_heads: 2, num_queries: 20, dropout: 0.0, attention_dropout: 0.0, "
    "activation_dropout: 0.0}",
]
HEADLINE = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"]
TRAIN_DEFAULTS = {"metric_for_best_model": "map", "batch_eval_metrics": True}
TRAINING_ARGUMENTS = TrainingArguments
PIPELINE_EXAMPLE = 'print(pipe("image.png", threshold=0.5))  # [{"score": ..., "label": ..., "box": {...}}, ...]'


@dataclass
class DetectionModelConfig(ModelConfig):
    """The detector: a model type (rt_detr, d_fine, detr...) from its config, a Hub id or a local folder."""

    name: str = _field("rt_detr", "detector type (rt_detr, d_fine, detr, deformable_detr, yolos...), Hub id or folder")
    backbone: str | None = _field(
        None, "backbone of a model built from its config: timm name or transformers type", per_architecture=True
    )
    backbone_args: dict = _field(
        {}, "config fields of a transformers backbone (or timm kwargs), out_indices", per_architecture=True
    )
    backbone_pretrained: bool = _field(False, "load a timm backbone's pretrained weights (safetensors, from the Hub)")
    auxiliary_loss: bool | None = _field(True, "losses at every decoder layer (DETR trains so); None: the model's")
    backbone_batch_norm: Literal["auto", "train", "frozen"] = _field(
        "auto", "backbone batch norms: auto trains a random backbone's, keeps pretrained ones frozen (as DETR does)"
    )


@dataclass
class ShapesConfig:
    """The embedded synthetic set (drawn once per setting, cached under HF_HOME/hftk)."""

    seed: int = _field(0, "drawing seed: the same seed draws the same images")
    image_size: int = _field(128, "side of the square images, px")
    train: int = _field(2000, "training images")
    validation: int = _field(100, "validation images")
    test: int = _field(200, "test images")

    def spec(self) -> ShapesSpec:
        return ShapesSpec(
            seed=self.seed, image_size=self.image_size, train=self.train, validation=self.validation, test=self.test
        )


@dataclass
class DetectionDataConfig(DataConfig):
    """Boxes: embedded shapes, COCO json (file or folder layouts), an imagefolder with metadata.jsonl, or the Hub."""

    name: str | None = _field("shapes", "shapes (embedded, synthetic) or a Hub dataset id (e.g. cppe-5)")
    images: str | None = _field(None, "image folder of a COCO json given as data.path (default: beside the json)")
    bbox_format: Literal["coco", "pascal_voc", "yolo"] = _field(
        "coco",
        "boxes of metadata.jsonl / Hub data: coco [x,y,w,h] px, pascal_voc [x1,y1,x2,y2] px, yolo [cx,cy,w,h] 0-1",
    )
    image_column: str = _field("image", "column holding the images (Hub, imagefolder)")
    objects_column: str = _field("objects", "column holding the boxes and their categories (Hub, imagefolder)")
    bbox_key: str = _field("bbox", "key of the boxes inside objects_column")
    category_key: str | None = _field(None, "key of the categories inside objects_column (None: category(ies)/label)")
    label_names: list[str] | None = _field(None, "names of integer category ids 0..K-1 when the data has none")
    image_size: int | None = _field(None, "square side the processor resizes images to; None: the model's own")
    on_bad_image: Literal["error", "skip"] = _field("error", "an unreadable image: stop naming it, or skip it")
    on_bad_box: Literal["drop", "error"] = _field(
        "drop", "a box with a negative size or a non-finite number: drop it (counted in the log), or stop naming it"
    )
    shapes: ShapesConfig = _field(ShapesConfig(), "the embedded shapes set")
    augment: DetectionAugmentConfig = _field(DetectionAugmentConfig(), "training augmentation")


@dataclass
class DetectionEvalConfig(EvalConfig):
    """Evaluation: COCO mAP on the split; pictures of what the model finds and misses."""

    batch_size: int = _field(32, "evaluation batch size")
    threshold: float = _field(0.5, "score above which a box counts as a detection (confusion matrix, pictures)")
    gallery: int = _field(16, "test images drawn with their true and predicted boxes")


CONFIG_CLASSES = {"model": DetectionModelConfig, "data": DetectionDataConfig, "eval": DetectionEvalConfig}


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


class DetectionTrainer(Trainer):
    """A Trainer that loads checkpoints through ``from_pretrained`` and whose evaluation keeps only the boxes.

    ``prediction_step`` returns ``(logits, pred_boxes)`` instead of every output the model has (hidden states,
    auxiliary outputs) and the labels as padded tensors (``stack_labels``), for ``DetectionMetrics``.
    """

    # Workaround for huggingface/transformers#48805 (open in 5.24): save_pretrained writes checkpoints in the Hub's
    # key format (RT-DETR: encoder.encoder.N..., fc1) while the Trainer loads them back into the model with a plain,
    # non-strict load_state_dict, so a resumed run or the best model silently kept random weights for every renamed
    # tensor. No public hook loads checkpoints; these two private ones are where the Trainer does it.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_converted(resume_from_checkpoint, model or self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self._load_converted(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _load_converted(self, folder: str, model: Any) -> bool:
        """Load ``folder``'s weights through ``from_pretrained`` (which converts their names); False if it cannot."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not (Path(folder) / "model.safetensors").is_file():
            return False
        model = self.accelerator.unwrap_model(model)
        with torch.random.fork_rng(
            devices=[]
        ):  # building a model draws random numbers; the run's stream must not move
            loaded = type(model).from_pretrained(folder, config=model.config, use_safetensors=True)
        if not frozen_batch_norms(model):  # a random backbone's norms train (settle_backbone), so they load so
            thaw_batch_norms(loaded)
        model.load_state_dict(loaded.state_dict())  # strict: every tensor, or an error
        logger.info("loaded the model weights of %s", folder)
        return True

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
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


@cached_per_run
def load_run_model(run_dir: str) -> tuple[Any, Any]:
    """The run's final model (on the inference device) and image processor, loaded as any transformers user would:
    the full model, or its base with the run's adapter on top."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    model = load_run_weights(AutoModelForObjectDetection, run_dir)
    return model.to(inference_device()).eval(), AutoImageProcessor.from_pretrained(run_dir)


def onnx_graphs(run_dir: Path, batch_size: int) -> list:
    """The detector as one ONNX graph: ``pixel_values`` (dynamic batch) -> ``logits``, ``pred_boxes`` (before
    post-processing, which stays with the image processor), checked on test images."""
    from transformers import AutoModelForObjectDetection

    from hftk.evaluation import load_run_recipe
    from hftk.export import NamedOutputs, OnnxGraph

    model = load_full_model(AutoModelForObjectDetection, run_dir).eval()
    processor = load_run_model(run_dir)[1]
    test = load_data(load_run_recipe(run_dir))["test"]
    images = [open_image_file(image) for image in test.select(range(min(batch_size, len(test))))["image"]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    module = NamedOutputs(model, ["pixel_values"], ["logits", "pred_boxes"])
    outputs = ["logits", "pred_boxes"]
    return [OnnxGraph("model", module, {"pixel_values": pixels}, outputs, {"pixel_values": {0: "batch"}})]


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """COCO mAP on ``split``; writes metrics.json, report.md, PR curves, confusion matrix, gallery, worst images."""
    from hftk.evaluation import detection as report

    model, processor = load_run_model(run_dir)
    data = load_data(recipe)[split]
    return report.evaluate_detector(run_dir, recipe, split, model, processor, data, HEADLINE)


def example_inputs(run_dir: Path, count: int) -> list[str]:
    """Test-split images saved by the evaluation, as file paths."""
    return sorted(str(p) for p in (Path(run_dir) / "eval" / "examples").glob("*.png"))[:count]


def predict(
    run_dir: Path,
    inputs: list,
    stream: Any = None,
    *,
    threshold: float = 0.5,
    out: str | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """Boxes for images (files, folders, PIL images) and videos: what ``pipeline("object-detection")`` returns.

    ``out`` writes the annotated result: an image file for one image, a folder for several, a video file
    (``.mp4``, ``.avi``) for one video. Videos report how many frames per second they were processed at.

    Returns:
        One ``{"input": name, "detections": [{"score", "label", "box": {xmin, ymin, xmax, ymax}}, ...]}`` per image;
        for a video ``{"input", "frames", "seconds", "fps", "video_fps", "detections": [one list per frame], "out"}``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise HftkError(f"--threshold {threshold}: expected a score between 0 and 1")
    if batch_size < 1:
        raise HftkError(f"--batch-size {batch_size}: expected a positive number")
    items = _expand_inputs(list(inputs))
    target = _out_target(out, items)
    detector = Detector(*load_run_model(run_dir))
    results, chunk = [], []
    for item in [*items, None]:  # None flushes the last chunk of images
        if item is not None and not is_video(item):
            chunk.append(item)
            if len(chunk) < batch_size:
                continue
        if chunk:
            results += _predict_images(detector, chunk, threshold, batch_size, target, stream)
            chunk = []
        if item is not None and is_video(item):
            results.append(_predict_video(detector, item, threshold, batch_size, target, stream))
    return results


def _expand_inputs(inputs: list) -> list:
    from hftk.data.images import IMAGE_EXTENSIONS

    expanded = []
    for item in inputs:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            files = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)
            if not files:
                raise HftkError(f"{item}: no images or videos in this folder")
            expanded += files
        else:
            expanded.append(item)
    return expanded


def _out_target(out: str | None, items: list) -> tuple[str, Path] | None:
    """("image" | "folder" | "video", path) for ``--out``, checked against the inputs before any work."""
    from hftk.data.images import IMAGE_EXTENSIONS

    if not out:
        return None
    path = Path(out)
    videos = [i for i in items if is_video(i)]
    if videos:
        if len(items) > 1:
            raise HftkError(f"--out {out}: annotate one video at a time (got {len(items)} inputs)")
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise HftkError(f"--out {out}: the input is a video; expected a video file name such as out.mp4")
        return "video", path
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        if len(items) > 1:
            raise HftkError(f"--out {out}: {len(items)} inputs; give a folder to write the annotated images into")
        return "image", path
    if path.exists() and not path.is_dir():
        raise HftkError(f"--out {out}: exists and is not a folder; expected an image file name or a folder")
    return "folder", path


def _name(item: Any, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"image {index}"


def _predict_images(detector, items: list, threshold: float, batch_size: int, target, stream) -> list[dict]:
    from hftk.evaluation.detection import draw_detections

    images = [open_image_file(item, "PNG, JPEG, ..., or a video: MP4, AVI") for item in items]
    found = detector(images, threshold=threshold, batch_size=batch_size)
    results = []
    for index, (item, image, detections) in enumerate(zip(items, images, found)):
        result = {"input": _name(item, index), "detections": detections}
        if target is not None:
            kind, path = target
            file = path if kind == "image" else path / f"{Path(_name(item, index)).stem}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            draw_detections(image, detections, detector.names).save(file)
            result["out"] = str(file)
        results.append(result)
        if stream is not None:
            shown = ", ".join(f"{d['label']} {d['score']:.2f} {tuple(d['box'].values())}" for d in detections)
            stream.write(f"{result['input']}: {shown or f'nothing scores {threshold:g} or more'}\n")
            stream.flush()
    return results


class Detector:
    """The run's model and processor answering as ``pipeline("object-detection")`` does, a batch at a time."""

    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model, processor
        self.names = [model.config.id2label[i] for i in range(len(model.config.id2label))]

    def __call__(self, images: list, threshold: float, batch_size: int) -> list[list[dict]]:
        from hftk.evaluation.detection import detect_like_pipeline

        found = []
        for start in range(0, len(images), batch_size):
            found += detect_like_pipeline(self.model, self.processor, images[start : start + batch_size], threshold)
        return found


def _predict_video(detector, path, threshold: float, batch_size: int, target, stream) -> dict:
    """Every frame of a video through the pipeline; frames per second cover decoding, the model and drawing."""
    import itertools
    import time

    from hftk.data.video import VideoWriter, open_video
    from hftk.evaluation.detection import draw_detections

    frames, video_fps, _ = open_video(path)
    writer = VideoWriter(target[1], video_fps) if target is not None else None
    detections: list[list[dict]] = []
    start = time.perf_counter()
    try:
        while chunk := list(itertools.islice(frames, batch_size)):
            for frame, found in zip(chunk, detector(chunk, threshold=threshold, batch_size=batch_size)):
                detections.append(found)
                if writer is not None:
                    writer.write(draw_detections(frame, found, detector.names))
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    if not detections:
        raise HftkError(f"{path}: no frames could be read from this video")
    fps = len(detections) / max(seconds, 1e-9)
    result = {
        "input": str(path),
        "frames": len(detections),
        "seconds": round(seconds, 3),
        "fps": round(fps, 2),
        "video_fps": video_fps,
        "detections": detections,
        "out": str(target[1]) if target is not None else None,
    }
    if stream is not None:
        boxes = sum(len(d) for d in detections)
        written = f"; annotated video: {target[1]}" if target is not None else ""
        stream.write(f"{path}: {len(detections)} frames, {fps:.1f} frames/s, {boxes} boxes{written}\n")
        stream.flush()
    return result


def demo(run_dir: Path):
    from hftk.demos.object_detection import build_demo

    return build_demo(Path(run_dir), predict, read_metrics(Path(run_dir)), HEADLINE, example_inputs(run_dir, 64))
