"""LSTM and GRU language models as transformers models: save, reload, ``generate()`` and ``pipeline``.

The classic recurrent text generators, written as a ``PreTrainedConfig`` / ``PreTrainedModel`` pair with
``GenerationMixin`` and registered with ``AutoConfig`` / ``AutoModelForCausalLM`` under the model type
``hftk_rnn`` (``cell: lstm`` or ``gru``) by ``register()``, which ``hftk.register()`` calls (hftk does when it
builds or loads a model), so after ``import hftk; hftk.register()``:

    model = AutoModelForCausalLM.from_pretrained("runs/lstm-python-docs")
    pipeline("text-generation", model="runs/lstm-python-docs")

Without hftk installed, a run folder still loads with ``trust_remote_code=True``: saving copies this file
(it imports only torch and transformers) into the folder and names it in config.json's ``auto_map``.

Generation carries the recurrent state (``rnn_state``) from step to step, so each new token costs one
step of the network instead of a pass over the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

MODEL_TYPE = "hftk_rnn"


class HftkRnnConfig(PreTrainedConfig):
    """An LSTM or GRU language model: embeddings -> stacked recurrent layers -> vocabulary logits.

    Args:
        vocab_size: number of tokens.
        cell: ``"lstm"`` or ``"gru"``.
        hidden_size: width of the embeddings and of every recurrent layer.
        num_layers: stacked recurrent layers.
        dropout: dropout on the embeddings, between layers and before the output layer.
        tie_word_embeddings: share the input embedding matrix with the output layer (fewer parameters).
        initializer_range: standard deviation of the (tied) embeddings at init. GRUs want more than the default
            (0.2 in the python-docs recipe): with faint inputs they sat at unigram loss for hundreds of steps.
        max_position_embeddings: longest context used in training; a recurrent model has no hard limit,
            it is recorded so tools that ask for the context length get an answer.
    """

    model_type = MODEL_TYPE
    is_recurrent = True  # no context limit: the state carries through any length (hftk.generation.context_length)
    vocab_size: int = 4096
    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.2
    max_position_embeddings: int = 1024
    initializer_range: float = 0.05
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")
        super().__post_init__(**kwargs)


@dataclass
class RnnCausalLMOutput(ModelOutput):
    """Loss, logits and the recurrent state after the last input token (``rnn_state``)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    rnn_state: tuple[torch.Tensor, ...] | None = None


class HftkRnnForCausalLM(PreTrainedModel, GenerationMixin):
    """LSTM/GRU language model with the transformers causal-LM interface (labels are shifted inside)."""

    config_class = HftkRnnConfig
    config: HftkRnnConfig
    base_model_prefix = "rnn"
    main_input_name = "input_ids"
    _is_stateful = True  # generation cannot rewind the state (no assisted decoding)
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: HftkRnnConfig):
        super().__init__(config)
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = rnn_class(
            config.hidden_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state travels as `rnn_state`, not as a key/value cache

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.GRU):  # the base class only knows LSTMs (Xavier, zero biases)
            # PyTorch's own GRU init: with Xavier and zero biases the update gates closed early in training here
            # and the GRU sat at unigram loss (2.47 bits/byte after 1.3 min vs 1.93 with this init)
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        rnn_state: tuple[torch.Tensor, ...] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> RnnCausalLMOutput:
        """Logits for every position (``labels``: the loss of predicting token t+1 from tokens <= t).

        ``attention_mask`` is accepted for interface compatibility; right padding is harmless (its positions
        come after the real tokens and their labels are -100), left padding is not supported.
        """
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        state = None
        if rnn_state is not None:
            state = rnn_state if self.config.cell == "lstm" else rnn_state[0]
        output, new_state = self.rnn(self.dropout(hidden), state)
        output = self.dropout(output)
        if logits_to_keep:
            output = output[:, -logits_to_keep:]
        logits = self.lm_head(output)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if not (use_cache if use_cache is not None else self.config.use_cache) or self.training:
            new_state = None
        elif self.config.cell == "gru":
            new_state = (new_state,)
        return RnnCausalLMOutput(loss=loss, logits=logits, rnn_state=new_state)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, **kwargs):
        # Once a state exists, only the newest token goes through the network.
        if kwargs.get("rnn_state") is not None:
            next_sequence_length = 1
        inputs = super().prepare_inputs_for_generation(input_ids, next_sequence_length=next_sequence_length, **kwargs)
        inputs.pop("position_ids", None)
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs["rnn_state"] = outputs.rnn_state
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` (and so ``pipeline``) know the ``hftk_rnn`` type.

    ``save_pretrained`` also copies this file next to the weights with an ``auto_map`` in config.json, so a
    run folder loads without hftk too: ``AutoModelForCausalLM.from_pretrained(run, trust_remote_code=True)``.
    """
    HftkRnnConfig.register_for_auto_class()
    HftkRnnForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    try:
        AutoConfig.register(MODEL_TYPE, HftkRnnConfig)
        AutoModelForCausalLM.register(HftkRnnConfig, HftkRnnForCausalLM)
    except ValueError:  # already registered (module reloaded)
        pass
