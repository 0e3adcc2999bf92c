"""Data sets shared by the tasks: split handling, Hub and local loading.

Embedded data sets (shipped by installed packages, so they work offline) live in ``embedded.py``;
image-specific loading and conversion in ``images.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict

from hftk.errors import HftkError, did_you_mean
from hftk.sections import DataConfig

logger = logging.getLogger(__name__)


def load_hub_dataset(cfg: DataConfig, embedded_names: list[str]) -> DatasetDict:
    """Load a Hub dataset id (needs the network unless it is in the local cache)."""
    from datasets import load_dataset

    name = cfg.name
    if "/" not in name:
        guess = f"{hint} " if (hint := did_you_mean(name, embedded_names)) else ""
        raise HftkError(
            f"data.name '{name}': not an embedded data set ({', '.join(embedded_names)}); {guess}"
            "give a Hub dataset id (owner/name) or data.path for local data"
        )
    try:
        return load_dataset(name, cfg.config_name, revision=cfg.revision)
    except Exception as err:  # datasets raises many types (connection, not found, offline)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HftkError(
            f"data.name '{name}': could not load it from the Hub ({first}); "
            "check the id and the network, or use data.path for a local copy"
        ) from None


def check_path(path: str, key: str = "data.path") -> Path:
    """The path as a Path, or a clear error when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise HftkError(f"{key} '{path}': no such file or folder")
    return p


def finalize_splits(
    splits: DatasetDict,
    cfg: DataConfig,
    stratify_column: str | None = None,
    check_split: Callable[[str, Dataset], None] | None = None,
) -> DatasetDict:
    """Return train/validation/test, carving missing ones out of train with a fixed seed.

    Test is carved first (with ``test_size``), then validation from what is left (``validation_size``),
    so the test split never depends on the validation setting. Class-labelled data is split stratified.
    """
    if cfg.train_split not in splits:
        raise HftkError(f"data.train_split '{cfg.train_split}': no such split; the data set has: {', '.join(splits)}")
    train = splits[cfg.train_split]
    stratify = stratify_column if _is_class_label(train, stratify_column) else None
    test = splits.get(cfg.test_split) if cfg.test_split else None
    if test is None:
        train, test = _carve(train, cfg.test_size, cfg.split_seed, stratify, "test_size")
    validation = splits.get(cfg.validation_split) if cfg.validation_split else None
    if validation is None:
        train, validation = _carve(train, cfg.validation_size, cfg.split_seed, stratify, "validation_size")
    out = DatasetDict(train=train, validation=validation, test=test)
    if cfg.max_train_samples:
        out["train"] = _truncate(out["train"], cfg.max_train_samples, cfg.split_seed)
    if cfg.max_eval_samples:
        for split in ("validation", "test"):
            out[split] = _truncate(out[split], cfg.max_eval_samples, cfg.split_seed)
    for split, ds in out.items():
        if len(ds) == 0:
            raise HftkError(f"data: the {split} split is empty; give more data or change data.{split}_size")
        if check_split:
            check_split(split, ds)
    logger.info("splits: %s", ", ".join(f"{k}={len(v)}" for k, v in out.items()))
    return out


def _is_class_label(ds: Dataset, column: str | None) -> bool:
    return column is not None and isinstance(ds.features.get(column), ClassLabel)


def _carve(ds: Dataset, size: float, seed: int, stratify: str | None, key: str) -> tuple[Dataset, Dataset]:
    if not 0 < size < 1 and not (isinstance(size, float) and size.is_integer() and 1 <= size < len(ds)):
        raise HftkError(f"data.{key}: expected a fraction between 0 and 1, got {size}")
    if len(ds) < 2:
        raise HftkError(f"data: only {len(ds)} example(s) in train; cannot carve a {key.split('_')[0]} split from it")
    size = int(size) if size >= 1 else size
    try:
        parts = ds.train_test_split(test_size=size, seed=seed, stratify_by_column=stratify)
    except ValueError:  # too few examples of a class to stratify
        parts = ds.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


def _truncate(ds: Dataset, n: int, seed: int) -> Dataset:
    if n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n)).flatten_indices()
