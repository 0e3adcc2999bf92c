"""Semantic segmenters: the ``AutoModelForSemanticSegmentation`` family (SegFormer, MobileViT/MobileViTV2 with their
DeepLabV3 head, UperNet, BEiT, DPT...) from a config, a Hub id (``nvidia/mit-b0``: a pretrained encoder, a new head)
or a local folder, through the shared resolver, with ``id2label`` wired and the loss ignoring ``data.ignore_index``.

``model.backbone`` puts a backbone under an UperNet built from its config: a timm architecture through transformers'
``TimmBackbone`` (``efficientnet_lite0``; ``model.backbone_pretrained`` loads its ImageNet weights, offline from a pip
package) or a transformers backbone type (``convnext``) with ``model.backbone_args`` as its config fields. A model
built from a config gets the image processor its type has in transformers (SegFormer's for UperNet), sized to
``data.image_size``; a checkpoint brings its own. ``model.batch_norm=frozen`` keeps every batch norm's statistics
(torchvision's ``FrozenBatchNorm2d``; a run folder still loads as the plain model).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSemanticSegmentation

from hftk import compat
from hftk.errors import HftkError, error_line
from hftk.models import check_model_args, load_model
from hftk.models.auto import is_checkpoint
from hftk.models.parts import ModelParts, by_pattern
from hftk.models.parts import model_parts as read_parts
from hftk.models.vision import TimmWeights, timm_weights

logger = logging.getLogger(__name__)

HEADS = ("decode_head", "auxiliary_head", "segmentation_head")  # what predicts classes; trains in full
IGNORE_FIELDS = ("semantic_loss_ignore_index", "loss_ignore_index")  # SegFormer/MobileViT/BEiT..., UperNet
# the backbone's blocks, input side first, per architecture (transformers 5 names): SegFormer's stages (a stage's
# patch embedding, blocks and norm together), MobileViT(V2)'s layers, a timm EfficientNet's (stage, block), a
# transformers ConvNeXt's (stage, layer)
BLOCKS = (
    r"^segformer\.stages\.(\d+)\.",
    r"^mobilevit(?:v2)?\.encoder\.layer\.(\d+)\.",
    r"^backbone\._backbone\.blocks\.(\d+)\.(\d+)\.",
    r"^backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.",
)


def segmentation_model_types() -> list[str]:
    """Model types ``AutoModelForSemanticSegmentation`` builds (its public mapping, keyed by config classes)."""
    from transformers import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING

    return sorted(config.model_type for config in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING.keys())


def build_segmenter(cfg: Any, labels: list[str], image_size: int | None, ignore_index: int) -> tuple[Any, Any]:
    """``(model, image processor)`` for ``labels``; ``image_size`` fixes the square input side (None: the model's)."""
    fields: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    checkpoint = is_checkpoint(cfg.name)
    weights = None  # a timm backbone's pretrained weights, loaded once the model is built
    if not checkpoint and cfg.name in segmentation_model_types():
        backbone_fields, weights = _backbone_fields(cfg)
        fields.update(backbone_fields)
    elif cfg.backbone or cfg.backbone_args or cfg.backbone_pretrained:
        raise HftkError("model.backbone: only an upernet built from its config (model.name=upernet) takes one")
    model = load_model(
        cfg,
        AutoModelForSemanticSegmentation,
        fields,
        prepare_config=lambda config: _check_segmenter(config, cfg.name),
        candidates=segmentation_model_types(),
    )
    _check_segmenter(model.config, cfg.name)
    for name in IGNORE_FIELDS:  # the losses read it at every forward
        if hasattr(model.config, name):
            setattr(model.config, name, ignore_index)
    if weights is not None:
        from hftk.models.vision import load_backbone_weights  # timm weights into a transformers backbone

        load_backbone_weights(model, weights)
    if cfg.batch_norm == "frozen":
        freeze_batch_norms(model)
    processor = build_processor(cfg, model, image_size, weights)
    return model, processor


def _check_segmenter(config: Any, name: str) -> None:
    if config.model_type not in segmentation_model_types():
        raise HftkError(
            f"model.name '{name}': a {config.model_type} model is not a semantic segmenter; expected one of "
            f"{', '.join(segmentation_model_types())} (or a checkpoint of one)"
        )


def _backbone_fields(cfg: Any) -> tuple[dict[str, Any], TimmWeights | None]:
    """Config fields that put ``model.backbone`` under an UperNet, and a timm backbone's pretrained weights."""
    if not cfg.backbone:
        if cfg.backbone_args or cfg.backbone_pretrained:
            raise HftkError("model.backbone_args / model.backbone_pretrained: set model.backbone too (e.g. convnext)")
        return {}, None
    if "backbone_config" not in AutoConfig.for_model(cfg.name).to_dict():
        raise HftkError(f"model.backbone: a {cfg.name} model has no separate backbone; remove model.backbone")
    import timm
    from transformers import CONFIG_MAPPING

    args = {k: v for k, v in cfg.backbone_args.items() if k != "out_indices"}
    out_indices = list(cfg.backbone_args.get("out_indices", [1, 2, 3, 4]))  # strides 4 to 32, as UperNet reads them
    weights = None
    if timm.is_model(cfg.backbone):
        if cfg.backbone_pretrained:
            weights = timm_weights(cfg.backbone, None, "model.backbone")
        backbone = {
            "model_type": "timm_backbone",
            "backbone": cfg.backbone,
            "use_pretrained_backbone": False,  # loaded by build_segmenter: safetensors only, every tensor checked
            "num_channels": 3,
            "out_indices": out_indices,
            **args,
        }
    elif cfg.backbone in CONFIG_MAPPING:
        if cfg.backbone_pretrained:
            raise HftkError(
                f"model.backbone_pretrained: only timm backbones load weights this way; for a transformers "
                f"'{cfg.backbone}' start from a checkpoint (model.name=<Hub id or folder>, model.pretrained=true)"
            )
        default = AutoConfig.for_model(cfg.backbone)
        check_model_args(default, args, f"backbone {cfg.backbone}")
        # ConvNeXt's config (5.24) defaults hidden_sizes to a tuple that its model then adds to a list: pass lists
        sizes = {k: list(v) for k, v in default.to_dict().items() if k in ("hidden_sizes", "depths") and k not in args}
        backbone = {"model_type": cfg.backbone, **sizes, **args, "out_indices": out_indices}
    else:
        raise HftkError(
            f"model.backbone '{cfg.backbone}': neither a timm architecture (efficientnet_lite0) nor a transformers "
            "backbone type (convnext, resnet)"
        )
    return {"backbone_config": backbone}, weights


def build_processor(cfg: Any, model: Any, image_size: int | None, weights: TimmWeights | None = None) -> Any:
    """The checkpoint's image processor, or the one transformers pairs with the model type (SegFormer's for UperNet),
    resized to ``image_size``; normalised as a pretrained timm backbone was trained."""
    import transformers

    if is_checkpoint(cfg.name):
        source = str(Path(cfg.name).expanduser()) if Path(cfg.name).expanduser().is_dir() else cfg.name
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(
                source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise HftkError(f"model.name '{cfg.name}': no image processor with it ({error_line(err)})") from None
    else:
        names = compat.image_processor_names(model.config.model_type) or compat.image_processor_names("segformer")
        processor = getattr(transformers, names.get("torchvision") or names["pil"])()
    if not hasattr(processor, "post_process_semantic_segmentation"):
        raise HftkError(f"model.name '{cfg.name}': its image processor cannot post-process semantic segmentation")
    if image_size:
        processor.size = {"height": image_size, "width": image_size}
        if getattr(processor, "crop_size", None):  # MobileViT crops after resizing: the same square keeps it all
            processor.crop_size = {"height": image_size, "width": image_size}
    if weights is not None:
        processor.do_normalize, processor.image_mean, processor.image_std = True, weights.mean, weights.std
    return processor


def freeze_batch_norms(model: torch.nn.Module) -> int:
    """Swap every ``BatchNorm2d`` for torchvision's ``FrozenBatchNorm2d`` with its statistics and affine values
    (the same state-dict names: a saved run loads as the plain model). Returns how many were swapped."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    swapped = 0
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(module, key).detach())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, frozen)
            swapped += 1
    logger.info("model.batch_norm=frozen: %d batch norms keep their statistics and scales", swapped)
    return swapped


def segmentation_parts(model: torch.nn.Module) -> ModelParts:
    """The backbone as layers (stem first, then its stages or blocks) and the head: the decode, auxiliary and
    segmentation heads. Architectures without a known block pattern get the generic reading."""
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n.split(".")[0] in HEADS]
    body = [n for n in names if n.split(".")[0] not in HEADS]
    for pattern in BLOCKS:
        if any(re.search(pattern, n) for n in body):
            return ModelParts(by_pattern(body, pattern), head)
    return read_parts(model, HEADS)
