"""Image classifiers: any timm architecture (wrapped as a transformers model) or transformers ViT/ResNet/ConvNeXt.

``model.name`` goes through the shared resolver (``hftk.models.load_model``) with
``AutoModelForImageClassification``; timm architecture names (``resnet18``, ``vit_tiny_patch16_224.augreg_in21k``)
are the names this task builds itself. Every result saves, reloads and runs in
``pipeline("image-classification")`` like any transformers model, with ``id2label`` wired.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    TimmWrapperImageProcessor,
    ViTImageProcessor,
)

from hftk.errors import HftkError
from hftk.models import error_line, load_model

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224


def build_image_classifier(cfg: Any, labels: list[str], image_size: int | None) -> tuple[Any, Any]:
    """Build ``(model, processor)`` for ``labels`` at ``image_size`` (None: the model's own size)."""
    import timm

    if cfg.model_args.get("in_chans", 3) != 3:
        raise HftkError("model.model_args.in_chans: hftk feeds RGB images (grey ones are converted); expected 3")
    fields = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    model = load_model(
        cfg,
        AutoModelForImageClassification,
        fields,
        custom=functools.partial(_build_timm, image_size=image_size),
        prepare_config=functools.partial(_set_image_size, image_size=image_size or DEFAULT_IMAGE_SIZE),
        candidates=timm.list_models(),
    )
    return model, _processor(cfg, model, image_size)


def _processor(cfg: Any, model: Any, image_size: int | None) -> Any:
    import timm

    folder = Path(cfg.name).expanduser()
    if folder.is_dir() or ("/" in cfg.name and not timm.is_model(cfg.name)):
        hub = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        source = str(folder) if folder.is_dir() else cfg.name
        try:
            return load_image_processor(source, model.config, **hub)
        except (OSError, ValueError) as err:
            raise HftkError(f"model.name '{cfg.name}': no image processor with it ({error_line(err)})") from None
    if isinstance(model, TimmWrapperForImageClassification):
        return TimmWrapperImageProcessor(
            pretrained_cfg=model.config.pretrained_cfg, architecture=model.config.architecture
        )
    size = image_size or DEFAULT_IMAGE_SIZE
    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _set_image_size(config: Any, image_size: int) -> None:
    if hasattr(config, "image_size"):
        config.image_size = image_size


def _build_timm(cfg: Any, fields: dict, image_size: int | None) -> Any:
    """A timm architecture as ``TimmWrapperForImageClassification`` (None when ``cfg.name`` is not one)."""
    import timm

    if not timm.is_model(cfg.name):
        return None
    kwargs: dict[str, Any] = {"num_classes": fields["num_labels"], **cfg.model_args}
    if cfg.pretrained:
        kwargs["pretrained_cfg_overlay"] = {"file": _timm_safetensors(cfg)}
    try:
        timm_model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
    except TypeError as err:
        raise HftkError(f"model.model_args: {err} (they are passed to timm.create_model('{cfg.name}'))") from None
    pretrained_cfg = {k: v for k, v in timm_model.pretrained_cfg.items() if _jsonable(v) and k != "file"}
    if image_size:
        pretrained_cfg.update(input_size=[3, image_size, image_size], crop_pct=1.0)
    config = TimmWrapperConfig(
        architecture=cfg.name.split(".")[0],
        model_args=dict(cfg.model_args) or None,
        pretrained_cfg=pretrained_cfg,
        **fields,
    )
    model = TimmWrapperForImageClassification(config)
    # The wrapper re-initialises weights the transformers way (std 0.02); keep timm's own init or weights.
    model.timm_model.load_state_dict(timm_model.state_dict())
    if cfg.pretrained:  # where the weights come from: an adapter run reloads its base from there
        model.config._name_or_path = timm_model.pretrained_cfg.get("hf_hub_id") or ""
    return model


def _timm_safetensors(cfg: Any) -> str:
    """The local path of a timm model's ``model.safetensors`` on the Hub: hftk never unpickles weights."""
    from huggingface_hub import hf_hub_download
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(cfg.name)
    hub_id = getattr(pretrained, "hf_hub_id", None) if pretrained is not None else None
    if not hub_id:
        raise HftkError(
            f"model.name '{cfg.name}' with model.pretrained=true: timm publishes these weights only as a pickle "
            "(.pth); hftk loads safetensors only. Pick a tagged name on the Hub (e.g. resnet50.a1_in1k)"
        )
    try:
        return hf_hub_download(hub_id, "model.safetensors", revision=cfg.revision)
    except Exception as err:  # offline (LocalEntryNotFoundError), missing file (EntryNotFoundError), HTTP errors
        raise HftkError(
            f"model.name '{cfg.name}' with model.pretrained=true: could not fetch {hub_id}/model.safetensors "
            f"({error_line(err)[:160]}); connect to the Hub once, or set model.name to a local folder"
        ) from None


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, tuple, dict, type(None)))


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


def load_image_processor(source: str, config: Any, **kwargs: Any) -> Any:
    """A run's (or pretrained model's) image processor.

    timm's is made from the model config, where it keeps its settings (also in adapter runs, which have no
    config.json). Through AutoImageProcessor it would log "Requested torchvision backend is not available.
    Falling back to pil backend." for every timm run although torchvision is installed: transformers maps
    ``timm_wrapper`` to a PIL-only processor (it runs timm's own transforms).
    """
    if getattr(config, "model_type", None) == "timm_wrapper":  # its settings live in the model's config
        return TimmWrapperImageProcessor(pretrained_cfg=config.pretrained_cfg, architecture=config.architecture)
    return AutoImageProcessor.from_pretrained(source, **kwargs)
