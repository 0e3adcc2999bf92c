"""Object detection's facts and recipe sections: detector, data (shapes, COCO, Hub) and evaluation settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hftk.data.detection_transforms import DetectionAugmentConfig
from hftk.data.shapes import ShapesConfig
from hftk.sections import DataConfig, EvalConfig, ModelConfig, setting

TASK = "object-detection"
TINY_OVERRIDES = [
    "data.shapes={train: 48, validation: 8, test: 8, image_size: 64}",
    "data.image_size=64",
    # the default's RT-DETR with a tiny random ResNet-D for the ImageNet Lite0 (tests/test_object_detection.py and
    # tests/test_packaged.py load Lite0 into detectors): seconds per run
    "model.backbone=rt_detr_resnet",
    "model.backbone_pretrained=false",
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


@dataclass
class DetectionModelConfig(ModelConfig):
    """The detector: a model type (rt_detr, d_fine, detr...) from its config, a Hub id or a local folder."""

    name: str = setting(
        "rt_detr", "detector type (rt_detr, d_fine, detr, deformable_detr, yolos...), Hub id or folder"
    )
    backbone: str | None = setting(
        None, "backbone of a model built from its config: timm name or transformers type", per_architecture=True
    )
    backbone_args: dict = setting(
        {}, "config fields of a transformers backbone (or timm kwargs), out_indices", per_architecture=True
    )
    backbone_pretrained: bool = setting(
        False,
        "a timm backbone's pretrained weights: the Hub's (safetensors), offline a pip package's (efficientnet_lite0)",
        per_architecture=True,
    )
    auxiliary_loss: bool | None = setting(True, "losses at every decoder layer (DETR trains so); None: the model's")
    backbone_batch_norm: Literal["auto", "train", "frozen"] = setting(
        "auto",
        "backbone batch norms: auto trains a random or ImageNet backbone's, keeps a detector checkpoint's frozen",
    )


@dataclass
class DetectionDataConfig(DataConfig):
    """Boxes: embedded shapes, COCO json (file or folder layouts), an imagefolder with metadata.jsonl, or the Hub."""

    name: str | None = setting("shapes", "shapes (embedded, synthetic) or a Hub dataset id (e.g. cppe-5)")
    images: str | None = setting(None, "image folder of a COCO json given as data.path (default: beside the json)")
    bbox_format: Literal["coco", "pascal_voc", "yolo"] = setting(
        "coco",
        "boxes of metadata.jsonl / Hub data: coco [x,y,w,h] px, pascal_voc [x1,y1,x2,y2] px, yolo [cx,cy,w,h] 0-1",
    )
    image_column: str = setting("image", "column holding the images (Hub, imagefolder)")
    objects_column: str = setting("objects", "column holding the boxes and their categories (Hub, imagefolder)")
    bbox_key: str = setting("bbox", "key of the boxes inside objects_column")
    category_key: str | None = setting(None, "key of the categories inside objects_column (None: category(ies)/label)")
    label_names: list[str] | None = setting(None, "names of integer category ids 0..K-1 when the data has none")
    image_size: int | None = setting(None, "square side the processor resizes images to; None: the model's own")
    on_bad_image: Literal["error", "skip"] = setting("error", "an unreadable image: stop naming it, or skip it")
    on_bad_box: Literal["drop", "error"] = setting(
        "drop", "a box with a negative size or a non-finite number: drop it (counted in the log), or stop naming it"
    )
    shapes: ShapesConfig = setting(ShapesConfig(), "the embedded shapes set")
    augment: DetectionAugmentConfig = setting(DetectionAugmentConfig(), "training augmentation")


@dataclass
class DetectionEvalConfig(EvalConfig):
    """Evaluation: COCO mAP on the split; pictures of what the model finds and misses."""

    batch_size: int = setting(32, "evaluation batch size")
    threshold: float = setting(0.5, "score above which a box counts as a detection (confusion matrix, pictures)")
    gallery: int = setting(16, "test images drawn with their true and predicted boxes")
