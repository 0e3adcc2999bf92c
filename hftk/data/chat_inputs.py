"""Model inputs for chat: the history and the message (and, optionally, the nearest training exchange) as token ids.

- ``format_input``: earlier turns, oldest first, then the message, joined by ``data.turn_separator``; with
  ``data.retrieve``, the most similar training exchange follows: ``... | message || similar message => its answer``.
- ``encode_sample``: that text as token ids of at most ``data.max_input_length``: the oldest turns go first, then
  the end of the retrieved answer; a message that does not fit on its own is an error.
- ``Memory``: the training exchanges, searched by TF-IDF cosine over the messages (scikit-learn's defaults). The
  retrieval baseline answers with the nearest exchange's response; a ``data.retrieve`` model reads it and decides
  what to keep (retrieve and refine, Weston et al., 2018). Such a run keeps its memory (``chat_memory.json``) so
  that predict, chat, the demo and the pipeline retrieve exactly as training and evaluation did.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from hftk.errors import HftkError

logger = logging.getLogger(__name__)

MEMORY_FILE = "chat_memory.json"  # *.json: pushed to the Hub with the model
RETRIEVED = " || {message} => {response}"  # appended to the model input of a data.retrieve run


def format_input(history: list[str], message: str, separator: str, retrieved: tuple[str, str] | None = None) -> str:
    """The model input: earlier turns, the message, and (``retrieved``: message, response) the nearest exchange."""
    text = separator.join([*history, message])
    if retrieved is not None:
        text += RETRIEVED.format(message=retrieved[0], response=retrieved[1])
    return text


def encode_sample(
    tokenizer: Any, history: list[str], message: str, cfg: Any, where: str, retrieved: tuple[str, str] | None = None
) -> tuple[list[int], int]:
    """``(input ids, turns cut)``: the last ``history_turns`` turns and the message (and the retrieved exchange),
    the oldest turns dropped, then the retrieved answer's end cut, until it fits ``data.max_input_length``."""
    if not message.strip():
        raise HftkError(f"{where}: the message is empty; expected text")
    limit, message = cfg.max_input_length, message.strip()
    # verbose=False: lengths are checked (and cuts logged) here; transformers' own "longer than the maximum" warning
    # would also fire for responses, which have their own limit (data.max_target_length)
    own = tokenizer(message, verbose=False)["input_ids"]
    if len(own) > limit:
        raise HftkError(
            f"{where}: the message is {len(own)} tokens, more than data.max_input_length={limit}; "
            "shorten it or train with a larger data.max_input_length"
        )
    kept = list(history[-cfg.history_turns :]) if cfg.history_turns else []
    offered = len(kept)
    while True:
        ids = tokenizer(format_input(kept, message, cfg.turn_separator, retrieved), verbose=False)["input_ids"]
        if len(ids) <= limit or not kept:
            break
        kept = kept[1:]
    if len(ids) > limit:  # only the retrieved exchange is left to shorten (the message fits on its own)
        ids = [*ids[: limit - 1], ids[-1]]  # keep the end token
    return ids, offered - len(kept)


def encode_split(tokenizer: Any, ds: Dataset, cfg: Any, split: str, retrieved: list | None = None) -> list[dict]:
    """Features of every sample (``input_ids``, ``attention_mask``, ``labels``, ``length``); the cuts are logged."""
    rows, cut_samples, cut_turns, cut_targets = [], 0, 0, 0
    targets = tokenizer(text_target=list(ds["response"]), verbose=False)["input_ids"]
    for i, (sample, labels) in enumerate(zip(ds, targets)):
        extra = retrieved[i] if retrieved is not None else None
        ids, cut = encode_sample(tokenizer, sample["history"], sample["message"], cfg, sample["source"], extra)
        cut_samples, cut_turns = cut_samples + (cut > 0), cut_turns + cut
        if len(labels) > cfg.max_target_length:
            labels = [*labels[: cfg.max_target_length - 1], labels[-1]]  # keep the end token
            cut_targets += 1
        # length: what the sample costs, for train_sampling_strategy=group_by_length
        rows.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "length": len(ids) + len(labels)}
        )
    if cut_samples:
        logger.info(
            "%s: %d of %d samples lost %d older turns of history to fit data.max_input_length=%d",
            *(split, cut_samples, len(ds), cut_turns, cfg.max_input_length),
        )
    if cut_targets:
        logger.warning(
            "%s: %d of %d responses cut to data.max_target_length=%d tokens",
            *(split, cut_targets, len(ds), cfg.max_target_length),
        )
    return rows


class Memory:
    """Training exchanges searched by TF-IDF cosine similarity of their messages."""

    def __init__(self, messages: list[str], responses: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.messages, self.responses = list(messages), list(responses)
        self.vectorizer = TfidfVectorizer()
        self.matrix = self.vectorizer.fit_transform(self.messages)

    def nearest(self, queries: list[str], exclude: list[int] | None = None) -> np.ndarray:
        """Index of the most similar stored message for each query (``exclude[i]``: an index query i may not get)."""
        from sklearn.metrics.pairwise import linear_kernel

        similarity = linear_kernel(self.vectorizer.transform(list(queries)), self.matrix)
        if exclude is not None:
            similarity[np.arange(len(similarity)), exclude] = -1.0
        return similarity.argmax(axis=1)

    def retrieve(self, queries: list[str], exclude: list[int] | None = None) -> list[tuple[str, str]]:
        """(message, response) of the nearest exchange for each query."""
        return [(self.messages[i], self.responses[i]) for i in self.nearest(queries, exclude)]

    def save(self, folder: Path) -> None:
        rows = [{"message": m, "response": r} for m, r in zip(self.messages, self.responses)]
        (Path(folder) / MEMORY_FILE).write_text(json.dumps(rows, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Memory | None:
        """The memory a run folder keeps, or None when it has none."""
        path = Path(folder) / MEMORY_FILE
        if not path.is_file():
            return None
        rows = json.loads(path.read_text())
        return cls([r["message"] for r in rows], [r["response"] for r in rows])
