"""ONNX export of chat runs with the key/value cache: faithful graphs, greedy answers through them equal generate's.

A tiny T5 (encoder, decoder, decoder-with-past) and a tiny llama (one graph with past key/values); the answers are
compared token by token with ``generate`` on the run (an independent path: the PyTorch model and its own cache), and
the check `hftk export` runs is shown to fail when the loop answers otherwise.
"""

import json

import numpy as np
import pytest
import torch
from test_chat_decoder import TRAIN, _conversation, _write_jsonl, write_tiny_chat_llm

from hftk.cli import main
from hftk.errors import HftkError
from hftk.tasks.chat import onnx, serving
from hftk.tasks.chat.config import TINY_OVERRIDES

T5_GRAPHS = ["encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"]


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    # barely trained, with wide initial weights: answers that differ from message to message (a trained tiny T5
    # answers every message alike), so that a wrong cache or encoder output changes them
    run = tmp_path_factory.mktemp("runs") / "t5"
    overrides = [
        "train.max_steps=2",
        "train.learning_rate=1e-5",
        "train.seed=3",
        "model.model_args.initializer_factor=10.0",
    ]
    assert main(["-q", "train", "chat", *TINY_OVERRIDES, *overrides, "--output-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat-llama")
    llm = write_tiny_chat_llm(folder / "base")
    data = folder / "data"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", TRAIN)
    _write_jsonl(data / "validation.jsonl", [TRAIN[0]])
    _write_jsonl(data / "test.jsonl", [TRAIN[2], TRAIN[3], _conversation("goodbye", "see you later")])
    recipe = {
        "task": "chat",
        "model": {"name": str(llm), "pretrained": True, "generation": {"max_new_tokens": 12}},
        "data": {"path": str(data), "history_turns": 2, "max_input_length": 96, "max_target_length": 48},
        "train": {"max_steps": 40, "per_device_train_batch_size": 4, "learning_rate": 5.0e-3, "warmup_steps": 0,
                  "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10, "seed": 42},
    }  # fmt: skip
    (folder / "recipe.yaml").write_text(json.dumps(recipe))
    run = folder / "run"
    assert main(["-q", "train", str(folder / "recipe.yaml"), "--output-dir", str(run)]) == 0
    return run


def _generate_tokens(run, prompt):
    """The new tokens of the run's greedy ``generate`` (the decoder's start token left out)."""
    model, tokenizer = serving.load_run_model(run)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.pad_token_id,
            **serving.generate_kwargs(model, onnx.GREEDY),
        )[0].tolist()  # fmt: skip
    return out[1:] if model.config.is_encoder_decoder else out[len(prompt) :]


def _export_and_compare(run, cli, graphs):
    code, out, err = cli("export", run)
    assert code == 0, err
    report = json.loads((run / "onnx" / "export.json").read_text())
    assert [g["file"] for g in report["graphs"]] == graphs
    assert all(g["max_error"] <= g["tolerance"] <= 1e-3 for g in report["graphs"])
    answers = report["answers"]
    assert answers["equal"] == answers["messages"] >= 3 and answers["onnx_tokens_per_s"] > 0
    bot = onnx.OnnxChat(run / "onnx")
    messages = serving.example_inputs(run, 8)
    predicted = [r["generated_text"] for r in serving.predict(run, messages, decoding=onnx.GREEDY, batch_size=1)]
    tokens = []
    for message, expected in zip(messages, predicted):
        ours = bot.generate(bot.encode(message))
        assert ours == _generate_tokens(run, bot.encode(message))  # token by token, not only the text
        assert bot.answer(message) == expected
        tokens.append(ours)
    # answers of several tokens (the past length grows) that differ between messages (the prompt reaches them)
    assert max(len(t) for t in tokens) > 3 and len({tuple(t) for t in tokens}) > 1
    return bot


def _symbolic(session, name, axis):
    return next(i for i in session.get_inputs() if i.name == name).shape[axis]


def test_t5_chat_exports_encoder_and_decoders_with_cache_and_answers_as_generate(t5_run, cli):
    bot = _export_and_compare(t5_run, cli, T5_GRAPHS)
    later = bot.sessions["decoder_with_past_model"]
    assert isinstance(_symbolic(later, "past_key_values.0.decoder.key", 2), str)  # past length: dynamic
    assert isinstance(_symbolic(later, "past_key_values.0.encoder.key", 2), str)  # encoder length: dynamic
    assert [o.name for o in later.get_outputs()] == ["logits", "present.0.decoder.key", "present.0.decoder.value"]


def test_llama_chat_exports_one_graph_with_past_and_answers_as_generate(llama_run, cli):
    bot = _export_and_compare(llama_run, cli, ["model.onnx"])
    session = bot.sessions["model"]
    assert [i.name for i in session.get_inputs()][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert isinstance(_symbolic(session, "past_key_values.1.value", 2), str)
    # the decoder-only step takes any batch as well: two rows, a past of 5
    past = {i.name: np.zeros((2, 2, 5, 16), np.float32) for i in session.get_inputs()[3:]}
    feed = {"input_ids": np.ones((2, 1), np.int64), "attention_mask": np.ones((2, 6), np.int64)}
    logits, *present = session.run(None, {**feed, "position_ids": np.full((2, 1), 5, np.int64), **past})
    assert logits.shape[:2] == (2, 1) and present[0].shape == (2, 2, 6, 16)


def test_the_answer_check_fails_when_onnx_answers_otherwise(llama_run, monkeypatch):
    if not (llama_run / "onnx" / "model.onnx").is_file():
        pytest.skip("needs the export of the test above")
    monkeypatch.setattr(onnx.OnnxChat, "_next", lambda self, logits, sequence: int(np.argsort(logits)[-2]))
    with pytest.raises(HftkError, match="ONNX Runtime answers .* the export is not faithful"):
        onnx.check_answers(llama_run, llama_run / "onnx")


def test_an_export_folder_without_its_graphs_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"is_encoder_decoder": true}')
    with pytest.raises(HftkError, match="no encoder_model.onnx; export the run with `hftk export RUN"):
        onnx.OnnxChat(tmp_path)
