"""Image segmentation (semantic): SegFormer, MobileViT/MobileViTV2 + DeepLabV3, UperNet (ConvNeXt or timm backbones)...

``config`` holds the task's facts and recipe sections, ``training`` what trains a run (data, segmenter, Trainer with
batched mean IoU), ``serving`` what serves one (evaluation report, predict with class areas and overlays, ONNX, the
demo). Data: the embedded ``shapes`` scenes with class maps, images + masks folders, ``save_to_disk`` folders or Hub
datasets (``hftk/data/segmentation.py``). Models: ``hftk/models/segmentation.py``. This module declares the spec.
"""

from transformers import TrainingArguments

from hftk import runs
from hftk.sections import RECIPES_DIR
from hftk.tasks.contract import TaskSpec
from hftk.tasks.image_segmentation import serving, training
from hftk.tasks.image_segmentation.config import (
    DETERMINISTIC_OVERRIDES,
    HEADLINE,
    TASK,
    TINY_OVERRIDES,
    SegmentationDataConfig,
    SegmentationEvalConfig,
    SegmentationModelConfig,
)

SPEC = TaskSpec(
    task=TASK,
    pipeline_tag="image-segmentation",
    auto_model="AutoModelForSemanticSegmentation",
    default_recipe=RECIPES_DIR / TASK / "upernet-lite0-shapes.yaml",
    headline=HEADLINE,
    config_classes={"model": SegmentationModelConfig, "data": SegmentationDataConfig, "eval": SegmentationEvalConfig},
    training_arguments=TrainingArguments,
    pipeline_example='print(pipe("image.png"))  # [{"score": None, "label": ..., "mask": <PIL image>}, ...]',
    tiny_overrides=TINY_OVERRIDES,
    load_data=training.load_data,
    build_model=training.build_model,
    prepare_datasets=training.prepare_datasets,
    build_trainer=training.build_trainer,
    evaluate_report=serving.evaluate_report,
    example_inputs=runs.saved_examples,
    predict=serving.predict,
    demo=serving.demo,
    train_defaults={"metric_for_best_model": "mean_iou", "batch_eval_metrics": True},
    deterministic_overrides=DETERMINISTIC_OVERRIDES,
    model_parts=training.model_parts,
    onnx_graphs=serving.onnx_graphs,
)
