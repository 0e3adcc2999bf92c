"""Detectors: the DETR family of ``AutoModelForObjectDetection`` (DETR, Conditional/Deformable/DAB-DETR, RT-DETR v1/v2,
D-FINE, DEIMv2, YOLOS, ...) from a config, a Hub id or a local folder, through the shared resolver.

``model.backbone`` swaps the backbone of a model built from its config: a timm architecture (``resnet18``) or a
transformers backbone type (``resnet``, ``rt_detr_resnet``, ``hgnet_v2``) with ``model.backbone_args`` as its
config fields; the stages the detector reads and the channels its encoder expects are wired from the backbone.

transformers freezes parts of some backbones when it builds the model, and one of its rules misfires: with a
transformers ResNet backbone, DETR, Conditional and Deformable DETR (5.x) keep only parameters whose names contain
``stage.1``/``stage.2``/``stage.3`` trainable, but ResNet names them ``stages.N``, so the *whole* backbone is
frozen and a random-init model trains around a random CNN. ``settle_backbone`` undoes it: a backbone without
pretrained weights trains whole, a pretrained one trains as DETR meant (all but the stem and first stage). Backbone
batch norms that transformers would freeze are kept trainable for a random init for the same reason (a frozen
batch norm of a random init is an identity): RT-DETR-style models through their config, DETR, Conditional and
Deformable DETR (which always swap them for frozen ones) by swapping them back. The log says what trains, part by part.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection

from hftk import compat
from hftk.errors import HftkError, error_line
from hftk.models import check_model_args, load_model
from hftk.models.auto import is_checkpoint
from hftk.models.parts import ModelParts, by_pattern
from hftk.models.parts import model_parts as read_parts
from hftk.models.vision import TimmWeights, load_backbone_weights, timm_weights

logger = logging.getLogger(__name__)

# Model types without an image processor of their own in transformers' auto map; their checkpoints use these.
PROCESSORS = {
    "rt_detr_v2": "RTDetrImageProcessor",
    "d_fine": "RTDetrImageProcessor",
    "dab-detr": "ConditionalDetrImageProcessor",
}
# Detectors whose constructor applies DETR's backbone-freezing rule.
DETR_FREEZING = ("detr", "conditional_detr", "deformable_detr", "dab-detr", "table-transformer")
# Detectors whose encoder input channels must match the backbone's stages.
CHANNEL_FIELDS = ("encoder_in_channels",)


def detection_model_types() -> list[str]:
    return compat.object_detection_model_types()


def build_detector(cfg: Any, labels: list[str], image_size: int | None) -> tuple[Any, Any]:
    """``(model, image processor)`` for ``labels``; ``image_size`` fixes the square input side (None: the model's)."""
    fields: dict[str, Any] = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    checkpoint = is_checkpoint(cfg.name)
    weights = None  # a timm backbone's pretrained weights, loaded here (safetensors, Hub or pip package)
    if not checkpoint and cfg.name in detection_model_types():
        backbone_fields, weights = _backbone_fields(cfg)
        fields.update(backbone_fields)
    if cfg.auxiliary_loss is not None:
        fields["auxiliary_loss"] = cfg.auxiliary_loss
    random_backbone = not (cfg.pretrained and checkpoint) and not cfg.backbone_pretrained
    norms = cfg.backbone_batch_norm
    # auto: a detector checkpoint keeps its frozen norms (DETR's design); a random or ImageNet backbone trains them:
    # with RT-DETR on shapes, 400 steps, Lite0's ImageNet norms frozen reached mAP 0.021, trained 0.328
    train_norms = (random_backbone or cfg.backbone_pretrained) if norms == "auto" else norms == "train"

    def prepare(config: Any) -> None:
        _check_detector(config, cfg.name)
        if hasattr(config, "freeze_backbone_batch_norms") and "freeze_backbone_batch_norms" not in cfg.model_args:
            if norms != "auto" or train_norms:  # else the checkpoint's own choice
                config.freeze_backbone_batch_norms = not train_norms  # frozen norms of a random init: identities
        if image_size and config.model_type == "yolos":
            config.image_size = [image_size, image_size]

    model = load_model(
        cfg, AutoModelForObjectDetection, fields, prepare_config=prepare, candidates=detection_model_types()
    )
    _check_detector(model.config, cfg.name)
    if weights is not None:
        load_backbone_weights(model, weights)
    settle_backbone(model, pretrained=not random_backbone, train_norms=train_norms)
    processor = build_processor(cfg, model, image_size)
    if weights is not None:  # feed the backbone what it was trained on (RT-DETR's processor only rescales)
        processor.do_normalize, processor.image_mean, processor.image_std = True, weights.mean, weights.std
    return model, processor


def _check_detector(config: Any, name: str) -> None:
    if config.model_type not in detection_model_types():
        raise HftkError(
            f"model.name '{name}': a {config.model_type} model is not an object detector; expected one of "
            f"{', '.join(detection_model_types())} (or a checkpoint of one)"
        )


def _backbone_fields(cfg: Any) -> tuple[dict[str, Any], TimmWeights | None]:
    """Config fields that put ``model.backbone`` under the detector ``cfg.name`` (none when it is not set), and the
    pretrained weights of a timm backbone to load once the model is built."""
    if not cfg.backbone:
        if cfg.backbone_args or cfg.backbone_pretrained:
            raise HftkError("model.backbone_args / model.backbone_pretrained: set model.backbone too (e.g. resnet18)")
        return {}, None
    import timm
    from transformers import CONFIG_MAPPING

    default = AutoConfig.for_model(cfg.name).backbone_config
    if default is None:
        raise HftkError(f"model.backbone: a {cfg.name} model has no separate backbone; remove model.backbone")
    out_indices = list(cfg.backbone_args.get("out_indices", getattr(default, "out_indices", None) or [4]))
    weights = None
    if timm.is_model(cfg.backbone):
        if cfg.backbone_pretrained:
            weights = timm_weights(cfg.backbone, None, "model.backbone")
        backbone = {
            "model_type": "timm_backbone",
            "backbone": cfg.backbone,
            "use_pretrained_backbone": False,  # hftk loads them (build_detector): safetensors only, every tensor
            "num_channels": 3,
            "out_indices": out_indices,
            **{k: v for k, v in cfg.backbone_args.items() if k != "out_indices"},
        }
        channels = _timm_channels(cfg.backbone, out_indices)
    elif cfg.backbone in CONFIG_MAPPING:
        if cfg.backbone_pretrained:
            raise HftkError(
                f"model.backbone_pretrained: only timm backbones load weights this way; for a transformers "
                f"'{cfg.backbone}' start from a checkpoint (model.name=<Hub id or folder>, model.pretrained=true)"
            )
        args = {k: v for k, v in cfg.backbone_args.items() if k not in ("out_indices", "out_features")}
        if "stage_out_channels" in args and "hidden_sizes" not in args:  # HGNetV2 reports hidden_sizes as channels
            args["hidden_sizes"] = list(args["stage_out_channels"])
        check_model_args(AutoConfig.for_model(cfg.backbone), args, f"backbone {cfg.backbone}")
        backbone = {"model_type": cfg.backbone, **args, "out_indices": out_indices}
        channels = _transformers_channels(backbone)
    else:
        raise HftkError(
            f"model.backbone '{cfg.backbone}': neither a timm architecture (resnet18) nor a transformers backbone "
            "type (resnet, rt_detr_resnet, hgnet_v2)"
        )
    fields: dict[str, Any] = {"backbone_config": backbone}
    for name in CHANNEL_FIELDS:
        if name in AutoConfig.for_model(cfg.name).to_dict() and name not in cfg.model_args:
            fields[name] = channels
    return fields, weights


def _timm_channels(name: str, out_indices: list[int]) -> list[int]:
    import timm

    model = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices))
    return list(model.feature_info.channels())


def _transformers_channels(backbone: dict) -> list[int]:
    """The channels of the stages the detector reads, measured on a forward pass (some configs misreport them)."""
    from transformers import AutoBackbone

    try:
        model = AutoBackbone.from_config(AutoConfig.for_model(**backbone)).eval()
        with torch.no_grad():
            features = model(torch.zeros(1, 3, 64, 64)).feature_maps
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
        raise HftkError(f"model.backbone '{backbone['model_type']}': cannot build it ({error_line(err)})") from None
    return [int(f.shape[1]) for f in features]


def backbone_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The backbone's parameters: under a ``backbone`` module, or YOLOS's ViT (all of it but the detection tokens)."""
    named = list(model.named_parameters())
    inside = [(n, p) for n, p in named if ".backbone." in f".{n}"]
    if inside or getattr(model.config, "model_type", "") != "yolos":
        return inside
    return [(n, p) for n, p in named if n.startswith("vit.") and "detection_tokens" not in n]


def detection_parts(model: torch.nn.Module) -> ModelParts:
    """The backbone read as layers (stem first, then one layer per block of its stages); the rest is the head."""
    backbone = [n for n, _ in backbone_parameters(model)]
    if not backbone:
        raise HftkError(f"{model.config.model_type}: no backbone found to freeze or to give its own learning rate")
    inside = set(backbone)
    layers = read_parts(model).layers
    ordered = [[n for n in layer if n in inside] for layer in layers]
    stem, blocks = ordered[0], [layer for layer in ordered[1:] if layer]
    if not blocks:  # a timm backbone: no ModuleList stack, its blocks are numbered blocks.<stage>.<block>
        stem, *blocks = by_pattern(backbone, r"\bblocks\.(\d+)\.(\d+)\.")
    head = [n for n, _ in model.named_parameters() if n not in inside]
    return ModelParts([stem, *blocks], head, adapter_head=class_layers(model))


def class_layers(model: torch.nn.Module) -> list[str]:
    """Parameters of the layers whose size is the label count (class logits, denoising label embeddings)."""
    labels = model.config.num_labels
    names = []
    for prefix, module in model.named_modules():
        sized = (isinstance(module, torch.nn.Linear) and module.out_features == labels) or (
            isinstance(module, torch.nn.Embedding) and module.num_embeddings in (labels, labels + 1)
        )
        if sized:
            names += [f"{prefix}.{n}" for n, _ in module.named_parameters()]
    return names


def frozen_batch_norms(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """``(parent, name, module)`` of each frozen batch norm that transformers put in a DETR-family backbone."""
    return [
        (parent, name, child)
        for prefix, parent in model.named_modules()
        for name, child in parent.named_children()
        if "backbone" in f"{prefix}.{name}" and compat.is_frozen_batch_norm(child)
    ]


def thaw_batch_norms(model: torch.nn.Module) -> int:
    """Put a trainable ``BatchNorm2d`` (same statistics and affine) in place of each frozen one; return how many.

    DETR, Conditional and Deformable DETR swap every backbone batch norm for a frozen one, which is right for
    pretrained weights and wrong for a random init: there it is an identity, and the CNN trains unnormalised. The
    saved weights keep the frozen norm's names (weight, bias, running_mean, running_var), so ``from_pretrained``
    and ``pipeline`` reload them into frozen norms that compute what the trained norms compute in eval mode.
    """
    found = frozen_batch_norms(model)
    for parent, name, frozen in found:
        norm = torch.nn.BatchNorm2d(frozen.weight.numel()).to(frozen.weight.device)
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, key).copy_(getattr(frozen, key))
        setattr(parent, name, norm)
    return len(found)


def settle_backbone(model: torch.nn.Module, pretrained: bool, train_norms: bool) -> None:
    """Undo transformers' backbone freezing where it misfires (see the module docstring); log what changed.

    ``train_norms`` (``model.backbone_batch_norm`` resolved) swaps frozen batch norms back for trainable ones.
    """
    if model.config.model_type not in DETR_FREEZING:
        return
    if train_norms and (thawed := thaw_batch_norms(model)):
        logger.warning(
            "%s froze the %d batch norms of its backbone; hftk trains them (model.backbone_batch_norm: a random "
            "init's frozen norms are identities)",
            model.config.model_type,
            thawed,
        )
    params = backbone_parameters(model)
    frozen = [n for n, p in params if not p.requires_grad]
    if not frozen:
        return
    if not pretrained:
        for _, p in params:
            p.requires_grad = True
        logger.warning(
            "%s froze %d of %d backbone tensors of a backbone without pretrained weights; hftk trains them all "
            "(a frozen random backbone never learns)",
            model.config.model_type,
            len(frozen),
            len(params),
        )
        return
    # DETR's rule as meant: the stem and the first stage stay frozen; later stages train (ResNet names: stages.N)
    thawed = [p for n, p in params if not p.requires_grad and re.search(r"\bstages\.[1-9]\d*\.", n)]
    for p in thawed:
        p.requires_grad = True
    if thawed:
        logger.warning(
            "%s froze its whole transformers ResNet backbone (its rule looks for 'stage.N', ResNet names 'stages.N'); "
            "hftk trains stages 2-4 as DETR intends (%d tensors)",
            model.config.model_type,
            len(thawed),
        )


def log_trainable_parts(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Log trainable/total parameters per part (backbone, encoder, decoder, heads...) and return them."""
    backbone = {id(p) for _, p in backbone_parameters(model)}
    parts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, p in model.named_parameters():
        part = "backbone" if id(p) in backbone else _part(name)
        parts[part][1] += p.numel()
        parts[part][0] += p.numel() if p.requires_grad else 0
    shown = ", ".join(f"{part} {t / 1e6:.2f}M/{n / 1e6:.2f}M" for part, (t, n) in parts.items())
    logger.info("trainable by part (trainable/total): %s", shown)
    return {part: (t, n) for part, (t, n) in parts.items()}


def _part(name: str) -> str:
    pieces = name.split(".")
    if pieces[0] == "model" and len(pieces) > 2:
        return pieces[1].removesuffix("_layer").removesuffix("s") if pieces[1] in ("encoder", "decoder") else pieces[1]
    return pieces[0]


def build_processor(cfg: Any, model: Any, image_size: int | None) -> Any:
    """The checkpoint's image processor (resized to ``image_size`` when set), or the model type's own."""
    if is_checkpoint(cfg.name):
        source = str(Path(cfg.name).expanduser()) if Path(cfg.name).expanduser().is_dir() else cfg.name
        try:
            processor = AutoImageProcessor.from_pretrained(
                source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise HftkError(f"model.name '{cfg.name}': no image processor with it ({error_line(err)})") from None
    else:
        processor = processor_class(model.config.model_type)()
    if image_size:
        processor.size = {"height": image_size, "width": image_size}
    return processor


def processor_class(model_type: str) -> type:
    import transformers

    names = compat.image_processor_names(model_type)
    name = PROCESSORS.get(model_type) or names.get("torchvision") or names.get("pil")
    if not name:
        raise HftkError(f"model type '{model_type}': hftk does not know its image processor")
    return getattr(transformers, name)
