"""Image-classification demo: upload or pick a test image, see the top-k labels and the run's metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hftk.errors import HftkError


def build_demo(run_dir: Path, predict: Callable, metrics: dict, headline: list[str], top_k: int = 5):
    import gradio as gr

    examples = sorted(str(p) for p in (run_dir / "eval" / "examples").glob("*.png"))
    scores = ", ".join(f"{k} {metrics[k]:.4f}" for k in headline if isinstance(metrics.get(k), (int, float)))

    def classify(path: str | None) -> dict[str, float]:
        if not path:
            raise gr.Error("No image: upload one or pick an example below.")
        try:
            result = predict(run_dir, [path], top_k=top_k)[0]
        except HftkError as err:
            raise gr.Error(str(err)) from None
        return {p["label"]: float(p["score"]) for p in result["predictions"]}

    with gr.Blocks(title=f"hftk · {run_dir.name}") as demo:
        gr.Markdown(f"# {run_dir.name}\nImage classification. Test split: {scores or 'not evaluated yet'}")
        with gr.Row():
            image = gr.Image(type="filepath", label="image", sources=["upload", "clipboard"], height=280)
            label = gr.Label(num_top_classes=top_k, label="prediction")
        button = gr.Button("Classify", variant="primary")
        if examples:
            gr.Examples(examples, inputs=image, label="test-split examples")
        button.click(classify, inputs=image, outputs=label, api_name="classify")
        image.upload(classify, inputs=image, outputs=label, api_name=False)
    return demo
