"""Chat evaluation: the metrics on the whole split and on its novel subset, the retrieval baseline, report.md.

*Novel* messages are those that never occur in the training split (``hftk.data.chat.normalize_message``: case
and whitespace aside). The chatterbot corpus repeats itself, so the whole-split figures reward memorising; the
novel subset shows what a model makes of messages it has not seen.

The retrieval baseline answers each message with the response of the most similar training message (TF-IDF
cosine over the messages, scikit-learn's defaults): a model that does not beat it has learnt nothing a lookup
table would not give.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hftk.data.chat import normalize_message
from hftk.data.chat_inputs import Memory
from hftk.evaluation import load_metric
from hftk.evaluation import write_report as write_report_file

REPORTED = ("chrf", "bleu", "rougeL", "exact_match", "response_length", "distinct_1", "distinct_2")


def novel_mask(train_messages: list[str], messages: list[str]) -> list[bool]:
    """True for each message that does not occur in the training messages."""
    seen = {normalize_message(m) for m in train_messages}
    return [normalize_message(m) not in seen for m in messages]


def retrieval_answers(train_messages: list[str], train_responses: list[str], messages: list[str]) -> list[str]:
    """The response of the most similar training message (TF-IDF cosine) for each message."""
    return [response for _, response in Memory(train_messages, train_responses).retrieve(messages)]


def score(predictions: list[str], references: list[str], novel: list[bool], prefix: str = "") -> dict[str, Any]:
    """The chat metrics on the whole split and on its novel subset (``novel_*``), keys prefixed with ``prefix``."""
    metric = load_metric("chat")
    whole = metric.compute(predictions=predictions, references=references)
    subset = [i for i, is_novel in enumerate(novel) if is_novel]
    out = {f"{prefix}{k}": whole[k] for k in REPORTED}
    if subset:
        part = metric.compute(predictions=[predictions[i] for i in subset], references=[references[i] for i in subset])
        out.update({f"{prefix}novel_{k}": part[k] for k in REPORTED})
    return out


def sentence_chrf(prediction: str, reference: str) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(prediction, [reference]).score)


def write_answers(path: Path, rows: list[dict]) -> None:
    """Every answer with its reference, the retrieval answer and its sentence chrF (``answers.jsonl``)."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def _examples_table(rows: list[dict]) -> list[str]:
    lines = ["| chrF | message | answer | reference |", "|---|---|---|---|"]
    lines += [
        f"| {r['chrf']:.1f} | {_cell(r['input'])} | {_cell(r['answer'])} | {_cell(r['reference'])} |" for r in rows
    ]
    return lines


def write_report(path: Path, recipe: Any, metrics: dict, headline: list[str], rows: list[dict], count: int) -> None:
    """``report.md``: model vs retrieval on the whole split and the novel subset, best and worst answers, curves."""
    n, novel = metrics["num_examples"], metrics.get("num_novel", 0)
    table = ["| metric | model | retrieval | model (novel) | retrieval (novel) |", "|---|---|---|---|---|"]
    for key in REPORTED:
        cells = [metrics.get(k) for k in (key, f"retrieval_{key}", f"novel_{key}", f"retrieval_novel_{key}")]
        table.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in cells) + " |")
    ranked = sorted(rows, key=lambda r: r["chrf"])
    novel_rows = [r for r in ranked if r["novel"]]
    intro = [
        f"`{recipe.model.name}` on `{recipe.data.name or recipe.data.path}`: {n} answers, {novel} of them to novel "
        "messages (never seen in training). chrF and BLEU are sacrebleu corpus scores; ROUGE-L the mean F-measure; "
        "the retrieval baseline answers with the response of the most similar training message (TF-IDF cosine)."
    ]
    body = [
        "## Model and retrieval baseline",
        "",
        *table,
        "",
        f"Decoding: {metrics.get('generation', '')}",
        "",
        "## Best answers (sentence chrF)",
        "",
        *_examples_table(ranked[::-1][:count]),
        "",
        "## Best answers to novel messages",
        "",
        *_examples_table(novel_rows[::-1][:count]),
        "",
        "Every answer: `answers.jsonl`.",
    ]
    worst = ("Worst answers", _examples_table(ranked[:count]) if ranked else [], None)
    write_report_file(path, f"{recipe.name}: {metrics['split']} split", intro, metrics, headline, body, worst)
