"""Chat runs in ONNX: the graphs with their key/value cache, a greedy loop over ONNX Runtime, and its check.

The graphs follow Optimum's layout and names, so that code written for an Optimum export reads them:
- encoder-decoder (T5, an encoder-decoder warm start): ``encoder_model`` (``input_ids``, ``attention_mask`` ->
  ``last_hidden_state``); ``decoder_model`` for the first step (the decoder's ``input_ids``,
  ``encoder_attention_mask``, ``encoder_hidden_states`` -> ``logits``, ``present.{i}.decoder.key/value`` and
  ``present.{i}.encoder.key/value``); ``decoder_with_past_model`` for every later step
  (``past_key_values.{i}.decoder/encoder.key/value`` in, ``logits`` and the grown ``present.{i}.decoder.key/value``
  out). Encoder + decoder + decoder-with-past rather than one merged graph: a merged graph needs an ``If`` node on a
  ``use_cache_branch`` input, which the dynamo exporter does not write from Python control flow; this way the first
  step computes the cross-attention cache once and the later ones only read it.
- decoder-only (Llama and the other causal LMs): ``model`` (``input_ids``, ``attention_mask``, ``position_ids``,
  ``past_key_values.{i}.key/value`` -> ``logits``, ``present.{i}.key/value``); the first step passes an empty cache
  (past length 0).

All are written by the dynamo exporter (``torch.onnx.export(dynamo=True)``, as every hftk graph): small wrappers take
flat tensors and build the transformers cache objects (``DynamicCache``, ``EncoderDecoderCache``) inside the traced
forward, so no cache object crosses the graph's boundary. Dynamic axes: batch, sequence and past length, given as
names (``OnnxGraph.named_axes``): a ranged ``torch.export.Dim`` is refused over the attention mask (past + sequence,
a relation the mask code implies) and over a guard torch adds on T5's decoder length; the TorchScript exporter
(``dynamo=False``) is not needed. T5 is exported with eager attention (see ``_seq2seq_graphs``).

``OnnxChat`` answers a message from an export folder with numpy and ONNX Runtime alone, greedily, as the run's
``generate`` does at temperature 0 (the run's prompt, its generation config's stop tokens, ``max_new_tokens``,
repetition penalty and no-repeat n-grams). ``check_answers`` (the spec's ``onnx_check``) holds both to the same
answers on test-split messages and measures the tokens per second of each.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from hftk import generation, runs
from hftk.errors import HftkError
from hftk.generation import DecodingOptions
from hftk.models import chat as chat_models
from hftk.tasks.chat import serving

logger = logging.getLogger(__name__)

GREEDY = DecodingOptions(temperature=0.0, num_beams=1)  # the one decoding the ONNX loop does
CHECKED_MESSAGES = 8  # test-split messages whose answers `hftk export` compares


# ---- graphs: flat tensors in and out, the cache objects built inside


def _layer_kv(cache: Any) -> list:
    """``[key_0, value_0, key_1, value_1, ...]`` of a ``DynamicCache``."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


class _Encoder(torch.nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, *tensors):  # positional, as hftk.export.NamedOutputs (torch.export's guards)
        input_ids, attention_mask = tensors
        return (self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,)


class _Decoder(torch.nn.Module):
    """The first step: the self-attention cache starts empty and the cross-attention one is computed."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, *tensors):
        input_ids, encoder_attention_mask, encoder_hidden_states = tensors
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=input_ids,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
            use_cache=True,
        )
        own, cross = _layer_kv(out.cache.self_attention_cache), _layer_kv(out.cache.cross_attention_cache)
        return (out.logits, *[t for i in range(0, len(own), 2) for t in (*own[i : i + 2], *cross[i : i + 2])])


class _DecoderWithPast(torch.nn.Module):
    """A later step. ``EncoderDecoderCache`` marks a filled cross-attention layer as computed, so the model reads it
    and never projects the encoder's output again: that output is only a placeholder of its shape here."""

    def __init__(self, model: Any, width: int):
        super().__init__()
        self.model, self.width = model, width

    def forward(self, *tensors):
        input_ids, encoder_attention_mask, *past = tensors
        layers = [past[i : i + 4] for i in range(0, len(past), 4)]  # decoder key, value, encoder key, value
        cache = EncoderDecoderCache(DynamicCache([g[:2] for g in layers]), DynamicCache([g[2:] for g in layers]))
        placeholder = past[2].new_zeros(*encoder_attention_mask.shape, self.width)
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=placeholder),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=input_ids,
            cache=cache,
            use_cache=True,
        )
        return (out.logits, *_layer_kv(out.cache.self_attention_cache))


class _CausalLM(torch.nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, *tensors):
        input_ids, attention_mask, position_ids, *past = tensors
        cache = DynamicCache([past[i : i + 2] for i in range(0, len(past), 2)], config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        return (out.logits, *_layer_kv(out.cache))


def _kv_names(prefix: str, layers: int, parts: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{i}.{part}{kv}" for i in range(layers) for part in parts for kv in ("key", "value")]


def onnx_graphs(run_dir: Path, batch_size: int) -> list:
    """The run's model as Optimum lays it out (see the module's docstring), checked on test-split prompts."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from hftk.models.adapters import load_full_model

    causal = chat_models.run_is_decoder_only(run_dir)
    model = load_full_model(AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM, run_dir).float().eval()
    tokenizer = serving.load_tokenizer(str(run_dir))
    messages = serving.example_inputs(run_dir, batch_size)
    messages = (messages * 2)[: max(2, len(messages))]  # two rows at least: a batch of 1 would be traced as fixed
    cfg = runs.load_run_recipe(run_dir).data
    encoded = serving.encode_messages(Path(run_dir), cfg, tokenizer, causal, messages)
    side = "left" if causal else "right"
    batch = tokenizer.pad({"input_ids": encoded}, padding_side=side, return_tensors="pt")
    if causal:
        return [_causal_graph(model, batch["input_ids"], batch["attention_mask"])]
    return _seq2seq_graphs(model, batch["input_ids"], batch["attention_mask"])


def _causal_graph(model: Any, ids: torch.Tensor, mask: torch.Tensor):
    from hftk.export import OnnxGraph

    module = _CausalLM(model).eval()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    past_length = ids.shape[1] - 2  # the prompt's start as the cache, its last two tokens as the step
    with torch.no_grad():
        first = module(ids[:, :past_length], mask[:, :past_length], positions[:, :past_length])
    names = _kv_names("past_key_values", len(first[1:]) // 2, ("",))
    inputs = {"input_ids": ids[:, past_length:], "attention_mask": mask, "position_ids": positions[:, past_length:]}
    inputs.update(zip(names, first[1:]))
    step = {0: "batch", 1: "sequence"}
    dynamic = {"input_ids": step, "position_ids": step, "attention_mask": {0: "batch", 1: "past_sequence+sequence"}}
    dynamic.update({name: {0: "batch", 2: "past_sequence"} for name in names})
    outputs = ["logits", *[n.replace("past_key_values", "present") for n in names]]
    context = generation.context_length(model.config)
    sizes = {"sequence": context, "past_sequence": context} if context else None
    return OnnxGraph("model", module, inputs, outputs, dynamic, sizes, tolerance=1e-3, named_axes=True)


def _seq2seq_graphs(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> list:
    from hftk.export import OnnxGraph

    # T5's SDPA attention (transformers 5.24) reshapes its output in a way torch.export (torch 2.14) cannot prove
    # contiguous for a symbolic decoder length: a "decoder_sequence != 5" guard, or a failed view when decomposing
    model.set_attn_implementation("eager")
    encoder = _Encoder(model).eval()
    with torch.no_grad():
        (hidden,) = encoder(ids, mask)
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    # the decoder's example tokens: the start token, then the prompt's own (any real ids do)
    tokens = torch.cat([torch.full_like(ids[:, :1], start), ids[:, :4]], dim=1)
    first = _Decoder(model).eval()
    with torch.no_grad():
        out = first(tokens[:, :3], mask, hidden)
    layers = (len(out) - 1) // 4
    encoded, step = {0: "batch", 1: "encoder_sequence"}, {0: "batch", 1: "decoder_sequence"}
    present = _kv_names("present", layers, ("decoder.", "encoder."))
    past = [n.replace("present", "past_key_values") for n in present]
    with_past = {"input_ids": tokens[:, 3:5], "encoder_attention_mask": mask, **dict(zip(past, out[1:]))}
    past_axes = {n: {0: "batch", 2: "past_decoder_sequence" if ".decoder." in n else "encoder_sequence"} for n in past}
    return [
        OnnxGraph("encoder_model", encoder, {"input_ids": ids, "attention_mask": mask}, ["last_hidden_state"],
                  {"input_ids": encoded, "attention_mask": encoded}),
        OnnxGraph("decoder_model", first,
                  {"input_ids": tokens[:, :3], "encoder_attention_mask": mask, "encoder_hidden_states": hidden},
                  ["logits", *present],
                  {"input_ids": step, "encoder_attention_mask": encoded, "encoder_hidden_states": encoded},
                  tolerance=1e-3, named_axes=True),
        OnnxGraph("decoder_with_past_model", _DecoderWithPast(model, hidden.shape[-1]).eval(), with_past,
                  ["logits", *[n for n in present if ".decoder." in n]],
                  {"input_ids": step, "encoder_attention_mask": encoded, **past_axes},
                  tolerance=1e-3, named_axes=True),
    ]  # fmt: skip


# ---- the greedy loop over ONNX Runtime (numpy only)


class OnnxChat:
    """Answers messages from an export folder (``hftk export RUN``) with ONNX Runtime, greedily.

    Usage:
        bot = OnnxChat("runs/t5-chat/onnx")
        bot.answer("hello")
    """

    def __init__(self, folder: str | Path, threads: int = 1):
        import onnxruntime as ort
        from transformers import AutoTokenizer, GenerationConfig

        self.folder = Path(folder)
        config = json.loads((self.folder / "config.json").read_text())
        self.causal = not config.get("is_encoder_decoder", False)
        names = ["model"] if self.causal else ["encoder_model", "decoder_model", "decoder_with_past_model"]
        missing = [n for n in names if not (self.folder / f"{n}.onnx").is_file()]
        if missing:
            raise HftkError(
                f"{self.folder}: no {missing[0]}.onnx; export the run with `hftk export RUN --format onnx`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.sessions = {
            n: ort.InferenceSession(str(self.folder / f"{n}.onnx"), options, providers=["CPUExecutionProvider"])
            for n in names
        }
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        gen = GenerationConfig.from_pretrained(self.folder)
        self.cfg = runs.load_run_recipe(self.folder).data
        decoding = serving.config_decoding(gen)
        self.max_new_tokens = int(decoding.max_new_tokens)
        self.repetition_penalty = decoding.repetition_penalty or 1.0
        self.no_repeat_ngram_size = decoding.no_repeat_ngram_size or 0
        eos = gen.eos_token_id if gen.eos_token_id is not None else config.get("eos_token_id")
        self.stop = set(eos if isinstance(eos, list) else [eos]) - {None}
        start = gen.decoder_start_token_id
        self.start = config.get("decoder_start_token_id") if start is None else start

    def encode(self, message: str) -> list[int]:
        """The prompt the run's ``generate`` gets for ``message`` (its template, history, retrieval)."""
        return serving.encode_messages(self.folder, self.cfg, self.tokenizer, self.causal, [message])[0]

    def answer(self, message: str) -> str:
        return self.decode(self.generate(self.encode(message)))

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def generate(self, prompt: list[int]) -> list[int]:
        """The new tokens for a prompt (batch 1), up to a stop token (kept, as ``generate`` keeps it)."""
        return self._causal(prompt) if self.causal else self._seq2seq(prompt)

    def _next(self, logits: np.ndarray, sequence: list[int]) -> int:
        """Greedy choice after generate's processors a greedy run can have: repetition penalty, no-repeat n-grams
        (both over what ``generate`` holds as ``input_ids``: the prompt and answer, or the decoder's tokens)."""
        scores = logits.astype(np.float64)
        if self.repetition_penalty != 1.0:
            seen = np.unique(sequence)
            picked = scores[seen]
            scores[seen] = np.where(picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty)
        n = self.no_repeat_ngram_size
        if n and len(sequence) + 1 >= n:
            tail = tuple(sequence[len(sequence) - n + 1 :])
            banned = [
                sequence[i + n - 1] for i in range(len(sequence) - n + 1) if tuple(sequence[i : i + n - 1]) == tail
            ]
            scores[banned] = -np.inf
        return int(scores.argmax())

    def _causal(self, prompt: list[int]) -> list[int]:
        session = self.sessions["model"]
        past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
        past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in past_inputs}
        names = [o.name for o in session.get_outputs()]
        sequence, new = list(prompt), []
        step = np.array([prompt], dtype=np.int64)
        while len(new) < self.max_new_tokens:
            length = len(sequence)
            feed = {
                "input_ids": step,
                "attention_mask": np.ones((1, length), np.int64),
                "position_ids": np.arange(length - step.shape[1], length, dtype=np.int64)[None],
                **past,
            }
            logits, *present = session.run(None, feed)
            past = {n.replace("present", "past_key_values"): t for n, t in zip(names[1:], present)}
            token = self._next(logits[0, -1], sequence)
            sequence.append(token)
            new.append(token)
            if token in self.stop:
                break
            step = np.array([[token]], dtype=np.int64)
        return new

    def _seq2seq(self, prompt: list[int]) -> list[int]:
        ids = np.array([prompt], dtype=np.int64)
        mask = np.ones_like(ids)
        (hidden,) = self.sessions["encoder_model"].run(None, {"input_ids": ids, "attention_mask": mask})
        first = self.sessions["decoder_model"]
        names = [o.name.replace("present", "past_key_values") for o in first.get_outputs()[1:]]
        sequence = [self.start]
        feed = {"input_ids": np.array([sequence], np.int64), "encoder_attention_mask": mask}
        logits, *present = first.run(None, {**feed, "encoder_hidden_states": hidden})
        past = dict(zip(names, present))  # the cross-attention part stays as the first step computed it
        later = self.sessions["decoder_with_past_model"]
        own = [o.name.replace("present", "past_key_values") for o in later.get_outputs()[1:]]
        while True:
            token = self._next(logits[0, -1], sequence)
            sequence.append(token)
            if token in self.stop or len(sequence) > self.max_new_tokens:
                return sequence[1:]
            feed = {"input_ids": np.array([[token]], np.int64), "encoder_attention_mask": mask}
            logits, *present = later.run(None, {**feed, **past})
            past.update(zip(own, present))


# ---- the check `hftk export` runs: the same answers as generate, and tokens per second


def check_answers(run_dir: Path, out_dir: Path, count: int = CHECKED_MESSAGES) -> dict:
    """Greedy answers to ``count`` test-split messages from ``generate`` and from ``OnnxChat`` on the export: they
    must be equal (an error names the first that is not), and each side's tokens per second (batch 1, one thread
    each) are measured. Returns ``{"answers": {...}}`` for export.json."""
    import torch

    model, tokenizer = serving.load_run_model(run_dir)
    kwargs = serving.generate_kwargs(model, GREEDY)
    cfg = runs.load_run_recipe(run_dir).data
    messages = serving.example_inputs(Path(run_dir), count)
    prompts = serving.encode_messages(Path(run_dir), cfg, tokenizer, serving.is_causal(model), messages)
    bot = OnnxChat(out_dir, threads=torch.get_num_threads())

    def torch_answer(ids: list[int]) -> tuple[str, int]:
        inputs = {"input_ids": torch.tensor([ids], device=model.device)}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.no_grad():
            out = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **kwargs)
        new = out.shape[1] - (1 if model.config.is_encoder_decoder else len(ids))
        return generation.decode_new(model, tokenizer, inputs, out)[0].strip(), new

    def onnx_answer(ids: list[int]) -> tuple[str, int]:
        new = bot.generate(ids)
        return bot.decode(new), len(new)

    results = {}
    for label, call in (("torch", torch_answer), ("onnx", onnx_answer)):
        call(prompts[0])  # warm-up
        start = time.perf_counter()
        answers = [call(ids) for ids in prompts]
        seconds = time.perf_counter() - start
        results[label] = ([a for a, _ in answers], sum(n for _, n in answers), seconds)
    onnx_prompts = [bot.encode(m) for m in messages]  # the export folder builds the same prompts on its own
    for message, ours, theirs in zip(messages, onnx_prompts, prompts):
        if ours != theirs:
            raise HftkError(f"{out_dir}: the export builds another prompt for {message!r} than the run does")
    for message, expected, got in zip(messages, results["torch"][0], results["onnx"][0]):
        if expected != got:
            raise HftkError(
                f"{out_dir}: ONNX Runtime answers {message!r} with {got!r}, generate with {expected!r}; the export "
                "is not faithful, so it is not kept as good"
            )
    rate = {label: round(tokens / seconds, 1) for label, (_, tokens, seconds) in sorted(results.items())}
    report = {
        "messages": len(messages),
        "equal": len(messages),
        "new_tokens": results["onnx"][1],
        "onnx_tokens_per_s": rate["onnx"],
        "torch_tokens_per_s": rate["torch"],
        "examples": [{"message": m, "answer": a} for m, a in zip(messages[:3], results["onnx"][0])],
    }
    logger.info("greedy answers to %d messages equal; %s tokens/s ONNX, %s PyTorch", len(messages), *rate.values())
    return {"answers": report}
