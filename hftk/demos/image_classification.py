"""Image-classification demo: upload, paste or snap an image (or pick a test example), see the top-k labels.

The input is a ``gr.Image`` (upload, webcam, clipboard; examples show as thumbnails) whose decoding errors become
a readable message naming the file, instead of gradio's anonymous "Error". The demo outputs no image: an image
output is written to gradio's cache under a name derived from its content, so concurrent identical answers
raced on one file and some downloads failed ("Too little data for declared Content-Length").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hftk.demos import metrics_line
from hftk.errors import HftkError


def readable_image_input(**kwargs):
    """A ``gr.Image`` (PIL) that answers an undecodable upload with "<name>: not a readable image ...".

    The instance's ``preprocess`` is wrapped rather than the class subclassed: gradio's component metaclass
    writes a ``.pyi`` file beside any module that subclasses a component, and a subclass needs a frontend.
    """
    import gradio as gr

    image = gr.Image(type="pil", sources=["upload", "webcam", "clipboard"], **kwargs)
    decode = image.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError is an OSError
            name = Path(getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "upload").name
            raise gr.Error(f"{name}: not a readable image (expected PNG, JPEG, BMP, GIF, TIFF or WebP)") from err

    image.preprocess = preprocess
    return image


def build_demo(
    run_dir: Path, predict: Callable, metrics: dict, headline: list[str], examples: list[str], top_k: int = 5
):
    """``predict(run_dir, [image], top_k=k)`` gives ``[{"predictions": [{"label", "score"}, ...]}]``."""
    import gradio as gr

    def classify(image):
        if image is None:
            raise gr.Error("No image: upload one, paste one, use the webcam or pick an example below.")
        try:
            result = predict(run_dir, [image], top_k=top_k)[0]
        except HftkError as err:
            raise gr.Error(str(err)) from None
        return {p["label"]: float(p["score"]) for p in result["predictions"]}

    with gr.Blocks(title=f"hftk · {run_dir.name}") as demo:
        gr.Markdown(f"# {run_dir.name}\nImage classification · {metrics_line(metrics, headline)}")
        with gr.Row():
            with gr.Column():
                image = readable_image_input(label="image", height=280)
                button = gr.Button("Classify", variant="primary")
            label = gr.Label(num_top_classes=top_k, label="prediction")
        if examples:
            gr.Examples(examples, inputs=image, label="examples from the test split", examples_per_page=16)
        button.click(classify, inputs=image, outputs=label, api_name="classify")
        image.upload(classify, inputs=image, outputs=label, api_name=False)
    return demo
