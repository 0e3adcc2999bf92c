"""Image classifiers: any timm architecture (wrapped as a transformers model) or transformers ViT/ResNet/ConvNeXt.

``model.name`` goes through the shared resolver (``hftk.models.load_model``) with
``AutoModelForImageClassification``; timm architecture names (``resnet18``, ``vit_tiny_patch16_224.augreg_in21k``)
are the names this task builds itself. Every result saves, reloads and runs in
``pipeline("image-classification")`` like any transformers model, with ``id2label`` wired.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
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

from hftk.errors import HftkError, error_line
from hftk.models import load_model
from hftk.models.packaged import (
    CONFIG_KEY,
    PackagedWeights,
    check_same_tensors,
    get_packaged,
    offline_names,
    packaged_folder,
)

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
    weights = timm_weights(cfg.name, cfg.revision, "model.name") if cfg.pretrained else None
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": weights.file, **weights.input}
    try:
        timm_model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
    except TypeError as err:
        raise HftkError(f"model.model_args: {err} (they are passed to timm.create_model('{cfg.name}'))") from None
    pretrained_cfg = {k: v for k, v in timm_model.pretrained_cfg.items() if _jsonable(v) and k != "file"}
    if weights is not None and weights.packaged is not None:  # not timm's weights: drop what names those
        pretrained_cfg = {k: v for k, v in pretrained_cfg.items() if k not in ("hf_hub_id", "url", "tag", "license")}
    if image_size:
        pretrained_cfg.update(input_size=[3, image_size, image_size], crop_pct=1.0)
    config = TimmWrapperConfig(
        architecture=cfg.name.split(".")[0],
        model_args=dict(cfg.model_args) or None,
        pretrained_cfg=pretrained_cfg,
        **fields,
    )
    if weights is not None:  # where the weights come from: an adapter run reloads its base from there
        config.name_or_path = weights.source
        if weights.packaged is not None:
            setattr(config, CONFIG_KEY, weights.packaged.record())  # the card names the weights and their license
    model = TimmWrapperForImageClassification(config)
    # The wrapper re-initialises weights the transformers way (std 0.02); keep timm's own init or weights.
    model.timm_model.load_state_dict(timm_model.state_dict())
    return model


_INPUT = ("input_size", "interpolation", "crop_pct", "mean", "std")


@dataclass
class TimmWeights:
    """Where a timm model's pretrained weights come from: a safetensors file and the input they expect."""

    file: str  # model.safetensors
    source: str  # a Hub id or a folder that from_pretrained loads (an adapter's base)
    input: dict[str, Any]  # the input they expect: pretrained_cfg's input_size, interpolation, crop_pct, mean, std
    packaged: PackagedWeights | None = None

    @property
    def mean(self) -> list[float]:
        return list(self.input.get("mean", [0.485, 0.456, 0.406]))

    @property
    def std(self) -> list[float]:
        return list(self.input.get("std", [0.229, 0.224, 0.225]))


def timm_weights(name: str, revision: str | None, key: str) -> TimmWeights:
    """The pretrained weights of timm model ``name``: from the Hub (or its local cache), else from a pip package.

    hftk never unpickles weights: timm's own come as ``model.safetensors`` from the Hub; packaged ones are converted
    to safetensors once (``hftk.models.packaged``). Without either, one line says what is available offline.
    """
    from huggingface_hub import hf_hub_download
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(name)
    hub_id = getattr(pretrained, "hf_hub_id", None) if pretrained is not None else None
    packaged = get_packaged(name)
    problem = "timm publishes these weights only as a pickle (.pth)"
    if hub_id:
        try:
            file = hf_hub_download(hub_id, "model.safetensors", revision=revision)
            own = {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained.to_dict().items() if k in _INPUT}
            return TimmWeights(file, hub_id, own)
        except Exception as err:  # offline (LocalEntryNotFoundError), missing file (EntryNotFoundError), HTTP errors
            problem = f"could not fetch {hub_id}/model.safetensors ({error_line(err)[:120]})"
    if packaged is not None:
        folder = packaged_folder(packaged.name)
        return TimmWeights(str(folder / "model.safetensors"), str(folder), packaged.settings["input"], packaged)
    raise HftkError(
        f"{key} '{name}' with pretrained weights: {problem}; offline, pip packages ship weights for "
        f"{', '.join(offline_timm_names())}; else connect to the Hub once, or use a local folder"
    )


def offline_timm_names() -> list[str]:
    """timm architectures whose pretrained weights a pip package can supply."""
    import timm

    return [name for name in offline_names() if timm.is_model(name)]


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


def load_backbone_weights(model: Any, weights: TimmWeights) -> None:
    """Load a timm backbone's pretrained weights into the model around it (a detector, a segmenter): every backbone
    tensor, with its shape, or an error (the classifier head a features-only backbone lacks is all that is left)."""
    from safetensors.torch import load_file

    source = load_file(weights.file)
    places = Counter(  # where the weights' names appear inside the model's: the backbone's prefix
        ".".join(parts[:i])
        for parts in (k.split(".") for k in model.state_dict())
        for i in range(len(parts))
        if ".".join(parts[i:]) in source
    )
    if not places:
        raise HftkError(f"model.backbone: none of the pretrained weights ({weights.source}) fit this detector")
    prefix = places.most_common(1)[0][0]
    backbone = model.get_submodule(prefix)
    own = backbone.state_dict()
    check_same_tensors(
        {k: source[k] for k in own if k in source}, {k: tuple(v.shape) for k, v in own.items()}, weights.file
    )
    backbone.load_state_dict({k: source[k] for k in own}, strict=True)
    if weights.packaged is not None:
        setattr(model.config, CONFIG_KEY, {**weights.packaged.record(), "part": "backbone"})
    left = len(source) - len(own)
    logger.info(
        "backbone: %d pretrained tensors loaded from %s (%d unused: the classifier head, batch-norm counters)",
        len(own),
        weights.source,
        left,
    )
