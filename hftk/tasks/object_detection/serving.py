"""Object detection, what serves a run: COCO evaluation, predict on images and videos, ONNX graphs, the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftk import runs
from hftk.data.detection import load_detection_data
from hftk.data.images import IMAGE_EXTENSIONS, open_image_file
from hftk.data.video import VIDEO_EXTENSIONS, is_video
from hftk.errors import HftkError
from hftk.evaluation import read_metrics
from hftk.models.adapters import load_full_model
from hftk.sections import Recipe
from hftk.tasks.object_detection.config import HEADLINE


def load_processor(run_dir: str, config: Any = None) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(run_dir)


def load_run_model(run_dir: str | Path) -> tuple[Any, Any]:
    """The run's final model (on the inference device) and image processor, loaded as any transformers user would:
    the full model, or its base with the run's adapter on top."""
    from transformers import AutoModelForObjectDetection

    return runs.load_run_model(run_dir, AutoModelForObjectDetection, load_processor)


def onnx_graphs(run_dir: Path, batch_size: int) -> list:
    """The detector as one ONNX graph: ``pixel_values`` (dynamic batch) -> ``logits``, ``pred_boxes`` (before
    post-processing, which stays with the image processor), checked on test images."""
    from transformers import AutoModelForObjectDetection

    from hftk.export import NamedOutputs, OnnxGraph

    model = load_full_model(AutoModelForObjectDetection, run_dir).eval()
    processor = load_run_model(run_dir)[1]
    test = load_detection_data(runs.load_run_recipe(run_dir).data)["test"]
    images = [open_image_file(image) for image in test.select(range(min(batch_size, len(test))))["image"]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    module = NamedOutputs(model, ["pixel_values"], ["logits", "pred_boxes"])
    outputs = ["logits", "pred_boxes"]
    return [OnnxGraph("model", module, {"pixel_values": pixels}, outputs, {"pixel_values": {0: "batch"}})]


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """COCO mAP on ``split``; writes metrics.json, report.md, PR curves, confusion matrix, gallery, worst images."""
    from hftk.evaluation import detection as report

    model, processor = load_run_model(run_dir)
    data = load_detection_data(recipe.data)[split]
    return report.evaluate_detector(run_dir, recipe, split, model, processor, data, HEADLINE)


def predict(
    run_dir: Path,
    inputs: list,
    stream: Any = None,
    *,
    threshold: float = 0.5,
    out: str | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """Boxes for images (files, folders, PIL images) and videos: what ``pipeline("object-detection")`` returns.

    ``out`` writes the annotated result: an image file for one image, a folder for several, a video file
    (``.mp4``, ``.avi``) for one video. Videos report how many frames per second they were processed at.

    Returns:
        One ``{"input": name, "detections": [{"score", "label", "box": {xmin, ymin, xmax, ymax}}, ...]}`` per image;
        for a video ``{"input", "frames", "seconds", "fps", "video_fps", "detections": [one list per frame], "out"}``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise HftkError(f"--threshold {threshold}: expected a score between 0 and 1")
    if batch_size < 1:
        raise HftkError(f"--batch-size {batch_size}: expected a positive number")
    items = runs.expand_inputs(inputs, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS, "images or videos")
    target = _out_target(out, items)
    detector = Detector(*load_run_model(run_dir))
    results, chunk = [], []
    for item in [*items, None]:  # None flushes the last chunk of images
        if item is not None and not is_video(item):
            chunk.append(item)
            if len(chunk) < batch_size:
                continue
        if chunk:
            results += _predict_images(detector, chunk, threshold, batch_size, target, stream)
            chunk = []
        if item is not None and is_video(item):
            results.append(_predict_video(detector, item, threshold, batch_size, target, stream))
    return results


def _out_target(out: str | None, items: list) -> tuple[str, Path] | None:
    """("image" | "folder" | "video", path) for ``--out``, checked against the inputs before any work."""
    if not out:
        return None
    path = Path(out)
    videos = [i for i in items if is_video(i)]
    if videos:
        if len(items) > 1:
            raise HftkError(f"--out {out}: annotate one video at a time (got {len(items)} inputs)")
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise HftkError(f"--out {out}: the input is a video; expected a video file name such as out.mp4")
        return "video", path
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        if len(items) > 1:
            raise HftkError(f"--out {out}: {len(items)} inputs; give a folder to write the annotated images into")
        return "image", path
    if path.exists() and not path.is_dir():
        raise HftkError(f"--out {out}: exists and is not a folder; expected an image file name or a folder")
    return "folder", path


def _name(item: Any, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"image {index}"


def _predict_images(detector, items: list, threshold: float, batch_size: int, target, stream) -> list[dict]:
    from hftk.evaluation.detection import draw_detections

    images = [open_image_file(item, "PNG, JPEG, ..., or a video: MP4, AVI") for item in items]
    found = detector(images, threshold=threshold, batch_size=batch_size)
    results = []
    for index, (item, image, detections) in enumerate(zip(items, images, found)):
        result = {"input": _name(item, index), "detections": detections}
        if target is not None:
            kind, path = target
            file = path if kind == "image" else path / f"{Path(_name(item, index)).stem}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            draw_detections(image, detections, detector.names).save(file)
            result["out"] = str(file)
        results.append(result)
        if stream is not None:
            shown = ", ".join(f"{d['label']} {d['score']:.2f} {tuple(d['box'].values())}" for d in detections)
            stream.write(f"{result['input']}: {shown or f'nothing scores {threshold:g} or more'}\n")
            stream.flush()
    return results


class Detector:
    """The run's model and processor answering as ``pipeline("object-detection")`` does, a batch at a time."""

    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model, processor
        self.names = [model.config.id2label[i] for i in range(len(model.config.id2label))]

    def __call__(self, images: list, threshold: float, batch_size: int) -> list[list[dict]]:
        from hftk.evaluation.detection import detect_like_pipeline

        found = []
        for start in range(0, len(images), batch_size):
            found += detect_like_pipeline(self.model, self.processor, images[start : start + batch_size], threshold)
        return found


def _predict_video(detector, path, threshold: float, batch_size: int, target, stream) -> dict:
    """Every frame of a video through the pipeline; frames per second cover decoding, the model and drawing."""
    import itertools
    import time

    from hftk.data.video import VideoWriter, open_video
    from hftk.evaluation.detection import draw_detections

    frames, video_fps, _ = open_video(path)
    writer = VideoWriter(target[1], video_fps) if target is not None else None
    detections: list[list[dict]] = []
    start = time.perf_counter()
    try:
        while chunk := list(itertools.islice(frames, batch_size)):
            for frame, found in zip(chunk, detector(chunk, threshold=threshold, batch_size=batch_size)):
                detections.append(found)
                if writer is not None:
                    writer.write(draw_detections(frame, found, detector.names))
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    if not detections:
        raise HftkError(f"{path}: no frames could be read from this video")
    fps = len(detections) / max(seconds, 1e-9)
    result = {
        "input": str(path),
        "frames": len(detections),
        "seconds": round(seconds, 3),
        "fps": round(fps, 2),
        "video_fps": video_fps,
        "detections": detections,
        "out": str(target[1]) if target is not None else None,
    }
    if stream is not None:
        boxes = sum(len(d) for d in detections)
        written = f"; annotated video: {target[1]}" if target is not None else ""
        stream.write(f"{path}: {len(detections)} frames, {fps:.1f} frames/s, {boxes} boxes{written}\n")
        stream.flush()
    return result


def demo(run_dir: Path):
    from hftk.demos.object_detection import build_demo

    examples = runs.saved_examples(run_dir, 64)
    return build_demo(Path(run_dir), predict, read_metrics(Path(run_dir)), HEADLINE, examples)
