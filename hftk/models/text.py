"""Causal language models for text generation: GPT-style decoders from a config, LSTM/GRU, or pretrained.

``model.name`` picks the network:
- ``lstm`` / ``gru``: hftk's recurrent language models (``hftk/models/rnn.py``), sized by ``model.model_args``
  (``hidden_size``, ``num_layers``, ``dropout``, ``tie_word_embeddings``);
- a transformers model type (``gpt2``, ``llama``, ``qwen2``...): a random-init model from that config with
  ``model.model_args`` as config fields (for GPT-2: ``n_layer``, ``n_embd``, ``n_head``, ``resid_pdrop``...);
- a Hub id or local folder: with ``model.pretrained=true`` its weights and tokenizer, otherwise its config.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

from hftk.config import ModelConfig
from hftk.errors import HftkError
from hftk.models.rnn import MODEL_TYPE as RNN_MODEL_TYPE
from hftk.models.rnn import HftkRnnConfig

logger = logging.getLogger(__name__)

RNN_CELLS = ("lstm", "gru")
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_length(config: Any) -> int | None:
    """The longest input the model accepts (None: recurrent, no limit)."""
    if getattr(config, "model_type", None) == RNN_MODEL_TYPE:
        return None
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _error_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_pretrained(cfg: ModelConfig) -> tuple[Any, Any]:
    """Weights and tokenizer of a Hub id or local folder (a pretrained model brings its own tokenizer)."""
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(cfg.name, **kwargs, **cfg.model_args)
    except (OSError, ValueError, TypeError) as err:
        raise HftkError(
            f"model.name '{cfg.name}': could not load a pretrained causal LM ({_error_line(err)}); check the Hub id "
            "or folder (and the network), or set model.pretrained=false to train from a config"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_config(cfg: ModelConfig, tokenizer: Any, block_size: int) -> Any:
    """A random-init model's config, sized by ``model_args`` and matched to the tokenizer."""
    from transformers import CONFIG_MAPPING

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    args = dict(cfg.model_args)
    try:
        if cfg.name in RNN_CELLS:
            _check_model_args(HftkRnnConfig(), args, cfg.name)
            return HftkRnnConfig(cell=cfg.name, **{"max_position_embeddings": block_size, **ids, **args})
        if cfg.name in CONFIG_MAPPING:
            config = AutoConfig.for_model(cfg.name, **ids)
            _check_model_args(config, args, cfg.name)
            if not any(k in args for k in CONTEXT_KEYS):  # context defaults to the training block size
                args[next(k for k in CONTEXT_KEYS if hasattr(config, k))] = block_size
            return AutoConfig.for_model(cfg.name, **ids, **args)
        return AutoConfig.from_pretrained(
            cfg.name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **ids, **args
        )
    except (OSError, StopIteration) as err:
        raise HftkError(
            f"model.name '{cfg.name}': not lstm, gru, a transformers model type (gpt2, llama...) or a loadable "
            f"config ({_error_line(err) if not isinstance(err, StopIteration) else 'no context length field'})"
        ) from None
    except (ValueError, TypeError) as err:
        raise HftkError(f"model.model_args: {_error_line(err)}") from None


def _check_model_args(config: Any, args: dict, name: str) -> None:
    """Config classes keep unknown keyword arguments silently; a typo in model_args should not train a default."""
    import difflib

    known = set(config.to_dict()) | set(getattr(config, "attribute_map", {}))
    for key in args:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            guess = f"did you mean '{hint[0]}'?" if hint else "see the model's config class for its fields"
            raise HftkError(f"model.model_args.{key}: not a field of the {name} config; {guess}")


def build_causal_lm(cfg: ModelConfig, tokenizer: Any, block_size: int) -> Any:
    """A random-init causal LM from ``build_config``; checks ``block_size`` against its context."""
    config = build_config(cfg, tokenizer, block_size)
    check_block_size(config, block_size)
    try:
        model = AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError) as err:
        raise HftkError(f"model '{cfg.name}': cannot build it from model.model_args ({_error_line(err)})") from None
    return model


def check_block_size(config: Any, block_size: int) -> None:
    context = context_length(config)
    if context is not None and block_size > context:
        raise HftkError(
            f"data.block_size {block_size} is larger than the model's context ({context} tokens); "
            f"set data.block_size<={context}"
        )


class StopFlag(StoppingCriteria):
    """Stops generation when ``event`` is set (the demo's stop button, a closed stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
