"""Image classifiers: any timm architecture (wrapped as a transformers model) or transformers ViT/ResNet/ConvNeXt.

``model.name`` is looked up in this order: a local folder (``save_pretrained`` or timm's Hub layout), a timm
architecture (``resnet18``, ``vit_tiny_patch16_224.augreg_in21k``), a transformers model type (``vit``,
``resnet``, ``convnext``: random init from a config), and finally a Hub id. Every result saves, reloads and
runs in ``pipeline("image-classification")`` like any transformers model, with ``id2label`` wired.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    TimmWrapperImageProcessor,
    ViTImageProcessor,
)

from hftk.config import ModelConfig
from hftk.errors import HftkError

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224


def build_image_classifier(cfg: ModelConfig, labels: list[str], image_size: int | None) -> tuple[Any, Any]:
    """Build ``(model, processor)`` for ``labels`` at ``image_size`` (None: the model's own size)."""
    if cfg.model_args.get("in_chans", 3) != 3:
        raise HftkError("model.model_args.in_chans: hftk feeds RGB images (grey ones are converted); expected 3")
    label_kwargs = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    name = cfg.name
    if not name:
        raise HftkError("model.name: not set; expected a timm architecture (resnet18), a model type (vit) or a folder")
    import timm

    if Path(name).expanduser().is_dir():
        model, processor = _from_pretrained(cfg, str(Path(name).expanduser()), label_kwargs)
    elif timm.is_model(name):
        model, processor = _build_timm(cfg, label_kwargs, image_size)
    elif name in CONFIG_MAPPING:
        model, processor = _build_from_config(cfg, label_kwargs, image_size)
    elif "/" in name:
        model, processor = _from_pretrained(cfg, name, label_kwargs)
    else:
        candidates = [*timm.list_models(), *CONFIG_MAPPING.keys()]
        hint = difflib.get_close_matches(name, candidates, n=1, cutoff=0.7)
        guess = f"did you mean '{hint[0]}'? " if hint else ""
        raise HftkError(
            f"model.name '{name}': not a timm architecture, transformers model type, local folder or Hub id; {guess}"
            "(`timm.list_models()` lists timm names)"
        )
    if cfg.freeze == "backbone":
        freeze_backbone(model)
    return model, processor


def _build_timm(cfg: ModelConfig, label_kwargs: dict, image_size: int | None) -> tuple[Any, Any]:
    import timm

    try:
        timm_model = timm.create_model(
            cfg.name, pretrained=cfg.pretrained, num_classes=label_kwargs["num_labels"], **cfg.model_args
        )
    except TypeError as err:
        raise HftkError(f"model.model_args: {err} (they are passed to timm.create_model('{cfg.name}'))") from None
    except Exception as err:  # download failures surface as OSError, LocalEntryNotFoundError, ...
        if not cfg.pretrained:
            raise
        raise HftkError(
            f"model.name '{cfg.name}' with model.pretrained=true: could not fetch the weights "
            f"({str(err).splitlines()[0][:160]}); connect to the Hub once, or set model.name to a local folder"
        ) from None
    pretrained_cfg = {k: v for k, v in timm_model.pretrained_cfg.items() if _jsonable(v)}
    if image_size:
        pretrained_cfg.update(input_size=[3, image_size, image_size], crop_pct=1.0)
    config = TimmWrapperConfig(
        architecture=cfg.name.split(".")[0],
        model_args=dict(cfg.model_args) or None,
        pretrained_cfg=pretrained_cfg,
        **label_kwargs,
    )
    model = TimmWrapperForImageClassification(config)
    # The wrapper re-initialises weights the transformers way (std 0.02); keep timm's own init or weights.
    model.timm_model.load_state_dict(timm_model.state_dict())
    processor = TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg, architecture=config.architecture)
    return model, processor


def _build_from_config(cfg: ModelConfig, label_kwargs: dict, image_size: int | None) -> tuple[Any, Any]:
    size = image_size or DEFAULT_IMAGE_SIZE
    overrides = {**cfg.model_args, **label_kwargs}
    config_cls = CONFIG_MAPPING[cfg.name]
    if "image_size" in getattr(config_cls, "__dataclass_fields__", {}) or hasattr(config_cls(), "image_size"):
        overrides.setdefault("image_size", size)
    try:
        config = AutoConfig.for_model(cfg.name, **overrides)
        model = AutoModelForImageClassification.from_config(config)
    except (TypeError, ValueError, IndexError, KeyError) as err:  # inconsistent config fields
        raise HftkError(
            f"model.model_args for '{cfg.name}': {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from None
    processor = ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    return model, processor


def _from_pretrained(cfg: ModelConfig, name: str, label_kwargs: dict) -> tuple[Any, Any]:
    hub = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        if cfg.pretrained:
            model = AutoModelForImageClassification.from_pretrained(
                name, ignore_mismatched_sizes=True, use_safetensors=True, **label_kwargs, **hub
            )
        else:
            config = AutoConfig.from_pretrained(name, **label_kwargs, **hub)
            model = AutoModelForImageClassification.from_config(config, trust_remote_code=cfg.trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(name, **hub)
    except (OSError, ValueError) as err:
        raise HftkError(
            f"model.name '{name}': cannot load it ({str(err).strip().splitlines()[0][:200]}); expected a folder "
            "written "
            "by save_pretrained (with model.safetensors) or a reachable Hub id"
        ) from None
    return model, processor


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, tuple, dict, type(None)))


def head_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the classification head's parameters (timm's classifier or transformers' ``classifier``)."""
    if hasattr(model, "timm_model"):
        return {id(p) for p in model.timm_model.get_classifier().parameters()}
    return {id(p) for n, p in model.named_parameters() if n.startswith("classifier")}


def freeze_backbone(model: torch.nn.Module) -> None:
    """Train only the head (transfer learning); the count of what stays trainable is logged by training."""
    head = head_parameters(model)
    if not head:
        raise HftkError("model.freeze=backbone: could not find the classification head of this model")
    for p in model.parameters():
        p.requires_grad = id(p) in head


def processor_spec(processor: Any) -> tuple[int, list[float], list[float]]:
    """(square size, mean, std) the processor feeds the model; training augmentation matches it."""
    if isinstance(processor, TimmWrapperImageProcessor):
        data = processor.data_config
        return int(data["input_size"][-1]), list(data["mean"]), list(data["std"])
    size = processor.size
    side = size.get("height") or size.get("shortest_edge") or DEFAULT_IMAGE_SIZE
    mean = processor.image_mean if getattr(processor, "do_normalize", True) else [0.0, 0.0, 0.0]
    std = processor.image_std if getattr(processor, "do_normalize", True) else [1.0, 1.0, 1.0]
    return int(side), list(mean), list(std)
