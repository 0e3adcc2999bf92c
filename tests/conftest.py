"""Offline, quiet, reproducible tests: no Hub lookups, a temporary HF_HOME, one thread per test process."""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="hftk-test-hf-home-")
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    GRADIO_ANALYTICS_ENABLED="False",
    HF_HOME=_home,
    HF_HUB_DISABLE_TELEMETRY="1",
    TOKENIZERS_PARALLELISM="false",
    MPLBACKEND="Agg",
    HF_TOKEN="hf_hftkTestTokenThatMustNeverBeWritten",  # tests check no run file contains it
)

import pytest  # noqa: E402

from hftk.cli import main  # noqa: E402


@pytest.fixture
def cli(capsys):
    """Run `hftk ...` in-process; returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """One finished tiny run (timm test_resnet on 8x8 digits, a few steps), shared by read-only tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    code = main(
        [
            "train",
            "recipes/image-classification/resnet-digits.yaml",
            "train.max_steps=30",
            "train.eval_strategy=steps",
            "train.eval_steps=15",
            "train.save_strategy=steps",
            "train.save_steps=15",
            "train.logging_steps=5",
            "--output-dir",
            str(run_dir),
        ]
    )
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def pretrained_runs(tmp_path_factory):
    """Tiny runs hftk trains and saves, one per task on demand: the "pretrained" models of transfer/PEFT tests."""
    from hftk.tasks import get_task

    runs = {}

    def get(task_id: str):
        if task_id not in runs:
            run = tmp_path_factory.mktemp("pretrained") / task_id
            assert main(["-q", "train", task_id, *get_task(task_id).tiny_overrides, "--output-dir", str(run)]) == 0
            runs[task_id] = run
        return runs[task_id]

    return get
