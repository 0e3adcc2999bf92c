"""Chat demo: a Gradio ChatInterface that keeps the conversation, streams answers and has a stop button (either
family of chat model: the answers come from the task's ``iter_answer``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hftk.demos import metrics_line, seed_value
from hftk.errors import HftkError
from hftk.generation import DecodingOptions


def _text(content: Any) -> str:
    """The text of a chat message's content (a string, or gradio's list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return " ".join(_text(part) for part in content).strip()
    return ""


def history_turns(history: list) -> list[str]:
    """Earlier turns, oldest first, from gradio's ``[{"role", "content"}, ...]`` history."""
    return [text for text in (_text(m.get("content")).strip() for m in history if isinstance(m, dict)) if text]


def build_demo(
    run_dir: Path,
    iter_answer: Callable,
    metrics: dict,
    headline: list[str],
    examples: list[str],
    defaults: DecodingOptions,
    kind: str = "encoder-decoder",
):
    """``iter_answer(run_dir, history, message, stop, decoding)`` yields the answer piece by piece; the controls
    start at ``defaults`` (the run's own decoding); ``kind`` names the model's family in the header."""
    import gradio as gr

    def respond(message, history, max_new_tokens, temperature, top_p, num_beams, repetition_penalty, seed):
        decoding = DecodingOptions(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_p=float(top_p),
            num_beams=int(num_beams),
            repetition_penalty=float(repetition_penalty),
            seed=seed_value(seed),
        )
        stop = threading.Event()
        answer = ""
        try:
            pieces = iter_answer(run_dir, history_turns(history or []), _text(message), stop, decoding)
            for piece in pieces:
                answer += piece
                yield answer
        except HftkError as err:
            raise gr.Error(str(err)) from None
        finally:
            stop.set()  # the stop button closes this generator: end the generation thread

    controls = [
        gr.Slider(1, 512, value=defaults.max_new_tokens, step=1, label="max new tokens"),
        gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label="temperature (0: greedy)"),
        gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="top-p (sampling)"),
        gr.Slider(1, 8, value=defaults.num_beams, step=1, label="beams (no streaming above 1)"),
        gr.Slider(0.5, 2.0, value=defaults.repetition_penalty, step=0.05, label="repetition penalty"),
        gr.Number(value=-1, precision=0, label="seed (-1: random)"),
    ]
    with gr.Blocks(title=f"hftk · {run_dir.name}") as demo:
        gr.Markdown(f"# {run_dir.name}\nChat ({kind}) · {metrics_line(metrics, headline)}")
        gr.ChatInterface(
            respond,
            additional_inputs=controls,
            additional_inputs_accordion=gr.Accordion("decoding", open=False),
            examples=[[e] for e in examples] or None,
            examples_label="messages from the test split",
            run_examples_on_click=False,
            api_name="chat",
        )
    return demo
