"""One-call GPU benchmark (issue 23): hftk beside the plain way on one GPU, every row in one run of ~8 minutes.

Usage:
    python benchmarks/gpu.py                     # CUDA: ~8 min on one H100/H200, the "gpu" section of RESULTS.md
    python benchmarks/gpu.py --budget-minutes 5  # start no new row after 5 minutes
    python benchmarks/gpu.py --rows gpt2 fsdp    # some rows (gpt2 vit resnet50 rtdetr smollm2 fsdp deepspeed)
    python benchmarks/gpu.py --smoke             # every row tiny, on the CPU, in seconds: the table on stdout only

Each row trains one model on the same data with the same batch twice: through hftk (``hftk.config.load_recipe`` +
``hftk.training.train``) and the plain way (benchmarks/gpu_plain.py: a nanoGPT-style loop, a timm/torch loop, the
transformers guide's Trainer), both timed from the end of their warm-up steps (where torch.compile compiles) to the
end of the last step; peak memory is ``torch.cuda.max_memory_allocated`` of each side. The FSDP and DeepSpeed rows kill
a launched run after its first checkpoint and resume it (benchmarks/gpu_launch.py). Rows run most important first; a
row that fails records its error in the table and the next one runs; none starts once --budget-minutes have passed.
Without a GPU (and without --smoke) it says so in one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if "OMP_WAIT_POLICY" not in os.environ:  # as `hftk` itself does (hftk/cli.py): busy OpenMP waits cost 10x here
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import QUIET_OVERRIDES, machine, markdown_table, write_section  # noqa: E402
from gpu_launch import kill_and_resume, parse_launch_config  # noqa: E402
from gpu_plain import Loop, plain_detection, plain_gpt, plain_vision, step_timer  # noqa: E402

RECIPES = ROOT / "recipes"
GPT_RECIPE = RECIPES / "text-generation" / "gpt-python-docs.yaml"
IMAGE_RECIPE = RECIPES / "image-classification" / "resnet-mnist.yaml"
DETECTION_RECIPE = RECIPES / "object-detection" / "rtdetr-shapes.yaml"
SMOLLM2 = "smollm2-135m-instruct"  # the short name hftk.models.packaged.PACKAGED is to give SmolLM2-135M-Instruct

# Dense bf16 tensor-core peak (FLOP/s, without sparsity) by torch.cuda.get_device_name, first match wins: "H100 PCIe"
# before the other H100s (SXM, HBM3). From NVIDIA's data sheets.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
MFU_GOAL = 0.45
RATIO_GOAL = 1.0


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named ``device_name`` (None when the table does not know it)."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key.lower() in device_name.lower()), None)


def mfu(parameters: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: 6 N FLOPs per trained token (forward 2N, backward 4N) over the device's peak."""
    return 6 * parameters * tokens_per_second / peak_flops


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and --smoke (tiny models on the CPU)."""

    smoke: bool
    warmup: int  # untimed steps first (torch.compile compiles in the first)
    steps: int  # timed steps
    compile: bool
    bf16: bool  # off in --smoke: a CPU without bf16 instructions emulates them (convolutions 6x slower here)
    gpt: dict  # GPT2Config fields
    gpt_vocab: int  # tokenizer size, and so the embedding and output layer
    gpt_block: int
    gpt_batch: int
    gpt_copies: int  # copies of python-docs in the corpus: one epoch outlasts the run (no epoch restarts)
    image_data: str
    image_size: int
    image_batch: int
    vit_args: dict  # timm.create_model kwargs
    resnet_args: dict
    detection: list  # recipe overrides: data and model size
    detection_batch: int
    launch_steps: int  # FSDP / DeepSpeed runs: steps, a checkpoint every launch_save steps
    launch_save: int


GPU = Sizes(
    smoke=False,
    warmup=10,
    steps=50,
    compile=True,
    bf16=True,
    gpt={"n_layer": 12, "n_embd": 768, "n_head": 12},  # GPT2Config's defaults, spelled out
    gpt_vocab=50257,
    gpt_block=1024,
    gpt_batch=16,
    gpt_copies=16,
    image_data="mnist-5k",
    image_size=224,
    image_batch=128,
    vit_args={},
    resnet_args={},
    detection=[
        "data.shapes={train: 512, validation: 8, test: 16}",
        "data.image_size=640",  # RT-DETR's own input size
        "model.backbone_args={embedding_size: 64, hidden_sizes: [64, 128, 256, 512], depths: [2, 2, 2, 2], "
        "layer_type: basic, out_indices: [2, 3, 4]}",  # ResNet-18-vd, as rt_detr_r18vd
        "model.model_args={encoder_hidden_dim: 256, encoder_ffn_dim: 1024, encoder_attention_heads: 8, d_model: 256, "
        "decoder_in_channels: [256, 256, 256], decoder_ffn_dim: 1024, decoder_attention_heads: 8, decoder_layers: 3, "
        "num_queries: 300, num_denoising: 100}",  # RTDetrConfig's R18 head
    ],
    detection_batch=16,
    launch_steps=300,
    launch_save=50,
)
SMOKE = Sizes(
    smoke=True,
    warmup=1,
    steps=2,
    compile=False,  # minutes on a CPU
    bf16=False,
    gpt={"n_layer": 1, "n_embd": 32, "n_head": 2},
    gpt_vocab=320,
    gpt_block=32,
    gpt_batch=4,
    gpt_copies=1,
    image_data="digits",
    image_size=32,
    image_batch=8,
    vit_args={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    resnet_args={"layers": [1, 1, 1, 1], "base_width": 16},
    detection=[
        "data.shapes={train: 16, validation: 4, test: 4, image_size: 64}",
        "data.image_size=64",
        "model.backbone_args={embedding_size: 8, hidden_sizes: [8, 16, 16, 32], depths: [1, 1, 1, 1]}",
        "model.model_args={encoder_hidden_dim: 32, encoder_ffn_dim: 64, d_model: 32, "
        "decoder_in_channels: [32, 32, 32], decoder_ffn_dim: 64, decoder_layers: 1, num_queries: 10, "
        "num_denoising: 4}",
    ],
    detection_batch=4,
    launch_steps=0,
    launch_save=0,
)


@dataclass
class Row:
    """One line of the table: hftk beside the plain way (or a check)."""

    name: str
    status: str = "ok"  # ok, error, skipped (time budget), n/a
    unit: str = "-"
    hftk: float | None = None
    plain: float | None = None
    hftk_mfu: float | None = None
    plain_mfu: float | None = None
    goal: str = "-"
    met: str = "-"
    hftk_gib: float | None = None
    plain_gib: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.hftk / self.plain if self.hftk and self.plain else None

    def cells(self) -> list[str]:
        def number(value: float | None, spec: str = ",.1f") -> str:
            return "-" if value is None else format(value, spec)

        def percent(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f}%"

        notes = "; ".join(self.notes).replace("|", "/") or "-"
        return [
            self.name,
            self.status,
            self.unit,
            number(self.hftk),
            number(self.plain),
            number(self.ratio, ".3f"),
            percent(self.hftk_mfu),
            percent(self.plain_mfu),
            self.goal,
            self.met,
            number(self.hftk_gib, ".2f"),
            number(self.plain_gib, ".2f"),
            f"{self.seconds:.0f}",
            notes,
        ]


_COLUMNS = "row|status|unit|hftk|plain|hftk / plain|hftk MFU|plain MFU|goal|met|hftk peak GiB|plain peak GiB|s|notes"
HEADER = _COLUMNS.split("|")


# ---------------------------------------------------------------- the hftk side, and what both sides share


def hftk_train(recipe: Path, overrides: list[str], out: Path, warmup: int) -> float:
    """Train through ``hftk.training.train`` into ``out``; seconds of the steps after ``warmup``."""
    from unittest import mock

    from transformers import Trainer

    from hftk.config import load_recipe
    from hftk.training import train

    timer, run = step_timer(warmup), Trainer.train

    def timed(trainer: Any, *args: Any, **kwargs: Any) -> Any:
        trainer.add_callback(timer)
        return run(trainer, *args, **kwargs)

    # train() builds and runs its Trainer in one call and takes no callbacks: the timer joins the Trainer as it starts
    # (a transformers seam, so it holds whatever shape hftk's tasks take)
    with mock.patch.object(Trainer, "train", timed):
        train(load_recipe(recipe, overrides), out)
    return timer.seconds()


def _overrides(sizes: Sizes) -> list[str]:
    """The overrides of every hftk run: fixed steps, quiet (no evaluation, checkpoints or logs in the timed steps)."""
    cpu = ["train.use_cpu=true"] if sizes.smoke else []
    return [
        f"train.max_steps={sizes.warmup + sizes.steps}",
        f"train.bf16={str(sizes.bf16).lower()}",
        "train.dataloader_drop_last=true",
        "budget.minutes=null",
        *QUIET_OVERRIDES,
        *cpu,
    ]


def _loop(sizes: Sizes) -> Loop:
    """The plain side's settings: what hftk picks on this machine (fused AdamW and dataloader workers on a GPU)."""
    import torch

    gpu = torch.cuda.is_available() and not sizes.smoke
    workers = 0
    if gpu:
        from hftk.training import gpu_defaults

        workers = gpu_defaults()["dataloader_num_workers"]
    return Loop(sizes.warmup, sizes.steps, sizes.bf16, sizes.compile, fused=gpu, workers=workers, cpu=sizes.smoke)


def _reset_peak() -> int:
    """Free what the last side left (compiled graphs keep their model) and restart the peak; returns the bytes still
    held (models hftk's evaluation keeps cached), which the next peak leaves out."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak_gib(held: int) -> float | None:
    import torch

    return (torch.cuda.max_memory_allocated() - held) / 2**30 if torch.cuda.is_available() else None


def _how(sizes: Sizes, batch: str) -> str:
    """How a row trains, for its notes."""
    parts = [
        f"batch {batch}",
        f"{sizes.steps} steps timed after {sizes.warmup}",
        "bf16 autocast" if sizes.bf16 else "fp32",
    ]
    return ", ".join([*parts, "torch.compile"] if sizes.compile else parts)


def _judged(sizes: Sizes, met: bool) -> str:
    return "-" if sizes.smoke else ("yes" if met else "no")  # tiny CPU numbers judge nothing


# ---------------------------------------------------------------- rows


def build_tokenizer(vocab_size: int, folder: Path) -> Path:
    """python-docs' byte-level BPE (as the recipe trains it), padded with unused tokens to ``vocab_size`` entries.

    python-docs holds ~6k merges, not GPT-2's 50k: the padding gives the model GPT-2's embedding and output layer (and
    so its FLOPs) without a tokenizer from the Hub.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from hftk.data import lm
    from hftk.data.text import split_python_docs

    trained = lm.train_bpe_tokenizer(split_python_docs(0.05)["train"], vocab_size)
    spec = json.loads(trained.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for index in range(len(vocab), vocab_size):
        vocab[f"<|unused{index}|>"] = index  # never produced: no merge leads to it
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=lm.EOS, eos_token=lm.EOS, pad_token=lm.EOS
    )
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"the padded tokenizer has {len(tokenizer)} tokens, not {vocab_size}")
    tokenizer.save_pretrained(folder)
    return folder


def gpt2_row(row: Row, sizes: Sizes, out: Path) -> None:
    """GPT-2 124M through the gpt-python-docs recipe vs nanoGPT's loop: tokens/s and MFU."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from hftk.config import load_recipe
    from hftk.data import lm
    from hftk.data.text import python_docs_text

    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = build_tokenizer(sizes.gpt_vocab, out / "tokenizer")
    corpus = out / "corpus.txt"
    corpus.write_text("\n\n".join([python_docs_text()] * sizes.gpt_copies))
    block, batch = sizes.gpt_block, sizes.gpt_batch
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # as nanoGPT pretrains
    model_args = {**sizes.gpt, "n_positions": block, **no_dropout}
    overrides = [
        f"model.model_args={json.dumps(model_args)}",
        f"data.path={corpus}",
        f"data.tokenizer={tokenizer_dir}",
        f"data.block_size={block}",
        "data.validation_size=0.01",
        "data.test_size=0.01",  # the closing evaluation is not timed: keep it short
        "eval.dynamic_lr=null",
        "eval.sample_tokens=8",
        f"train.per_device_train_batch_size={batch}",
        f"train.torch_compile={str(sizes.compile).lower()}",
        *_overrides(sizes),
    ]
    recipe = load_recipe(GPT_RECIPE, overrides)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {key: tokenizer.eos_token_id for key in ("bos_token_id", "eos_token_id", "pad_token_id")}  # as hftk sets
    config = GPT2Config(vocab_size=len(tokenizer), **model_args, **ids, use_cache=False)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in GPT2LMHeadModel(config).parameters()) - block * config.n_embd
    tokens = sizes.steps * batch * block

    held = _reset_peak()
    row.hftk = tokens / hftk_train(GPT_RECIPE, overrides, out / "hftk", sizes.warmup)
    row.hftk_gib = _peak_gib(held)
    held = _reset_peak()
    row.plain = tokens / plain_gpt(config, lm.token_stream(tokenizer, [corpus.read_text()]), recipe, _loop(sizes))
    row.plain_gib = _peak_gib(held)

    row.unit, row.goal = "tokens/s", f">= {MFU_GOAL:.0%} MFU"
    peak = peak_bf16_flops(torch.cuda.get_device_name(0)) if torch.cuda.is_available() and not sizes.smoke else None
    if peak:
        row.hftk_mfu, row.plain_mfu = mfu(parameters, row.hftk, peak), mfu(parameters, row.plain, peak)
        row.met = _judged(sizes, row.hftk_mfu >= MFU_GOAL)
        row.notes.append(f"MFU = 6 N tokens/s / {peak / 1e12:.0f} TFLOP/s")
    else:
        row.notes.append("no MFU: no bf16 peak for " + ("the CPU" if sizes.smoke else "this GPU in PEAK_BF16_FLOPS"))
    row.notes += [
        f"N = {parameters / 1e6:.2f}M parameters without the position embeddings ({config.n_layer} layers x "
        f"{config.n_embd}, vocabulary {config.vocab_size}, context {block}); 6N leaves out attention's 12 L T d "
        "(nanoGPT counts it)",
        _how(sizes, f"{batch} x {block} tokens")
        + ", SDPA attention"
        + (", fused AdamW" if _loop(sizes).fused else ""),
        "plain: nanoGPT-style loop on random blocks of the same token stream, the recipe's AdamW, clipping and "
        "schedule",
    ]


def vision_row(row: Row, sizes: Sizes, out: Path, name: str, model_args: dict) -> None:
    """A timm model through the image-classification recipe vs a timm/torch loop: images/s."""
    from hftk.config import load_recipe

    loop = _loop(sizes)
    overrides = [
        f"model.name={name}",
        f"model.model_args={json.dumps(model_args)}",
        f"data.name={sizes.image_data}",
        f"data.image_size={sizes.image_size}",
        "data.augment.degrees=0",  # the recipe's random affine is an hftk batch op: off, so both sides do the same
        "data.augment.translate=0",
        "data.augment.scale=null",
        f"train.per_device_train_batch_size={sizes.image_batch}",
        f"train.optim={'adamw_torch_fused' if loop.fused else 'adamw_torch'}",  # the recipe names adamw_torch
        *_overrides(sizes),
    ]
    images = sizes.steps * sizes.image_batch
    held = _reset_peak()
    row.hftk = images / hftk_train(IMAGE_RECIPE, overrides, out / "hftk", sizes.warmup)
    row.hftk_gib = _peak_gib(held)
    held = _reset_peak()
    seconds, resident = plain_vision(load_recipe(IMAGE_RECIPE, overrides), loop)
    row.plain, row.plain_gib = images / seconds, _peak_gib(held)
    row.unit, row.goal = "images/s", f"ratio >= {RATIO_GOAL:.1f}"
    row.met = _judged(sizes, row.ratio >= RATIO_GOAL)
    row.notes += [
        f"timm {name}, random init, {sizes.image_data} upscaled to {sizes.image_size} px, "
        + _how(sizes, str(sizes.image_batch))
        + (", channels_last (hftk: any model with a convolution; plain: the CNN)" if loop.fused else ""),
        f"plain: timm + torchvision + DataLoader loop ({loop.workers} workers, as hftk), the recipe's optimizer",
        f"plain on one batch kept on the device (no data loading): {images / resident:,.1f} images/s",
    ]


def rtdetr_row(row: Row, sizes: Sizes, out: Path) -> None:
    """RT-DETR R18 through the rtdetr-shapes recipe vs the transformers guide's Trainer: images/s."""
    from hftk.config import load_recipe

    overrides = [*sizes.detection, f"train.per_device_train_batch_size={sizes.detection_batch}", *_overrides(sizes)]
    recipe = load_recipe(DETECTION_RECIPE, overrides)
    images = sizes.steps * sizes.detection_batch
    held = _reset_peak()
    row.hftk = images / hftk_train(DETECTION_RECIPE, overrides, out / "hftk", sizes.warmup)
    row.hftk_gib = _peak_gib(held)
    held = _reset_peak()
    row.plain = images / plain_detection(recipe, out / "hftk", _loop(sizes), out / "plain")
    row.plain_gib = _peak_gib(held)
    row.unit, row.goal = "images/s", f"ratio >= {RATIO_GOAL:.1f}"
    row.met = _judged(sizes, row.ratio >= RATIO_GOAL)
    backbone = "a tiny" if sizes.smoke else "a ResNet-18-vd"
    row.notes += [
        f"transformers RTDetrConfig with {backbone} rt_detr_resnet backbone, random init, shapes at "
        f"{recipe.data.image_size} px, " + _how(sizes, str(sizes.detection_batch)),
        "plain: the transformers guide's Trainer (datasets, torchvision v2 flips, the image processor) on the hftk "
        "run's model config, with hftk's speed settings",
    ]


def smollm2_row(row: Row, sizes: Sizes, out: Path) -> None:
    """SmolLM2-135M fine-tuned through hftk with LoRA beside full fine-tuning, where the project packages it."""
    from hftk.models.packaged import PACKAGED

    weights = PACKAGED.get(SMOLLM2) or next((w for w in PACKAGED.values() if "smollm2" in w.name.lower()), None)
    if weights is None:
        row.status = "n/a"
        row.notes.append(f"not available in this project yet (no '{SMOLLM2}' in hftk.models.packaged.PACKAGED)")
        return
    if sizes.smoke:
        row.status = "n/a"
        row.notes.append(f"'{weights.name}' is packaged; --smoke does not train it (a 135M model: minutes on a CPU)")
        return
    block, batch = 512, 16
    base = [
        f"model.name={weights.name}",
        "model.pretrained=true",
        "model.model_args={}",  # the GPT recipe's GPT-2 sizes are not fields of a Llama config
        f"data.block_size={block}",
        "data.test_size=0.01",
        "eval.dynamic_lr=null",
        "eval.sample_tokens=8",
        f"train.per_device_train_batch_size={batch}",
        "train.learning_rate=1e-4",
        *_overrides(sizes),
    ]
    tokens = sizes.steps * batch * block
    held = _reset_peak()
    row.hftk = tokens / hftk_train(GPT_RECIPE, [*base, "model.peft.method=lora"], out / "lora", sizes.warmup)
    row.hftk_gib = _peak_gib(held)
    held = _reset_peak()
    row.plain = tokens / hftk_train(GPT_RECIPE, base, out / "full", sizes.warmup)
    row.plain_gib = _peak_gib(held)
    row.unit = "tokens/s"
    row.notes += [
        f"'{weights.name}' ({weights.package}) on python-docs, " + _how(sizes, f"{batch} x {block} tokens"),
        "hftk column: LoRA (hftk's default targets, r 8); plain column: full fine-tuning, also through hftk",
    ]


def launch_row(row: Row, sizes: Sizes, out: Path, config: str, kind: str) -> None:
    """A launch config on the one GPU: killed after a checkpoint, resumed, the consolidated model checked."""
    path = RECIPES / "accelerate" / config
    missing = _deepspeed_missing() if kind == "deepspeed" else None
    if sizes.smoke:
        row.unit, row.goal, row.met = "check", "the config parses", "yes"
        row.notes.append(parse_launch_config(path, kind) + "; the kill/resume run needs a GPU")
        if missing:
            row.notes.append(f"{missing}: the GPU run will say so")
        return
    if missing:
        row.status = "n/a"
        row.notes.append(f"{missing} (pip install 'hftk[deepspeed]')")
        return
    train_args = [
        "text-generation",
        "model.model_args={n_layer: 4, n_embd: 256, n_head: 4}",
        "data.block_size=256",
        "data.test_size=0.01",
        "eval.dynamic_lr=null",
        "eval.sample_tokens=8",
        "train.per_device_train_batch_size=8",
        "train.eval_strategy=no",
        "train.load_best_model_at_end=false",
        "train.report_to=[]",
        "train.disable_tqdm=true",
        "budget.minutes=null",
    ]
    result = kill_and_resume(path, kind, train_args, sizes.launch_steps, sizes.launch_save, out)
    row.unit, row.goal, row.met = "samples/s", "kill, --resume, full model loads", "yes"
    row.hftk = result["samples_per_second"]
    row.notes += [
        f"{config} with --num_processes 1, a 4-layer GPT: killed after {result['killed_after']}, --resume from "
        f"{result['resumed_from']} to step {sizes.launch_steps} (samples/s of the resumed part)",
        f"model.safetensors loads with from_pretrained (nothing missing or unexpected) and equals checkpoint-"
        f"{sizes.launch_steps}'s {result['compared']} tensors; peak memory not read (another process)",
    ]


def _deepspeed_missing() -> str | None:
    """Why DeepSpeed cannot run here (None when ``import deepspeed`` works)."""
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed"
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # deepspeed's import probes CUDA and its ops: any failure means no DeepSpeed row
        return f"import deepspeed fails ({type(err).__name__}: {str(err).strip()[:120]})"
    return None


ROWS: dict[str, tuple[str, Callable[[Row, Sizes, Path], None]]] = {
    "gpt2": ("GPT-2 124M", gpt2_row),
    "vit": ("ViT-B/16", lambda row, s, out: vision_row(row, s, out, "vit_base_patch16_224", s.vit_args)),
    "resnet50": ("ResNet-50", lambda row, s, out: vision_row(row, s, out, "resnet50", s.resnet_args)),
    "rtdetr": ("RT-DETR R18", rtdetr_row),
    "smollm2": ("SmolLM2-135M LoRA vs full", smollm2_row),
    "fsdp": ("FSDP (fsdp.yaml)", lambda row, s, out: launch_row(row, s, out, "fsdp.yaml", "fsdp")),
    "deepspeed": (
        "DeepSpeed ZeRO-2",
        lambda row, s, out: launch_row(row, s, out, "deepspeed-zero2.yaml", "deepspeed"),
    ),
}


# ---------------------------------------------------------------- the run


def run_rows(keys: list[str], sizes: Sizes, budget_minutes: float, out: Path) -> list[Row]:
    """Every row in order; a failing row records its error, and none starts once the budget is used."""
    start, rows = time.perf_counter(), []
    for key in keys:
        name, measure = ROWS[key]
        row, began = Row(name), time.perf_counter()
        if began - start > budget_minutes * 60:
            row.status = "skipped"
            row.notes.append(f"--budget-minutes {budget_minutes:g} used before this row")
        else:
            try:
                measure(row, sizes, out / key)
            except Exception as err:  # one call measures what it can: a row's failure is recorded, never raised
                traceback.print_exc()
                lines = str(err).strip().splitlines()
                row.status = "error"
                row.notes.append(f"{type(err).__name__}: {lines[0] if lines else ''}"[:300])
            finally:
                _reset_peak()
        row.seconds = time.perf_counter() - began
        rows.append(row)
        print(f"gpu.py: {name}: {row.status} in {row.seconds:.0f} s", file=sys.stderr, flush=True)
    return rows


def render(rows: list[Row], sizes: Sizes, command: str) -> str:
    import torch

    if sizes.smoke:
        title = "## GPU benchmark --smoke: tiny sizes on the CPU (checks the script; its numbers mean nothing)"
        device = "the CPU"
    else:
        name = torch.cuda.get_device_name(0)
        peak = peak_bf16_flops(name)
        title = f"## GPU: hftk beside the plain way on one {name}"
        device = f"{name}, dense bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else f"{name} (no peak in the table)"
    return "\n".join(
        [
            title,
            "",
            f"Recorded {machine()}; device: {device}; `{command}`.",
            "Both sides of a row train the same model on the same data and batch; throughput counts the steps",
            "after the warm-up (and compile) steps, timed alike; peak memory is torch.cuda.max_memory_allocated of",
            "each side.",
            f"Goals: GPT-2 124M through hftk at >= {MFU_GOAL:.0%} MFU; hftk / plain >= {RATIO_GOAL:.1f} for vision "
            "and detection.",
            "",
            markdown_table(HEADER, [row.cells() for row in rows]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every row tiny, on the CPU; the table on stdout only")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="start no new row after this many minutes")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run, in order")
    parser.add_argument("--results", help="write the section to this file (not benchmarks/RESULTS.md)")
    parser.add_argument("--out", help="keep the runs in this folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        if not args.smoke:
            print(
                "benchmarks/gpu.py: no CUDA GPU here; run it on a GPU machine (--smoke checks it on a CPU)",
                file=sys.stderr,
            )
            return 2
        print("gpu.py --smoke: no CUDA GPU here; every row runs tiny on the CPU", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING)
    sizes = SMOKE if args.smoke else GPU
    command = " ".join(["python benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    with contextlib.ExitStack() as stack:
        out = (
            Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hftk-gpu-")))
        )
        rows = run_rows(args.rows, sizes, args.budget_minutes, out)
    section = render(rows, sizes, command)
    print(section)
    if args.results:
        Path(args.results).write_text(section + "\n")
    elif not args.smoke:
        write_section("gpu", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
