"""One model resolver for every task: ``model.name`` in a recipe -> a model of the task's transformers Auto class.

``model.name`` is looked up in this order:

0. the short name of a whole model a pip package ships (``smollm2-135m-instruct``, ``hftk.models.packaged``):
   its converted folder, when the task's Auto class is the one it loads with (a packaged name of another kind that
   rules 1-2 do not take is one line saying so);
1. a local folder (written by ``save_pretrained``, or timm's Hub layout);
2. a name the task builds itself (timm architectures for images, ``lstm``/``gru`` for text...);
3. a transformers model type (``vit``, ``gpt2``, ``t5``, ``rt_detr``): random init from its config, with
   ``model.model_args`` as config fields (a typo is an error, not a silently ignored field);
4. a Hub id (``owner/name``).

For a folder or Hub id, ``model.pretrained=true`` loads the weights, from safetensors only (a checkpoint that is
only a pickle is refused), and logs every weight that was not loaded (a new head for a new label count);
``pretrained=false`` takes only the config. ``trust_remote_code`` is passed through and stays off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hftk.errors import HftkError, did_you_mean, error_line
from hftk.models.packaged import CONFIG_KEY, PACKAGED, get_packaged, packaged_folder

logger = logging.getLogger(__name__)

# (config) -> None: a task's last word on a config it builds from scratch (context length, image size...)
PrepareConfig = Callable[[Any], None]
# (model config, config fields) -> model, or None when the name is not one the task builds itself
CustomBuilder = Callable[[Any, dict], Any]


def load_model(
    cfg: Any,
    auto_class: type,
    config_fields: dict[str, Any] | None = None,
    custom: CustomBuilder | None = None,
    prepare_config: PrepareConfig | None = None,
    candidates: Iterable[str] = (),
) -> Any:
    """Build or load the model ``cfg.name`` names, as an instance of ``auto_class``'s models.

    Args:
        cfg: the recipe's ``model`` section (``name``, ``pretrained``, ``model_args``, ``revision``,
            ``trust_remote_code``).
        auto_class: the task's Auto class, e.g. ``AutoModelForImageClassification``.
        config_fields: config fields the task decides (``id2label``, ``vocab_size``...); they win over the
            checkpoint's own.
        custom: builds the names only this task knows (returns None for other names).
        prepare_config: adjusts a config before a random-init model is built from it.
        candidates: task-specific names offered when ``cfg.name`` matches nothing.
    """
    from transformers import CONFIG_MAPPING

    name = cfg.name
    fields = dict(config_fields or {})
    if not name:
        raise HftkError("model.name: not set; expected a model type (e.g. vit, gpt2, t5), a local folder or a Hub id")
    packaged = packaged_checkpoint(name, auto_class)
    if packaged is not None:
        model = _from_checkpoint(cfg, str(packaged), auto_class, fields, prepare_config)
        if cfg.pretrained:  # the card names the weights, their license and their Hub id (base_model)
            setattr(model.config, CONFIG_KEY, PACKAGED[name].record())
        return model
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _from_checkpoint(cfg, str(folder), auto_class, fields, prepare_config)
    if custom is not None:
        model = custom(cfg, fields)
        if model is not None:
            return model
    refuse_packaged(name, auto_class)  # a packaged model of another kind, or parts another task builds on
    if name in CONFIG_MAPPING:
        config = build_config(name, cfg.model_args, fields)
        return _from_config(config, auto_class, cfg, prepare_config)
    if "/" in name and not name.startswith(("/", ".", "~")):
        return _from_checkpoint(cfg, name, auto_class, fields, prepare_config)
    if "/" in name:
        raise HftkError(f"model.name '{name}': no such folder")
    guess = f"{hint} " if (hint := did_you_mean(name, [*candidates, *CONFIG_MAPPING.keys()], cutoff=0.7)) else ""
    raise HftkError(
        f"model.name '{name}': not a model type, a name this task builds, a local folder or a Hub id; {guess}"
        "(`hftk recipes --keys` describes model.name)"
    )


def packaged_checkpoint(name: str, auto_class: type) -> Path | None:
    """The converted folder of the whole model a pip package ships under the short name ``name`` (made once), when
    ``auto_class`` is the Auto class it loads with; None for any other name or kind."""
    weights = get_packaged(name)
    if weights is None or weights.auto_class != auto_class.__name__:
        return None
    return packaged_folder(name)


def refuse_packaged(name: str, auto_class: type) -> None:
    """One line when ``name`` is a packaged short name ``auto_class`` does not load: ``minilm`` (a BERT encoder) in
    a causal-LM task, or weights another task builds a model around (``efficientnet_lite0``), rather than a search
    for a Hub repo of that name or, worse, a model of the wrong kind."""
    weights = get_packaged(name)
    if weights is None or weights.auto_class == auto_class.__name__:
        return
    kind = f"loads with {weights.auto_class}" if weights.auto_class else "is built into a model by another task"
    fitting = sorted(w.name for w in PACKAGED.values() if w.auto_class == auto_class.__name__)
    raise HftkError(
        f"model.name '{name}': the packaged {weights.description} {kind}, not with {auto_class.__name__} "
        f"as this task needs; packaged models for it: {', '.join(fitting) or 'none'}"
    )


def is_checkpoint(name: str) -> bool:
    """A local folder, or what reads as a Hub id (``owner/name``), rather than a model type or a name to build."""
    return Path(name).expanduser().is_dir() or ("/" in name and not name.startswith(("/", ".", "~")))


def build_config(model_type: str, model_args: dict, fields: dict) -> Any:
    """The config of a transformers model type with ``model_args`` (checked for typos) and the task's fields."""
    from transformers import AutoConfig

    try:
        base = AutoConfig.for_model(model_type, **fields)
        check_model_args(base, model_args, model_type)
        return AutoConfig.for_model(model_type, **fields, **model_args)
    except (TypeError, ValueError, KeyError, IndexError) as err:
        raise HftkError(f"model.model_args for '{model_type}': {error_line(err)}") from None


def check_model_args(config: Any, args: dict, name: str) -> None:
    """Config classes keep unknown keyword arguments silently; a typo in model_args must not train a default."""
    known = set(config.to_dict()) | set(getattr(config, "attribute_map", {}))
    for key in args:
        if key not in known:
            guess = did_you_mean(key, sorted(known)) or "see the model's config class for its fields"
            raise HftkError(f"model.model_args.{key}: not a field of the {name} config; {guess}")


def _from_config(config: Any, auto_class: type, cfg: Any, prepare_config: PrepareConfig | None) -> Any:
    if prepare_config is not None:
        prepare_config(config)
    try:
        return auto_class.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as err:
        raise HftkError(f"model '{cfg.name}': cannot build it from this config ({error_line(err)})") from None


def _from_checkpoint(cfg: Any, name: str, auto_class: type, fields: dict, prepare_config: PrepareConfig | None) -> Any:
    from transformers import AutoConfig

    hub = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if not cfg.pretrained:
        try:
            config = AutoConfig.from_pretrained(name, **hub, **fields)
        except (OSError, ValueError) as err:
            raise _cannot_load(name, err) from None
        check_model_args(config, cfg.model_args, name)
        for key, value in cfg.model_args.items():
            setattr(config, key, value)
        return _from_config(config, auto_class, cfg, prepare_config)
    from hftk.models.adapters import quantization_kwargs

    try:
        with own_loading_report():
            model, info = auto_class.from_pretrained(
                name,
                use_safetensors=True,  # never unpickle downloaded weights
                ignore_mismatched_sizes=True,  # a new label count gets a new head (logged below)
                output_loading_info=True,
                **quantization_kwargs(cfg),
                **hub,
                **fields,
                **cfg.model_args,
            )
    except (OSError, ValueError, TypeError) as err:
        raise _cannot_load(name, err) from None
    log_loading_info(name, info)
    return model


@contextmanager
def own_loading_report() -> Iterator[None]:
    """transformers' warnings while a checkpoint loads (its LOAD REPORT table of missing and unexpected keys) are
    held back: ``log_loading_info`` says the same in a line or two."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def log_loading_info(name: str, info: dict) -> list[str]:
    """Log the weights that were not loaded from ``name`` (and so start from random init); return their names."""
    mismatched = sorted(k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ()))
    missing = sorted(info.get("missing_keys", ()))
    fresh = missing + mismatched
    if fresh:
        shown = ", ".join(fresh[:8]) + (f" and {len(fresh) - 8} more" if len(fresh) > 8 else "")
        logger.warning(
            "%s: %d weights not in the checkpoint or of another shape, initialised: %s", name, len(fresh), shown
        )
    else:
        logger.info("%s: every weight loaded from the checkpoint", name)
    unexpected = sorted(info.get("unexpected_keys", ()))
    if unexpected:
        logger.info("%s: %d checkpoint weights unused (e.g. %s)", name, len(unexpected), unexpected[0])
    return fresh


def _cannot_load(name: str, err: Exception) -> HftkError:
    text = error_line(err)
    if "safetensors" in text.lower() or "model.safetensors" in text:
        return HftkError(
            f"model.name '{name}': no safetensors weights ({text[:160]}); hftk loads weights from safetensors only "
            "(convert the checkpoint with save_pretrained, which writes model.safetensors)"
        )
    return HftkError(
        f"model.name '{name}': cannot load it ({text[:200]}); expected a folder written by save_pretrained "
        "or a reachable Hub id (offline: use a local folder)"
    )


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
