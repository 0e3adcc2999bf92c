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

With ``data.streaming`` nothing is loaded whole (``load_text_stream``): files, a folder, a glob of shards or a Hub
set are read as a ``datasets`` stream; a text file's documents are then its paragraphs. A stream has no length, so
it cannot be split by fractions: validation and test are the data's own splits, or the stream's first documents.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset

from hftk.data import check_path, finalize_splits, load_hub_dataset
from hftk.errors import HftkError, error_line
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
    if glob.has_magic(cfg.path):
        raise HftkError(f"data.path '{cfg.path}': a glob of shards is read as a stream; set data.streaming=true")
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


# ---- streaming: a corpus of any size, read as it trains (data.streaming)

STREAM_BUILDERS = {**{ext: "text" for ext in TEXT_EXTENSIONS}, ".jsonl": "json", ".json": "json", ".csv": "csv"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def stream_files(pattern: str) -> tuple[list[str], str]:
    """The files ``data.path`` names for streaming (a file, a folder or a glob of shards) and the datasets builder
    that reads them (``text``, ``json`` or ``csv``); compressed files (.gz, .bz2, .xz, .zst) are read as they are."""
    if glob.has_magic(pattern):
        files = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_file())
        if not files:
            raise HftkError(f"data.path '{pattern}': the pattern matches no file")
    elif (path := check_path(pattern)).is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and _stream_suffix(p) in STREAM_BUILDERS)
        if not files:
            raise HftkError(f"data.path '{pattern}': no text, jsonl or csv files in this folder")
    else:
        files = [str(path)]
    builders = sorted({STREAM_BUILDERS.get(_stream_suffix(Path(f)), "text") for f in files})
    if len(builders) > 1:
        raise HftkError(f"data.path '{pattern}': mixes kinds of files ({', '.join(builders)}); give one kind")
    return files, builders[0]


def _stream_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _open_stream(cfg: DataConfig) -> tuple[IterableDataset, dict[str, Dataset], str, str]:
    """``(train stream, the held-out splits the data itself has, its text column, where)``; nothing is read yet."""
    from datasets import load_dataset

    if cfg.path:
        files, builder = stream_files(cfg.path)
        options = {"sample_by": "paragraph", "encoding_errors": cfg.encoding_errors} if builder == "text" else {}
        stream = load_dataset(builder, data_files=files, split="train", streaming=True, **options)
        return stream, {}, "text" if builder == "text" else cfg.text_column, f"data.path '{cfg.path}'"
    if cfg.name == "python-docs":  # its fixed splits, the training part as a stream (tests; a like-for-like check)
        docs = split_python_docs(cfg.validation_size)
        held_out = {k: Dataset.from_dict({"text": docs[k]}) for k in ("validation", "test")}
        return Dataset.from_dict({"text": docs["train"]}).to_iterable_dataset(), held_out, "text", "python-docs"
    if not cfg.name:
        raise HftkError("data: give data.name (a Hub dataset id) or data.path (files, a folder or a glob) to stream")
    where = f"data.name '{cfg.name}'"
    try:
        splits = load_dataset(cfg.name, cfg.config_name, revision=cfg.revision, streaming=True)
    except Exception as err:  # datasets raises many types (connection, not found, offline)
        raise HftkError(f"{where}: cannot stream it ({error_line(err)}); check the id and the network") from None
    if cfg.train_split not in splits:
        raise HftkError(f"data.train_split '{cfg.train_split}': no such split; {where} has: {', '.join(splits)}")
    wanted = {"validation": cfg.validation_split, "test": cfg.test_split}
    limit = cfg.max_eval_samples  # a Hub set's own held-out split is read whole unless capped
    held_out = {k: _first_rows(splits[s], limit) for k, s in wanted.items() if s and s in splits}
    return splits[cfg.train_split], held_out, cfg.text_column, where


def _first_rows(stream: IterableDataset, count: int | None) -> Dataset:
    """The first ``count`` rows of a stream (all of them without a count), in memory."""
    return Dataset.from_list(list(itertools.islice(stream, count)))


def load_text_stream(cfg: DataConfig) -> dict[str, Any]:
    """``{"train": a DocumentStream (the training documents, read lazily), "validation"/"test": Datasets in memory}``.

    Validation and test come from the data's own splits where it has them (a Hub set's), otherwise from the start of
    the stream: its first ``data.holdout_documents`` documents are the test split, the next ones validation, and
    training reads what follows. A text file's documents are its paragraphs (text between blank lines).
    """
    stream, held_out, column, where = _open_stream(cfg)
    try:
        first = next(iter(stream), None)
    except UnicodeDecodeError as err:
        raise HftkError(f"{where}: not UTF-8 text ({err}); convert it or set data.encoding_errors=replace") from None
    except Exception as err:  # datasets raises many types for malformed files
        raise HftkError(f"{where}: cannot read it as a stream ({error_line(err)})") from None
    if first is None:
        raise HftkError(f"{where}: the stream is empty; give files or a data set with text in them")
    if column not in first:
        raise HftkError(f"{where}: no column '{column}' (columns: {', '.join(first)}); set data.text_column")
    stream = stream.select_columns([column])
    if column != "text":
        stream = stream.rename_column(column, "text")
    columns = dict.fromkeys(held_out, column)  # the data's own splits keep their columns; held-out rows have text
    if missing := [split for split in ("test", "validation") if split not in held_out]:
        held_out.update(_hold_out(stream, missing, cfg.holdout_documents, where))
        columns.update(dict.fromkeys(missing, "text"))
    skip = cfg.holdout_documents * len(missing)
    out: dict[str, Any] = {"train": DocumentStream(stream, skip, cfg.max_train_samples)}
    for split in ("validation", "test"):
        ds = _text_only(held_out[split], columns[split], where, cfg.join_rows)
        out[split] = ds.select(range(min(len(ds), cfg.max_eval_samples or len(ds))))
        if len(out[split]) == 0:
            raise HftkError(f"{where}: the {split} split is empty; give more data or raise data.holdout_documents")
        _check_not_blank(split, out[split], where)
    sizes = f"{len(out['validation'])} validation and {len(out['test'])} test documents"
    logger.info("streaming %s: %s held out; training reads the rest as it goes", where, sizes)
    return out


def _hold_out(stream: IterableDataset, splits: list[str], count: int, where: str) -> dict[str, Dataset]:
    """The stream's first ``count`` documents for each of ``splits``, in that order."""
    if count < 1:
        raise HftkError(f"data.holdout_documents {count}: the data has no {' or '.join(splits)} split; set it to >= 1")
    rows = _first_rows(stream, count * len(splits))
    if len(rows) <= count * (len(splits) - 1):
        raise HftkError(f"{where}: {len(rows)} documents in all; too few to hold out {count} for {', '.join(splits)}")
    return {s: rows.select(range(i * count, min(len(rows), (i + 1) * count))) for i, s in enumerate(splits)}


@dataclass
class DocumentStream:
    """A streamed training split: every document of the stream (column ``text``) but the ``skip`` held out at its
    start (validation, test), and at most ``limit`` of them (``data.max_train_samples``). Read lazily."""

    source: IterableDataset
    skip: int = 0
    limit: int | None = None

    def documents(self) -> IterableDataset:
        """The training documents, in order (a new stream object each call: nothing read yet)."""
        stream = self.source.skip(self.skip)
        return stream.take(self.limit) if self.limit else stream

    def part(self, rank: int, world_size: int) -> tuple[IterableDataset, tuple[int, int]]:
        """What process ``rank`` of ``world_size`` reads: ``(documents, (offset, step))``, keeping the blocks number
        i with i % step == offset (``hftk.data.lm.StreamBlocks``).

        With shards (files) a multiple of the processes, each reads its own (``split_dataset_by_node``): the same
        documents, in another order than one process reads them. Process 0 reads shard 0 first, so it alone skips the
        held-out documents when shard 0 holds them all (datasets would spread a ``skip`` made before the split over
        every process, putting held-out documents into training). Otherwise, or with ``limit``, every process reads
        the whole stream and keeps every N-th block: exactly one process's training with N-step accumulation.
        """
        if world_size == 1 or self.limit or self.source.n_shards % world_size or not self._first_shard_holds_skip():
            return self.documents(), (rank, world_size)
        from datasets.distributed import split_dataset_by_node

        documents = split_dataset_by_node(self.source, rank=rank, world_size=world_size)
        return (documents.skip(self.skip) if rank == 0 else documents), (0, 1)

    def _first_shard_holds_skip(self) -> bool:
        first = self.source.shard(num_shards=self.source.n_shards, index=0)
        return sum(1 for _ in itertools.islice(first, self.skip)) == self.skip


def sample_texts(stream: IterableDataset, max_bytes: int) -> Iterator[str]:
    """Texts from the start of a stream, up to ``max_bytes`` of UTF-8 (a tokenizer's training sample)."""
    seen = 0
    for row in stream:
        text = row["text"]
        if isinstance(text, str) and text.strip():
            yield text
            seen += len(text.encode("utf-8"))
            if seen >= max_bytes:
                return
