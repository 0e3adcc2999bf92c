"""chat, encoder-decoder family: a tiny T5 that memorises five conversations; metrics, data, bad input, pipeline,
chat, demo (the decoder-only family: tests/test_chat_decoder.py)."""

import io
import json
import logging
import shutil
import socket

import pytest
import torch

from hftk import runs
from hftk.config import RECIPES_DIR, load_recipe
from hftk.data import chat as chat_data
from hftk.data import chat_inputs
from hftk.errors import HftkError
from hftk.evaluation import chat as chat_eval
from hftk.evaluation import load_metric
from hftk.generation import DecodingOptions
from hftk.tasks.chat import config as chat_config
from hftk.tasks.chat import serving as task
from hftk.tasks.chat import training as chat_training

RECIPE = "recipes/chat/t5-chatterbot.yaml"
TINY = [
    "model.model_args={d_model: 48, d_kv: 12, d_ff: 96, num_layers: 2, num_decoder_layers: 2, num_heads: 4, "
    "dropout_rate: 0.0}",
    "model.generation.max_new_tokens=40",
    "data.vocab_size=300",
    "train.max_steps=150",
    "train.per_device_train_batch_size=8",
    "train.learning_rate=5e-3",
    "train.warmup_steps=0",
    "train.eval_steps=75",
    "train.save_steps=75",
    "train.logging_steps=10",
]


def _conversation(*turns, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    return {"messages": messages}


TRAIN = [
    _conversation("hello", "hi there, how are you doing today?"),
    _conversation("tell me about cats", "cats purr", "and then?", "they sleep all day long"),
    _conversation("tell me about dogs", "dogs bark", "and then?", "they fetch sticks in the park"),
    _conversation("what is your name", "my name is tiny bot", system="be nice"),
    _conversation("good night", "sleep well and sweet dreams"),
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def chat_folder(tmp_path_factory):
    """train/validation/test files in the Hub chat layout: the same message answered differently by history."""
    folder = tmp_path_factory.mktemp("chat")
    _write_jsonl(folder / "train.jsonl", TRAIN)
    _write_jsonl(folder / "validation.jsonl", [TRAIN[0], TRAIN[4]])
    _write_jsonl(folder / "test.jsonl", [TRAIN[2], TRAIN[3], _conversation("goodbye", "see you later")])
    return folder


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory, chat_folder):
    from hftk.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "chat"
    assert main(["train", RECIPE, f"data.path={chat_folder}", *TINY, "--output-dir", str(run_dir)]) == 0
    return run_dir


# ---- metrics, retrieval, novel subset


def test_chat_metrics_on_known_inputs():
    metric = load_metric("chat")
    same = metric.compute(predictions=["the cat sat", "hello"], references=["the cat sat", "hello"])
    assert same["chrf"] == pytest.approx(100) and same["exact_match"] == 100 and same["rougeL"] == pytest.approx(100)
    assert same["response_length"] == 2.0 and same["distinct_1"] == 1.0
    wrong = metric.compute(predictions=["xyz", "qqq"], references=["the cat sat", "hello"])
    assert wrong["chrf"] == 0 and wrong["bleu"] == 0 and wrong["exact_match"] == 0 and wrong["rougeL"] == 0
    repeated = metric.compute(predictions=["a a a a", "a a"], references=["b", "c"])
    assert repeated["distinct_1"] == pytest.approx(1 / 6) and repeated["distinct_2"] == pytest.approx(1 / 4)
    half = metric.compute(predictions=["hello there", "no"], references=["hello there", "yes"])
    assert half["exact_match"] == 50 and 0 < half["chrf"] < 100


def test_retrieval_answers_with_the_closest_training_message_and_novel_is_case_blind():
    messages, responses = ["How are you?", "What is your name?", "Tell me a joke"], ["Fine.", "Bot.", "No."]
    assert chat_eval.retrieval_answers(messages, responses, ["what is YOUR name", "a joke please"]) == ["Bot.", "No."]
    assert chat_eval.novel_mask(messages, ["how  are YOU?", "Who are you?"]) == [False, True]
    scores = chat_eval.score(["Fine.", "Bot."], ["Fine.", "Nope."], [False, True], prefix="retrieval_")
    assert scores["retrieval_exact_match"] == 50 and scores["retrieval_novel_exact_match"] == 0


def test_memory_leaves_a_training_sample_out_and_round_trips(tmp_path):
    memory = chat_inputs.Memory(["how are you", "how are you", "what is your name"], ["Fine.", "Good.", "Bot."])
    assert memory.retrieve(["how are you", "your name?"]) == [("how are you", "Fine."), ("what is your name", "Bot.")]
    assert [r for _, r in memory.retrieve(memory.messages, exclude=[0, 1, 2])] == ["Good.", "Fine.", "Fine."]
    memory.save(tmp_path)
    assert chat_inputs.Memory.load(tmp_path).retrieve(["name"]) == [("what is your name", "Bot.")]
    assert chat_inputs.Memory.load(tmp_path / "nowhere") is None


# ---- data


def test_chatterbot_split_is_by_conversation_and_fixed():
    cfg = chat_config.ChatDataConfig(history_turns=1)
    data = chat_data.load_chat_data(cfg)
    other = chat_data.load_chat_data(chat_config.ChatDataConfig(history_turns=1, split_seed=7, validation_size=0.2))
    assert data["test"]["source"] == other["test"]["source"]  # the test split never moves

    def conversations(split):
        return {s.split(", turn")[0] for s in data[split]["source"]}

    assert not conversations("train") & conversations("test") and not conversations("validation") & conversations(
        "test"
    )
    assert sum(len(data[s]) for s in data) == 2306  # every turn pair of the 2,024 conversations
    multi = [s for s in data["train"] if s["history"]]
    assert multi and all(len(s["history"]) <= 1 for s in data["train"])


def test_messages_layout_gives_one_sample_per_assistant_turn_with_its_history(chat_folder):
    cfg = chat_config.ChatDataConfig(name=None, path=str(chat_folder), history_turns=2)
    train = chat_data.load_chat_data(cfg)["train"]
    assert len(train) == 7  # system turns are not turns
    second = [s for s in train if s["message"] == "and then?"]
    assert [s["history"] for s in second] == [["tell me about cats", "cats purr"], ["tell me about dogs", "dogs bark"]]
    assert second[0]["source"].endswith("train.jsonl:2, turn 4")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_input_target_files(tmp_path, suffix):
    rows = [{"input": f"question {i}", "target": f"answer {i}"} for i in range(30)]
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        path.write_text("input,target\n" + "".join(f"{r['input']},{r['target']}\n" for r in rows))
    else:
        _write_jsonl(path, rows)
    data = chat_data.load_chat_data(chat_config.ChatDataConfig(name=None, path=str(path)))
    assert sum(len(data[s]) for s in data) == 30 and data["train"][0]["history"] == []


def test_history_longer_than_the_input_keeps_the_most_recent_turns(chat_run):
    model, tokenizer = task.load_run_model(chat_run)
    cfg = chat_config.ChatDataConfig(history_turns=3, max_input_length=12)
    history = ["first turn that is long", "second turn", "third"]
    ids, cut = chat_inputs.Prompts(tokenizer, cfg, causal=False).encode(history, "and then?", "here")
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert cut.turns >= 1 and not cut.message and len(ids) <= 12 and text.endswith("and then?") and "first" not in text
    kept = history[cut.turns :]
    assert text == chat_inputs.format_input(kept, "and then?", cfg.turn_separator)


def test_training_log_counts_the_histories_that_were_cut(chat_run, chat_folder, caplog):
    from datasets import DatasetDict

    recipe = load_recipe(RECIPE, [f"data.path={chat_folder}", "data.max_input_length=14"])
    _, tokenizer = task.load_run_model(chat_run)
    data = DatasetDict(train=chat_data.load_chat_data(recipe.data)["train"])
    with caplog.at_level(logging.INFO):
        encoded = chat_training.prepare_datasets(recipe, data, tokenizer)
    assert all(len(ids) <= 14 for ids in encoded["train"]["input_ids"])
    assert "train: 2 of 7 samples lost" in caplog.text


# ---- bad input: one line naming the file and line, exit 2


def _bad_messages(tmp_path, rows):
    return _write_jsonl(tmp_path / "bad.jsonl", [*TRAIN, *rows])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (_conversation("   ", "an answer"), "bad.jsonl:6: message 1 (user) is empty"),
        ({"messages": [{"role": "human", "content": "hi"}]}, "bad.jsonl:6: message 1 has unknown role 'human'"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "bad.jsonl:6: two user turns in a row (messages 1 and 2)",
        ),
        ({"messages": [{"role": "user", "content": "a question"}]}, "bad.jsonl:6: no assistant turn"),
        ({"messages": "hello"}, "bad.jsonl:6: 'messages' is not a list"),
    ],
)
def test_bad_messages_files(cli, tmp_path, row, message):
    path = _bad_messages(tmp_path, [row])
    code, _, err = cli("train", RECIPE, f"data.path={path}", *TINY, "--output-dir", tmp_path / "run")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_missing_target_column_and_malformed_line(cli, tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{"input": "hi", "target": "hello"}, {"input": "bye"}])
    code, _, err = cli("train", RECIPE, f"data.path={path}", *TINY, "--output-dir", tmp_path / "run")
    assert code == 2 and "pairs.jsonl:2: no 'target' column" in err
    path.write_text('{"input": "hi", "target": "hello"}\n{"input": "bye", \n')
    code, _, err = cli("train", RECIPE, f"data.path={path}", *TINY, "--output-dir", tmp_path / "run")
    assert code == 2 and "pairs.jsonl:2: malformed JSON" in err
    path.write_text('{"question": "hi", "answer": "hello"}\n')
    code, _, err = cli("train", RECIPE, f"data.path={path}", *TINY, "--output-dir", tmp_path / "run")
    assert code == 2 and "no 'input' or 'messages' column" in err and "data.input_column" in err


def test_a_message_longer_than_the_model_takes_is_an_error_only_when_asked(cli, tmp_path, chat_run, caplog):
    long_row = _conversation("word " * 200, "an answer")
    path = _bad_messages(tmp_path, [long_row])
    strict = ["data.on_long_sample=error", "--output-dir", tmp_path / "run"]
    code, _, err = cli("train", RECIPE, f"data.path={path}", *TINY, *strict)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and "bad.jsonl:6" in lines[0] and "Traceback" not in err, err
    assert "more than data.max_input_length=128" in lines[0] and "data.on_long_sample=truncate" in lines[0]
    with caplog.at_level(logging.INFO):
        code, out, err = cli("predict", chat_run, "hello", "many words " * 200 + "good night")
    assert code == 0 and len(out.splitlines()) == 2, err
    assert "input 2: its start cut (the end kept) to fit data.max_input_length=128" in caplog.text
    code, out, err = cli("predict", chat_run, " ")
    assert code == 2 and "input 1: the message is empty" in err


def test_long_samples_are_cut_or_left_out_and_counted(chat_run, chat_folder, tmp_path, caplog):
    from datasets import DatasetDict

    rows = [*TRAIN, _conversation("word " * 4000 + "good night", "sleep well"), _conversation("hi", "la " * 300)]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    _write_jsonl(tmp_path / "validation.jsonl", TRAIN[:1])
    path = _write_jsonl(tmp_path / "test.jsonl", TRAIN[1:2]).parent  # train is exactly these rows
    recipe = load_recipe(RECIPE, [f"data.path={path}"])
    _, tokenizer = task.load_run_model(chat_run)
    data = DatasetDict(train=chat_data.load_chat_data(recipe.data)["train"])
    total = len(data["train"])
    with caplog.at_level(logging.INFO):
        encoded = chat_training.prepare_datasets(recipe, data, tokenizer)["train"]
    assert len(encoded) == total - 1 and all(len(ids) <= 128 for ids in encoded["input_ids"])
    assert max(len(labels) for labels in encoded["labels"]) <= recipe.data.max_target_length
    texts = tokenizer.batch_decode(list(encoded["input_ids"]), skip_special_tokens=True)
    cut = next(text for text in texts if "word" in text)
    assert cut.endswith("word good night") and len(cut) < 1000  # the end kept
    assert f"train: 1 of {total} messages cut from the start (their end kept)" in caplog.text
    assert f"train: 1 of {total} samples left out: their answer is longer than data.max_target_length" in caplog.text
    dropped = load_recipe(RECIPE, [f"data.path={path}", "data.on_long_sample=drop"])
    assert len(chat_training.prepare_datasets(dropped, data, tokenizer)["train"]) == total - 2


# ---- the trained run: training, reload, pipeline, chat, demo


def test_run_trains_and_answers_from_its_history(chat_run):
    history = json.loads((chat_run / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] / 3
    metrics = json.loads((chat_run / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 4 and metrics["num_novel"] == 1
    assert {"retrieval_chrf", "retrieval_novel_chrf", "novel_chrf", "distinct_2"} <= set(metrics)
    rows = [json.loads(line) for line in (chat_run / "eval" / "answers.jsonl").read_text().splitlines()]
    dogs = next(r for r in rows if r["input"].endswith("and then?"))
    assert dogs["answer"] == "they fetch sticks in the park"  # the history tells dogs from cats
    assert dogs["retrieval"] != dogs["reference"]  # a lookup of the message alone cannot
    report = (chat_run / "eval" / "report.md").read_text()
    assert "## Worst answers" in report and "| chrf |" in report and "1 of them to novel" in report


def test_evaluation_generates_no_longer_than_the_answers_need(chat_run, chat_folder):
    _, tokenizer = task.load_run_model(chat_run)
    train = chat_data.load_chat_data(load_recipe(chat_run / "recipe.yaml").data)["train"]
    longest = max(len(ids) for ids in tokenizer(text_target=list(train["response"]))["input_ids"])  # with </s>
    budget = min(40, longest + max(8, longest // 4))
    assert budget < 40  # not the recipe's model.generation.max_new_tokens
    metrics = json.loads((chat_run / "eval" / "metrics.json").read_text())
    assert f"at most {budget} new tokens (the longest training answer is {longest})" in metrics["generation"]


def test_reload_gives_the_same_answers_as_generate(chat_run):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    first = task.predict(chat_run, ["hello", "what is your name"])
    assert [r["generated_text"] for r in first] == ["hi there, how are you doing today?", "my name is tiny bot"]
    runs.clear_run_cache()
    assert task.predict(chat_run, ["hello", "what is your name"]) == first
    model = AutoModelForSeq2SeqLM.from_pretrained(chat_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(chat_run)
    with torch.no_grad():
        out = model.generate(**tokenizer(["what is your name"], return_tensors="pt"))
    assert tokenizer.decode(out[0], skip_special_tokens=True) == first[1]["generated_text"]


def test_pipeline_gives_what_predict_gives_and_renders_chat_messages(chat_run):
    from transformers import pipeline

    pipe = pipeline("seq2seq-chat", model=str(chat_run), device="cpu")
    messages = ["hello", "good night", "goodbye"]
    assert [pipe(m)[0]["generated_text"] for m in messages] == [
        r["generated_text"] for r in task.predict(chat_run, messages)
    ]
    conversation = [
        {"role": "user", "content": "tell me about cats"},
        {"role": "assistant", "content": "cats purr"},
        {"role": "user", "content": "and then?"},
    ]
    assert pipe(conversation)[0]["generated_text"] == "they sleep all day long"


def test_sampling_options_and_seed_repeat(chat_run):
    a = task.predict(chat_run, ["hello"], decoding=DecodingOptions(temperature=1.5, top_k=50, seed=3))
    assert a == task.predict(chat_run, ["hello"], decoding=DecodingOptions(temperature=1.5, top_k=50, seed=3))
    with pytest.raises(HftkError, match="max_new_tokens 0"):
        task.predict(chat_run, ["hello"], decoding=DecodingOptions(max_new_tokens=0))


def test_terminal_chat_keeps_the_history_and_streams(chat_run):
    lines = iter(["tell me about dogs", "", "and then?", "/reset", "and then?"])

    def next_line():
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    task.chat(chat_run, input_fn=next_line, output=out)
    answers = [ln.split("bot> ", 1)[1] for ln in out.getvalue().splitlines() if "bot> " in ln]
    assert answers[:2] == ["dogs bark", "they fetch sticks in the park"]  # the second answer needs the first turn
    assert len(answers) == 3  # after /reset "and then?" is a first message again


def test_cli_predict_and_chat(cli, chat_run, monkeypatch):
    code, out, _ = cli("predict", chat_run, "hello", "--json")
    assert code == 0 and json.loads(out)["generated_text"] == "hi there, how are you doing today?"
    code, out, _ = cli("predict", chat_run, "good night", "--num-beams", "2")
    assert code == 0 and out == "good night -> sleep well and sweet dreams\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("what is your name\n"))
    code, out, _ = cli("chat", chat_run, "--max-new-tokens", "20")
    assert code == 0 and "bot> my name is tiny bot" in out


def test_retrieve_run_reads_the_nearest_exchange_everywhere(tmp_path, chat_folder, caplog):
    from transformers import pipeline

    from hftk.cli import main

    run_dir = tmp_path / "retrieve"
    argv = [*TINY, "data.retrieve=true", "data.deduplicate=true", "train.max_steps=4", "train.eval_steps=2"]
    with caplog.at_level(logging.INFO):
        assert (
            main(
                [
                    "train",
                    RECIPE,
                    f"data.path={chat_folder}",
                    *argv,
                    "train.save_steps=2",
                    "--output-dir",
                    str(run_dir),
                ]
            )
            == 0
        )
    assert (run_dir / chat_inputs.MEMORY_FILE).is_file()
    assert "train: 0 of 7 samples repeat another" in caplog.text
    rows = [json.loads(line) for line in (run_dir / "eval" / "answers.jsonl").read_text().splitlines()]
    assert all(r["retrieval"] for r in rows)
    messages = ["hello", "and then?", "goodbye"]
    pipe = pipeline("seq2seq-chat", model=str(run_dir), device="cpu")
    assert [pipe(m)[0]["generated_text"] for m in messages] == [
        r["generated_text"] for r in task.predict(run_dir, messages)
    ]
    cfg = load_recipe(run_dir / "recipe.yaml").data
    _, tokenizer = task.load_run_model(run_dir)
    ids, _ = chat_inputs.Prompts(tokenizer, cfg, causal=False).encode([], "hello", "x", ("hello", "hi " * 300))
    assert len(ids) == cfg.max_input_length and ids[-1] == tokenizer.eos_token_id  # the retrieved answer is cut


def test_run_folder_copy_answers_the_same(chat_run, tmp_path):
    copy = shutil.copytree(chat_run, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoint-*"))
    assert task.predict(copy, ["hello"]) == task.predict(chat_run, ["hello"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(chat_run):
    demo = task.demo(chat_run)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True)
    yield demo.local_url
    demo.close()


def test_demo_answers_through_gradio_client_and_streams(demo_url):
    from gradio_client import Client

    controls = (40, 0.0, 1.0, 1, 1.0, -1)  # max new tokens, temperature, top-p, beams, repetition penalty, seed
    client = Client(demo_url, verbose=False)  # one session: one conversation
    assert client.predict("tell me about dogs", *controls, api_name="/chat") == "dogs bark"
    assert client.predict("and then?", *controls, api_name="/chat") == "they fetch sticks in the park"
    job = Client(demo_url, verbose=False).submit("hello", *controls, api_name="/chat")
    final = job.result()
    pieces = job.outputs()
    assert final == "hi there, how are you doing today?"
    assert len(pieces) > 2 and all(final.startswith(p) for p in pieces)  # streamed: growing prefixes


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_real_browser_chats_with_the_demo(demo_url, chat_run):
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page()
        page.goto(demo_url)
        box = page.locator("textarea").first
        box.wait_for(timeout=30000)
        examples = page.get_by_text("what is your name").count()
        box.fill("good night")
        box.press("Enter")
        page.wait_for_function(
            "[...document.querySelectorAll('.message.bot, [data-testid=bot]')]"
            ".some(e => e.textContent.includes('sweet dreams'))",
            timeout=30000,
        )
        page.screenshot(path=str(chat_run / "eval" / "demo_screenshot.png"), full_page=True)
        browser.close()
    assert examples >= 1  # test-split messages offered as examples


def test_recipes_load_and_the_default_is_a_fixed_amount_of_work():
    for path in sorted((RECIPES_DIR / "chat").glob("*.yaml")):
        recipe = load_recipe(path)
        head = path.read_text().splitlines()[:3]
        assert head[0].startswith("# ") and head[1].startswith("# Run:") and head[2].startswith("# Try:")
        assert recipe.train["predict_with_generate"] and recipe.train["metric_for_best_model"] == "chrf"
    default = load_recipe("chat")
    assert default.budget.minutes is None and (
        default.train.get("max_steps", -1) > 0 or default.train.get("num_train_epochs")
    )


def test_minilm_warm_start_with_a_trained_vocabulary_saves_and_reloads(tmp_path):
    from transformers import AutoModel, AutoModelForSeq2SeqLM

    from hftk.models import seq2seq

    texts = ["Hello there, how are you?", "I am fine, thanks.", "What is your name?"] * 20
    tokenizer = seq2seq.train_tokenizer(texts, 300)
    cfg = chat_config.ChatModelConfig(name="encoder-decoder", model_args={"num_hidden_layers": 1})
    source = seq2seq.load_tokenizer(str(seq2seq.minilm_path()), cfg)
    model = seq2seq.build_seq2seq(cfg, tokenizer, source)
    minilm = AutoModel.from_pretrained(seq2seq.minilm_path())
    token = tokenizer.convert_tokens_to_ids("Ġthere")
    expected = minilm.get_input_embeddings().weight[source.convert_tokens_to_ids(["there"])].mean(0)
    torch.testing.assert_close(model.get_encoder().get_input_embeddings().weight[token], expected)
    layer = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(model.encoder.state_dict()[layer], minilm.state_dict()[layer])  # pretrained
    assert model.decoder.config.num_hidden_layers == 1 and model.decoder.config.add_cross_attention
    assert not model.encoder.pooler.dense.weight.requires_grad  # unused by seq2seq: frozen, kept for a complete save
    model.save_pretrained(tmp_path)
    again, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    again.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]  # a user's reload reports nothing missing
    ids = tokenizer(["Hello there"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again.generate(**ids, max_length=5), model.eval().generate(**ids, max_length=5))
