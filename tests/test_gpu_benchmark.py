"""benchmarks/gpu.py, the one-call GPU benchmark, checked without a GPU: --smoke runs every row tiny on the CPU and
prints the table (never touching RESULTS.md), the real run refuses in one line, and the MFU arithmetic holds."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
MEASURED_UNITS = ("tokens/s", "images/s")


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _table(stdout: str) -> list[dict[str, str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def _positive(cell: str) -> float:
    value = float(cell.replace(",", ""))
    assert value > 0, cell
    return value


def test_mfu_is_six_n_tokens_over_the_peak(gpu):
    assert gpu.mfu(1e8, 1e5, 1e15) == pytest.approx(0.06)
    # GPT-2 124M without its position embeddings at 600k tokens/s on an H100 SXM: just over the 45% goal
    assert gpu.mfu(123.65e6, 6e5, gpu.peak_bf16_flops("NVIDIA H100 80GB HBM3")) == pytest.approx(0.4501, abs=1e-4)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("Tesla T4", None),
    ],
)
def test_peak_table_reads_the_device_name(gpu, name, peak):
    assert gpu.peak_bf16_flops(name) == peak


def test_without_a_gpu_the_real_run_stops_in_one_line(gpu, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert len(out.err.strip().splitlines()) == 1 and "no CUDA GPU" in out.err


def test_a_failing_row_is_recorded_and_the_next_one_runs(gpu, monkeypatch, tmp_path):
    def fail(row, sizes, out):
        raise ValueError("no such thing\nsecond line")

    monkeypatch.setitem(gpu.ROWS, "broken", ("Broken", fail))
    broken, fsdp = gpu.run_rows(["broken", "fsdp"], gpu.SMOKE, budget_minutes=8, out=tmp_path)
    assert (broken.status, broken.notes) == ("error", ["ValueError: no such thing"])
    assert (fsdp.status, fsdp.met) == ("ok", "yes")


def test_no_row_starts_once_the_budget_is_used(gpu, tmp_path):
    rows = gpu.run_rows(["fsdp", "deepspeed"], gpu.SMOKE, budget_minutes=0, out=tmp_path)
    assert [row.status for row in rows] == ["skipped", "skipped"]
    assert "budget" in rows[0].cells()[-1]


def test_smoke_runs_every_row_on_the_cpu_and_prints_the_table(gpu, tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.is_file() else None
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    written = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--results", str(written)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["row"]: row for row in _table(proc.stdout)}
    assert list(rows) == [name for name, _ in gpu.ROWS.values()]
    measured = [row for row in rows.values() if row["unit"] in MEASURED_UNITS]
    assert len(measured) >= 4  # GPT-2, ViT, ResNet, RT-DETR
    for row in measured:
        assert row["status"] == "ok", row
        hftk, plain, ratio = (_positive(row[k]) for k in ("hftk", "plain", "hftk / plain"))
        assert ratio == pytest.approx(hftk / plain, rel=0.01)
    for key in ("fsdp", "deepspeed"):
        row = rows[gpu.ROWS[key][0]]
        assert (row["status"], row["met"]) == ("ok", "yes") and "parses with accelerate's loader" in row["notes"]
    smol = rows[gpu.ROWS["smollm2"][0]]
    assert smol["status"] == "n/a"
    from hftk.models.packaged import PACKAGED

    if not any("smollm2" in name for name in PACKAGED):
        assert "not available in this project yet" in smol["notes"]
    assert written.read_text().strip() in proc.stdout  # --results gets the printed section
    assert (results.read_bytes() if results.is_file() else None) == before  # --smoke never writes RESULTS.md
