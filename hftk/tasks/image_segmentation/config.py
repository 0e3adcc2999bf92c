"""Image segmentation's facts and recipe sections: the segmenter, its data (shapes, masks folders, Hub), evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hftk.data.segmentation_transforms import SegmentationAugmentConfig
from hftk.data.shapes import ShapesConfig
from hftk.sections import DataConfig, EvalConfig, ModelConfig, setting

TASK = "image-segmentation"
HEADLINE = ["mean_iou", "pixel_accuracy", "mean_accuracy"]
_TINY_SEGFORMER = (
    "hidden_sizes: [8, 16, 16, 32], depths: [1, 1, 1, 1], num_attention_heads: [1, 1, 1, 1], decoder_hidden_size: 32"
)
TINY_OVERRIDES = [
    "model.name=segformer",
    f"model.model_args={{{_TINY_SEGFORMER}}}",
    "data.shapes={train: 48, validation: 8, test: 8, image_size: 64}",
    "data.image_size=64",
    "train.max_steps=8",
    "train.per_device_train_batch_size=8",
    "train.learning_rate=3e-3",
    "train.warmup_steps=0",
    "train.eval_strategy=steps",
    "train.eval_steps=4",
    "train.save_strategy=steps",
    "train.save_steps=4",
    "train.logging_steps=2",
    "eval.overlays=2",
]
# the distributed equivalence test: batch norms' running statistics follow one process under data parallelism, and
# stochastic depth draws per process; frozen norms (eval-mode statistics) and no drop path match across counts
DETERMINISTIC_OVERRIDES = [
    "model.batch_norm=frozen",
    f"model.model_args={{{_TINY_SEGFORMER}, drop_path_rate: 0.0, classifier_dropout_prob: 0.0}}",
]


@dataclass
class SegmentationModelConfig(ModelConfig):
    """The segmenter: a model type (segformer, mobilevit, upernet...) from its config, a Hub id or a local folder."""

    name: str = setting(
        "segformer", "segmenter type (segformer, mobilevit, mobilevitv2, upernet...), Hub id or folder"
    )
    backbone: str | None = setting(
        None, "backbone of an upernet built from its config: timm name or transformers type", per_architecture=True
    )
    backbone_args: dict = setting(
        {}, "config fields of a transformers backbone (or timm kwargs), out_indices", per_architecture=True
    )
    backbone_pretrained: bool = setting(
        False,
        "a timm backbone's pretrained weights: the Hub's (safetensors), offline a pip package's (efficientnet_lite0)",
        per_architecture=True,
    )
    batch_norm: Literal["train", "frozen"] = setting(
        "train", "batch norms: train (batch statistics), or frozen (kept statistics; small batches, many processes)"
    )


@dataclass
class SegmentationDataConfig(DataConfig):
    """Images with class maps: embedded shapes, an images + masks folder, a save_to_disk folder or a Hub dataset."""

    name: str | None = setting("shapes", "shapes (embedded, synthetic) or a Hub dataset id (e.g. scene_parse_150)")
    image_column: str = setting("image", "column holding the images (Hub, save_to_disk)")
    mask_column: str = setting("annotation", "column holding the masks (Hub, save_to_disk): scene_parse_150's name")
    label_names: list[str] | None = setting(None, "names of class ids 0..K-1 (else labels_file, palette, the data's)")
    labels_file: str | None = setting(
        None, 'json of class names ({"0": "wall", ...} or a list): a path, or hf://datasets/<owner>/<repo>/<file>'
    )
    palette: dict | None = setting(
        None, "RGB masks: class name -> [r, g, b], in class-id order (_ignore: the colour of ignored pixels)"
    )
    ignore_index: int = setting(255, "mask value of pixels that count nowhere (unlabelled, void)")
    reduce_labels: bool = setting(False, "mask 0 is 'unlabelled' (ignored) and ids 1..K are classes 0..K-1 (ADE20k)")
    image_size: int | None = setting(None, "square side the processor resizes images to; None: the model's own")
    shapes: ShapesConfig = setting(ShapesConfig(), "the embedded shapes set")
    augment: SegmentationAugmentConfig = setting(SegmentationAugmentConfig(), "training augmentation")


@dataclass
class SegmentationEvalConfig(EvalConfig):
    """Evaluation: mean IoU on the split; overlays of the best and worst images, a per-class IoU chart."""

    batch_size: int = setting(16, "evaluation batch size")
    overlays: int = setting(6, "test images drawn (image, truth, prediction) among the best and among the worst")
