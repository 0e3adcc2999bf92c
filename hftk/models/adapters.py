"""PEFT adapters (LoRA, DoRA, IA3, LoHa, LoKr) for every task: wrap, save small, reload on the base, merge.

``model.peft.method`` picks the adapter; ``model.peft.target_modules`` defaults per architecture: peft's own table
for the model types it knows (gpt2 -> c_attn, t5 -> q, v, ...), else the attention query/value projections, else
every linear layer of the body, else its convolutions (timm CNNs). The task's head (a new classifier, detection
heads) is trained in full beside the adapter (``modules_to_save``).

A run trained with an adapter holds ``adapter_config.json`` + ``adapter_model.safetensors`` (a few percent of the
model) and ``model_config.json``, the trained model's config (labels, sizes); ``load_run_weights`` builds the base
from ``base_model_name_or_path`` with that config and puts the adapter on it. ``merge_run`` writes a full model.

``model.peft.quantize=4bit`` is QLoRA (Dettmers et al., 2023) for the text tasks: the pretrained base loads with
4-bit NF4 weights (bitsandbytes, on a GPU or, with bitsandbytes >= 0.50, the CPU) and only the adapter trains. The
run keeps the base's full-precision config, so predict, evaluate and merge put the adapter on the full base.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from hftk import compat
from hftk.errors import HftkError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "model_config.json"  # the trained model's config in an adapter run (config.json would mislead
# transformers into loading the base weights from the run folder itself)
METHODS = ("lora", "dora", "ia3", "loha", "lokr")
ATTENTION = re.compile(r"(^|\.)(q|v|query|value|q_proj|v_proj|qkv|c_attn|in_proj)$")
FEEDFORWARD = re.compile(r"(^|\.)(fc2|wo|down_proj|c_proj|output\.dense|mlp\.fc2|linear2)$")


def is_adapter_run(run_dir: Path) -> bool:
    return (Path(run_dir) / ADAPTER_CONFIG).is_file()


def _is_decoder_lm(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    is_generator = getattr(model, "can_generate", lambda: False)()
    return bool(config is not None and is_generator and not getattr(config, "is_encoder_decoder", False))


def _leaf_modules(model: torch.nn.Module, kinds: tuple, exclude: set[str]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, kinds) and n and n not in exclude]


def default_targets(model: torch.nn.Module, method: str, head_modules: set[str]) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) for ``method`` on ``model`` (feedforward only matters for IA3)."""
    from transformers.pytorch_utils import Conv1D

    lora_targets, ia3_targets, ia3_feedforward = compat.peft_default_targets()

    model_type = getattr(model.config, "model_type", "")
    if method != "ia3" and _is_decoder_lm(model):
        # every linear layer of a decoder LM ("all-linear", as QLoRA, TRL and autotrain do): on the GPT recipe
        # fine-tuned to chat, attention alone (c_attn) stayed 0.3 bits/byte behind full fine-tuning; all matched it
        output = model.get_output_embeddings()
        exclude = head_modules | {n for n, m in model.named_modules() if output is not None and m is output}
        names = _leaf_modules(model, (torch.nn.Linear, Conv1D), exclude)
        if names:
            return sorted({n.rsplit(".", 1)[-1] for n in names}), []
    if method == "ia3" and model_type in ia3_targets:
        return (
            list(ia3_targets[model_type]),
            list(ia3_feedforward[model_type]),
        )
    if method != "ia3" and model_type in lora_targets:
        return list(lora_targets[model_type]), []
    linear = _leaf_modules(model, (torch.nn.Linear,), head_modules)
    attention = [n for n in linear if ATTENTION.search(n)]
    if method == "ia3":
        feedforward = [n for n in linear if FEEDFORWARD.search(n)]
        keys = [n for n in linear if re.search(r"(^|\.)(k|v|key|value|k_proj|v_proj|qkv|c_attn)$", n)]
        if keys or feedforward:
            return keys + feedforward, feedforward
    if attention:
        return attention, []
    if linear:
        return linear, []
    return _leaf_modules(model, (torch.nn.Conv2d, torch.nn.Conv1d), head_modules), []


def wrap_adapter(model: torch.nn.Module, cfg: Any, head_params: list[str]) -> torch.nn.Module:
    """``model`` with the recipe's adapter (``cfg`` is ``model.peft``); the head is trained in full beside it."""
    import peft

    method = cfg.method
    if method not in METHODS:
        raise HftkError(f"model.peft.method '{method}': expected none or one of {', '.join(METHODS)}")
    base = getattr(model, "name_or_path", "") or ""
    if not base or not (Path(base).is_dir() or "/" in base):
        raise HftkError(
            "model.peft: an adapter trains on pretrained weights; set model.name to a folder or Hub id (or a "
            "tagged timm name) with model.pretrained=true (a warm start assembled from parts, as model.encoder "
            "builds, has new layers to train in full first: put the adapter on that run's folder)"
        )
    heads = {n.rsplit(".", 1)[0] for n in head_params}
    targets, feedforward = (
        (list(cfg.target_modules), []) if cfg.target_modules else default_targets(model, method, heads)
    )
    available = sorted({n.split(".")[-1] for n in _leaf_modules(model, (torch.nn.Linear, torch.nn.Conv2d), set())})
    if not targets:
        raise HftkError(f"model.peft: no layers to adapt found; set model.peft.target_modules (layers: {available})")
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise HftkError(
            f"model.peft.target_modules: {', '.join(missing)} not in this model; its linear/conv layers: "
            f"{', '.join(available[:30])}"
        )
    common = {"target_modules": targets, "modules_to_save": sorted(heads) or None}
    if method in ("lora", "dora"):
        config = peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=method == "dora", **common
        )
    elif method == "ia3":
        config = peft.IA3Config(feedforward_modules=feedforward or None, **common)
    elif method == "loha":
        config = peft.LoHaConfig(r=cfg.r, alpha=cfg.alpha, module_dropout=cfg.dropout, **common)
    else:
        config = peft.LoKrConfig(r=cfg.r, alpha=cfg.alpha, module_dropout=cfg.dropout, **common)
    four_bit = getattr(model, "is_loaded_in_4bit", False)
    if cfg.quantize != "none" and not four_bit:
        raise HftkError(
            f"model.peft.quantize={cfg.quantize} (QLoRA): this model did not load in 4 bits (only a model that "
            "from_pretrained loads whole can; a warm start assembled from parts cannot); set model.peft.quantize=none"
        )
    if four_bit:  # QLoRA: norms in float32, inputs carry gradients
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        wrapped = peft.get_peft_model(model, config)
    except (ValueError, TypeError) as err:
        raise HftkError(f"model.peft: {str(err).strip().splitlines()[0][:300]}") from None
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info(
        "%s adapter on %s: %s of %s parameters train", method, ", ".join(targets[:6]), f"{trainable:,}", f"{total:,}"
    )
    return wrapped


def check_quantization(recipe: Any, quantizable: bool, quantizable_tasks: list[str]) -> None:
    """``model.peft.quantize=4bit`` needs an adapter, pretrained weights, a task whose spec says ``quantizable``
    (the text tasks: ``quantizable_tasks``, named in the error) and bitsandbytes."""
    cfg = recipe.model
    if cfg.peft.quantize == "none":
        return
    where = f"model.peft.quantize={cfg.peft.quantize} (QLoRA)"
    if not quantizable:
        raise HftkError(f"{where}: for the text tasks ({', '.join(quantizable_tasks)}), not {recipe.task}")
    if cfg.peft.method == "none" or not cfg.pretrained:
        raise HftkError(f"{where}: trains an adapter on pretrained weights; set model.peft.method, model.pretrained")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HftkError(f"{where}: needs bitsandbytes (pip install 'hftk[qlora]')") from None


def quantization_kwargs(cfg: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments for the recipe's ``model`` section: a 4-bit NF4 base for QLoRA, else none."""
    peft_cfg = getattr(cfg, "peft", None)
    if peft_cfg is None or peft_cfg.quantize == "none":
        return {}
    from transformers import BitsAndBytesConfig

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )
    return {"quantization_config": config}


def save_model_config(model: torch.nn.Module, run_dir: Path) -> None:
    """Write the trained model's config beside its adapter (``model_config.json``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = json.loads(base.config.to_json_string())
    config.pop("quantization_config", None)  # a QLoRA run's adapter goes on the full-precision base
    (Path(run_dir) / MODEL_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (Path(run_dir) / "config.json").unlink(missing_ok=True)


def load_run_weights(auto_class: type, run_dir: str | Path) -> torch.nn.Module:
    """A run's model as any transformers user loads it: the full model, or the base model plus the adapter."""
    run_dir = Path(run_dir)
    if not is_adapter_run(run_dir):
        return auto_class.from_pretrained(str(run_dir), use_safetensors=True)
    from peft import PeftModel
    from transformers import AutoConfig

    base_path = json.loads((run_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base_path:
        raise HftkError(f"{run_dir}: the adapter names no base model (base_model_name_or_path)")
    config = AutoConfig.from_pretrained(str(run_dir / MODEL_CONFIG))
    try:
        base = auto_class.from_pretrained(base_path, config=config, use_safetensors=True, ignore_mismatched_sizes=True)
        return PeftModel.from_pretrained(base, str(run_dir))
    except (OSError, ValueError, RuntimeError) as err:
        raise HftkError(
            f"{run_dir}: cannot put the adapter on its base model '{base_path}' ({str(err).splitlines()[0][:200]}); "
            "the base must be reachable and the one the adapter was trained on"
        ) from None


def load_full_model(auto_class: type, run_dir: str | Path) -> torch.nn.Module:
    """The run's model as one plain transformers model (an adapter merged into its base), e.g. for export."""
    model = load_run_weights(auto_class, run_dir)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def merge_run(run_dir: Path, out_dir: Path, auto_class: type) -> Path:
    """Write ``out_dir``: the adapter merged into its base, a full run folder that loads with ``from_pretrained``."""
    if not is_adapter_run(run_dir):
        raise HftkError(f"{run_dir}: not an adapter run (no {ADAPTER_CONFIG}); it is a full model already")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise HftkError(f"{out_dir} is not empty; choose a new folder")
    merged = load_full_model(auto_class, run_dir)
    skip = shutil.ignore_patterns("checkpoint-*", "runs", "adapter_*", MODEL_CONFIG, "onnx", "README.md")
    shutil.copytree(run_dir, out_dir, ignore=skip, dirs_exist_ok=True)
    merged.save_pretrained(str(out_dir))
    recipe = out_dir / "recipe.yaml"
    if recipe.is_file():  # the merged folder is a full model: its recipe says so
        recipe.write_text(recipe.read_text().replace("method: " + _method(run_dir), "method: none", 1))
    return out_dir


def _method(run_dir: Path) -> str:
    config = json.loads((run_dir / ADAPTER_CONFIG).read_text())
    peft_type = config.get("peft_type", "LORA").lower()
    return "dora" if peft_type == "lora" and config.get("use_dora") else peft_type
