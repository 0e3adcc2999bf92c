"""Image-classification demo: upload or pick a test image, see the top-k labels and the run's metrics.

The upload is a file box rather than ``gr.Image``: gr.Image rejects a non-image before hftk sees it, with an
error that names no cause; here every upload reaches ``classify``, which answers with a readable message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hftk.errors import HftkError


def _preview(path: str):
    """The upload as shown to people: tiny images (8x8 digits) scaled up with crisp pixels."""
    from PIL import Image

    from hftk.data.images import to_rgb

    with Image.open(path) as im:
        im.load()
        image = to_rgb(im)
    factor = max(1, 192 // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def build_demo(run_dir: Path, predict: Callable, metrics: dict, headline: list[str], top_k: int = 5):
    import gradio as gr

    examples = sorted(str(p) for p in (run_dir / "eval" / "examples").glob("*.png"))
    scores = ", ".join(f"{k} {metrics[k]:.4f}" for k in headline if isinstance(metrics.get(k), (int, float)))

    def classify(path: str | None):
        if not path:
            raise gr.Error("No image: upload one or pick an example below.")
        try:
            result = predict(run_dir, [path], top_k=top_k)[0]
        except HftkError as err:
            raise gr.Error(str(err).replace(str(Path(path).parent) + "/", "")) from None  # no server paths
        return _preview(path), {p["label"]: float(p["score"]) for p in result["predictions"]}

    with gr.Blocks(title=f"hftk · {run_dir.name}") as demo:
        gr.Markdown(f"# {run_dir.name}\nImage classification · test split: {scores or 'not evaluated yet'}")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="upload an image", file_types=["image"], type="filepath")
                button = gr.Button("Classify", variant="primary")
            preview = gr.Image(label="image", interactive=False, height=240)
            label = gr.Label(num_top_classes=top_k, label="prediction")
        if examples:
            gr.Examples(examples, inputs=upload, label="examples from the test split")
        button.click(classify, inputs=upload, outputs=[preview, label], api_name="classify")
        upload.upload(classify, inputs=upload, outputs=[preview, label], api_name=False)
    return demo
