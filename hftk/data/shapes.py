"""Embedded ``shapes``: a synthetic detection set that hftk draws itself, deterministically, and writes as COCO.

Each image (128 px by default) holds 1 to 5 circles, squares and triangles (a few images hold none: negatives)
of every COCO size class: small (< 32 px), medium and large (> 96 px), each in a colour that stands out from
its background. Squares and triangles are rotated; larger shapes are drawn first, so smaller ones may lie on
them and cover part of them (at most 30% of any earlier box). The background is a two-colour gradient with
noise, thin lines and specks, and a few lines cross the shapes too. Shapes are drawn 4x supersampled, so box
edges are exact to a quarter pixel.

The set is written once per parameter set (``shapes_dir``) in COCO's own layout, ``annotations/instances_<split>
.json`` beside ``<split>/`` image folders, under the Hugging Face cache, so the default recipe reads it through the
same COCO loader as anyone's data. Category ids start at 1, as in COCO.

The same scenes as per-pixel class maps (semantic segmentation) come from ``shapes_masks_dir``: a palette PNG per
image, 0 for background and the category id where a shape covers the pixel, drawn with the shapes' own geometry.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hftk.cache import build_once
from hftk.cache import cache_root as hftk_cache
from hftk.sections import setting

VERSION = 2  # part of the cache key: bump it whenever the drawing changes
MASKS_VERSION = 1  # part of the class maps' folder name: bump it whenever the maps change (not the images)
CLASSES = ("circle", "square", "triangle")
SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}  # each split has its own random stream
SUPERSAMPLE = 4
# colours of the class maps' palette: background, then CLASSES (a mask file shows its classes in any viewer)
MASK_PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))


@dataclass(frozen=True)
class ShapesSpec:
    """What to draw; every field is part of the cache key."""

    seed: int = 0
    image_size: int = 128
    train: int = 2000
    validation: int = 100
    test: int = 200
    max_objects: int = 5
    min_size: int = 12  # smallest box side, px
    negatives: float = 0.03  # fraction of images without any shape

    def key(self) -> str:
        text = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class ShapesConfig:
    """The recipe section of the embedded synthetic set (``data.shapes``: object detection, segmentation)."""

    seed: int = setting(0, "drawing seed: the same seed draws the same images")
    image_size: int = setting(128, "side of the square images, px")
    train: int = setting(2000, "training images")
    validation: int = setting(100, "validation images")
    test: int = setting(200, "test images")

    def spec(self) -> ShapesSpec:
        return ShapesSpec(
            seed=self.seed, image_size=self.image_size, train=self.train, validation=self.validation, test=self.test
        )


def shapes_dir(spec: ShapesSpec, cache_root: Path | None = None) -> Path:
    """The folder holding ``spec``'s images and COCO annotations, drawn on first use (then reused)."""
    target = (Path(cache_root) if cache_root else hftk_cache()) / f"shapes-{spec.key()}"

    def draw(folder: Path) -> None:
        for split in SPLIT_STREAMS:
            _write_split(spec, split, folder)
        (folder / "spec.json").write_text(json.dumps({"version": VERSION, **asdict(spec)}, indent=1))

    build_once(target, "spec.json", draw)
    return target


def shapes_masks_dir(spec: ShapesSpec, cache_root: Path | None = None) -> Path:
    """The folder holding the class map of every image of ``spec`` (``<split>/<image file name>``), drawn on first use.

    The maps are the scenes of ``shapes_dir(spec)`` (drawn from the same random streams), written beside it rather
    than into it, so the detection set stays exactly as it was. Each map is a palette PNG whose pixel values are
    class ids: 0 background, then ``CLASSES`` in order (``classes.json`` names them).
    """
    target = (Path(cache_root) if cache_root else hftk_cache()) / f"shapes-{spec.key()}-masks-v{MASKS_VERSION}"
    palette = [v for colour in MASK_PALETTE for v in colour]

    def draw(folder: Path) -> None:
        for split, stream in SPLIT_STREAMS.items():
            (folder / split).mkdir()
            for index in range(getattr(spec, split)):
                _, _, label_map = draw_scene(np.random.default_rng([spec.seed, stream, index]), spec)
                mask = Image.fromarray(label_map, "P")
                mask.putpalette(palette)
                mask.save(folder / split / f"{index:06d}.png", optimize=False, compress_level=1)
        (folder / "classes.json").write_text(json.dumps(["background", *CLASSES]))

    build_once(target, "classes.json", draw)
    return target


def _write_split(spec: ShapesSpec, split: str, out: Path) -> None:
    count = getattr(spec, split)
    folder = out / split
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([spec.seed, SPLIT_STREAMS[split], index])
        image, objects = draw_image(rng, spec)
        name = f"{index:06d}.png"
        image.save(folder / name, optimize=False, compress_level=1)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": spec.image_size, "height": spec.image_size})
        for label, box in objects:
            x, y = round(box[0], 2), round(box[1], 2)
            w, h = min(round(box[2], 2), spec.image_size - x), min(round(box[3], 2), spec.image_size - y)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CLASSES.index(label) + 1,
                    "bbox": [x, y, w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    coco = {
        "info": {"description": f"hftk shapes ({split})", "version": str(VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def draw_image(rng: np.random.Generator, spec: ShapesSpec) -> tuple[Image.Image, list[tuple[str, list[float]]]]:
    """One image and its objects as ``(class name, [x, y, w, h])``, from ``rng`` alone."""
    image, objects, _ = draw_scene(rng, spec)
    return image, objects


def draw_scene(
    rng: np.random.Generator, spec: ShapesSpec
) -> tuple[Image.Image, list[tuple[str, list[float]]], np.ndarray]:
    """``draw_image``'s image and objects, and the scene's class map: ``uint8`` (height, width), 0 for background,
    ``CLASSES.index(name) + 1`` (the COCO category id) where a shape covers at least half of the pixel.

    The map is made from the very coverage masks the shapes are painted with, in painting order (a later shape
    covers an earlier one); lines and specks are clutter, never a shape, so they leave the map as it is.
    It draws nothing from ``rng``: the image and objects are those of ``draw_image`` for the same ``rng``.
    """
    size = spec.image_size
    label_map = np.zeros((size, size), np.uint8)
    canvas = _background(rng, size)
    count = 0 if rng.random() < spec.negatives else int(rng.integers(1, spec.max_objects + 1))
    sides = sorted((_side(rng, spec) for _ in range(count)), reverse=True)  # large first: small ones lie on them
    if len(sides) > 1:
        sides = [sides[0]] + [min(s, 95.0) for s in sides[1:]]  # at most one large shape (> 96 px) per image
    objects: list[tuple[str, list[float]]] = []
    for side in sides:
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        points = _outline(rng, label, side)
        box = _place(rng, points, size, [b for _, b in objects])
        if box is None:
            continue
        points = points + np.array([box[0], box[1]]) - points.min(axis=0)
        coverage, corner = _paint(canvas, label, points, _colour(rng, canvas, box))
        _cover(label_map, coverage, corner, CLASSES.index(label) + 1)
        objects.append((label, box))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3))):  # thin lines across the shapes too
        draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=_random_rgb(rng), width=1)
    return canvas, objects, label_map


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    pixels = start * (1 - t) + end * t + rng.normal(0, 8, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 9))):  # clutter: thin lines and specks that are not shapes
        draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=_random_rgb(rng), width=1)
    for _ in range(int(rng.integers(0, 7))):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.5, 2.0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_random_rgb(rng))
    return image


def _side(rng: np.random.Generator, spec: ShapesSpec) -> float:
    """A box side: small, medium or large by COCO's areas (32² and 96² px), log-uniform within each."""
    largest = 0.94 * spec.image_size
    low, high = {0: (spec.min_size, 32), 1: (32, 96), 2: (96, max(96, largest))}[
        int(rng.choice(3, p=[0.4, 0.45, 0.15]))
    ]
    return min(largest, float(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _outline(rng: np.random.Generator, label: str, side: float) -> np.ndarray:
    """The shape's outline points, scaled so the longer side of its box is ``side``."""
    if label == "circle":
        theta = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        points = np.stack([np.cos(theta), np.sin(theta)], 1)
    else:
        corners = 4 if label == "square" else 3
        theta = rng.uniform(0, 2 * math.pi) + np.arange(corners) * 2 * math.pi / corners
        points = np.stack([np.cos(theta), np.sin(theta)], 1)
    extent = points.max(axis=0) - points.min(axis=0)
    return (points - points.min(axis=0)) * (side / extent.max())


def _place(rng: np.random.Generator, points: np.ndarray, size: int, earlier: list[list[float]]) -> list[float] | None:
    """A box ``[x, y, w, h]`` for ``points`` inside the image covering at most 30% of any earlier box."""
    w, h = points.max(axis=0) - points.min(axis=0)
    for _ in range(40):
        x = math.floor(rng.uniform(0, size - w) * SUPERSAMPLE) / SUPERSAMPLE
        y = math.floor(rng.uniform(0, size - h) * SUPERSAMPLE) / SUPERSAMPLE
        if all(_covered(b, [x, y, w, h]) <= 0.3 for b in earlier):
            return [x, y, float(w), float(h)]
    return None


def _covered(box: list[float], over: list[float]) -> float:
    """The fraction of ``box`` that ``over`` covers."""
    ix = max(0.0, min(box[0] + box[2], over[0] + over[2]) - max(box[0], over[0]))
    iy = max(0.0, min(box[1] + box[3], over[1] + over[3]) - max(box[1], over[1]))
    return ix * iy / max(1e-9, box[2] * box[3])


def _colour(rng: np.random.Generator, canvas: Image.Image, box: list[float]) -> tuple[int, int, int]:
    """A colour far (in RGB) from the mean of the pixels under ``box``, so every shape is visible."""
    x, y, w, h = box
    patch = np.asarray(canvas.crop((int(x), int(y), int(math.ceil(x + w)), int(math.ceil(y + h)))), np.float32)
    mean = patch.reshape(-1, 3).mean(axis=0)
    best, best_distance = _random_rgb(rng), -1.0
    for _ in range(20):
        colour = _random_rgb(rng)
        distance = float(np.linalg.norm(np.array(colour) - mean))
        if distance >= 120:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _random_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _paint(
    canvas: Image.Image, label: str, points: np.ndarray, colour: tuple[int, int, int]
) -> tuple[Image.Image, tuple[int, int]]:
    """Fill the outline at 4x resolution and paste it down-sampled: anti-aliased, with exact box edges.

    Returns the coverage mask it pasted with (0-255: the share of each pixel the shape covers) and its top-left
    corner on the canvas.
    """
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int)
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    mask = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    local = [tuple(p) for p in (points - [x0, y0]) * SUPERSAMPLE]
    if label == "circle":
        lo, hi = np.min(local, axis=0), np.max(local, axis=0)
        ImageDraw.Draw(mask).ellipse([*lo, *(hi - 1)], fill=255)
    else:
        ImageDraw.Draw(mask).polygon(local, fill=255)
    mask = mask.resize((w, h), Image.Resampling.BOX)
    canvas.paste(Image.new("RGB", (w, h), colour), (int(x0), int(y0)), mask)
    return mask, (int(x0), int(y0))


def _cover(label_map: np.ndarray, coverage: Image.Image, corner: tuple[int, int], value: int) -> None:
    """Set ``value`` where ``coverage`` (pasted at ``corner``) covers at least half a pixel, clipped as paste clips."""
    x0, y0 = corner
    covered = np.asarray(coverage) >= 128
    height, width = label_map.shape
    x1, y1 = min(width, x0 + covered.shape[1]), min(height, y0 + covered.shape[0])
    left, top = max(0, x0), max(0, y0)
    region = covered[top - y0 : y1 - y0, left - x0 : x1 - x0]
    label_map[top:y1, left:x1][region] = value
