"""GGUF language models (llama.cpp's format) as transformers models: read, dequantised, checked, saved.

``convert_causal_lm`` is how ``hftk.models.packaged`` turns a packaged GGUF file (SmolLM2-135M-Instruct in Q4_1)
into a normal safetensors folder once: transformers reads the file (``from_pretrained(..., gguf_file=...)``), every
tensor is compared with the file's own dequantised values (a tensor transformers cannot place would otherwise start
random, silently), and the saved folder must reload to the same outputs before it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hftk.errors import HftkError, error_line
from hftk.models.packaged import check_same_tensors

logger = logging.getLogger(__name__)


def convert_causal_lm(source: Path, out: Path) -> None:
    """A GGUF causal LM as a safetensors folder: its weights dequantised to float32 and checked tensor by tensor
    against the file, its tokenizer with the chat template, and a generation config that stops where llama.cpp does.

    transformers reads the file (``from_pretrained(..., gguf_file=...)``); the saved folder must load back to the
    same logits before it is used.
    """
    reader = read_gguf(source)
    model, tokenizer = _load_gguf_causal_lm(source)
    check_gguf_weights(model, reader, source.name)
    model.generation_config = gguf_generation_config(tokenizer, reader)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_reload(model, tokenizer, out, source.name)
    logger.info(
        "%s: %d tensors dequantised to float32 from %s, each checked against the file",
        source.name,
        len(reader.tensors),
        gguf_tensor_types(reader),
    )


# GGUF: llama.cpp's tensor names (gguf-py's TENSOR_NAMES for the llama architecture) -> LlamaForCausalLM's
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LLAMA_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# llama.cpp interleaves the rotary halves of these rows; transformers puts them back (same values, other order)
_ROTARY_PERMUTED = {"attn_q", "attn_k"}
# tokens llama.cpp ends a generation on besides the file's eos (llama-vocab.cpp finds them by their text)
_END_OF_GENERATION = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>")


def read_gguf(path: Path) -> Any:
    """The file's metadata and tensors (a memory-mapped ``gguf.GGUFReader``); one line when gguf is missing or the
    file is not whole."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise HftkError(f"{path.name}: reading a GGUF file needs the gguf package (pip install 'hftk[llm]')") from None
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise HftkError(f"{path.name}: transformers reads GGUF files with gguf>=0.10 (pip install -U 'hftk[llm]')")
    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
        # the tensors are memory-mapped: a file cut inside the last one can still open
        reason = "" if reader.tensors and end <= path.stat().st_size else "its tensors end past the end of the file"
    except (ValueError, IndexError, KeyError, OSError) as err:  # how gguf's reader fails on a cut file
        reason = error_line(err)[:160]
    if reason:
        raise HftkError(f"{path}: not a whole GGUF file ({reason}); reinstall its package")
    architecture = gguf_value(reader, "general.architecture")
    if architecture != "llama":
        raise HftkError(f"{path}: a GGUF file of a '{architecture}' model; hftk converts llama GGUF files")
    return reader


def gguf_value(reader: Any, key: str) -> Any:
    """A scalar or string metadata value of a GGUF file (None when absent)."""
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8") if len(field.types) == 1 and field.types[0] == 8 else value.tolist()[0]


def gguf_tensor_types(reader: Any) -> str:
    """How the file stores its tensors, e.g. ``Q4_1 x210, F32 x61, Q8_0 x1``."""
    from collections import Counter

    counts = Counter(t.tensor_type.name for t in reader.tensors)
    return ", ".join(f"{kind} x{count}" for kind, count in counts.most_common())


def map_llama_gguf_name(name: str) -> str:
    """A llama GGUF tensor name under transformers' name (``blk.3.attn_q.weight`` -> ``model.layers.3....``)."""
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LLAMA_BLOCK:
        return f"model.layers.{parts[1]}.{_LLAMA_BLOCK[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _LLAMA_TOP:
        return f"{_LLAMA_TOP[parts[0]]}.{parts[1]}"
    raise HftkError(f"{name}: not a llama GGUF tensor name hftk knows")


def _load_gguf_causal_lm(source: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(source.parent), source.name
    try:
        # dequantize: plain float32 weights that train and save (weights kept in GGUF blocks do neither)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise HftkError(f"{source}: transformers cannot load it ({error_line(err)[:200]})") from None
    if getattr(model, "hf_quantizer", None) is not None:
        # the weights are float32 tensors by now; the GGUF quantization record would make save_pretrained refuse
        # (it writes no GGUF) and a later load look for the file
        model.hf_quantizer.remove_quantization_config(model)
    if hasattr(model.config, "_model_name_or_path"):  # the file's general.name, kept as a stray config field
        del model.config._model_name_or_path
    return model, tokenizer


def check_gguf_weights(model: Any, reader: Any, where: str) -> None:
    """Every tensor of the file in ``model`` under its transformers name, with its shape and its dequantised values,
    and no model weight the file lacks (a tied output layer is the embedding): loaded whole or not at all."""
    import numpy as np
    import torch
    from gguf import dequantize

    state = model.state_dict()
    names = {t.name: map_llama_gguf_name(t.name) for t in reader.tensors}
    expected = {names[t.name]: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if "lm_head.weight" not in expected and output is not None and output.weight is embedding.weight:
        expected["lm_head.weight"] = expected.get("model.embed_tokens.weight", ())
    check_same_tensors(state, expected, where)
    for tensor in reader.tensors:
        loaded = state[names[tensor.name]]
        values = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        values = values.reshape(loaded.shape)
        if tensor.name.split(".")[-2] in _ROTARY_PERMUTED:
            loaded, values = loaded.flatten().sort().values, values.flatten().sort().values
        if loaded.dtype != torch.float32 or not torch.equal(loaded, values):
            raise HftkError(
                f"{where}: {names[tensor.name]} did not load as the file's {tensor.name}; reinstall its package"
            )


def gguf_generation_config(tokenizer: Any, reader: Any) -> Any:
    """Generation stops on the file's eos and on the other end tokens llama.cpp stops on (a chat turn's end and the
    end of a document: ``<|im_end|>``, ``<|endoftext|>``)."""
    from transformers import GenerationConfig

    vocab = tokenizer.get_vocab()
    eot = gguf_value(reader, "tokenizer.ggml.eot_token_id")
    stops = [tokenizer.eos_token_id, eot, *(vocab[t] for t in _END_OF_GENERATION if t in vocab)]
    stops = list(dict.fromkeys(s for s in stops if s is not None))
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stops if len(stops) > 1 else stops[0],
        pad_token_id=tokenizer.pad_token_id,
    )


def _check_reload(model: Any, tokenizer: Any, folder: Path, where: str) -> None:
    """The saved folder loads back as the same model and tokenizer: the same token ids and logits on a chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = tokenizer.chat_template is not None
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if chat else "The"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    same_ids = AutoTokenizer.from_pretrained(folder)(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        same_logits = torch.equal(model(ids).logits, reloaded(ids).logits)
    if not (same_ids and same_logits):
        part = "tokenizer" if not same_ids else "model"
        raise HftkError(f"{where}: the converted {part} does not reload to the same outputs; please report this")
