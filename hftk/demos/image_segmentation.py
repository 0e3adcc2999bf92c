"""Image-segmentation demo: an image (upload, paste, webcam or a test example) in; the image with each class tinted
and a legend (colour, class, share of the image) out.

The overlay is the file ``predict(..., out=...)`` writes, under a name unique to the request: gradio copies a returned
file into its cache atomically, while a returned PIL image would be written there in place under a name made from
its content, and concurrent identical answers raced on that file (see ``hftk/demos/object_detection.py``).
"""

from __future__ import annotations

import html
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from hftk.demos import metrics_line
from hftk.demos.image_classification import readable_image_input
from hftk.errors import HftkError


def legend(predictions: list[dict], names: list[str]) -> str:
    """An HTML legend: a swatch of each class's colour, its name and its share of the image, largest first."""
    from hftk.evaluation.segmentation import colours

    palette = dict(zip(names, colours(names)))
    rows = []
    for p in sorted(predictions, key=lambda p: -p["fraction"]):
        colour = palette.get(p["label"])
        swatch = f"rgb{colour}" if colour else "transparent"
        rows.append(
            f'<tr><td><span style="display:inline-block;width:14px;height:14px;border:1px solid #888;'
            f'background:{swatch}"></span></td><td>{html.escape(p["label"])}</td>'
            f"<td style='text-align:right'>{100 * p['fraction']:.1f}%</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>" if rows else "<p>nothing found</p>"


def build_demo(
    run_dir: Path, predict: Callable, names: list[str], metrics: dict, headline: list[str], examples: list[str]
):
    """``predict(run_dir, [image], out=file)`` gives ``[{"predictions": [{"label", "pixels", "fraction"}, ...]}]`` and
    writes the overlay to ``file``."""
    import gradio as gr

    folder = Path(tempfile.mkdtemp(prefix="hftk-segmentation-demo-"))

    def segment(image):
        if image is None:
            raise gr.Error("No image: upload one, paste one, use the webcam or pick an example below.")
        file = folder / f"{uuid.uuid4().hex}.png"
        try:
            result = predict(run_dir, [image], out=str(file))[0]
        except HftkError as err:
            raise gr.Error(str(err)) from None
        return str(file), legend(result["predictions"], names)

    with gr.Blocks(title=f"hftk · {run_dir.name}", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {run_dir.name}\nImage segmentation · {metrics_line(metrics, headline)}")
        with gr.Row():
            with gr.Column():
                image = readable_image_input(label="image", height=320)
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                tinted = gr.Image(type="filepath", label="classes", height=320, format="png")
                key = gr.HTML(label="legend")
        if examples:
            gr.Examples(examples, inputs=image, label="examples from the test split", examples_per_page=16)
        button.click(segment, inputs=image, outputs=[tinted, key], api_name="segment")
        image.upload(segment, inputs=image, outputs=[tinted, key], api_name=False)
    return demo
