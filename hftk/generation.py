"""Text generation shared by the tasks that write text (decoder-only and encoder-decoder models alike).

- ``DecodingOptions``: how text is generated, one dataclass for the recipe, the CLI, the demos; checked
  ``generate()`` arguments from it.
- ``fit_to_context``: a decoder-only prompt and its new tokens made to fit the model's positions, so generation
  stops at the context instead of indexing past it (any ``block_size``).
- ``stream_generate``: text pieces as they are generated, in a thread, with a stop flag (demo stop button).
- ``generate_texts``: batched generation that returns only the new text (a decoder-only output repeats the
  prompt, an encoder-decoder output does not; both come back as the answer alone).
- ``SampleCallback``: samples at each evaluation, to ``samples.jsonl`` and TensorBoard.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, TrainerCallback

from hftk.errors import HftkError
from hftk.sections import setting

logger = logging.getLogger(__name__)

CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_length(config: Any) -> int | None:
    """The longest input a decoder-only model accepts (None: no limit, e.g. recurrent or encoder-decoder)."""
    if getattr(config, "is_recurrent", False) or getattr(config, "is_encoder_decoder", False):
        return None
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class DecodingOptions:
    """How text is generated, in one place: a recipe's ``model.generation``, the options of `hftk predict` and
    `hftk chat`, and the demos' controls. A field left at None is not set here: the run's own setting applies (or
    ``generate()``'s default)."""

    max_new_tokens: int | None = setting(None, "longest answer (or continuation), in tokens")
    temperature: float | None = setting(None, "0: greedy (or beam search); above 0: sampling at this temperature")
    top_k: int | None = setting(None, "sample from the k most likely tokens (0: off)")
    top_p: float | None = setting(None, "nucleus sampling: the smallest set of tokens with this probability")
    repetition_penalty: float | None = setting(None, "penalise tokens already generated (1: off)")
    num_beams: int | None = setting(None, "beam search width (1: greedy or sampling; beams do not stream)")
    no_repeat_ngram_size: int | None = setting(None, "never repeat an n-gram of this size (0: off)")
    seed: int | None = setting(None, "seed of the sampling (None: random)")

    def over(self, base: DecodingOptions) -> DecodingOptions:
        """These options where set, ``base``'s elsewhere."""
        return DecodingOptions(**{**_set(base), **_set(self)})

    def generate_kwargs(self) -> dict[str, Any]:
        """``generate()`` keyword arguments, checked (temperature 0 or unset means greedy, or beam search)."""
        self.check()
        options: dict[str, Any] = {
            "max_new_tokens": int(self.max_new_tokens),
            "repetition_penalty": self.repetition_penalty or 1.0,
        }
        if self.num_beams:
            options["num_beams"] = int(self.num_beams)
        if self.no_repeat_ngram_size:
            options["no_repeat_ngram_size"] = int(self.no_repeat_ngram_size)
        if not self.temperature:
            return {**options, "do_sample": False}
        sampling = {"temperature": self.temperature, "top_k": self.top_k or 0, "top_p": self.top_p or 1.0}
        if self.seed is None or (self.num_beams or 1) > 1:
            return {**options, "do_sample": True, **sampling}
        # a seed: this request draws from its own generator, never from the process-wide one other requests share
        return {
            **options,
            "do_sample": False,
            "logits_processor": LogitsProcessorList([SeededSampler(self.seed, **sampling)]),
        }

    def check(self) -> None:
        """One line naming the first option out of range."""
        if self.max_new_tokens is None or self.max_new_tokens < 1:
            raise HftkError(f"max_new_tokens {self.max_new_tokens}: expected a positive number of tokens")
        problems = [
            (self.temperature is not None and self.temperature < 0, "temperature", "0 (greedy) or more"),
            (self.top_p is not None and not 0 < self.top_p <= 1, "top_p", "a probability in (0, 1]"),
            (self.top_k is not None and self.top_k < 0, "top_k", "0 (off) or a positive number"),
            (
                self.repetition_penalty is not None and self.repetition_penalty <= 0,
                "repetition_penalty",
                "a positive number (1: none)",
            ),
            (self.num_beams is not None and self.num_beams < 1, "num_beams", "1 or more"),
            (
                self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0,
                "no_repeat_ngram_size",
                "0 (off) or more",
            ),
        ]
        for bad, name, expected in problems:
            if bad:
                raise HftkError(f"{name} {getattr(self, name)}: expected {expected}")


class SeededSampler(LogitsProcessor):
    """Draws the next token with its own ``torch.Generator`` and leaves only that token, which ``generate()`` (run
    greedy) then takes: a seeded request samples repeatably without touching torch's global generator.

    ``generate()`` takes no generator, and seeding the global one from a demo's generation thread made concurrent
    requests share (and reset) one random stream.
    """

    def __init__(self, seed: int, temperature: float, top_k: int, top_p: float):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1).cpu()
        token = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)
        return torch.full_like(scores, -float("inf")).scatter_(1, token, 0.0)


def _set(options: DecodingOptions) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in fields(options) if getattr(options, f.name) is not None}


def fit_to_context(ids: list[int], max_new_tokens: int, context: int | None) -> tuple[list[int], int]:
    """Cut a decoder-only prompt (keeping its end) and the new tokens so both fit in ``context`` positions."""
    if context is None:
        return ids, max_new_tokens
    new = min(max_new_tokens, context - 1)
    if new < max_new_tokens:
        logger.warning(
            "the model's context is %d tokens: generating %d new tokens, not %d", context, new, max_new_tokens
        )
    room = context - new
    if len(ids) > room:
        logger.warning(
            "prompt of %d tokens is longer than the context leaves room for; keeping its last %d", len(ids), room
        )
        ids = ids[-room:]
    return ids, new


class StopFlag(StoppingCriteria):
    """Stops generation when ``event`` is set (the demo's stop button, a closed stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_generate(
    model: Any,
    tokenizer: Any,
    inputs: dict[str, torch.Tensor],
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> Iterator[str]:
    """Yield the new text piece by piece as ``model.generate(**inputs, **kwargs)`` produces it.

    ``stop`` ends generation early; a consumer that goes away (a closed pipe, a cancelled demo event) stops it
    too. Beam search cannot stream: its answer comes as one piece at the end.
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    stop = stop or threading.Event()
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    beams = kwargs.get("num_beams", 1) > 1
    # skip_prompt drops what generate() puts first: the prompt (decoder-only) or the decoder start token
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            with torch.no_grad():
                result["out"] = model.generate(
                    **inputs,
                    streamer=None if beams else streamer,
                    stopping_criteria=StoppingCriteriaList([StopFlag(stop)]),
                    pad_token_id=tokenizer.pad_token_id,
                    **kwargs,
                )
        finally:
            if beams:
                streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield from streamer
        thread.join()
        if beams and "out" in result:
            yield decode_new(model, tokenizer, inputs, result["out"])[0]
    finally:
        stop.set()  # the consumer went away (stop button, closed pipe): end generation
        thread.join()


def decode_new(model: Any, tokenizer: Any, inputs: dict[str, torch.Tensor], output: torch.Tensor) -> list[str]:
    """The generated text alone: a decoder-only output repeats the (left-padded) prompt, which is cut off."""
    if not model.config.is_encoder_decoder:
        output = output[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(output, skip_special_tokens=True)


@torch.no_grad()
def generate_texts(model: Any, tokenizer: Any, inputs: dict[str, torch.Tensor], **kwargs: Any) -> list[str]:
    """Batched generation on the model's device; one answer (new text only) per input row."""
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    output = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **kwargs)
    model.train(was_training)
    return decode_new(model, tokenizer, inputs, output)


class SampleCallback(TrainerCallback):
    """At each evaluation: ``sample(model) -> [{"prompt", "output"}]``, logged to ``samples.jsonl`` and TensorBoard.

    Runs on the main process only. TensorBoard gets its own writer (``<run>/runs/samples``, or
    ``$TENSORBOARD_LOGGING_DIR/samples``), shown beside the Trainer's own run.
    """

    def __init__(self, sample: Callable[[Any], list[dict]]):
        self.sample = sample
        self.writer = None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        samples = self.sample(model)
        if not samples:
            return
        with open(Path(args.output_dir) / "samples.jsonl", "a") as f:
            for s in samples:
                f.write(json.dumps({"step": state.global_step, **s}) + "\n")
        if "tensorboard" in (args.report_to or []):
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                root = os.environ.get("TENSORBOARD_LOGGING_DIR") or str(Path(args.output_dir) / "runs")
                self.writer = SummaryWriter(log_dir=str(Path(root) / "samples"))
            text = "\n\n".join(f"**{s['prompt']}** → {s['output']}".replace("\n", "  \n") for s in samples)
            self.writer.add_text("samples", text, state.global_step)
            self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_sample_history(run_dir: Path) -> list[dict]:
    """The samples logged during training for the first prompt, one per evaluation step."""
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = rows[0]["prompt"] if rows else None
    return [r for r in rows if r["prompt"] == first]
