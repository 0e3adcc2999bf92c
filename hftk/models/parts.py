"""A model as ordered layers and a head: what `model.freeze`, gradual unfreezing and per-layer learning rates act on.

``ModelParts.layers`` lists parameter names from the input side to the output side: ``layers[0]`` is the stem or
the embeddings, each following entry one block (a timm stage block, a transformer layer, a recurrent layer);
``head`` is what predicts the task's output (always trained). Tasks describe their models with ``model_parts``;
the generic reading here covers timm models (their own ``group_matcher``, as timm's layer-decay uses), hftk's
recurrent LMs (one block per layer), and transformers models (the blocks of their ``nn.ModuleList`` stacks).

The recipe keys (``model.freeze``, ``model.gradual_unfreeze``, ``model.backbone_lr_multiplier``,
``model.layer_decay``) are applied by ``apply_freeze`` and ``optimizer_factory``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from hftk.errors import HftkError, did_you_mean

logger = logging.getLogger(__name__)


@dataclass
class ModelParts:
    """Parameter names by depth: ``layers`` (stem/embeddings first, then blocks) and the ``head``."""

    layers: list[list[str]]
    head: list[str] = field(default_factory=list)
    # trained in full beside a PEFT adapter (None: the head); a detector's head is its whole transformer, but only
    # its class layers must train in full (their size follows the label count)
    adapter_head: list[str] | None = None

    @property
    def full_beside_adapter(self) -> list[str]:
        return self.head if self.adapter_head is None else self.adapter_head

    @property
    def blocks(self) -> int:
        return max(0, len(self.layers) - 1)


def model_parts(model: torch.nn.Module, head_prefixes: Iterable[str] = ()) -> ModelParts:
    """Read ``model`` as layers and a head; parameters named with one of ``head_prefixes`` form the head."""
    names = [n for n, _ in model.named_parameters()]
    heads = tuple(head_prefixes)
    head = [n for n in names if heads and n.startswith(heads)]
    body = [n for n in names if n not in set(head)]
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "group_matcher"):
        return _timm_parts(timm_model, "timm_model.", head)
    if getattr(model.config, "is_recurrent", False):
        return ModelParts(by_pattern(body, r"_l(\d+)(?:_reverse)?$"), head)
    return ModelParts(_by_module_lists(model, body), head)


def _timm_parts(timm_model: Any, prefix: str, head: list[str]) -> ModelParts:
    from timm.models import group_parameters

    groups = group_parameters(timm_model, timm_model.group_matcher(coarse=False))
    ordered = [[prefix + n for n in groups[k]] for k in sorted(groups)]
    classifier = timm_model.pretrained_cfg.get("classifier", "head")
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    head_names = set(head) | {n for group in ordered for n in group if n[len(prefix) :].startswith(tuple(classifiers))}
    layers = [[n for n in group if n not in head_names] for group in ordered]
    return ModelParts([group for group in layers if group], sorted(head_names))


def by_pattern(names: list[str], pattern: str) -> list[list[str]]:
    """Blocks numbered in parameter names (``weight_ih_l0``, timm's ``blocks.<stage>.<block>``: every group of
    ``pattern`` is a number, compared in order); the rest goes before or after them."""
    blocks: dict[tuple[int, ...], list[str]] = {}
    before, after = [], []
    for name in names:
        match = re.search(pattern, name)
        if match:
            blocks.setdefault(tuple(int(g) for g in match.groups()), []).append(name)
        elif blocks:
            after.append(name)
        else:
            before.append(name)
    ordered = [blocks[k] for k in sorted(blocks)]
    if ordered and after:
        ordered[-1] += after
    return [before, *ordered] if before or not ordered else [[], *ordered]


def _by_module_lists(model: torch.nn.Module, names: list[str]) -> list[list[str]]:
    """Blocks = the children of the model's ``nn.ModuleList`` stacks of same-type layers, in order of definition."""
    block_of: dict[str, int] = {}
    count = 0
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            if any(prefix.startswith(p + ".") for p in _stacks_seen(block_of)):
                continue  # a ModuleList inside a block already counted (e.g. attention heads)
            for index in range(len(module)):
                block_of[f"{prefix}.{index}."] = count
                count += 1
    if not block_of:
        return [names]
    layers: list[list[str]] = [[] for _ in range(count + 1)]
    last = 0
    for name in names:
        block = next((b for p, b in block_of.items() if name.startswith(p)), None)
        if block is None:  # embeddings before the first block; final norms and the like after the last one
            layers[0 if last == 0 else last].append(name)
        else:
            last = block + 1
            layers[last].append(name)
    return layers


def _stacks_seen(block_of: dict[str, int]) -> set[str]:
    return {p.rsplit(".", 2)[0] + "." + p.rsplit(".", 2)[1] for p in block_of}


def frozen_layers(freeze: Any, parts: ModelParts) -> tuple[int, bool]:
    """(how many layers from the input side are frozen, whether only the head trains) for ``model.freeze``."""
    if freeze in (None, "none", 0, "0"):
        return 0, False
    if freeze == "backbone":
        if not parts.head:
            raise HftkError("model.freeze=backbone: this model has no separate head to train; freeze N blocks instead")
        return len(parts.layers), True
    try:
        blocks = int(freeze)
    except (TypeError, ValueError):
        hint = f"{close} " if (close := did_you_mean(freeze, ["none", "backbone"])) else ""
        raise HftkError(
            f"model.freeze '{freeze}': {hint}expected none, backbone, or a number of leading blocks (0-{parts.blocks})"
        ) from None
    if not 0 <= blocks <= parts.blocks:
        raise HftkError(
            f"model.freeze {blocks}: the model has {parts.blocks} blocks after its stem; expected 0 to {parts.blocks}"
        )
    return blocks + 1, False  # the stem/embeddings and the first N blocks


def apply_freeze(model: torch.nn.Module, parts: ModelParts, freeze: Any) -> int:
    """Freeze what ``model.freeze`` names (other parameters are left as the model has them); return how many
    layers, stem first, are frozen."""
    count, _ = frozen_layers(freeze, parts)
    frozen = {n for layer in parts.layers[:count] for n in layer}
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad = False
    if count:
        logger.info("model.freeze=%s: %d of %d layers frozen (stem first)", freeze, count, len(parts.layers))
    return count


class GradualUnfreeze(TrainerCallback):
    """At the start of each epoch, unfreeze ``per_epoch`` more layers from the top of the frozen ones (ULMFiT)."""

    def __init__(self, model: torch.nn.Module, parts: ModelParts, frozen: int, per_epoch: int):
        self.params = dict(model.named_parameters())
        self.parts = parts
        self.frozen = frozen
        self.per_epoch = per_epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        still_frozen = max(0, self.frozen - self.per_epoch * int(state.epoch + 1e-6))
        for index, layer in enumerate(self.parts.layers):
            for name in layer:
                self.params[name].requires_grad = index >= still_frozen
        logger.info("epoch %d: %d of %d layers frozen", int(state.epoch + 1e-6), still_frozen, len(self.parts.layers))


def lr_scales(parts: ModelParts, backbone_multiplier: float, layer_decay: float | None) -> dict[str, float]:
    """Learning-rate factor of each parameter: head 1; layer i of L gets multiplier x decay^(L - i)."""
    scales = {n: 1.0 for n in parts.head}
    depth = len(parts.layers)
    for index, layer in enumerate(parts.layers):
        factor = backbone_multiplier * (layer_decay ** (depth - index) if layer_decay else 1.0)
        scales.update({n: factor for n in layer})
    return scales


def optimizer_factory(scales: dict[str, float], args: Any) -> tuple[type, dict]:
    """``(factory, kwargs)`` for the Trainer's ``optimizer_cls_and_kwargs``: the recipe's optimizer (``train.optim``)
    over parameter groups with per-parameter learning-rate factors, weight decay as the Trainer applies it, and the
    frozen parameters included (gradual unfreezing trains them later; until then they have no gradient)."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import get_parameter_names

    class GroupedOptimizer:
        """transformers' optimizer-factory protocol: ``GroupedOptimizer()(model, **kwargs) -> Optimizer``."""

        def __call__(self, model: torch.nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
            cls, base = Trainer.get_optimizer_cls_and_kwargs(args, model)
            # the Trainer's own rule for weight decay (Trainer.get_decay_parameter_names)
            patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
            decay = set(get_parameter_names(model, [torch.nn.LayerNorm], patterns))
            groups: dict[tuple[float, bool], list] = {}
            for name, param in model.named_parameters():
                key = (scales.get(name, 1.0), name in decay)
                groups.setdefault(key, []).append(param)
            params = [
                {
                    "params": ps,
                    "lr": base.get("lr", args.learning_rate) * scale,
                    "weight_decay": args.weight_decay if decays else 0.0,
                }
                for (scale, decays), ps in sorted(groups.items(), key=lambda item: item[0])
            ]
            return cls(params, **base)

    return GroupedOptimizer, {}
