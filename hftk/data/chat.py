"""Chat data: conversations turned into (history + message -> response) samples.

Sources, each read as a list of *conversations* (lists of turns) before it is split, so that no conversation is
in two splits:

- ``chatterbot-english`` (embedded): the English conversations of the ``chatterbot-corpus`` package
  (``english/*.yml``, 2,024 conversations, 2,306 turn pairs). Every turn after the first is the response to the
  one before it, as chatterbot trains. The test split is fixed: 10% of the conversations, seed 0, whatever the
  recipe; validation is carved from the rest with ``data.split_seed``.
- jsonl/csv files with an ``input`` and a ``target`` column (one single-turn sample per row), or jsonl with a
  ``messages`` list of ``{"role": "user"|"assistant"|"system", "content": ...}`` (the chat format of Hub
  datasets; one conversation per row, one sample per assistant turn). Column names are ``data.*_column``.
- a Hub dataset in either layout, with the same column mapping.

A sample keeps its structure (``history``, ``message``, ``response``, ``source``); ``hftk/data/chat_inputs.py``
turns it into the model input. Bad input stops with one line naming the file, the line and
what is expected.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from hftk.data import check_path, finalize_splits, load_hub_dataset
from hftk.errors import HftkError

logger = logging.getLogger(__name__)

EMBEDDED = ["chatterbot-english"]
CHATTERBOT_TEST_FRACTION = 0.1  # fixed: the test split must not move when a recipe changes its seed
TEST_SEED = 0
ROLES = ("user", "assistant")
SAMPLE_COLUMNS = ("history", "message", "response", "source")


def chat_template(separator: str, history_turns: int) -> str:
    """A Jinja chat template that renders ``messages`` as ``chat_inputs.format_input`` does (saved with the
    tokenizer of an encoder-decoder run; a decoder-only model keeps its own).

    ``tokenizer.apply_chat_template(messages, tokenize=False)`` then gives the model input of a conversation that
    ends with the user's message: its last ``history_turns`` earlier turns and the message, system turns left out.
    """
    sep = json.dumps(separator)
    return (
        "{%- set turns = messages | rejectattr('role', 'equalto', 'system') | list -%}"
        f"{{%- for m in turns[-{history_turns + 1}:] -%}}"
        f"{{{{ m['content'] | trim }}}}{{% if not loop.last %}}{{{{ {sep} }}}}{{% endif %}}"
        "{%- endfor -%}"
    )


# ---- conversations from each source: {"turns": [...], "responses": [indices], "source": "file:line"}


def chatterbot_conversations() -> list[dict]:
    """The English conversations of chatterbot-corpus, files in name order (items that are not lists are skipped)."""
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    conversations, skipped = [], 0
    for path in sorted(root.glob("*.yml")):
        for i, item in enumerate(yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []):
            turns = [str(t).strip() for t in item] if isinstance(item, list) else []
            if len(turns) < 2 or not all(turns):
                skipped += 1  # trivia.yml has one question that is not a list
                continue
            source = f"chatterbot-english {path.name} conversation {i + 1}"
            conversations.append({"turns": turns, "responses": list(range(1, len(turns))), "source": source})
    if skipped:
        logger.info("chatterbot-english: skipped %d items that are not conversations of 2+ turns", skipped)
    return conversations


def conversation_from_messages(messages: Any, where: str) -> dict:
    """One conversation from a Hub-style ``messages`` list, checked: roles alternate, an assistant turn answers."""
    if not isinstance(messages, list) or not messages:
        raise HftkError(
            f"{where}: 'messages' is not a list of turns; expected [{{'role': 'user', 'content': ...}}, ...]"
        )
    turns, responses, last_role = [], [], None
    for k, turn in enumerate(messages, 1):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise HftkError(f"{where}: message {k} is not {{'role': ..., 'content': ...}}")
        role, content = turn["role"], turn["content"]
        if role == "system" and not turns:
            continue  # instructions: not a turn of the conversation
        if role not in ROLES:
            raise HftkError(f"{where}: message {k} has unknown role {role!r}; expected 'user' or 'assistant'")
        if not isinstance(content, str) or not content.strip():
            raise HftkError(f"{where}: message {k} ({role}) is empty; expected text")
        if role == last_role:
            raise HftkError(
                f"{where}: two {role} turns in a row (messages {k - 1} and {k}); expected user and assistant to take "
                "turns (merge them into one)"
            )
        if role == "assistant" and turns:
            responses.append(len(turns))
        turns.append(content.strip())
        last_role = role
    if not responses:
        raise HftkError(f"{where}: no assistant turn after a user turn; expected at least one answer to learn from")
    return {"turns": turns, "responses": responses, "source": where}


def conversation_from_pair(message: Any, response: Any, where: str, columns: tuple[str, str]) -> dict:
    """A single-turn conversation from an input/target row, checked for empty text."""
    for value, column in zip((message, response), columns):
        if not isinstance(value, str) or not value.strip():
            raise HftkError(f"{where}: '{column}' is empty; expected text in every row")
    return {"turns": [message.strip(), response.strip()], "responses": [1], "source": where}


def conversations_from_rows(rows: list[tuple[str, dict]], cfg: Any, where: str) -> list[dict]:
    """Conversations from ``(location, row)`` pairs in either layout, named by location in every error."""
    if not rows:
        raise HftkError(f"{where}: no rows; expected {cfg.input_column}/{cfg.target_column} or {cfg.messages_column}")
    columns = set(rows[0][1])
    if cfg.messages_column in columns:
        return [conversation_from_messages(row.get(cfg.messages_column), loc) for loc, row in rows]
    if cfg.input_column not in columns:
        raise HftkError(
            f"{rows[0][0]}: no '{cfg.input_column}' or '{cfg.messages_column}' column (columns: "
            f"{', '.join(sorted(map(str, columns)))}); set data.input_column and data.target_column, or "
            "data.messages_column"
        )
    pair = (cfg.input_column, cfg.target_column)
    out = []
    for loc, row in rows:
        if cfg.target_column not in row:
            raise HftkError(
                f"{loc}: no '{cfg.target_column}' column; expected the response beside '{cfg.input_column}' "
                "(set data.target_column)"
            )
        out.append(conversation_from_pair(row.get(cfg.input_column), row[cfg.target_column], loc, pair))
    return out


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """Rows of a jsonl, json (a list of objects) or csv file, each with its ``file:line`` for error messages."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise HftkError(f"{path}: not UTF-8 text (offset {err.start}); convert the file to UTF-8") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        rows = []
        for row in reader:
            rows.append((f"{path}:{reader.line_num}", row))
        return rows
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise HftkError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
        return [(f"{path} item {i + 1}", _object(item, f"{path} item {i + 1}")) for i, item in enumerate(items)]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise HftkError(f"{path}:{n}: malformed JSON ({err.msg}); expected one JSON object per line") from None
        rows.append((f"{path}:{n}", _object(item, f"{path}:{n}")))
    return rows


def _object(item: Any, where: str) -> dict:
    if not isinstance(item, dict):
        raise HftkError(f"{where}: expected a JSON object with the data columns, got {type(item).__name__}")
    return item


CHAT_FILE_SUFFIXES = (".jsonl", ".json", ".csv")


def _local_conversations(cfg: Any) -> dict[str, list[dict]]:
    """``{split: conversations}`` from a file, or from a folder with train/validation/test files."""
    path = check_path(cfg.path)
    if path.is_file():
        files = {cfg.train_split: path}
    else:
        files = {p.stem: p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in CHAT_FILE_SUFFIXES}
        if cfg.train_split not in files:
            raise HftkError(
                f"data.path '{path}': no {cfg.train_split}.jsonl/.json/.csv in this folder; "
                "expected one file per split"
            )
    if any(p.suffix.lower() not in CHAT_FILE_SUFFIXES for p in files.values()):
        raise HftkError(f"data.path '{path}': expected a .jsonl, .json or .csv file (or a folder of them)")
    return {split: conversations_from_rows(read_rows(p), cfg, str(p)) for split, p in files.items()}


def _hub_conversations(cfg: Any) -> dict[str, list[dict]]:
    raw = load_hub_dataset(cfg, EMBEDDED)
    out = {}
    for split, ds in raw.items():
        rows = [(f"{cfg.name} ({split} split) row {i + 1}", row) for i, row in enumerate(ds)]
        out[split] = conversations_from_rows(rows, cfg, f"data.name '{cfg.name}' ({split} split)")
    return out


# ---- splits and samples


def load_chat_data(cfg: Any) -> DatasetDict:
    """Train/validation/test samples (``history``, ``message``, ``response``, ``source``) from ``data``.

    Conversations are split first (by conversation: none is in two splits), then expanded into samples.
    ``data.max_train_samples`` / ``max_eval_samples`` then keep a seeded sample of the samples.
    """
    if cfg.history_turns < 0:
        raise HftkError(f"data.history_turns {cfg.history_turns}: expected 0 (the message alone) or more")
    if cfg.path:
        splits = _local_conversations(cfg)
    elif cfg.name == "chatterbot-english":
        conversations = _as_dataset(chatterbot_conversations())
        parts = conversations.train_test_split(test_size=CHATTERBOT_TEST_FRACTION, seed=TEST_SEED)
        splits = {"train": parts["train"], "test": parts["test"]}
    elif cfg.name:
        splits = _hub_conversations(cfg)
    else:
        raise HftkError("data: give data.name (chatterbot-english or a Hub dataset id) or data.path (jsonl/csv)")
    splits = DatasetDict({k: v if isinstance(v, Dataset) else _as_dataset(v) for k, v in splits.items()})
    unlimited = dataclasses.replace(cfg, max_train_samples=None, max_eval_samples=None)
    splits = finalize_splits(splits, unlimited)  # conversations: carves validation/test when missing
    out = DatasetDict({k: expand(v, cfg.history_turns) for k, v in splits.items()})
    for split, limit in (("train", cfg.max_train_samples), ("validation", cfg.max_eval_samples)):
        if limit and limit < len(out[split]):
            out[split] = out[split].shuffle(seed=cfg.split_seed).select(range(limit)).flatten_indices()
    if cfg.max_eval_samples and cfg.max_eval_samples < len(out["test"]):
        out["test"] = out["test"].select(range(cfg.max_eval_samples))  # the first ones: a fixed prefix
    for split, ds in out.items():
        if len(ds) == 0:
            raise HftkError(f"data: the {split} split has no samples; give more conversations")
    logger.info("chat samples: %s", ", ".join(f"{k}={len(v)}" for k, v in out.items()))
    return out


def _as_dataset(conversations: list[dict]) -> Dataset:
    return Dataset.from_dict(
        {
            "turns": [c["turns"] for c in conversations],
            "responses": [c["responses"] for c in conversations],
            "source": [c["source"] for c in conversations],
        }
    )


def expand(conversations: Dataset, history_turns: int) -> Dataset:
    """One sample per response turn: up to ``history_turns`` earlier turns, the message before it, the response."""
    columns: dict[str, list] = {name: [] for name in SAMPLE_COLUMNS}
    for turns, responses, source in zip(conversations["turns"], conversations["responses"], conversations["source"]):
        for i in responses:
            columns["history"].append(turns[max(0, i - 1 - history_turns) : i - 1])
            columns["message"].append(turns[i - 1])
            columns["response"].append(turns[i])
            columns["source"].append(source if len(responses) == 1 else f"{source}, turn {i + 1}")
    return Dataset.from_dict(columns)


def distinct_indices(samples: Dataset) -> list[int]:
    """Index of the first of each distinct (history, message, response) sample, in order."""
    seen, keep = set(), []
    for i, (history, message, response) in enumerate(zip(samples["history"], samples["message"], samples["response"])):
        key = (tuple(history), message, response)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def normalize_message(text: str) -> str:
    """How messages are compared to find the *novel* ones: case and runs of whitespace do not count."""
    return " ".join(text.lower().split())
