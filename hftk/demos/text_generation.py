"""Text-generation demo: a prompt, sampling controls, tokens streamed as they are generated, a stop button."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from hftk.demos import metrics_line, seed_value
from hftk.errors import HftkError
from hftk.generation import DecodingOptions


def build_demo(
    run_dir: Path,
    iter_generate: Callable,
    metrics: dict,
    headline: list[str],
    examples: list[str],
    defaults: DecodingOptions,
):
    """``iter_generate(run_dir, prompt, stop, decoding)`` yields text pieces as they are generated; the controls
    start at ``defaults``."""
    import gradio as gr

    def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
        decoding = DecodingOptions(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            repetition_penalty=float(repetition_penalty),
            seed=seed_value(seed),
        )
        text = prompt or ""
        stop = threading.Event()
        try:
            pieces = iter_generate(run_dir, text, stop, decoding)
            for piece in pieces:
                text += piece
                yield text
        except HftkError as err:
            raise gr.Error(str(err)) from None
        finally:
            stop.set()  # a cancelled event (stop button) closes this generator: end the generation thread

    with gr.Blocks(title=f"hftk · {run_dir.name}") as demo:
        gr.Markdown(f"# {run_dir.name}\nText generation · {metrics_line(metrics, headline)}")
        prompt = gr.Textbox(label="prompt", lines=3, placeholder="Start a sentence...")
        with gr.Row():
            max_new_tokens = gr.Slider(1, 512, value=defaults.max_new_tokens, step=1, label="max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label="temperature (0: greedy)")
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="top-k (0: off)")
        with gr.Row():
            top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="top-p")
            repetition_penalty = gr.Slider(
                0.5, 2.0, value=defaults.repetition_penalty, step=0.05, label="repetition penalty"
            )
            seed = gr.Number(value=-1, precision=0, label="seed (-1: random)")
        with gr.Row():
            run = gr.Button("Generate", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        output = gr.Textbox(label="text", lines=10)
        if examples:
            gr.Examples(examples, inputs=prompt, label="example prompts")
        inputs = [prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed]
        event = run.click(generate, inputs=inputs, outputs=output, api_name="generate")
        submit = prompt.submit(generate, inputs=inputs, outputs=output, api_name=False)
        stop.click(None, cancels=[event, submit], api_name=False)
    return demo
