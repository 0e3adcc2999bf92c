"""Seq2seq chat, what serves a run: evaluation beside the retrieval baseline, predict, the terminal chat, the demo.

Decoding is one ``DecodingOptions``: the run's own (its generation_config, from the recipe's ``model.generation``)
under whatever a caller sets (`hftk predict` / `hftk chat` options, the demo's controls).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hftk import generation, runs
from hftk.data import chat as chat_data
from hftk.data import chat_inputs
from hftk.errors import HftkError
from hftk.evaluation import chat as report
from hftk.evaluation import eval_dir, plot_learning_curves, read_metrics, write_metrics
from hftk.generation import DecodingOptions
from hftk.models import seq2seq
from hftk.sections import Recipe
from hftk.tasks.seq2seq_chat.config import HEADLINE, ChatDataConfig

logger = logging.getLogger(__name__)


def load_tokenizer(run_dir: str, config: Any = None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run_dir)


def load_run_model(run_dir: str | Path) -> tuple[Any, Any]:
    """The run's final model (on the inference device) and tokenizer, loaded as any transformers user would: the
    full model, or its base with the run's adapter on top."""
    from transformers import AutoModelForSeq2SeqLM

    return runs.load_run_model(run_dir, AutoModelForSeq2SeqLM, load_tokenizer)


def generate_answers(model: Any, tokenizer: Any, encoded: list[list[int]], batch_size: int, **kwargs: Any) -> list:
    """One answer per input (token ids), generated in batches of similar length on the model's device."""
    answers: list[str] = [""] * len(encoded)
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
        for i, text in zip(chunk, generation.generate_texts(model, tokenizer, dict(batch), **kwargs)):
            answers[i] = text.strip()
    return answers


def _describe_decoding(model: Any) -> str:
    gen = model.generation_config
    how = f"beam search ({gen.num_beams} beams)" if (gen.num_beams or 1) > 1 else "greedy"
    if gen.do_sample:
        how = f"sampling (temperature {gen.temperature}, top-k {gen.top_k}, top-p {gen.top_p})"
    extra = [f"repetition penalty {gen.repetition_penalty}"] if (gen.repetition_penalty or 1.0) != 1.0 else []
    extra += [f"no repeated {gen.no_repeat_ngram_size}-grams"] if gen.no_repeat_ngram_size else []
    return ", ".join([how, f"at most {gen.max_new_tokens} new tokens", *extra])


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """Metrics of generated answers on ``split`` (whole and novel) beside the retrieval baseline; writes eval/."""
    out = eval_dir(run_dir, split, recipe.eval.split)
    data = chat_data.load_chat_data(recipe.data)
    train, part = data["train"], data[split]
    model, tokenizer = load_run_model(run_dir)
    references, messages = list(part["response"]), list(part["message"])
    nearest = chat_inputs.Memory(train["message"], train["response"]).retrieve(messages)  # the retrieval baseline
    given = nearest if recipe.data.retrieve else [None] * len(part)
    encoded = [
        chat_inputs.encode_sample(tokenizer, s["history"], s["message"], recipe.data, s["source"], extra)[0]
        for s, extra in zip(part, given)
    ]
    answers = generate_answers(model, tokenizer, encoded, recipe.eval.batch_size)
    novel = report.novel_mask(train["message"], messages)
    retrieved = [response for _, response in nearest]
    metrics: dict[str, Any] = {"split": split, "num_examples": len(part), "num_novel": int(sum(novel))}
    metrics.update(report.score(answers, references, novel))
    metrics.update(report.score(retrieved, references, novel, prefix="retrieval_"))
    metrics["generation"] = _describe_decoding(model)
    write_metrics(out, metrics)
    rows = [
        {
            "input": chat_inputs.format_input(s["history"], s["message"], recipe.data.turn_separator),
            "answer": a,
            "reference": r,
            "retrieval": b,
            "novel": n,
            "chrf": report.sentence_chrf(a, r),
        }
        for s, a, r, b, n in zip(part, answers, references, retrieved, novel)
    ]
    report.write_answers(out / "answers.jsonl", rows)
    plot_learning_curves(run_dir, out / "learning_curves.png", "chrf")
    report.write_report(out / "report.md", recipe, metrics, HEADLINE, rows, recipe.eval.worst_examples)
    logger.info("%s on %s: %s", recipe.name, split, {k: round(metrics[k], 2) for k in HEADLINE if k in metrics})
    return metrics


def example_inputs(run_dir: Path, count: int) -> list[str]:
    """Messages from the test split (the first distinct ones, in order), for the demo and checks."""
    messages = chat_data.load_chat_data(runs.load_run_recipe(run_dir).data)["test"]["message"]
    return list(dict.fromkeys(messages))[:count]


def run_decoding(model: Any) -> DecodingOptions:
    """The run's own decoding (its generation_config, written from the recipe's ``model.generation``)."""
    gen = model.generation_config
    return DecodingOptions(
        max_new_tokens=gen.max_new_tokens or (gen.max_length or 21) - 1,
        temperature=(gen.temperature or 1.0) if gen.do_sample else 0.0,
        top_k=gen.top_k,
        top_p=gen.top_p,
        repetition_penalty=gen.repetition_penalty,
        num_beams=gen.num_beams,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
    )


def _generate_kwargs(model: Any, decoding: DecodingOptions) -> dict[str, Any]:
    """``generate()`` arguments: what the caller set over the run's own decoding, checked."""
    return seq2seq.as_max_length(decoding.over(run_decoding(model)).generate_kwargs())


def _run_memory(run_dir: Path, cfg: ChatDataConfig) -> chat_inputs.Memory | None:
    """The training exchanges a ``data.retrieve`` run reads from (cached per run folder)."""
    if not cfg.retrieve:
        return None
    path = run_dir / chat_inputs.MEMORY_FILE
    if not path.is_file():
        raise HftkError(f"{run_dir}: no {chat_inputs.MEMORY_FILE}, which a data.retrieve run needs; train it again")
    return _load_memory(str(run_dir), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_memory(run_dir: str, stamp: int) -> chat_inputs.Memory | None:
    return chat_inputs.Memory.load(run_dir)


def _run_data_config(run_dir: Path) -> ChatDataConfig:
    return runs.load_run_recipe(run_dir).data


def predict(
    run_dir: Path,
    inputs: list[str],
    stream: Any = None,
    *,
    decoding: DecodingOptions = DecodingOptions(),
    batch_size: int = 16,
) -> list[dict]:
    """Answer each message (a conversation's first turn); decoding left unset follows the run's generation_config.

    ``decoding.temperature`` 0 is greedy, more samples (``seed`` makes it repeatable). With ``stream`` (a text file),
    each answer is also written as ``message -> answer`` when its batch is done.

    Returns:
        One ``{"input": message, "generated_text": answer}`` per message: what ``pipeline("seq2seq-chat")`` returns
        for it, beside the input.
    """
    if batch_size < 1:
        raise HftkError(f"--batch-size {batch_size}: expected a positive number")
    cfg = _run_data_config(Path(run_dir))
    model, tokenizer = load_run_model(run_dir)
    _generate_kwargs(model, decoding)  # bad options fail before any output
    messages = [str(m) for m in inputs]
    memory = _run_memory(Path(run_dir), cfg)
    given = memory.retrieve(messages) if memory is not None and messages else [None] * len(messages)
    encoded = [
        chat_inputs.encode_sample(tokenizer, [], m, cfg, f"input {i + 1}", extra)[0]
        for i, (m, extra) in enumerate(zip(messages, given))
    ]
    results = []
    for start in range(0, len(messages), batch_size):
        chunk = slice(start, start + batch_size)
        answers = generate_answers(model, tokenizer, encoded[chunk], batch_size, **_generate_kwargs(model, decoding))
        for message, answer in zip(messages[chunk], answers):
            results.append({"input": message, "generated_text": answer})
            if stream is not None:
                stream.write(f"{message} -> {answer}\n")
                stream.flush()
    return results


def iter_answer(
    run_dir: Path,
    history: list[str],
    message: str,
    stop: threading.Event | None = None,
    decoding: DecodingOptions = DecodingOptions(),
) -> Iterator[str]:
    """Yield the answer to ``message`` after ``history`` (earlier turns, oldest first) piece by piece."""
    cfg = _run_data_config(Path(run_dir))
    model, tokenizer = load_run_model(run_dir)
    kwargs = _generate_kwargs(model, decoding)
    memory = _run_memory(Path(run_dir), cfg)
    extra = memory.retrieve([message])[0] if memory is not None and message.strip() else None
    ids, cut = chat_inputs.encode_sample(tokenizer, history, message, cfg, "message", extra)
    if cut:
        logger.info("history: the %d oldest turns kept out to fit data.max_input_length=%d", cut, cfg.max_input_length)
    tensor = torch.tensor([ids])
    inputs = {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}
    yield from generation.stream_generate(model, tokenizer, inputs, stop, **kwargs)


def chat(
    run_dir: Path,
    input_fn: Callable[[], str],
    output: Any,
    *,
    decoding: DecodingOptions = DecodingOptions(),
) -> None:
    """``hftk chat RUN``: talk with the model in the terminal; the answer streams, the conversation is kept.

    The model sees the run's ``data.history_turns`` last turns before each message (the oldest go first when they
    do not fit). An empty line is skipped, ``/reset`` starts a new conversation, end of input (Ctrl-D) ends it.
    """
    model, _ = load_run_model(run_dir)
    _generate_kwargs(model, decoding)  # bad options fail before the first prompt
    output.write(f"{Path(run_dir).name}: type a message (/reset starts over, Ctrl-D ends)\n")
    history: list[str] = []
    while True:
        output.write("you> ")
        output.flush()
        try:
            line = input_fn().strip()
        except (EOFError, KeyboardInterrupt):
            output.write("\n")
            return
        if not line:
            continue
        if line == "/reset":
            history = []
            continue
        output.write("bot> ")
        pieces = []
        try:
            for piece in iter_answer(Path(run_dir), history, line, decoding=decoding):
                pieces.append(piece)
                output.write(piece)
                output.flush()
        except HftkError as err:  # a message too long for the model: say so, keep talking
            output.write(f"({err})\n")
            continue
        output.write("\n")
        history += [line, "".join(pieces).strip()]


def demo(run_dir: Path):
    from hftk.demos.seq2seq_chat import build_demo

    model, _ = load_run_model(run_dir)
    defaults = run_decoding(model)
    examples = example_inputs(Path(run_dir), 8)
    return build_demo(Path(run_dir), iter_answer, read_metrics(Path(run_dir)), HEADLINE, examples, defaults)
