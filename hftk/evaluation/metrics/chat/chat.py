"""Chat metrics as an `evaluate` module, shipped with hftk and loaded by path (works offline).

BLEU and chrF are sacrebleu's corpus scores (n-gram statistics summed over the whole split, as in machine
translation: long answers weigh more), ROUGE-L is the mean F-measure of rouge_score over the answers, exact
match compares answers with surrounding whitespace removed. Distinct-1/2 (Li et al., 2016) is the number of
different word uni/bigrams over all answers divided by their total: low values mean the same few answers again
and again.
"""

import logging

import datasets
import evaluate
import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs "Using default tokenizer." per scorer

_DESCRIPTION = "BLEU, chrF, ROUGE-L, exact match, mean response length and distinct-1/2 of generated answers."
_KWARGS_DESCRIPTION = """
Args:
    predictions: the generated answers, one string per example.
    references: the reference answers, one string per example.
Returns:
    bleu, chrf (0-100, sacrebleu corpus scores), rougeL (0-100, mean F-measure), exact_match (0-100),
    response_length (mean words per answer), reference_length (the same for the references),
    distinct_1, distinct_2 (0-1), num_examples.
"""


def distinct(texts: list[str], n: int) -> float:
    """Different word n-grams over all n-grams of ``texts`` (0 when there are none)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chat(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        predictions = [p or "" for p in predictions]
        references = [r or "" for r in references]
        if not predictions:
            return {"num_examples": 0}
        scorer = rouge_scorer.RougeScorer(["rougeL"])
        rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
        return {
            "chrf": float(CHRF().corpus_score(predictions, [references]).score),
            "bleu": float(BLEU().corpus_score(predictions, [references]).score),
            "rougeL": 100.0 * float(np.mean(rouge)),
            "exact_match": 100.0 * float(np.mean([p.strip() == r.strip() for p, r in zip(predictions, references)])),
            "response_length": float(np.mean([len(p.split()) for p in predictions])),
            "reference_length": float(np.mean([len(r.split()) for r in references])),
            "distinct_1": distinct(predictions, 1),
            "distinct_2": distinct(predictions, 2),
            "num_examples": len(predictions),
        }
