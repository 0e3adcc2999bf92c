"""Model inputs for chat: the history and the message (and, optionally, the nearest training exchange) as token ids.

Two ways to write a prompt, one per family of chat model (``Prompts``):
- encoder-decoder: ``format_input``, earlier turns, oldest first, then the message, joined by ``data.turn_separator``;
  with ``data.retrieve``, the most similar training exchange follows: ``... | message || similar message => its
  answer``. The answer is the decoder's labels.
- decoder-only: the turns as chat messages through the model's own chat template with its generation prompt
  (``apply_chat_template(..., add_generation_prompt=True)``); the answer follows as the template writes an assistant
  turn, up to its end-of-turn token (``AnswerFormat``), and only the answer's tokens are learnt (labels -100 on the
  prompt).

An over-long sample is data, not an error (``data.on_long_sample=truncate``): the oldest turns go first, then the end
of a retrieved answer, then the start of the message (its end is kept); a sample whose answer alone is longer than
``data.max_target_length`` is left out. ``drop`` leaves out every sample whose message would be cut; ``error`` stops at
the first over-long one. ``encode_split`` logs what was cut and left out.

``Memory``: the training exchanges, searched by TF-IDF cosine over the messages (scikit-learn's defaults). The
retrieval baseline answers with the nearest exchange's response; a ``data.retrieve`` model reads it and decides what
to keep (retrieve and refine, Weston et al., 2018). Such a run keeps its memory (``chat_memory.json``) so that
predict, chat, the demo and the pipeline retrieve exactly as training and evaluation did.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from hftk.errors import HftkError, error_line

logger = logging.getLogger(__name__)

MEMORY_FILE = "chat_memory.json"  # *.json: pushed to the Hub with the model
RETRIEVED = " || {message} => {response}"  # appended to the model input of a data.retrieve run
ON_LONG_SAMPLE = ("truncate", "drop", "error")
# evaluation generates the longest training answer and this much more (a fraction, at least MARGIN_TOKENS)
MARGIN, MARGIN_TOKENS = 0.25, 8


def format_input(history: list[str], message: str, separator: str, retrieved: tuple[str, str] | None = None) -> str:
    """The encoder-decoder input: earlier turns, the message, and (``retrieved``: message, response) the nearest
    exchange."""
    text = separator.join([*history, message])
    if retrieved is not None:
        text += RETRIEVED.format(message=retrieved[0], response=retrieved[1])
    return text


def chat_messages(history: list[str], message: str) -> list[dict[str, str]]:
    """The turns as chat messages: the message is the user's; the turns before it alternate back from the
    assistant's."""
    turns = [*history, message]
    return [{"role": "user" if (len(turns) - i) % 2 else "assistant", "content": t} for i, t in enumerate(turns)]


@dataclass(frozen=True)
class AnswerFormat:
    """How a chat template writes an assistant turn after its generation prompt: the text before the answer
    (usually none) and the tokens that end it, the last one the end-of-turn token (``<|im_end|>``)."""

    prefix: str
    end_ids: tuple[int, ...]

    @property
    def end_of_turn(self) -> int:
        return self.end_ids[-1]


def answer_format(tokenizer: Any) -> AnswerFormat:
    """Read from the template itself: a one-turn conversation with and without a marked answer. A template whose
    answer is not a plain continuation of its generation prompt ends answers with the tokenizer's end token."""
    from jinja2 import TemplateError

    mark = "hftk-answer-mark"
    probe = [{"role": "user", "content": "hello"}]
    try:
        prompt = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template([*probe, {"role": "assistant", "content": mark}], tokenize=False)
    except (TemplateError, ValueError, TypeError) as err:  # the model's template, or its raise_exception()
        raise HftkError(f"the tokenizer's chat template cannot render a conversation ({error_line(err)})") from None
    if whole.startswith(prompt) and mark in whole[len(prompt) :]:
        prefix, after = whole[len(prompt) :].split(mark, 1)
        ids = tokenizer(after, add_special_tokens=False, verbose=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        ends = [n for n, token in enumerate(ids) if token in special]
        if ends:
            return AnswerFormat(prefix, tuple(ids[: ends[0] + 1]))
    if tokenizer.eos_token_id is None:
        raise HftkError("the tokenizer has no end-of-turn token in its chat template and no eos_token")
    return AnswerFormat("", (tokenizer.eos_token_id,))


@dataclass(frozen=True)
class Cut:
    """What a prompt lost to fit ``data.max_input_length``."""

    turns: int = 0  # oldest history turns left out
    message: bool = False  # the message's start cut (its end kept)


class Prompts:
    """Prompts and answers as one model writes them (``causal``: decoder-only, through its chat template)."""

    def __init__(self, tokenizer: Any, cfg: Any, causal: bool):
        self.tokenizer, self.cfg, self.causal = tokenizer, cfg, causal
        self.answer = answer_format(tokenizer) if causal else None

    def ids(self, history: list[str], message: str, retrieved: tuple[str, str] | None = None) -> list[int]:
        """The prompt's token ids, uncut."""
        # verbose=False: lengths are checked (and cuts logged) here; transformers' own "longer than the maximum"
        # warning would also fire for answers, which have their own limit (data.max_target_length)
        if not self.causal:
            text = format_input(history, message, self.cfg.turn_separator, retrieved)
            return self.tokenizer(text, verbose=False)["input_ids"]
        messages = chat_messages(history, message)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def encode(
        self,
        history: list[str],
        message: str,
        where: str,
        retrieved: tuple[str, str] | None = None,
        strict: bool = False,
    ) -> tuple[list[int], Cut]:
        """``(input ids, what was cut)``: the last ``history_turns`` turns and the message (and the retrieved
        exchange) in at most ``data.max_input_length`` tokens; ``strict``: a message too long on its own is an error.
        """
        if not message.strip():
            raise HftkError(f"{where}: the message is empty; expected text")
        limit, message = self.cfg.max_input_length, message.strip()
        kept = list(history[-self.cfg.history_turns :]) if self.cfg.history_turns else []
        offered = len(kept)
        ids = self.ids(kept, message, retrieved)
        while len(ids) > limit and kept:
            kept = kept[1:]
            ids = self.ids(kept, message, retrieved)
        if len(ids) <= limit:
            return ids, Cut(offered - len(kept))
        alone = self.ids([], message)
        if retrieved is not None and len(alone) <= limit:  # only the retrieved exchange is left to shorten
            return [*ids[: limit - 1], ids[-1]], Cut(offered)  # keep the end token
        if strict:
            raise HftkError(
                f"{where}: the message takes {len(alone)} tokens, more than data.max_input_length={limit}; "
                "shorten it, raise data.max_input_length, or set "
                "data.on_long_sample=truncate to keep its end"
            )
        return self.ids([], self._end_that_fits(message, limit)), Cut(offered, message=True)

    def _end_that_fits(self, message: str, limit: int) -> str:
        """The longest end of ``message`` whose prompt fits in ``limit`` tokens (a binary search on where it
        starts: any tokenizer, any template)."""
        if len(self.ids([], "")) > limit:
            raise HftkError(
                f"data.max_input_length={limit}: the prompt without a message already takes "
                f"{len(self.ids([], ''))} tokens (chat template, end token); raise data.max_input_length"
            )
        low, high = 0, len(message)  # the prompt of message[high:] fits
        while low < high:
            middle = (low + high) // 2
            if len(self.ids([], message[middle:])) <= limit:
                high = middle
            else:
                low = middle + 1
        return message[high:]

    def answers(self, responses: list[str]) -> list[list[int]]:
        """Each response's label ids: the decoder's target (encoder-decoder), or the answer as the chat template
        continues its generation prompt, through its end-of-turn token (decoder-only)."""
        if not self.causal:
            return self.tokenizer(text_target=list(responses), verbose=False)["input_ids"]
        texts = [self.answer.prefix + r.strip() for r in responses]
        bodies = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [[*body, *self.answer.end_ids] for body in bodies]


def encode_split(prompts: Prompts, ds: Dataset, split: str, retrieved: list | None = None) -> list[dict]:
    """Features of every sample (``input_ids``, ``attention_mask``, ``labels``, ``length``); what was cut or left
    out (``data.on_long_sample``) is logged."""
    cfg, rows, counts = prompts.cfg, [], Counter()
    strict = cfg.on_long_sample == "error"
    for sample, answer, extra in zip(ds, prompts.answers(ds["response"]), retrieved or [None] * len(ds)):
        if len(answer) > cfg.max_target_length:
            if strict:
                raise HftkError(
                    f"{sample['source']}: the answer is {len(answer)} tokens, more than data.max_target_length="
                    f"{cfg.max_target_length}; raise it, or set data.on_long_sample=truncate to leave such samples out"
                )
            counts["long answers"] += 1
            continue
        ids, cut = prompts.encode(sample["history"], sample["message"], sample["source"], extra, strict)
        if cut.message and cfg.on_long_sample == "drop":
            counts["long messages"] += 1
            continue
        counts.update({"cut histories": cut.turns > 0, "turns": cut.turns, "cut messages": cut.message})
        # length: what the sample costs, for train_sampling_strategy=group_by_length
        if prompts.causal:  # one sequence; only the answer is learnt
            tokens, labels = [*ids, *answer], [-100] * len(ids) + answer
        else:
            tokens, labels = ids, answer
        rows.append(
            {
                "input_ids": tokens,
                "attention_mask": [1] * len(tokens),
                "labels": labels,
                "length": len(ids) + len(answer),
            }
        )
    _log_cuts(split, len(ds), counts, cfg)
    if not rows:
        raise HftkError(
            f"data: every sample of the {split} split is too long (data.max_input_length={cfg.max_input_length}, "
            f"data.max_target_length={cfg.max_target_length}); raise them"
        )
    return rows


def _log_cuts(split: str, total: int, counts: Counter, cfg: Any) -> None:
    if counts["cut histories"]:
        logger.info(
            "%s: %d of %d samples lost %d older turns of history to fit data.max_input_length=%d",
            *(split, counts["cut histories"], total, counts["turns"], cfg.max_input_length),
        )
    if counts["cut messages"]:
        logger.warning(
            "%s: %d of %d messages cut from the start (their end kept) to fit data.max_input_length=%d",
            *(split, counts["cut messages"], total, cfg.max_input_length),
        )
    if counts["long messages"]:
        logger.warning(
            "%s: %d of %d samples left out: the message alone is longer than data.max_input_length=%d "
            "(data.on_long_sample=drop)",
            *(split, counts["long messages"], total, cfg.max_input_length),
        )
    if counts["long answers"]:
        logger.warning(
            "%s: %d of %d samples left out: their answer is longer than data.max_target_length=%d tokens",
            *(split, counts["long answers"], total, cfg.max_target_length),
        )


def answer_budget(lengths: list[int], max_target_length: int, cap: int) -> tuple[int, int]:
    """``(max_new_tokens, longest)`` for evaluation: the longest training answer that is learnt (in tokens, its end
    token included) and a margin, at most ``cap`` (the recipe's ``model.generation.max_new_tokens``)."""
    longest = max((n for n in lengths if n <= max_target_length), default=cap)
    return max(1, min(cap, longest + max(MARGIN_TOKENS, int(longest * MARGIN)))), longest


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
