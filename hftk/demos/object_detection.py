"""Object-detection demo: an image (upload, paste, webcam or a test example) in, the image with its boxes drawn and a
table of detections out, with a score threshold slider; a webcam tab streams frames through the model.

The annotated image is handed to gradio as a file this module writes atomically under a name made from its
content. Returned as a PIL image, gradio would write it into its cache itself, in place, under a name made from
the content too: concurrent identical answers then rewrite a file another request is still downloading
("Too little data for declared Content-Length"). Gradio copies a returned file into its cache atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from hftk.demos import metrics_line
from hftk.demos.image_classification import readable_image_input
from hftk.errors import HftkError

COLUMNS = ["label", "score", "xmin", "ymin", "xmax", "ymax"]


def save_atomic(image, folder: Path) -> str:
    """``image`` as a PNG named by its content in ``folder``, written to a temporary name and renamed into place."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    path = folder / f"{hashlib.sha256(data).hexdigest()[:24]}.png"
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return str(path)


def build_demo(run_dir: Path, predict: Callable, metrics: dict, headline: list[str], examples: list[str]):
    """``predict(run_dir, [image], threshold=t)`` gives ``[{"detections": [{"score", "label", "box"}, ...]}]``."""
    import gradio as gr

    from hftk.evaluation.detection import draw_detections

    folder = Path(tempfile.mkdtemp(prefix="hftk-detection-demo-"))

    def annotate(image, threshold: float):
        found = predict(run_dir, [image], threshold=float(threshold))[0]["detections"]
        rows = [[d["label"], round(d["score"], 3), *d["box"].values()] for d in found]
        return save_atomic(draw_detections(image, found), folder), rows

    def detect(image, threshold: float):
        if image is None:
            raise gr.Error("No image: upload one, paste one, use the webcam or pick an example below.")
        try:
            return annotate(image, threshold)
        except HftkError as err:
            raise gr.Error(str(err)) from None

    def stream(frame, threshold: float):
        if frame is None:
            return None
        return annotate(frame, threshold)[0]

    with gr.Blocks(title=f"hftk · {run_dir.name}", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {run_dir.name}\nObject detection · {metrics_line(metrics, headline)}")
        threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="score threshold")
        with gr.Tab("image"):
            with gr.Row():
                with gr.Column():
                    image = readable_image_input(label="image", height=320)
                    button = gr.Button("Detect", variant="primary")
                with gr.Column():
                    annotated = gr.Image(type="filepath", label="detections", height=320, format="png")
                    table = gr.Dataframe(headers=COLUMNS, label="boxes (pixels of the input image)")
            if examples:
                gr.Examples(examples, inputs=image, label="examples from the test split", examples_per_page=16)
        with gr.Tab("webcam"):
            with gr.Row():
                webcam = gr.Image(type="pil", sources=["webcam"], streaming=True, label="webcam")
                live = gr.Image(type="filepath", label="detections", format="png")
        button.click(detect, inputs=[image, threshold], outputs=[annotated, table], api_name="detect")
        image.upload(detect, inputs=[image, threshold], outputs=[annotated, table], api_name=False)
        webcam.stream(stream, inputs=[webcam, threshold], outputs=live, api_name="webcam", stream_every=0.2)
    return demo
