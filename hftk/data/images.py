"""Image data: embedded sets, local folders, Hub datasets; images converted to RGB whatever they arrive as.

Unreadable images (corrupt or truncated files, non-image files) in local or Hub data are skipped with a
warning that counts them and names the first few (``data.on_bad_image: skip``, the default), or stop the
run naming the file (``data.on_bad_image: error``).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset, load_from_disk
from PIL import Image as PILImage
from PIL import ImageOps

from hftk.data import check_path, finalize_splits, load_hub_dataset
from hftk.data.embedded import IMAGE_DATASETS
from hftk.errors import HftkError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Return an 8-bit RGB image: grayscale, palette, CMYK, RGBA and 16-bit/float images all convert.

    Alpha is dropped the way ``Image.convert("RGB")`` drops it, which is what transformers' pipelines do,
    so hftk and ``pipeline("image-classification")`` see the same pixels. 16-bit and float images are
    rescaled from their own range (a plain convert would clip them to white).
    """
    image = ImageOps.exif_transpose(image) if "exif" in image.info else image
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return PILImage.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def open_image_file(item: Any, expected: str = "PNG, JPEG, BMP, GIF, TIFF or WebP") -> PILImage.Image:
    """An RGB image from a path or a datasets image dict (path or bytes); a PIL image passes through.

    A missing or unreadable file is one line naming it (embedded bytes are named as such).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, dict):
        source = item.get("path") or "<embedded bytes>"
        item = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
    elif isinstance(item, (str, Path)):
        source = item
    else:
        return to_rgb(item)
    try:
        with Image.open(item) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise HftkError(f"{source}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise HftkError(f"{source}: not a readable image (expected {expected})") from None


def load_image_data(cfg) -> DatasetDict:
    """Load the splits named by ``data.name``/``data.path`` with columns ``image`` (PIL) and ``label`` (ClassLabel)."""
    if cfg.path:
        splits = _load_local(check_path(cfg.path))
    elif cfg.name in IMAGE_DATASETS:
        splits = IMAGE_DATASETS[cfg.name]()
    elif cfg.name:
        splits = load_hub_dataset(cfg, list(IMAGE_DATASETS))
    else:
        raise HftkError("data: set data.name (embedded: mnist-5k, digits; or a Hub dataset id) or data.path")
    splits = DatasetDict({name: _standard_columns(ds, cfg, name) for name, ds in splits.items()})
    if not cfg.path and cfg.name in IMAGE_DATASETS:
        out = finalize_splits(splits, cfg, "label")
    else:
        splits = DatasetDict({name: drop_unreadable(ds, cfg.on_bad_image) for name, ds in splits.items()})
        out = finalize_splits(splits, cfg, "label", check_split=_check_classes)
    if cfg.samples_per_class:
        out["train"] = per_class(out["train"], cfg.samples_per_class, cfg.split_seed)
    return out


def per_class(ds: Dataset, count: int, seed: int) -> Dataset:
    """At most ``count`` training images of each class, drawn with ``seed``: a label budget (few-shot transfer)."""
    if count < 1:
        raise HftkError(f"data.samples_per_class {count}: expected a positive number (null: every image)")
    labels = np.asarray(ds["label"])
    order = np.random.default_rng(seed).permutation(len(labels))
    taken: dict[int, int] = {}
    keep = []
    for i in order:
        if taken.get(labels[i], 0) < count:
            taken[labels[i]] = taken.get(labels[i], 0) + 1
            keep.append(int(i))
    logger.info("train: %d images, at most %d per class (data.samples_per_class)", len(keep), count)
    return ds.select(sorted(keep)).flatten_indices()


def _load_local(path: Path) -> DatasetDict:
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        return load_from_disk(str(path))
    if path.is_dir() and (path / "dataset_info.json").is_file():
        return DatasetDict(train=load_from_disk(str(path)))
    if not path.is_dir():
        raise HftkError(f"data.path '{path}': expected a folder of class subfolders (imagefolder) for images")
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise HftkError(f"data.path '{path}': no images found; expected <class name>/<image>.png subfolders")
    try:
        splits = load_dataset("imagefolder", data_dir=str(path))
    except Exception as err:  # datasets raises several types for malformed folders
        raise HftkError(f"data.path '{path}': cannot read it as an imagefolder ({str(err).splitlines()[0]})") from None
    if any("label" not in ds.column_names for ds in splits.values()):  # datasets drops a lone class folder
        classes = sorted({p.parent.name for p in files})
        raise HftkError(
            f"data.path '{path}': a single class ({', '.join(classes[:3])}); classification needs at least 2 "
            "class subfolders (<class name>/<image>.png)"
        )
    return splits


def _standard_columns(ds: Dataset, cfg, split: str) -> Dataset:
    """Rename the configured columns to ``image``/``label`` and make ``label`` a ClassLabel."""
    for key, column in (("image_column", cfg.image_column), ("label_column", cfg.label_column)):
        if column not in ds.column_names:
            raise HftkError(
                f"data.{key} '{column}': no such column in split '{split}'; columns: {', '.join(ds.column_names)}"
            )
    ds = ds.select_columns([cfg.image_column, cfg.label_column])
    if cfg.image_column != "image":
        ds = ds.rename_column(cfg.image_column, "image")
    if cfg.label_column != "label":
        ds = ds.rename_column(cfg.label_column, "label")
    if not isinstance(ds.features["label"], ClassLabel):
        ds = ds.class_encode_column("label")
    if not isinstance(ds.features["image"], Image):
        raise HftkError(f"data.image_column '{cfg.image_column}': column is {ds.features['image']}, not images")
    return ds


def _check_classes(split: str, ds: Dataset) -> None:
    if split == "train" and len(set(ds["label"])) < 2:
        names = ds.features["label"].names
        raise HftkError(
            f"data: the train split has a single class ({names[0] if names else '?'}); classification needs at least 2"
        )


def _readable(example: dict) -> dict:
    image = example["image"]
    source = image.get("path") or "<embedded bytes>"
    try:
        with PILImage.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as im:
            im.load()
        return {"_ok": True, "_source": source}
    except (PILImage.UnidentifiedImageError, OSError, SyntaxError, ValueError):  # what PIL raises for bad files
        return {"_ok": False, "_source": source}


def drop_unreadable(ds: Dataset, policy: str) -> Dataset:
    """Decode every image once; skip unreadable ones with a counted warning, or stop naming the file."""
    checked = ds.cast_column("image", Image(decode=False)).map(_readable, desc="checking images")
    bad = [src for ok, src in zip(checked["_ok"], checked["_source"]) if not ok]
    if not bad:
        return ds
    if policy == "error":
        raise HftkError(
            f"{bad[0]}: not a readable image ({len(bad)} such files); fix or remove it, or set data.on_bad_image=skip"
        )
    logger.warning("skipped %d unreadable image(s), e.g. %s", len(bad), ", ".join(bad[:3]))
    keep = [i for i, ok in enumerate(checked["_ok"]) if ok]
    return ds.select(keep)
