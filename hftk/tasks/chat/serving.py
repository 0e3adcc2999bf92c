"""Chat, what serves a run: evaluation beside the retrieval baseline, predict, the terminal chat, the demo.

Both families are served the same way; their prompts differ (``hftk.data.chat_inputs.Prompts``: hftk's turn-joined
text for an encoder-decoder, the model's own chat template for a decoder-only model, whose stop tokens are its
generation_config's). Decoding is one ``DecodingOptions``: the run's own (its generation_config, from the recipe's
``model.generation``) under whatever a caller sets (`hftk predict` / `hftk chat` options, the demo's controls).
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
from hftk.models import chat as chat_models
from hftk.models import seq2seq
from hftk.sections import Recipe
from hftk.tasks.chat.config import HEADLINE, ChatDataConfig

logger = logging.getLogger(__name__)


def load_tokenizer(run_dir: str, config: Any = None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run_dir)


def load_run_model(run_dir: str | Path) -> tuple[Any, Any]:
    """The run's final model (on the inference device) and tokenizer, loaded as any transformers user would: the
    full model, or its base with the run's adapter on top (``AutoModelForSeq2SeqLM`` or ``...ForCausalLM``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto_class = AutoModelForCausalLM if chat_models.run_is_decoder_only(run_dir) else AutoModelForSeq2SeqLM
    model, tokenizer = runs.load_run_model(run_dir, auto_class, load_tokenizer)
    if hasattr(model, "peft_config") and (Path(run_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        # an adapter run keeps its decoding beside the adapter (training.KeepGenerationConfig), not in the base
        model.get_base_model().generation_config = GenerationConfig.from_pretrained(run_dir)
    return model, tokenizer


def is_causal(model: Any) -> bool:
    return not model.config.is_encoder_decoder


def generate_answers(model: Any, tokenizer: Any, encoded: list[list[int]], batch_size: int, **kwargs: Any) -> list:
    """One answer per input (token ids), generated in batches of similar length on the model's device (a
    decoder-only model's prompts padded on the left, so that each row continues from its own last token)."""
    answers: list[str] = [""] * len(encoded)
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    side = "left" if is_causal(model) else "right"
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, padding_side=side, return_tensors="pt")
        for i, text in zip(chunk, generation.generate_texts(model, tokenizer, dict(batch), **kwargs)):
            answers[i] = text.strip()
    return answers


def _describe_decoding(model: Any, budget: int, longest: int) -> str:
    gen = model.generation_config
    how = f"beam search ({gen.num_beams} beams)" if (gen.num_beams or 1) > 1 else "greedy"
    if gen.do_sample:
        how = f"sampling (temperature {gen.temperature}, top-k {gen.top_k}, top-p {gen.top_p})"
    extra = [f"repetition penalty {gen.repetition_penalty}"] if (gen.repetition_penalty or 1.0) != 1.0 else []
    extra += [f"no repeated {gen.no_repeat_ngram_size}-grams"] if gen.no_repeat_ngram_size else []
    length = f"at most {budget} new tokens (the longest training answer is {longest})"
    return ", ".join([how, length, *extra])


def evaluate_report(run_dir: Path, recipe: Recipe, split: str) -> dict[str, Any]:
    """Metrics of generated answers on ``split`` (whole and novel) beside the retrieval baseline; writes eval/."""
    out = eval_dir(run_dir, split, recipe.eval.split)
    data = chat_data.load_chat_data(recipe.data)
    train, part = data["train"], data[split]
    model, tokenizer = load_run_model(run_dir)
    prompts = chat_inputs.Prompts(tokenizer, recipe.data, is_causal(model))
    references, messages = list(part["response"]), list(part["message"])
    nearest = chat_inputs.Memory(train["message"], train["response"]).retrieve(messages)  # the retrieval baseline
    given = nearest if recipe.data.retrieve else [None] * len(part)
    # every test message is answered: one too long keeps its end, whatever data.on_long_sample did in training
    encoded = [prompts.encode(s["history"], s["message"], s["source"], extra)[0] for s, extra in zip(part, given)]
    # no longer than the data needs: an unfinished model would otherwise fill max_new_tokens with noise
    lengths = [len(ids) for ids in prompts.answers(train["response"])]
    cap = run_decoding(model).max_new_tokens
    budget, longest = chat_inputs.answer_budget(lengths, recipe.data.max_target_length, cap)
    kwargs = generate_kwargs(model, DecodingOptions(max_new_tokens=budget))
    answers = generate_answers(model, tokenizer, encoded, recipe.eval.batch_size, **kwargs)
    novel = report.novel_mask(train["message"], messages)
    retrieved = [response for _, response in nearest]
    metrics: dict[str, Any] = {"split": split, "num_examples": len(part), "num_novel": int(sum(novel))}
    metrics.update(report.score(answers, references, novel))
    metrics.update(report.score(retrieved, references, novel, prefix="retrieval_"))
    metrics["generation"] = _describe_decoding(model, budget, longest)
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
    return config_decoding(model.generation_config)


def config_decoding(gen: Any) -> DecodingOptions:
    """The decoding a ``GenerationConfig`` sets (what an export folder without the model keeps of it)."""
    return DecodingOptions(
        max_new_tokens=gen.max_new_tokens or (gen.max_length or 21) - 1,
        temperature=(gen.temperature or 1.0) if gen.do_sample else 0.0,
        top_k=gen.top_k,
        top_p=gen.top_p,
        repetition_penalty=gen.repetition_penalty,
        num_beams=gen.num_beams,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
    )


def generate_kwargs(model: Any, decoding: DecodingOptions) -> dict[str, Any]:
    """``generate()`` arguments: what the caller set over the run's own decoding, checked."""
    kwargs = decoding.over(run_decoding(model)).generate_kwargs()
    return kwargs if is_causal(model) else seq2seq.as_max_length(kwargs)


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
        One ``{"input": message, "generated_text": answer}`` per message: what ``pipeline("chat")`` returns for it
        (a decoder-only run: ``pipeline("text-generation")`` on ``[{"role": "user", "content": message}]``), beside
        the input.
    """
    if batch_size < 1:
        raise HftkError(f"--batch-size {batch_size}: expected a positive number")
    cfg = _run_data_config(Path(run_dir))
    model, tokenizer = load_run_model(run_dir)
    generate_kwargs(model, decoding)  # bad options fail before any output
    messages = [str(m) for m in inputs]
    encoded = encode_messages(Path(run_dir), cfg, tokenizer, is_causal(model), messages)
    results = []
    for start in range(0, len(messages), batch_size):
        chunk = slice(start, start + batch_size)
        answers = generate_answers(model, tokenizer, encoded[chunk], batch_size, **generate_kwargs(model, decoding))
        for message, answer in zip(messages[chunk], answers):
            results.append({"input": message, "generated_text": answer})
            if stream is not None:
                stream.write(f"{message} -> {answer}\n")
                stream.flush()
    return results


def encode_messages(folder: Path, cfg: ChatDataConfig, tokenizer: Any, causal: bool, messages: list[str]) -> list:
    """Each message's prompt ids (a conversation's first turn), as predict gives them to ``generate``; ``folder``
    (a run or its export) keeps the memory of a data.retrieve run."""
    memory = _run_memory(folder, cfg)
    given = memory.retrieve(messages) if memory is not None and messages else [None] * len(messages)
    prompts = chat_inputs.Prompts(tokenizer, cfg, causal)
    return [_encode(prompts, [], m, f"input {i + 1}", extra) for i, (m, extra) in enumerate(zip(messages, given))]


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
    kwargs = generate_kwargs(model, decoding)
    memory = _run_memory(Path(run_dir), cfg)
    extra = memory.retrieve([message])[0] if memory is not None and message.strip() else None
    ids = _encode(chat_inputs.Prompts(tokenizer, cfg, is_causal(model)), history, message, "message", extra)
    tensor = torch.tensor([ids])
    inputs = {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}
    yield from generation.stream_generate(model, tokenizer, inputs, stop, **kwargs)


def _encode(prompts: chat_inputs.Prompts, history: list[str], message: str, where: str, extra: Any) -> list[int]:
    """A prompt for generation: what was cut to fit is logged; a run trained with data.on_long_sample=error refuses
    a message too long for it (there is nothing to leave out here)."""
    cfg = prompts.cfg
    ids, cut = prompts.encode(history, message, where, extra, strict=cfg.on_long_sample == "error")
    if cut.turns:
        limit = cfg.max_input_length
        logger.info("%s: the %d oldest turns left out to fit data.max_input_length=%d", where, cut.turns, limit)
    if cut.message:
        logger.warning("%s: its start cut (the end kept) to fit data.max_input_length=%d", where, cfg.max_input_length)
    return ids


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
    generate_kwargs(model, decoding)  # bad options fail before the first prompt
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
    from hftk.demos.chat import build_demo

    model, _ = load_run_model(run_dir)
    defaults = run_decoding(model)
    examples = example_inputs(Path(run_dir), 8)
    kind = "decoder-only" if is_causal(model) else "encoder-decoder"
    metrics = read_metrics(Path(run_dir))
    return build_demo(Path(run_dir), iter_answer, metrics, HEADLINE, examples, defaults, kind)
