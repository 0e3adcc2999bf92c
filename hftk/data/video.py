"""Video in and out with OpenCV (headless): RGB PIL frames from a file, and a writer for annotated frames."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from hftk.errors import HftkError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def is_video(path: object) -> bool:
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() in VIDEO_EXTENSIONS


def open_video(path: str | Path) -> tuple[Iterator[Image.Image], float, int]:
    """(RGB frames, frames per second, frame count as the file states it) of a video file."""
    import cv2

    if not Path(path).is_file():
        raise HftkError(f"{path}: no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise HftkError(f"{path}: OpenCV cannot read this video (expected MP4, AVI, MOV, MKV or WebM)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def frames() -> Iterator[Image.Image]:
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()

    return frames(), float(fps), count


class VideoWriter:
    """Writes RGB PIL frames to ``path`` (codec from the extension); frames are resized to the first one's size."""

    def __init__(self, path: str | Path, fps: float):
        suffix = Path(path).suffix.lower()
        if suffix not in FOURCC:
            raise HftkError(f"--out {path}: expected a video file name ending in {', '.join(sorted(FOURCC))}")
        self.path = Path(path)
        self.fps = fps
        self.fourcc = FOURCC[suffix]
        self.writer = None
        self.size: tuple[int, int] | None = None

    def write(self, frame: Image.Image) -> None:
        import cv2

        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.size = frame.size
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
            if not self.writer.isOpened():
                raise HftkError(f"--out {self.path}: OpenCV cannot write this video")
        if frame.size != self.size:
            frame = frame.resize(self.size)
        self.writer.write(cv2.cvtColor(np.asarray(frame.convert("RGB")), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
