"""Text corpora for language modelling: the embedded ``python-docs``, local files, jsonl/csv and Hub datasets.

Every source becomes a ``DatasetDict`` with train/validation/test splits of documents (one ``text`` per row).

``python-docs`` is the English prose of Python's own documentation as CPython ships it
(``pydoc_data.topics.topics``, ~466 KB): the topics joined in sorted key order with blank lines. Its split is
fixed and contiguous, by bytes: the first 90% of the bytes are the training part and the last 10% the test
split; validation is the tail of the training part (``data.validation_size`` of it, 10% by default). Each
topic (or the piece of it that falls in a split) is one document. ``benchmarks/text_generation.py`` gives
compressors the same split.

A single local text file is split the same way (contiguous, by bytes, ``test_size`` then
``validation_size`` from its tail); many documents (a folder of .txt files, jsonl/csv rows, Hub rows) are
split by document with ``data.split_seed`` when the source has no such split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset, DatasetDict

from hftk.data import check_path, finalize_splits, load_hub_dataset
from hftk.errors import HftkError
from hftk.sections import DataConfig

logger = logging.getLogger(__name__)

EMBEDDED = ["python-docs"]
PYTHON_DOCS_TEST_FRACTION = 0.1  # fixed: the test split never moves
TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".text")


def python_docs_text() -> str:
    """The ``python-docs`` corpus: ``pydoc_data.topics.topics`` joined in sorted key order with blank lines."""
    return "\n\n".join(_python_doc_topics())


def _python_doc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _char_boundary(data: bytes, cut: int) -> int:
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:  # never cut inside a UTF-8 character
        cut += 1
    return cut


def byte_split_points(num_bytes: int, data: bytes, test_size: float, validation_size: float) -> tuple[int, int]:
    """Byte offsets (validation start, test start) of a contiguous train/validation/test split."""
    test_start = _char_boundary(data, int(num_bytes * (1 - test_size)))
    validation_start = _char_boundary(data, int(test_start * (1 - validation_size)))
    return validation_start, test_start


def split_python_docs(validation_size: float) -> dict[str, list[str]]:
    """The python-docs documents of each split (topic pieces falling into the split's byte range)."""
    topics = [t.encode("utf-8") for t in _python_doc_topics()]
    joined = b"\n\n".join(topics)
    val_start, test_start = byte_split_points(len(joined), joined, PYTHON_DOCS_TEST_FRACTION, validation_size)
    ranges = {"train": (0, val_start), "validation": (val_start, test_start), "test": (test_start, len(joined))}
    docs: dict[str, list[str]] = {name: [] for name in ranges}
    offset = 0
    for topic in topics:
        start, end = offset, offset + len(topic)
        for name, (lo, hi) in ranges.items():
            piece = joined[max(start, lo) : min(end, hi)]
            if max(start, lo) < min(end, hi) and piece.strip():
                docs[name].append(piece.decode("utf-8"))
        offset = end + 2
    return docs


def read_text_file(path: Path, errors: str = "strict") -> str:
    """A file's text; a file that is not UTF-8 is an error naming the byte offset (or decoded with U+FFFD)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors == "replace":
            logger.warning("%s: not valid UTF-8 at byte %d; undecodable bytes replaced with U+FFFD", path, err.start)
            return data.decode("utf-8", errors="replace")
        raise HftkError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); convert the file to "
            "UTF-8 or set data.encoding_errors=replace"
        ) from None


def _contiguous_splits(text: str, cfg: DataConfig) -> DatasetDict:
    data = text.encode("utf-8")
    val_start, test_start = byte_split_points(len(data), data, cfg.test_size, cfg.validation_size)
    parts = {"train": data[:val_start], "validation": data[val_start:test_start], "test": data[test_start:]}
    return DatasetDict({k: Dataset.from_dict({"text": [v.decode("utf-8")]}) for k, v in parts.items()})


def _load_local(cfg: DataConfig) -> DatasetDict:
    path = check_path(cfg.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_EXTENSIONS)
        if not files:
            raise HftkError(f"data.path '{path}': no text files ({', '.join(TEXT_EXTENSIONS)}) in this folder")
        texts = [read_text_file(p, cfg.encoding_errors) for p in files]
        if len(texts) == 1:
            return _contiguous_splits(texts[0], cfg)
        return DatasetDict(train=Dataset.from_dict({"text": texts}))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv"):
        read_text_file(path, cfg.encoding_errors)  # a clear error for a file that is not UTF-8
        from datasets import load_dataset

        try:
            ds = load_dataset("csv" if suffix == ".csv" else "json", data_files=str(path), split="train")
        except Exception as err:  # datasets raises many types for malformed files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HftkError(f"data.path '{path}': cannot read it as {suffix[1:]} ({first})") from None
        return DatasetDict(train=ds)
    return _contiguous_splits(read_text_file(path, cfg.encoding_errors), cfg)


def _text_only(ds: Dataset, column: str, where: str, join_rows: str | None = None) -> Dataset:
    """The documents of a split: its non-blank rows, or (``join_rows``) all its rows joined into one text."""
    if column not in ds.column_names:
        raise HftkError(f"{where}: no column '{column}' (columns: {', '.join(ds.column_names)}); set data.text_column")
    rows = [t for t in ds[column] if isinstance(t, str)]
    if join_rows is not None:  # line-per-row data (WikiText): one text, no end-of-text token between lines
        text = join_rows.join(rows)
        return Dataset.from_dict({"text": [text] if text.strip() else []})
    return Dataset.from_dict({"text": [t for t in rows if t.strip()]})  # blank rows (wikitext has many) go


def load_text_data(cfg: DataConfig) -> DatasetDict:
    """Train/validation/test splits of documents (column ``text``) from the recipe's ``data`` section."""
    column = cfg.text_column
    if cfg.path:
        raw = _load_local(cfg)
        where = f"data.path '{cfg.path}'"
        if Path(cfg.path).suffix.lower() not in (".jsonl", ".json", ".csv"):
            column = "text"
    elif cfg.name == "python-docs":
        raw = DatasetDict(
            {k: Dataset.from_dict({"text": v}) for k, v in split_python_docs(cfg.validation_size).items()}
        )
        where, column = "python-docs", "text"
    elif cfg.name:
        raw = load_hub_dataset(cfg, EMBEDDED)
        where = f"data.name '{cfg.name}'"
    else:
        raise HftkError("data: give data.name (python-docs or a Hub dataset id) or data.path (a .txt file or folder)")
    raw = DatasetDict({k: _text_only(v, column, where, getattr(cfg, "join_rows", None)) for k, v in raw.items()})
    if all(len(ds) == 0 for ds in raw.values()):
        raise HftkError(f"{where}: the corpus is empty or whitespace only; give a file or data set with text in it")
    if cfg.train_split in raw and len(raw[cfg.train_split]) == 1 and len(raw) == 1:  # one document: cut by bytes
        raw = _contiguous_splits(raw[cfg.train_split][0]["text"], cfg)
    return finalize_splits(raw, cfg, check_split=lambda split, ds: _check_not_blank(split, ds, where))


def _check_not_blank(split: str, ds: Dataset, where: str) -> None:
    if not any(t.strip() for t in ds["text"]):
        raise HftkError(f"{where}: the {split} split is empty or whitespace only; give more text")
