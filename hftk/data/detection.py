"""Detection data: embedded ``shapes``, COCO json in its common layouts, an imagefolder with ``metadata.jsonl``, or
a Hub dataset (cppe-5 style), all read into one shape of split.

Every split is a ``datasets.Dataset`` with ``image`` (decoded lazily), ``image_id``, ``width``, ``height`` and
``objects``: ``{"bbox": [[x, y, w, h], ...], "category": [class index, ...]}`` in pixels (COCO's box format), with
class indices 0..K-1 (``objects.category`` is a ClassLabel holding the names). Source category ids need not be
contiguous or start anywhere in particular. Boxes are cleaned the same way from every source, with counts in the
log: clipped to the image, dropped when nothing is left of them (zero size, or wholly outside) or when they are bad
labels (a negative size, a non-finite number; ``data.on_bad_box=error`` stops instead), and images without boxes
are kept as negatives. Input that cannot be meant (a bbox with 3 values, a category missing from ``categories``, an
image that is not there or cannot be read) stops with one line naming the file and the entry.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image, UnidentifiedImageError

from hftk.data import check_path, finalize_splits, load_hub_dataset
from hftk.errors import HftkError, error_line

logger = logging.getLogger(__name__)

EMBEDDED = ("shapes",)
BBOX_FORMATS = ("coco", "pascal_voc", "yolo")  # [x, y, w, h] px, [x1, y1, x2, y2] px, [cx, cy, w, h] / image size
SPLIT_NAMES = {
    "train": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}
CATEGORY_KEYS = ("category", "categories", "category_id", "label", "labels")


def features(names: list[str]) -> Features:
    """The columns every split has (``objects.category`` is a ClassLabel of the class names)."""
    return Features(
        {
            "image": ImageFeature(),
            "image_id": Value("int64"),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": {"bbox": List(List(Value("float32"), length=4)), "category": List(ClassLabel(names=names))},
        }
    )


def class_names(ds: Dataset) -> list[str]:
    return list(ds.features["objects"]["category"].feature.names)


@dataclass
class Hygiene:
    """Counts of what cleaning did to one split's boxes (logged)."""

    images: int = 0
    boxes: int = 0
    clipped: int = 0
    dropped: int = 0
    bad: int = 0  # negative sizes or non-finite numbers, dropped (data.on_bad_box=drop)
    negatives: int = 0
    crowd: int = 0
    skipped_images: list[str] = field(default_factory=list)

    def log(self, where: str) -> None:
        logger.info(
            "%s: %d images, %d boxes; %d boxes clipped to the image, %d empty boxes dropped (zero size or outside), "
            "%d images without boxes kept as negatives%s%s%s",
            where,
            self.images,
            self.boxes,
            self.clipped,
            self.dropped,
            self.negatives,
            f", {self.bad} bad boxes dropped (negative size or not finite; data.on_bad_box)" if self.bad else "",
            f", {self.crowd} crowd boxes skipped" if self.crowd else "",
            f", {len(self.skipped_images)} unreadable images skipped (e.g. {self.skipped_images[0]})"
            if self.skipped_images
            else "",
        )


def clean_boxes(
    boxes: Any, width: int, height: int, bbox_format: str, where: str, stats: Hygiene, on_bad: str = "drop"
) -> list:
    """``boxes`` in ``bbox_format`` -> COCO ``[x, y, w, h]`` pixels clipped to the image; ``None`` for a dropped box.

    A box that is not 4 numbers is an error naming ``where`` (the data is in another format). A box with a negative
    size or a non-finite number is a bad label: dropped and counted (``on_bad="drop"``, as ultralytics does with bad
    labels), or an error naming ``where`` (``"error"``).
    """
    out = []
    for i, box in enumerate(boxes):
        here = f"{where}, box {i}" if len(boxes) > 1 else where
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            count = len(box) if isinstance(box, (list, tuple)) else type(box).__name__
            raise HftkError(f"{here}: bbox has {count} values {box!r}; expected 4 numbers ({_layout(bbox_format)})")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise HftkError(f"{here}: bbox {box!r} holds a non-number; expected 4 numbers ({_layout(bbox_format)})")
        x0, y0, x1, y1 = _to_corners(box, width, height, bbox_format)
        if x1 < x0 or y1 < y0 or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            if on_bad == "error":
                problem = "a negative size" if x1 < x0 or y1 < y0 else "a number that is not finite"
                raise HftkError(
                    f"{here}: bbox {list(box)} has {problem}; expected {_layout(bbox_format)} "
                    "(data.on_bad_box=drop drops such boxes)"
                )
            stats.bad += 1
            out.append(None)
            continue
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            stats.dropped += 1
            out.append(None)
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            stats.clipped += 1
        out.append([cx0, cy0, cx1 - cx0, cy1 - cy0])
    return out


def _to_corners(box: list, width: int, height: int, bbox_format: str) -> tuple[float, float, float, float]:
    a, b, c, d = (float(v) for v in box)
    if bbox_format == "coco":
        return a, b, a + c, b + d
    if bbox_format == "pascal_voc":
        return a, b, c, d
    if bbox_format == "yolo":
        return (a - c / 2) * width, (b - d / 2) * height, (a + c / 2) * width, (b + d / 2) * height
    raise HftkError(f"data.bbox_format '{bbox_format}': expected one of {', '.join(BBOX_FORMATS)}")


def _layout(bbox_format: str) -> str:
    return {
        "coco": "coco: [x, y, width, height] in pixels",
        "pascal_voc": "pascal_voc: [x_min, y_min, x_max, y_max] in pixels",
        "yolo": "yolo: [center_x, center_y, width, height] as fractions of the image",
    }.get(bbox_format, bbox_format)


def load_detection_data(cfg: Any) -> DatasetDict:
    """The train/validation/test splits ``data.name`` / ``data.path`` name, cleaned, with class names."""
    if cfg.path:
        splits = load_local(check_path(cfg.path), cfg)
    elif cfg.name == "shapes":
        from hftk.data.shapes import shapes_dir

        splits = read_coco_layout(shapes_dir(cfg.shapes.spec()), cfg)
    elif cfg.name:
        splits = from_datasets(load_hub_dataset(cfg, list(EMBEDDED)), cfg)
    else:
        raise HftkError("data: set data.name (shapes, or a Hub dataset id such as cppe-5) or data.path")
    names = {tuple(class_names(ds)) for ds in splits.values()}
    if len(names) > 1:
        raise HftkError(f"data: the splits name different categories ({' / '.join(', '.join(n) for n in names)})")
    return finalize_splits(splits, cfg)


def load_local(path: Path, cfg: Any) -> DatasetDict:
    """A COCO json file, a folder in one of COCO's common layouts, a ``save_to_disk`` folder or an imagefolder."""
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise HftkError(f"data.path '{path}': expected a COCO annotation .json file or a folder")
        images = check_path(cfg.images, "data.images") if cfg.images else path.parent
        return DatasetDict(train=read_coco(path, images, cfg))
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        from datasets import load_from_disk

        loaded = load_from_disk(str(path))
        return from_datasets(loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded), cfg)
    layout = find_coco_layout(path)
    if layout:
        return DatasetDict({split: read_coco(js, images, cfg) for split, (js, images) in layout.items()})
    if any(path.glob("metadata.jsonl")) or any(path.glob("*/metadata.jsonl")):
        from datasets import load_dataset

        try:
            loaded = load_dataset("imagefolder", data_dir=str(path))
        except Exception as err:  # datasets raises many types for malformed folders and metadata
            raise HftkError(f"data.path '{path}': cannot read it as an imagefolder ({error_line(err)})") from None
        return from_datasets(loaded, cfg)
    raise HftkError(
        f"data.path '{path}': no COCO annotations found; expected annotations/instances_<split>.json + <split>/, "
        "<split>/_annotations.coco.json (Roboflow), <split>/annotations.json + <split>/images/, "
        "an imagefolder with metadata.jsonl, or a COCO .json file"
    )


def find_coco_layout(path: Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (annotation json, image folder)}`` for COCO's, Roboflow's and the ``annotations.json`` layouts."""
    found: dict[str, tuple[Path, Path]] = {}
    for js in sorted((path / "annotations").glob("instances_*.json")):  # COCO: instances_train2017.json + train2017/
        stem = js.stem[len("instances_") :]
        split = _split_name(stem)
        folder = path / stem if (path / stem).is_dir() else path / split
        if split and folder.is_dir():
            found[split] = (js, folder)
    for js in sorted(path.glob("*/_annotations.coco.json")):  # Roboflow: train/_annotations.coco.json
        if _split_name(js.parent.name):
            found[_split_name(js.parent.name)] = (js, js.parent)
    for js in sorted(path.glob("*/annotations.json")):  # train/annotations.json + train/images/
        images = js.parent / "images"
        if _split_name(js.parent.name):
            found[_split_name(js.parent.name)] = (js, images if images.is_dir() else js.parent)
    for name in ("annotations.json", "_annotations.coco.json"):  # a single annotated folder: one split
        if not found and (path / name).is_file():
            images = path / "images"
            found["train"] = (path / name, images if images.is_dir() else path)
    return found


def _split_name(stem: str) -> str | None:
    word = re.match(r"[a-z]+", stem.lower())
    return SPLIT_NAMES.get(word.group(0)) if word else None


def read_coco(json_path: Path, images_dir: Path, cfg: Any) -> Dataset:
    """One COCO annotation file as a split; every entry is checked and named in errors (``images[3]``)."""
    coco = _read_json(json_path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            got = "missing" if key not in coco else f"a {type(coco[key]).__name__}"
            raise HftkError(f"{json_path}: '{key}' is {got}; expected a list (COCO: images, annotations, categories)")
    categories = {}
    for i, cat in enumerate(coco["categories"]):
        _require(cat, {"id": int, "name": str}, f"{json_path}: categories[{i}]")
        categories[cat["id"]] = cat["name"]
    index = {cid: k for k, cid in enumerate(sorted(categories))}  # any ids -> 0..K-1
    images = {}
    for i, im in enumerate(coco["images"]):
        _require(im, {"id": (int, str), "file_name": str}, f"{json_path}: images[{i}]")
        images[im["id"]] = (i, im)
    boxes: dict[Any, list] = {k: [] for k in images}
    stats = Hygiene()
    for i, ann in enumerate(coco["annotations"]):
        where = f"{json_path}: annotations[{i}]" + (
            f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else ""
        )
        _require(ann, {"image_id": (int, str), "category_id": int, "bbox": list}, where)
        if ann["image_id"] not in images:
            raise HftkError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in categories:
            known = ", ".join(str(c) for c in sorted(categories))
            raise HftkError(f"{where}: category_id {ann['category_id']} is not in 'categories' (ids: {known})")
        if ann.get("iscrowd", 0):
            stats.crowd += 1
            continue
        boxes[ann["image_id"]].append((ann["bbox"], index[ann["category_id"]], where))
    names = [categories[c] for c in sorted(categories)]
    rows = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    for image_id, (i, im) in images.items():
        file = images_dir / im["file_name"]
        size = _image_size(file, f"{json_path}: images[{i}]", cfg.on_bad_image, stats)
        if size is None:
            continue
        width, height = size
        cleaned, cats = [], []
        for bbox, cat, where in boxes[image_id]:
            box = clean_boxes([bbox], width, height, "coco", where, stats, cfg.on_bad_box)[0]
            if box is not None:
                cleaned.append(box)
                cats.append(cat)
        _add_row(rows, str(file), image_id if isinstance(image_id, int) else i, width, height, cleaned, cats, stats)
    stats.log(f"{json_path.name}")
    return Dataset.from_dict(rows, features=features(names))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise HftkError(f"{path}: cannot read it ({error_line(err)})") from None
    except json.JSONDecodeError as err:
        raise HftkError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); expected a COCO annotation file") from None
    if not isinstance(data, dict):
        raise HftkError(f"{path}: expected a JSON object with images, annotations and categories")
    return data


def _require(entry: Any, keys: dict[str, type | tuple], where: str) -> None:
    if not isinstance(entry, dict):
        raise HftkError(f"{where}: expected an object, got {type(entry).__name__}")
    for key, kind in keys.items():
        if key not in entry:
            raise HftkError(f"{where}: missing key '{key}'")
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise HftkError(f"{where}: '{key}' is {value!r}; expected {expected}")


def _image_size(file: Path, where: str, policy: str, stats: Hygiene) -> tuple[int, int] | None:
    """(width, height) from the image's header; a missing file is an error, an unreadable one per ``policy``."""
    if not file.is_file():
        raise HftkError(f"{where}: image file {file} does not exist (set data.images to the image folder?)")
    try:
        with Image.open(file) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        if policy == "skip":
            stats.skipped_images.append(str(file))
            return None
        raise HftkError(
            f"{where}: {file} is not a readable image; fix or remove it, or set data.on_bad_image=skip"
        ) from None


def _add_row(rows: dict, image: Any, image_id: int, width: int, height: int, boxes: list, cats: list, stats) -> None:
    rows["image"].append(image)
    rows["image_id"].append(image_id)
    rows["width"].append(width)
    rows["height"].append(height)
    rows["objects"].append({"bbox": boxes, "category": cats})
    stats.images += 1
    stats.boxes += len(boxes)
    stats.negatives += not boxes


def read_coco_layout(path: Path, cfg: Any) -> DatasetDict:
    return DatasetDict({split: read_coco(js, images, cfg) for split, (js, images) in find_coco_layout(path).items()})


def from_datasets(splits: DatasetDict, cfg: Any) -> DatasetDict:
    """Hub, imagefolder or save_to_disk splits (boxes and categories in an ``objects`` column), standardised."""
    renamed = {SPLIT_NAMES.get(name, name): ds for name, ds in splits.items()}
    first = next(iter(renamed.values()))
    for key, column in (("image_column", cfg.image_column), ("objects_column", cfg.objects_column)):
        if column not in first.column_names:
            raise HftkError(f"data.{key} '{column}': no such column; columns: {', '.join(first.column_names)}")
    category_key = _category_key(first, cfg)
    names, to_index = _category_names(renamed, cfg, category_key)
    return DatasetDict(
        {split: _standardise(ds, cfg, split, category_key, names, to_index) for split, ds in renamed.items()}
    )


def _category_key(ds: Dataset, cfg: Any) -> str:
    inner = ds.features[cfg.objects_column]
    keys = list(inner.keys()) if isinstance(inner, dict) else list(getattr(inner, "feature", {}) or {})
    if cfg.bbox_key not in keys:
        raise HftkError(f"data.bbox_key '{cfg.bbox_key}': not in column '{cfg.objects_column}' (keys: {keys})")
    wanted = [cfg.category_key] if cfg.category_key else list(CATEGORY_KEYS)
    found = next((k for k in wanted if k in keys), None)
    if found is None:
        raise HftkError(f"data.category_key: none of {wanted} in column '{cfg.objects_column}' (keys: {keys})")
    return found


def _category_names(splits: dict, cfg: Any, key: str) -> tuple[list[str], dict]:
    """Class names and a map from the data's category values (ids or names) to 0..K-1."""
    inner = splits[next(iter(splits))].features[cfg.objects_column]
    feature = inner[key] if isinstance(inner, dict) else inner.feature[key]
    feature = getattr(feature, "feature", feature)
    if isinstance(feature, ClassLabel):
        return list(feature.names), {i: i for i in range(len(feature.names))}
    values = sorted(
        {c for ds in splits.values() for objects in ds[cfg.objects_column] for c in objects[key]},
        key=lambda v: (isinstance(v, str), v),
    )
    if values and all(isinstance(v, str) for v in values):
        return list(values), {v: i for i, v in enumerate(values)}
    if cfg.label_names:
        bad = [v for v in values if not isinstance(v, int) or not 0 <= v < len(cfg.label_names)]
        if bad:
            raise HftkError(f"data.label_names has {len(cfg.label_names)} names; category id {bad[0]!r} has none")
        return list(cfg.label_names), {i: i for i in range(len(cfg.label_names))}
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _standardise(ds: Dataset, cfg: Any, split: str, key: str, names: list[str], to_index: dict) -> Dataset:
    stats = Hygiene()
    raw = ds.cast_column(cfg.image_column, ImageFeature(decode=False))
    rows = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    sizes = ("width" in ds.column_names) and ("height" in ds.column_names)
    for i, row in enumerate(raw):
        image = row[cfg.image_column]
        where = f"data split '{split}', row {i}"
        if sizes and row["width"] and row["height"]:
            size = (int(row["width"]), int(row["height"]))
        else:
            size = _decoded_size(image, where, cfg.on_bad_image, stats)
            if size is None:
                continue
        objects = row[cfg.objects_column] or {cfg.bbox_key: [], key: []}
        cats = [to_index.get(c) for c in objects[key]]
        if None in cats:
            raise HftkError(f"{where}: category {objects[key][cats.index(None)]!r} is not one of the data's classes")
        boxes = clean_boxes(objects[cfg.bbox_key], *size, cfg.bbox_format, where, stats, cfg.on_bad_box)
        kept = [(b, c) for b, c in zip(boxes, cats) if b is not None]
        image_id = row.get("image_id") if isinstance(row.get("image_id"), int) else i
        _add_row(rows, image, image_id, *size, [b for b, _ in kept], [c for _, c in kept], stats)
    stats.log(f"data split '{split}'")
    return Dataset.from_dict(rows, features=features(names))


def _decoded_size(image: dict, where: str, policy: str, stats: Hygiene) -> tuple[int, int] | None:
    import io

    source = image.get("path") or "<embedded bytes>"
    try:
        with Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        if policy == "skip":
            stats.skipped_images.append(source)
            return None
        raise HftkError(f"{where}: {source} is not a readable image; set data.on_bad_image=skip to skip it") from None
