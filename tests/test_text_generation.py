"""text-generation: tiny GPT and LSTM runs on a python-docs slice; metrics, generation, pipeline, demo, bad input."""

import json
import logging
import math

import numpy as np
import pytest
import torch

from hftk import runs
from hftk.cli import main
from hftk.config import RECIPES_DIR, load_recipe
from hftk.data import lm
from hftk.data.text import PYTHON_DOCS_TEST_FRACTION, python_docs_text, split_python_docs
from hftk.errors import HftkError
from hftk.evaluation import text as lm_eval
from hftk.generation import DecodingOptions, context_length
from hftk.tasks import text_generation as task

RECIPE = "recipes/text-generation/gpt-python-docs.yaml"
TINY = [
    "budget.minutes=null",
    "train.max_steps=24",
    "train.eval_steps=12",
    "train.save_steps=12",
    "train.logging_steps=4",
    "train.per_device_train_batch_size=8",
    "data.name=null",
    "data.vocab_size=320",
    "data.block_size=32",
    "eval.sample_tokens=8",
]
GPT = ["model.model_args={n_layer: 1, n_embd: 32, n_head: 2}", "eval.dynamic_lr=3e-3"]  # the recipe's rms steps
LSTM = ["model.model_args={hidden_size: 48, num_layers: 1}", "eval.dynamic_lr=0.1"]  # the recipe's sgd steps
LSTM_RECIPE = "recipes/text-generation/lstm-python-docs.yaml"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "docs.txt"
    path.write_text(python_docs_text()[:30000])
    return path


def _train(tmp_path_factory, corpus, name, model_args):
    run_dir = tmp_path_factory.mktemp("runs") / name
    recipe = LSTM_RECIPE if model_args is LSTM else RECIPE
    code = main(["train", recipe, f"data.path={corpus}", *TINY, *model_args, "--output-dir", str(run_dir)])
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory, corpus):
    return _train(tmp_path_factory, corpus, "gpt", GPT)


@pytest.fixture(scope="session")
def lstm_run(tmp_path_factory, corpus):
    return _train(tmp_path_factory, corpus, "lstm", LSTM)


@pytest.mark.parametrize("run", ["gpt_run", "lstm_run"])
def test_run_trains_and_writes_its_files(run, request):
    run_dir = request.getfixturevalue(run)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "samples.jsonl", "README.md"):
        assert (run_dir / name).is_file(), name
    losses = [
        h["loss"] for h in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if "loss" in h
    ]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0 < metrics["bits_per_byte"] < 8.5 and metrics["perplexity"] > 1
    assert 0 < metrics["dynamic_bits_per_byte"] < 8.5  # eval.dynamic_lr is set
    assert "dynamic_bits_per_byte: the split read once" in (run_dir / "eval" / "report.md").read_text()


@pytest.mark.parametrize("run", ["gpt_run", "lstm_run"])
def test_predict_shape_and_reload_gives_same_greedy_text(run, request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = request.getfixturevalue(run)
    first = task.predict(run_dir, ["The", "A function"], decoding=DecodingOptions(max_new_tokens=6, temperature=0))
    assert [r["input"] for r in first] == ["The", "A function"]
    assert all(r["generated_text"] == r["input"] + r["continuation"] for r in first)
    runs.clear_run_cache()
    assert (
        task.predict(run_dir, ["The", "A function"], decoding=DecodingOptions(max_new_tokens=6, temperature=0))
        == first
    )
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer("The", add_special_tokens=False)["input_ids"]]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == first[0]["continuation"]


def test_sampling_with_seed_repeats(gpt_run):
    a = task.predict(gpt_run, ["The"], decoding=DecodingOptions(max_new_tokens=8, temperature=1.0, top_k=20, seed=3))
    b = task.predict(gpt_run, ["The"], decoding=DecodingOptions(max_new_tokens=8, temperature=1.0, top_k=20, seed=3))
    assert a == b


@pytest.mark.parametrize("run", ["gpt_run", "lstm_run"])
def test_pipeline_runs_on_the_run_folder(run, request):
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(request.getfixturevalue(run)), device="cpu")
    out = generator("The", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The")


def test_rnn_state_generation_matches_full_recompute():
    from hftk.models.rnn import HftkRnnConfig, HftkRnnForCausalLM

    for cell in ("lstm", "gru"):
        torch.manual_seed(0)
        model = HftkRnnForCausalLM(HftkRnnConfig(vocab_size=50, cell=cell, hidden_size=16, num_layers=2)).eval()
        ids = torch.randint(0, 50, (1, 5))
        fast = model.generate(ids, max_new_tokens=6, do_sample=False)
        seq = ids
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
        assert torch.equal(fast, seq)


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_times_tokens_per_byte():
    vocab = 300

    class Uniform(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, vocab)})()

    texts = ["hello world, and again hello", "a second document"]
    tokenizer = lm.train_bpe_tokenizer(texts * 5, vocab_size=vocab, min_frequency=1)
    stream = lm.token_stream(tokenizer, texts)
    nats, tokens = lm_eval.score_windows(Uniform(), lm.eval_windows(stream, 8, 3), 4, lm.collate)
    num_bytes = lm_eval.total_bytes(texts)
    metrics = lm_eval.language_model_metrics(nats, tokens, num_bytes)
    assert tokens == len(stream) - 1
    assert metrics["bits_per_byte"] == pytest.approx(math.log2(vocab) * tokens / num_bytes)
    assert metrics["perplexity"] == pytest.approx(vocab)
    # the byte table used during training gives the same bytes (documents + separators of 0 bytes)
    assert int(lm.token_byte_lengths(tokenizer)[stream[1:]].sum()) == num_bytes


@pytest.mark.parametrize(
    ("run", "lr", "optimizer"), [("gpt_run", 0.1, "sgd"), ("gpt_run", 3e-3, "rms"), ("lstm_run", 0.3, "sgd")]
)
def test_dynamic_evaluation_scores_before_it_adapts_and_leaves_the_model_alone(run, lr, optimizer, request):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(run)).eval()
    context = context_length(model.config)  # None for the LSTM: it carries its state
    before = {k: v.clone() for k, v in model.state_dict().items()}
    short = np.random.default_rng(0).integers(1, 300, size=30)
    # lr 0: exactly the loss of one pass over the whole stream (shorter than the context)
    nats, tokens = lm_eval.score_stream(model, short, context=context, segment=4, lr=0.0)
    with torch.no_grad():
        ids = torch.as_tensor(short)[None]
        expected = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum")
    assert tokens == len(short) - 1 and nats == pytest.approx(float(expected), rel=1e-4)
    # a pattern that repeats: adapting while reading codes it in fewer nats than the fixed model
    repeated = np.tile(short[:12], 10)
    fixed, _ = lm_eval.score_stream(model, repeated, context=context, segment=4, lr=0.0)
    adapted, _ = lm_eval.score_stream(model, repeated, context=context, segment=4, lr=lr, optimizer=optimizer)
    assert adapted < 0.9 * fixed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dynamic_evaluation_that_diverges_is_left_out_with_a_warning(gpt_run, caplog):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gpt_run)
    cfg = task.TextEvalConfig(dynamic_lr=1e9, dynamic_segment=4)
    stream = np.random.default_rng(0).integers(1, 300, size=60)
    with caplog.at_level(logging.WARNING):
        assert task.dynamic_metrics(model, stream, 32, 100, cfg) == {}
    assert "eval.dynamic_lr" in caplog.text


def test_eval_windows_predict_every_token_once():
    stream = np.arange(1, 30)
    windows = lm.eval_windows(stream, block_size=8, stride=3)
    targets = [t for w in windows for t in w["labels"][1:] if t != -100]
    assert targets == stream[1:].tolist()
    assert all(len(w["input_ids"]) <= 8 for w in windows)


def test_python_docs_split_is_fixed_contiguous_and_complete():
    text = python_docs_text().encode()
    docs = split_python_docs(validation_size=0.1)
    sizes = {k: sum(len(d.encode()) for d in v) for k, v in docs.items()}
    assert sizes["test"] == pytest.approx(PYTHON_DOCS_TEST_FRACTION * len(text), rel=0.02)
    assert sizes["validation"] == pytest.approx(0.09 * len(text), rel=0.05)
    assert text.endswith(docs["test"][-1].encode()) and text.startswith(docs["train"][0].encode())


def test_every_recipe_loads():
    for path in sorted((RECIPES_DIR / "text-generation").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe.task == "text-generation"
        assert path.read_text().startswith("# ") and "# Run:" in path.read_text() and "# Try:" in path.read_text()


def test_demo_streams_through_gradio_client(gpt_run):
    from gradio_client import Client

    demo = task.demo(gpt_run)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        text = client.predict("The", 6, 0.0, 0, 1.0, 1.0, -1, api_name="/generate")
        assert text.startswith("The") and len(text) > 3
        job = client.submit("If the", 6, 0.8, 0, 0.95, 1.0, 7, api_name="/generate")
        assert job.result().startswith("If the")
    finally:
        demo.close()


# ---- bad input: one line, exit 2 (or a documented warning), never a traceback


def _tiny(corpus_path, *extra):
    return ["train", RECIPE, f"data.path={corpus_path}", *TINY, *GPT, *extra]


@pytest.mark.parametrize("content", [b"", b"   \n\n\t  \n"])
def test_empty_corpus(cli, tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    code, _, err = cli(*_tiny(path, "--output-dir", tmp_path / "run"))
    assert code == 2 and "empty or whitespace only" in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_file_that_is_not_utf8(cli, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait ".encode("latin-1") * 10)
    code, _, err = cli(*_tiny(path, "--output-dir", tmp_path / "run"))
    assert code == 2 and "latin1.txt" in err and "offset 3" in err and "not UTF-8" in err


def test_block_size_larger_than_context(cli, tmp_path, corpus):
    code, _, err = cli(*_tiny(corpus, "model.model_args.n_positions=16", "--output-dir", tmp_path / "run"))
    assert code == 2 and "data.block_size 32 is larger than the model's context (16" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [("eval.dynamic_lr=-0.1", "eval.dynamic_lr -0.1: expected a positive"), ("eval.dynamic_segment=0", "at least 1")],
)
def test_bad_dynamic_evaluation_settings(cli, tmp_path, corpus, override, message):
    for _ in range(2):  # the second try gives the same answer, not "already holds files"
        code, _, err = cli(*_tiny(corpus, override, "--output-dir", tmp_path / "run"))
        assert code == 2 and message in err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_max_new_tokens(cli, gpt_run, value):
    code, out, err = cli("predict", gpt_run, "The", "--max-new-tokens", value)
    assert code == 2 and "max_new_tokens" in err and "positive" in err and out == ""


def test_prompt_longer_than_context_keeps_its_end(gpt_run, caplog):
    prompt = "The value of the argument is returned. " * 40  # far more than 32 tokens
    with caplog.at_level(logging.WARNING):
        result = task.predict(gpt_run, [prompt], decoding=DecodingOptions(max_new_tokens=4, temperature=0))
    assert result[0]["generated_text"].startswith(prompt)
    assert "longer than the context" in caplog.text


def test_predict_streams_to_the_terminal(cli, gpt_run):
    code, out, _ = cli("predict", gpt_run, "The", "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0 and out.startswith("The") and out.endswith("\n")
    code, out, _ = cli("predict", gpt_run, "The", "--max-new-tokens", "5", "--json")
    assert code == 0 and json.loads(out)["input"] == "The"


@pytest.mark.parametrize("model", [GPT, LSTM], ids=["gpt", "lstm"])
def test_variable_length_documents_train(cli, tmp_path, model):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, chunk in enumerate(python_docs_text()[:12000].split("\n\n")[:40]):
        (folder / f"{i:02d}.txt").write_text(chunk)
    recipe = LSTM_RECIPE if model is LSTM else RECIPE
    argv = ["train", recipe, f"data.path={folder}", *TINY, *model, "data.packing=false", "train.max_steps=3"]
    code, _, err = cli(*argv, "train.eval_steps=3", "train.save_steps=3", "--output-dir", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["num_examples"] >= 1


def test_jsonl_and_csv_with_a_text_column(tmp_path):
    from hftk.data.text import load_text_data
    from hftk.tasks.text_generation import TextDataConfig

    rows = [{"id": i, "body": f"Document number {i} says something."} for i in range(20)] + [{"id": 99, "body": " "}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.csv").write_text("id,body\n" + "".join(f"{r['id']},{r['body']}\n" for r in rows))
    for name in ("d.jsonl", "d.csv"):
        data = load_text_data(TextDataConfig(name=None, path=str(tmp_path / name), text_column="body"))
        assert sum(len(data[s]) for s in ("train", "validation", "test")) == 20  # the blank row is dropped
    with pytest.raises(HftkError, match="no column 'content'"):
        load_text_data(TextDataConfig(name=None, path=str(tmp_path / "d.jsonl"), text_column="content"))


def test_line_per_row_data_joins_into_one_text(tmp_path):
    from hftk.data.text import load_text_data
    from hftk.tasks.text_generation import TextDataConfig

    lines = [" = Title = \n", "", *[f" Line {i} of the article goes on .\n" for i in range(200)]]  # WikiText rows
    (tmp_path / "w.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    cfg = TextDataConfig(name=None, path=str(tmp_path / "w.jsonl"), join_rows="")
    data = load_text_data(cfg)
    parts = [data[s]["text"] for s in ("train", "validation", "test")]
    assert all(len(p) == 1 for p in parts)  # one text per split: no end-of-text token between lines
    assert "".join(p[0] for p in parts) == "".join(lines)  # cut contiguously by bytes, nothing lost
    rows = load_text_data(TextDataConfig(name=None, path=str(tmp_path / "w.jsonl")))
    assert sum(len(rows[s]) for s in ("train", "validation", "test")) == 201  # default: one document per row


def test_padding_free_batches_keep_documents_apart():
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=50, n_layer=1, n_embd=16, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(config).eval()
    a, b = list(range(1, 8)), list(range(10, 15))
    batch = lm.collate([{"input_ids": x, "labels": x, "position_ids": list(range(len(x)))} for x in (a, b)])
    assert batch["labels"][0, len(a)] == -100  # never predict the first token of the next document
    batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch).logits[0]
        alone = model(torch.tensor([b])).logits[0]
    assert torch.allclose(packed[len(a) :], alone, atol=1e-5)


def test_typo_in_model_args(cli, tmp_path, corpus):
    code, _, err = cli(*_tiny(corpus, "model.model_args.n_layers=2", "--output-dir", tmp_path / "run"))
    assert code == 2 and "model.model_args.n_layers" in err and "did you mean 'n_layer'" in err


def test_untied_rnn_saves_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    from hftk.models.rnn import HftkRnnConfig, HftkRnnForCausalLM

    model = HftkRnnForCausalLM(HftkRnnConfig(vocab_size=40, cell="gru", hidden_size=8, tie_word_embeddings=False))
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_samples_longer_than_the_context_stop_at_it(cli, tmp_path, corpus):
    """data.block_size=16 with 48-token samples: evaluation samples and predict stop at the 16-token context."""
    code, _, err = cli(
        *_tiny(corpus, "data.block_size=16", "eval.sample_tokens=48", "train.max_steps=4"),
        "train.eval_steps=2",
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 0, err
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["output"] is not None for s in samples)
    result = task.predict(tmp_path / "run", ["The"], decoding=DecodingOptions(max_new_tokens=100, temperature=0))[0]
    tokenizer = task.load_run_model(tmp_path / "run")[1]
    # a byte-level token that ends inside a UTF-8 character decodes to U+FFFD, which would re-encode as 3 tokens
    text = result["continuation"].replace("\ufffd", "?")
    assert 0 < len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 16
