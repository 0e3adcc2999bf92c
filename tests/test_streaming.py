"""data.streaming: a text corpus read as a stream (tokenized and packed as it goes) trains, holds out its evaluation
splits, resumes exactly where a checkpoint left it, splits over processes like gradient accumulation; bad input."""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hftk.cli import main
from hftk.data import lm
from hftk.data.text import DocumentStream, load_text_stream, python_docs_text
from hftk.tasks import get_task
from hftk.tasks.text_generation import TextDataConfig

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/text-generation/gpt-python-docs.yaml"
TINY = [
    *get_task("text-generation").tiny_overrides,
    "data.streaming=true",
    "data.shuffle_buffer=8",
    "train.max_steps=8",
]
DOCS = [d for d in python_docs_text()[:40000].split("\n\n") if d.strip()]


@pytest.fixture(scope="module")
def tokenizer():
    return lm.train_bpe_tokenizer(DOCS, 320)


def _documents(texts=DOCS, shards=1):
    return Dataset.from_dict({"text": texts}).to_iterable_dataset(num_shards=shards)


def _take(stream, count):
    return [x["input_ids"] for x in itertools.islice(stream, count)]


def test_blocks_are_the_packed_token_stream_when_not_shuffled(tokenizer):
    blocks = _take(lm.StreamBlocks(_documents(), tokenizer, 16), 50)
    stream = lm.token_stream(tokenizer, DOCS)
    assert torch.equal(torch.stack(blocks).flatten(), torch.from_numpy(stream[: 50 * 16]))


def test_a_stream_resumes_exactly_where_it_stood(tokenizer, monkeypatch):
    monkeypatch.setattr(lm.StreamBlocks, "READ_BATCH", 4)  # many small windows: resume inside and between them
    straight = lm.StreamBlocks(_documents(), tokenizer, 16, shuffle_buffer=8, seed=3)
    blocks = _take(straight, 3000)  # more than one pass over the documents: the stream starts over
    assert len(straight.windows) > 100
    total = len(lm.token_stream(tokenizer, DOCS)) // 16
    assert 3000 > total and not torch.equal(torch.stack(blocks[:50]), torch.stack(blocks[total : total + 50]))
    for consumed in (0, 7, 1234, 2990):
        state = json.loads(json.dumps(straight.state_at(consumed)))  # as saved in a checkpoint
        resumed = lm.StreamBlocks(_documents(), tokenizer, 16, shuffle_buffer=8, seed=3)
        resumed.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(_take(resumed, 10), blocks[consumed : consumed + 10]))


def test_window_shuffling_permutes_blocks_within_a_window(tokenizer):
    probe = lm.StreamBlocks(_documents(), tokenizer, 16, shuffle_buffer=400, seed=1)
    _take(probe, 1)
    size = probe.windows[0][1]  # the first window: at least 400 blocks (whole documents are read)
    assert size >= 400
    plain = torch.stack(_take(lm.StreamBlocks(_documents(), tokenizer, 16), size))
    shuffled = torch.stack(_take(lm.StreamBlocks(_documents(), tokenizer, 16, shuffle_buffer=400, seed=1), size))
    assert not torch.equal(plain, shuffled)
    assert sorted(map(tuple, plain.tolist())) == sorted(map(tuple, shuffled.tolist()))


def test_processes_read_their_own_part(tokenizer):
    one = _take(lm.StreamBlocks(_documents(), tokenizer, 16, shuffle_buffer=8), 40)
    # one shard: each process reads it all and keeps every second block, the 1-process order interleaved
    parts = [DocumentStream(_documents()).part(rank, 2) for rank in (0, 1)]
    assert [keep for _, keep in parts] == [(0, 2), (1, 2)]
    ranks = [_take(lm.StreamBlocks(docs, tokenizer, 16, shuffle_buffer=8, keep=keep), 20) for docs, keep in parts]
    assert all(torch.equal(a, b) for a, b in zip(one, [x for pair in zip(*ranks) for x in pair]))
    # two shards for two processes: each reads only its own (split_dataset_by_node); process 0 alone skips the
    # held-out documents, which open shard 0
    texts = [f"held out {i}" for i in range(3)] + ["alpha " * 30] * 17 + ["beta " * 30] * 20
    parts = [DocumentStream(_documents(texts, 2), skip=3).part(rank, 2) for rank in (0, 1)]
    assert [keep for _, keep in parts] == [(0, 1), (0, 1)]
    read = [[row["text"] for row in docs] for docs, _ in parts]
    assert read[0] == texts[3:20] and read[1] == texts[20:]
    # a shard 0 shorter than the held-out documents: every process reads the whole stream instead
    assert DocumentStream(_documents(texts, 2), skip=25).part(1, 2)[1] == (1, 2)


def _write_shards(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # paragraphs are documents
        (folder / f"part-{i:02d}.txt").write_text("\n\n".join(DOCS[i::count]))
    return folder


def test_held_out_splits_come_from_the_start_of_the_stream(tmp_path):
    folder = _write_shards(tmp_path / "shards")
    data = load_text_stream(TextDataConfig(name=None, path=str(folder / "part-*.txt"), holdout_documents=6))
    first = [d.strip() for d in DOCS[0::3][:13]]
    assert [t.strip() for t in data["test"]["text"]] == first[:6]
    assert [t.strip() for t in data["validation"]["text"]] == first[6:12]
    assert next(iter(data["train"].documents()))["text"].strip() == first[12]
    rows = [{"id": i, "body": d} for i, d in enumerate(DOCS[:30])]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TextDataConfig(name=None, path=str(tmp_path / "d.jsonl"), text_column="body", holdout_documents=4)
    data = load_text_stream(cfg)
    assert data["test"]["text"] == DOCS[:4] and next(iter(data["train"].documents())) == {"text": DOCS[8]}


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory):
    folder = _write_shards(tmp_path_factory.mktemp("corpus") / "shards")
    run_dir = tmp_path_factory.mktemp("runs") / "stream"
    argv = [*TINY, f"data.path={folder}/part-*.txt", "data.name=null", "data.holdout_documents=5"]
    assert main(["train", RECIPE, *argv, "--output-dir", str(run_dir)]) == 0
    return run_dir, argv


def test_a_glob_of_shards_trains_and_is_evaluated_on_held_out_documents(shard_run):
    run_dir, _ = shard_run
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0 < metrics["bits_per_byte"] < 8.5 and metrics["num_examples"] == 5
    results = json.loads((run_dir / "all_results.json").read_text())
    assert results["train_steps"] == 8 and "train_samples" not in results  # a stream has no size
    state = json.loads((run_dir / "checkpoint-8" / "stream_state.json").read_text())
    assert state["processes"] == 1 and state["positions"][0]["position"] + state["positions"][0]["skip"] == 8 * 8
    assert "stream_state.json" in json.loads((run_dir / "checkpoint-8" / "hftk-complete.json").read_text())["files"]


def _first_checkpoint_of(run_dir: Path, resumed: Path) -> Path:
    """A run folder holding only ``run_dir``'s first checkpoint and recipe, as a run killed after step 4 leaves it."""
    shutil.copytree(run_dir / "checkpoint-4", resumed / "checkpoint-4")
    shutil.copy(run_dir / "recipe.yaml", resumed / "recipe.yaml")
    return resumed / "checkpoint-4"


def _resume_ends_like(run_dir: Path, resumed: Path, argv: list[str]) -> None:
    assert main(["train", RECIPE, *argv, "--output-dir", str(resumed), "--resume"]) == 0
    a, b = load_file(run_dir / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)


def test_resume_continues_the_stream_and_ends_like_the_straight_run(shard_run, tmp_path, caplog):
    run_dir, argv = shard_run
    _first_checkpoint_of(run_dir, tmp_path / "resumed")
    with caplog.at_level("INFO"):
        _resume_ends_like(run_dir, tmp_path / "resumed", argv)
    assert "the training stream continues where checkpoint-4 left it" in caplog.text


def test_a_checkpoint_without_a_stream_position_resumes_by_reading_again(shard_run, tmp_path, caplog):
    """A checkpoint from before streaming positions were saved (or from another process count): the Trainer's own
    way, reading the stream from its start and dropping the batches trained on, ends at the same weights."""
    run_dir, argv = shard_run
    checkpoint = _first_checkpoint_of(run_dir, tmp_path / "resumed")
    (checkpoint / "stream_state.json").unlink()
    marker = json.loads((checkpoint / "hftk-complete.json").read_text())
    del marker["files"]["stream_state.json"]
    (checkpoint / "hftk-complete.json").write_text(json.dumps(marker))
    with caplog.at_level("INFO"):
        _resume_ends_like(run_dir, tmp_path / "resumed", argv)
    assert "the stream is read again from its start" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps=-1", "data.streaming: set train.max_steps"),
        ("data.path=/no/such/shards/*.txt", "data.path '/no/such/shards/*.txt': the pattern matches no file"),
        ("train.eval_strategy=epoch", "train.eval_strategy=epoch never comes on a stream"),
        ("data.packing=false", "data.packing=false: not with data.streaming"),
        ("data.holdout_documents=0", "data.holdout_documents 0: the data has no test or validation split"),
        ("data.streaming=false", "a glob of shards is read as a stream; set data.streaming=true"),
    ],
)
def test_bad_streaming_input_is_one_line_and_exit_2(cli, tmp_path, override, message):
    folder = _write_shards(tmp_path / "shards", 2)
    base = [*TINY, f"data.path={folder}/part-*.txt", "data.name=null", "data.holdout_documents=5"]
    code, _, err = cli("train", RECIPE, *base, override, "--output-dir", tmp_path / "run")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


# slow (~40 s): each process's part is tested without launching (test_processes_read_their_own_part)
@pytest.mark.slow
def test_two_processes_train_like_one_with_gradient_accumulation_and_resume(tmp_path):
    """One shard (python-docs' training part): each process keeps every second block. Launched as users launch."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/cpu-2proc.yaml"]
    train = ["-m", "hftk", "-q", "train", "text-generation", *TINY, "regularization.dropout=0"]
    train += ["train.per_device_train_batch_size=4", "data.max_eval_samples=7"]
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    _run([sys.executable, *train, "train.gradient_accumulation_steps=2", "--output-dir", str(one)])
    _run([*launch, *train, "--output-dir", str(two)])
    state = json.loads((two / "checkpoint-4" / "stream_state.json").read_text())
    assert state["processes"] == 2 and [p["skip"] + p["position"] for p in state["positions"]] == [32, 33]
    _first_checkpoint_of(two, resumed)
    _run([*launch, *train, "--output-dir", str(resumed), "--resume"])
    a, b, c = (load_file(d / "model.safetensors") for d in (one, two, resumed))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0, msg=key)
        torch.testing.assert_close(c[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert np.isclose(
        *(json.loads((d / "eval" / "metrics.json").read_text())["bits_per_byte"] for d in (one, two)), atol=1e-5
    )


def test_a_file_that_is_not_utf8_is_one_line(cli, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n\n".encode("latin-1") * 50)
    code, _, err = cli("train", RECIPE, *TINY, f"data.path={path}", "data.name=null", "--output-dir", tmp_path / "run")
    assert code == 2 and "latin1.txt" in err and "not UTF-8 text" in err and "Traceback" not in err, err
