"""Language-model evaluation: loss, perplexity and bits per byte; samples at each evaluation; report.md.

Bits per byte = total nats over a split / ln 2 / the split's UTF-8 bytes. Unlike loss and perplexity it
does not depend on the tokenizer, so models with different vocabularies, and compressors, compare on it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hftk.evaluation import write_report as write_report_file

logger = logging.getLogger(__name__)


def language_model_metrics(total_nats: float, num_tokens: int, num_bytes: int) -> dict[str, float]:
    """Loss (nats per token), perplexity and bits per byte from totals over a split."""
    loss = total_nats / max(1, num_tokens)
    return {
        "bits_per_byte": total_nats / math.log(2) / max(1, num_bytes),
        "perplexity": math.exp(min(loss, 50.0)),
        "loss": loss,
        "num_tokens": int(num_tokens),
        "num_bytes": int(num_bytes),
    }


def window_nats(logits: torch.Tensor, labels: torch.Tensor, byte_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Per window: [summed nats, predicted tokens, bytes of the predicted tokens] (labels shifted as in the model)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    safe = targets.clamp(min=0)
    nats = torch.nn.functional.cross_entropy(logits.transpose(1, 2), safe, reduction="none") * valid
    count = valid.sum(-1)
    nbytes = (byte_lengths.to(safe.device)[safe] * valid).sum(-1) if byte_lengths is not None else count
    return torch.stack([nats.sum(-1), count.float(), nbytes.float()], dim=-1)


@torch.no_grad()
def score_windows(model: Any, windows: list[dict], batch_size: int, collate: Any) -> tuple[float, int]:
    """Total nats and predicted tokens of ``windows`` (from ``hftk.data.lm.eval_windows``)."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = collate(windows[start : start + batch_size])
        labels = batch.pop("labels")
        logits = model(**batch).logits
        sums = window_nats(logits, labels)
        total += float(sums[:, 0].double().sum())
        tokens += int(sums[:, 1].sum())
    return total, tokens


def score_stream(
    model: Any, stream: np.ndarray, context: int | None, segment: int, lr: float = 0.0, optimizer: str = "sgd"
) -> tuple[float, int]:
    """Total nats and predicted tokens of ``stream`` read once, left to right, ``segment`` tokens at a time.

    ``context`` is the model's as ``hftk.models.text.context_length`` gives it: None for a recurrent model, which
    carries its state through the whole stream; a GPT-style model sees up to ``context - segment`` earlier tokens.

    ``lr > 0`` is dynamic evaluation (Krause et al., 2018): each segment is scored first, then the model takes
    one step on that segment's loss before scoring the next. Every token is still predicted before the model
    learns from it, so the figure is an honest code length, on the footing of an adaptive compressor (xz, gzip)
    that learns from the text it has already coded. ``model`` itself is not changed (a copy adapts).

    ``optimizer`` "sgd" takes plain gradient steps; "rms" divides each step by a running RMS of that
    parameter's gradients (Adam without momentum, betas (0, 0.999)), the per-parameter scaling Krause et al.
    (2019) found to suit transformers.
    """
    import copy

    if len(stream) < 2:
        return 0.0, 0
    recurrent = context is None
    segment = max(1, segment if recurrent else min(segment, context - 1))
    if lr > 0:
        model = copy.deepcopy(model)
        params = [p for p in model.parameters() if p.requires_grad]
        updater = (
            torch.optim.Adam(params, lr=lr, betas=(0.0, 0.999))
            if optimizer == "rms"
            else torch.optim.SGD(params, lr=lr)
        )
    model.eval()  # no dropout: the updates adapt, they do not regularise
    ids = torch.as_tensor(stream, dtype=torch.long, device=next(model.parameters()).device)
    total, state = 0.0, None
    for start in range(1, len(ids), segment):
        end = min(start + segment, len(ids))
        with torch.set_grad_enabled(lr > 0):
            if recurrent:
                out = model(input_ids=ids[start - 1 : end - 1][None], rnn_state=state, use_cache=True)
                state = tuple(s.detach() for s in out.rnn_state)
                logits = out.logits[0]
            else:
                first = max(0, end - 1 - context)
                logits = model(input_ids=ids[first : end - 1][None], use_cache=False).logits[0, start - 1 - first :]
            nats = torch.nn.functional.cross_entropy(logits.float(), ids[start:end], reduction="sum")
        total += float(nats.detach())
        if lr > 0:
            updater.zero_grad(set_to_none=True)
            (nats / (end - start)).backward()
            updater.step()
    return total, len(ids) - 1


def write_report(
    path: Path, recipe: Any, metrics: dict, headline: list[str], samples: list[dict], history: list
) -> None:
    """``report.md``: headline metrics, final samples, and the first prompt's samples over training."""
    intro = [
        f"`{recipe.model.name}` on `{recipe.data.name or recipe.data.path}`: {metrics['num_tokens']:,} tokens, "
        f"{metrics['num_bytes']:,} bytes ({metrics['num_bytes'] / max(1, metrics['num_tokens']):.2f} bytes/token).",
        "Bits per byte = total nats / ln 2 / UTF-8 bytes of the split (lower is better; comparable across "
        "tokenizers and with compressors).",
    ]
    if "dynamic_bits_per_byte" in metrics:
        intro.append(
            f"dynamic_bits_per_byte: the split read once while the model adapts to it (dynamic evaluation: "
            f"one {recipe.eval.dynamic_optimizer} step at rate {recipe.eval.dynamic_lr:g} after each "
            f"{recipe.eval.dynamic_segment}-token segment is scored; every token is predicted before the model "
            "learns from it)."
        )
    body = ["## Samples (temperature 0.8, top-p 0.95, seed 0)", ""]
    for s in samples:
        body += [f"**Prompt:** `{s['prompt']}`", "", "```text", s["prompt"] + s["output"], "```", ""]
    if history:
        body += ["## Samples during training (first prompt)", "", "| step | text |", "|---|---|"]
        for row in history:
            text = (row["prompt"] + row["output"]).replace("\n", " ").replace("|", "\\|")[:200]
            body.append(f"| {row['step']} | {text} |")
    write_report_file(path, f"{recipe.name}: {metrics['split']} split", intro, metrics, headline, body)


def total_bytes(texts: list[str]) -> int:
    return int(np.sum([len(t.encode("utf-8")) for t in texts])) if texts else 0
