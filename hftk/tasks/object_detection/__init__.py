"""Object detection: the DETR family (RT-DETR, D-FINE, DETR, Conditional/Deformable DETR, YOLOS...) on COCO-style data.

``config`` holds the task's facts and recipe sections, ``training`` what trains a run (data, detector, Trainer with
batched COCO mAP), ``serving`` what serves one (evaluation report, predict on images and videos, ONNX, the demo).
Data: the embedded ``shapes`` set, COCO json in its common layouts, an imagefolder with ``metadata.jsonl`` or a Hub
dataset (``hftk/data/detection.py``). Models: ``hftk/models/detection.py``. This module declares the task's spec.
"""

from transformers import TrainingArguments

from hftk import runs
from hftk.sections import RECIPES_DIR
from hftk.tasks.contract import TaskSpec
from hftk.tasks.object_detection import serving, training
from hftk.tasks.object_detection.config import (
    DETERMINISTIC_OVERRIDES,
    HEADLINE,
    TASK,
    TINY_OVERRIDES,
    DetectionDataConfig,
    DetectionEvalConfig,
    DetectionModelConfig,
)

SPEC = TaskSpec(
    task=TASK,
    pipeline_tag="object-detection",
    auto_model="AutoModelForObjectDetection",
    default_recipe=RECIPES_DIR / TASK / "rtdetr-lite0-shapes.yaml",
    headline=HEADLINE,
    config_classes={"model": DetectionModelConfig, "data": DetectionDataConfig, "eval": DetectionEvalConfig},
    training_arguments=TrainingArguments,
    pipeline_example='print(pipe("image.png", threshold=0.5))  # [{"score": ..., "label": ..., "box": {...}}, ...]',
    tiny_overrides=TINY_OVERRIDES,
    load_data=training.load_data,
    build_model=training.build_model,
    prepare_datasets=training.prepare_datasets,
    build_trainer=training.build_trainer,
    evaluate_report=serving.evaluate_report,
    example_inputs=runs.saved_examples,
    predict=serving.predict,
    demo=serving.demo,
    train_defaults={"metric_for_best_model": "map", "batch_eval_metrics": True},
    deterministic_overrides=DETERMINISTIC_OVERRIDES,
    model_parts=training.model_parts,
    onnx_graphs=serving.onnx_graphs,
)
