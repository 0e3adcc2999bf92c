"""Semantic-segmentation data: images with per-pixel class maps, from the embedded ``shapes`` scenes, an images + masks
folder, a ``save_to_disk`` folder or a Hub dataset (scene_parse_150 style: an image column and an annotation column).

Every split is a ``datasets.Dataset`` with ``image`` and ``mask`` (images, decoded lazily) and ``classes``: the class
ids each mask holds, a list of ``ClassLabel`` that carries the class names. A mask is a label map: a grey or palette
PNG whose values are class ids (``data.reduce_labels`` shifts ADE20k-style maps, where 0 is "unlabelled"), or an RGB
image whose colours ``data.palette`` names. Pixels of ``data.ignore_index`` (255) count nowhere: not in the loss,
not in the metrics. Every mask is read once when the data loads, so bad input stops before training, in one line
naming the file: a mask of another size than its image, a class id beyond the label map, an image without a mask,
a colour the palette does not hold.

What the Trainer consumes (augmentation, the image processor) is ``hftk/data/segmentation_transforms.py``.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, List
from datasets import Image as ImageFeature
from PIL import Image, UnidentifiedImageError

from hftk.data import check_path, finalize_splits, load_hub_dataset
from hftk.data.images import IMAGE_EXTENSIONS
from hftk.errors import HftkError, error_line

logger = logging.getLogger(__name__)

EMBEDDED = ("shapes",)
SPLIT_NAMES = {"train": "train", "training": "train", "val": "validation", "valid": "validation"}
SPLIT_NAMES.update(validation="validation", test="test", testing="test")
MASK_FOLDERS = ("masks", "annotations")  # beside images/: ours, and ADE20k's ADEChallengeData2016 layout
LABEL_FILES = ("id2label.json", "classes.json")
IGNORE_COLOUR = "_ignore"  # a data.palette entry of this name is the colour of ignored pixels (void), not a class


@dataclass
class LabelSpace:
    """How mask files map to class ids 0..K-1 (``names``); ``ignore_index`` marks pixels that count nowhere."""

    names: list[str] | None
    ignore_index: int = 255
    palette: dict[tuple[int, int, int], int] | None = None  # RGB colour -> class id, for colour masks
    reduce_labels: bool = False


def class_names(ds: Dataset) -> list[str]:
    return list(ds.features["classes"].feature.names)


def label_space(cfg: Any, names: list[str] | None = None) -> LabelSpace:
    """The recipe's label space (``data.palette``, ``data.ignore_index``, ``data.reduce_labels``) with ``names``."""
    if not 0 <= cfg.ignore_index <= 65535:
        raise HftkError(f"data.ignore_index {cfg.ignore_index}: expected a mask value 0-65535 (usually 255)")
    palette = None
    if cfg.palette:
        palette = {}
        classes = [name for name in cfg.palette if name != IGNORE_COLOUR]
        for name, colour in cfg.palette.items():
            if not (isinstance(colour, list) and len(colour) == 3 and all(isinstance(v, int) for v in colour)):
                raise HftkError(f"data.palette.{name}: got {colour!r}; expected [red, green, blue] (integers 0-255)")
            palette[tuple(colour)] = cfg.ignore_index if name == IGNORE_COLOUR else classes.index(name)
    return LabelSpace(names, cfg.ignore_index, palette, cfg.reduce_labels)


def read_mask(item: Any, labels: LabelSpace, where: str) -> np.ndarray:
    """A mask (path, datasets image dict or PIL image) as an int64 class map, ``ignore_index`` kept.

    Grey, palette and 16-bit masks hold class ids; an RGB mask is mapped through ``labels.palette`` (a grey image
    saved as RGB needs none). Alpha is dropped.
    """
    image = _open_mask(item, where)
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        rgb = np.asarray(image.convert("RGB"))
        if labels.palette is None:
            if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                raise HftkError(
                    f"{where}: an RGB mask with colours; set data.palette (class name: [r, g, b]) or save the mask "
                    "as a grey or palette PNG of class ids"
                )
            values = rgb[..., 0].astype(np.int64)
        else:
            values = _from_palette(rgb, labels, where)
    else:
        values = np.asarray(image.convert("I") if image.mode in ("I;16", "I;16B", "I;16L") else image, np.int64)
        if values.ndim != 2:
            raise HftkError(f"{where}: a mask of mode {image.mode}; expected a grey, palette or RGB label map")
    if labels.reduce_labels:  # ADE20k: 0 is "unlabelled", ids 1..K are the classes (transformers' reduce_labels)
        kept = values != labels.ignore_index
        values = np.where(kept, values - 1, values)
        values[kept & (values == -1)] = labels.ignore_index
    return values


def _open_mask(item: Any, where: str) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, dict):
        item = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
    try:
        with Image.open(item) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise HftkError(f"{where}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise HftkError(f"{where}: not a readable mask (expected a PNG label map)") from None


def _from_palette(rgb: np.ndarray, labels: LabelSpace, where: str) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    found, inverse = np.unique(codes, return_inverse=True)
    table = {(r << 16) | (g << 8) | b: i for (r, g, b), i in labels.palette.items()}
    ids = np.array([table.get(int(c), -1) for c in found])
    if (ids < 0).any():
        c = int(found[ids < 0][0])
        raise HftkError(
            f"{where}: colour {[c >> 16, (c >> 8) & 255, c & 255]} is not in data.palette "
            f"({len(table)} colours); add it, or fix the mask"
        )
    return ids[inverse].reshape(codes.shape)


def load_segmentation_data(cfg: Any) -> DatasetDict:
    """The train/validation/test splits ``data.name`` / ``data.path`` name, every mask checked, classes resolved."""
    if cfg.path:
        splits, names = _load_local(check_path(cfg.path), cfg)
    elif cfg.name == "shapes":
        splits, names = _load_shapes(cfg)
    elif cfg.name:
        splits, names = _columns(load_hub_dataset(cfg, list(EMBEDDED)), cfg), None
    else:
        raise HftkError("data: set data.name (shapes, or a Hub dataset id such as scene_parse_150) or data.path")
    names = _names(cfg, names)
    labels = label_space(cfg, names)
    # only the splits the recipe uses are read (a Hub test split often has no masks)
    wanted = {cfg.train_split, cfg.validation_split, cfg.test_split}
    splits = DatasetDict({SPLIT_NAMES.get(s, s): ds for s, ds in splits.items() if SPLIT_NAMES.get(s, s) in wanted})
    found = {split: _scan(ds, labels, f"{cfg.path or cfg.name} {split}") for split, ds in splits.items()}
    if labels.names is None:  # no names anywhere: the ids the masks hold are the classes
        top = max((max(v, default=-1) for rows in found.values() for v in rows), default=-1)
        labels.names = [f"class_{i}" for i in range(max(2, top + 1))]
        logger.info("data: no class names given (data.label_names); %d classes by the ids found", len(labels.names))
    features = {}
    for split, ds in splits.items():
        _check_ids(ds, found[split], labels, f"{cfg.path or cfg.name} {split}")
        features[split] = _with_classes(ds, found[split], labels.names)
    return finalize_splits(DatasetDict(features), cfg)


def _names(cfg: Any, found: list[str] | None) -> list[str] | None:
    if cfg.label_names:
        return list(cfg.label_names)
    if cfg.labels_file:
        return read_label_file(cfg.labels_file)
    if cfg.palette:
        return [name for name in cfg.palette if name != IGNORE_COLOUR]
    return found


def read_label_file(source: str) -> list[str]:
    """Class names from a json file: ``{"0": "wall", ...}`` (the Hub's id2label files) or a list. ``hf://datasets/
    <owner>/<repo>/<file>`` reads one from a Hub dataset repo (e.g. huggingface/label-files)."""
    if source.startswith("hf://datasets/"):
        from huggingface_hub import hf_hub_download

        owner, repo, file = source[len("hf://datasets/") :].split("/", 2)
        try:
            path = Path(hf_hub_download(f"{owner}/{repo}", file, repo_type="dataset"))
        except Exception as err:  # offline, missing repo or file: huggingface_hub raises several types
            raise HftkError(f"data.labels_file '{source}': could not fetch it ({error_line(err)[:160]})") from None
    else:
        path = check_path(source, "data.labels_file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise HftkError(f"{path}: not a readable json file ({error_line(err)})") from None
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        ids = sorted(int(k) for k in data)
        if ids != list(range(len(ids))):
            raise HftkError(f"{path}: class ids {ids[:5]}...; expected every id from 0 to {len(ids) - 1}")
        return [str(data[str(i)] if str(i) in data else data[i]) for i in ids]
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return data
    raise HftkError(f'{path}: expected {{"0": "class name", ...}} or a list of class names')


def _load_shapes(cfg: Any) -> tuple[DatasetDict, list[str]]:
    from hftk.data.shapes import shapes_dir, shapes_masks_dir

    spec = cfg.shapes.spec()
    images, masks = shapes_dir(spec), shapes_masks_dir(spec)
    splits = DatasetDict({s: pair_files(images / s, masks / s) for s in ("train", "validation", "test")})
    return splits, read_label_file(str(masks / "classes.json"))


def _load_local(path: Path, cfg: Any) -> tuple[DatasetDict, list[str] | None]:
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        from datasets import load_from_disk

        loaded = load_from_disk(str(path))
        return _columns(loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded), cfg), None
    layout = find_mask_layout(path)
    if not layout:
        raise HftkError(
            f"data.path '{path}': no images + masks found; expected images/<name>.jpg with masks/<name>.png "
            "(or annotations/), optionally per split (images/train/, ... or train/images/, ...), or a folder "
            "written by save_to_disk"
        )
    names = next((read_label_file(str(path / f)) for f in LABEL_FILES if (path / f).is_file()), None)
    return DatasetDict({split: pair_files(images, masks) for split, (images, masks) in layout.items()}), names


def find_mask_layout(path: Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (image folder, mask folder)}``: ``images/`` + ``masks/`` (or ``annotations/``), each with split
    subfolders or not, or ``<split>/images/`` + ``<split>/masks/``."""
    for masks_name in MASK_FOLDERS:
        images, masks = path / "images", path / masks_name
        if images.is_dir() and masks.is_dir():
            by_split = {SPLIT_NAMES[d.name]: d for d in images.iterdir() if d.is_dir() and d.name in SPLIT_NAMES}
            if not by_split:
                return {"train": (images, masks)}
            return {split: (folder, masks / folder.name) for split, folder in by_split.items()}
    layout = {}
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and p.name in SPLIT_NAMES):
        masks = next((folder / m for m in MASK_FOLDERS if (folder / m).is_dir()), None)
        if (folder / "images").is_dir() and masks is not None:
            layout[SPLIT_NAMES[folder.name]] = (folder / "images", masks)
    return layout


def pair_files(images_dir: Path, masks_dir: Path) -> Dataset:
    """Each image of ``images_dir`` with the mask of the same name (any image extension) in ``masks_dir``."""
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise HftkError(f"{images_dir}: no images in this folder")
    masks = {p.relative_to(masks_dir).with_suffix(""): p for p in masks_dir.rglob("*")}
    pairs = []
    for image in images:
        mask = masks.get(image.relative_to(images_dir).with_suffix(""))
        if mask is None:
            raise HftkError(f"{image}: no mask (expected {masks_dir / image.relative_to(images_dir).stem}.png)")
        pairs.append((str(image), str(mask)))
    if len(masks) > len(pairs):
        logger.warning("%s: %d masks without an image, left out", masks_dir, len(masks) - len(pairs))
    features = Features({"image": ImageFeature(), "mask": ImageFeature()})
    return Dataset.from_dict({"image": [i for i, _ in pairs], "mask": [m for _, m in pairs]}, features=features)


def _columns(splits: DatasetDict, cfg: Any) -> DatasetDict:
    """Hub / save_to_disk splits with ``data.image_column`` and ``data.mask_column`` as ``image`` and ``mask``."""
    out = {}
    for split, ds in splits.items():
        for key, column in (("image_column", cfg.image_column), ("mask_column", cfg.mask_column)):
            if column not in ds.column_names:
                raise HftkError(
                    f"data.{key} '{column}': no such column in split '{split}'; columns: {', '.join(ds.column_names)}"
                )
            if not isinstance(ds.features[column], ImageFeature):
                raise HftkError(f"data.{key} '{column}': column is {ds.features[column]}, not images")
        ds = ds.select_columns([cfg.image_column, cfg.mask_column])
        out[split] = ds.rename_columns({cfg.image_column: "image", cfg.mask_column: "mask"})
    return DatasetDict(out)


def row_name(mask: Any, source: str, index: int) -> str:
    """A mask's file, or ``<source> row <index>`` for one embedded in a dataset (Hub data), for error lines."""
    return mask.get("path") if isinstance(mask, dict) and mask.get("path") else f"{source} row {index}"


def _scan(ds: Dataset, labels: LabelSpace, source: str) -> list[list[int]]:
    """The class ids each mask holds; a mask that cannot be meant (size, colours, unreadable) stops here."""
    raw = ds.cast_column("image", ImageFeature(decode=False)).cast_column("mask", ImageFeature(decode=False))

    def scan(row: dict, index: int) -> dict:
        where = row_name(row["mask"], source, index)
        values = read_mask(row["mask"], labels, where)
        size = _image_size(row["image"], f"{source} row {index}")
        if size != values.shape[::-1]:
            raise HftkError(
                f"{where}: mask is {values.shape[1]}x{values.shape[0]} but its image is {size[0]}x{size[1]}; "
                "expected the same size"
            )
        return {"ids": sorted(int(v) for v in np.unique(values) if v != labels.ignore_index)}

    return raw.map(scan, with_indices=True, remove_columns=raw.column_names, desc="checking masks")["ids"]


def _image_size(item: dict, fallback: str) -> tuple[int, int]:
    source = item.get("path") or fallback
    try:
        with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as im:
            return im.size
    except FileNotFoundError:
        raise HftkError(f"{source}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise HftkError(f"{source}: not a readable image (expected PNG, JPEG, BMP, GIF, TIFF or WebP)") from None


def _check_ids(ds: Dataset, found: list[list[int]], labels: LabelSpace, source: str) -> None:
    count = len(labels.names)
    for index, ids in enumerate(found):
        bad = [v for v in ids if not 0 <= v < count]
        if bad:
            where = row_name(ds.cast_column("mask", ImageFeature(decode=False))[index]["mask"], source, index)
            raise HftkError(
                f"{where}: class id {bad[0]} beyond the label map ({count} classes: 0-{count - 1}); expected ids "
                f"0-{count - 1} or {labels.ignore_index} (data.ignore_index)"
            )


def _with_classes(ds: Dataset, found: list[list[int]], names: list[str]) -> Dataset:
    features = Features({**ds.features, "classes": List(ClassLabel(names=names))})
    return ds.add_column("classes", found).cast(features)
