"""Kill-and-resume check of a distributed launch config on one GPU (the FSDP and DeepSpeed rows of benchmarks/gpu.py).

``accelerate launch --config_file <config> --num_processes 1 -m hftk train ...`` runs in a subprocess, is killed (the
launcher and every process under it) once its first checkpoint is complete, is started again with ``--resume`` and
finishes; then the run's consolidated ``model.safetensors`` must load whole with ``from_pretrained`` and equal the
weights of the last checkpoint (FSDP's sharded state read back with torch.distributed.checkpoint, DeepSpeed's
through its zero_to_fp32).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"fsdp": "FSDP", "deepspeed": "DEEPSPEED"}  # kind -> accelerate's distributed_type


def parse_launch_config(path: Path, kind: str) -> str:
    """The launch config as accelerate's own loader reads it, checked for ``kind``; one line describing it."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    found = str(getattr(cfg.distributed_type, "value", cfg.distributed_type))
    if found != KINDS[kind]:
        raise RuntimeError(f"{path.name}: distributed_type {found}, expected {KINDS[kind]}")
    if kind == "fsdp":
        detail = f"FSDP {cfg.fsdp_config.get('fsdp_version', 1)}, {cfg.fsdp_config.get('fsdp_state_dict_type')}"
    else:
        detail = f"ZeRO stage {cfg.deepspeed_config.get('zero_stage')}"
    return f"{path.name} parses with accelerate's loader ({detail})"


def kill_and_resume(config: Path, kind: str, train_args: list[str], steps: int, save_every: int, out: Path) -> dict:
    """Launch ``hftk train <train_args>`` with ``config``, kill it after its first checkpoint, resume, finish, check.

    Returns:
        ``samples_per_second`` (the resumed part), ``killed_after`` and ``resumed_from`` (checkpoint names) and
        ``compared`` (tensors of model.safetensors found equal to the last checkpoint's).
    """
    run = out / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        "1",
        "-m",
        "hftk",
        "-q",
        "train",
        *train_args,
        f"train.max_steps={steps}",
        "train.save_strategy=steps",
        f"train.save_steps={save_every}",
        "--output-dir",
        str(run),
    ]
    out.mkdir(parents=True, exist_ok=True)
    first = run / f"checkpoint-{save_every}"
    _start_and_kill(command, first, out / "first.log")
    if (run / "model.safetensors").exists():
        raise RuntimeError(f"the run finished before the kill; give it more than {steps} steps")
    complete = sorted((p for p in run.glob("checkpoint-*") if (p / "hftk-complete.json").exists()), key=_step)
    _run(command + ["--resume"], out / "resume.log")
    state = json.loads((run / "trainer_state.json").read_text())
    if state["global_step"] != steps:
        raise RuntimeError(f"the resumed run ended at step {state['global_step']}, not {steps}")
    runtime = json.loads((run / "all_results.json").read_text())["train_runtime"]  # of the resumed part
    return {
        "samples_per_second": (steps - _step(complete[-1])) * state["train_batch_size"] / runtime,
        "killed_after": first.name,
        "resumed_from": complete[-1].name,
        "compared": check_final_weights(run, run / f"checkpoint-{steps}", kind),
    }


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def _start_and_kill(command: list[str], checkpoint: Path, log: Path, timeout: float = 300) -> None:
    """Start ``command``; SIGKILL the launcher and every process under it once ``checkpoint`` is complete."""
    import psutil

    with open(log, "w") as stream:
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=stream, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not (checkpoint / "hftk-complete.json").exists():
            time.sleep(0.05)
        if proc.poll() is None:
            # torchrun starts each worker in a session of its own: killing the launcher's process group left the
            # workers training, and writing the run folder beside the resumed run (seen on the CPU: step 13 of 12)
            launcher = psutil.Process(proc.pid)
            tree = [launcher, *launcher.children(recursive=True)]
            for process in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            psutil.wait_procs(tree, timeout=60)
        proc.wait()
    if not (checkpoint / "hftk-complete.json").exists():
        raise RuntimeError(f"no complete {checkpoint.name} (exit status {proc.returncode}): {_tail(log)}")


def _run(command: list[str], log: Path, timeout: float = 300) -> None:
    with open(log, "w") as stream:
        result = subprocess.run(
            command, cwd=ROOT, env=_env(), stdout=stream, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"the --resume launch exited with status {result.returncode}: {_tail(log)}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " / ".join(lines[-3:])[-400:]


def check_final_weights(run: Path, checkpoint: Path, kind: str) -> int:
    """``run``'s model.safetensors loads whole with from_pretrained and equals ``checkpoint``'s weights; returns the
    number of tensors compared."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    saved = load_file(run / "model.safetensors")
    model, info = AutoModelForCausalLM.from_pretrained(run, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise RuntimeError(f"from_pretrained({run.name}): {problems}")
    loaded = model.state_dict()
    for key, tensor in saved.items():
        if not torch.equal(loaded[key], tensor):
            raise RuntimeError(f"from_pretrained gives another {key} than model.safetensors holds")
    reference = checkpoint_weights(checkpoint, kind)
    missing = [k for k in saved if k not in reference]
    if missing:
        raise RuntimeError(f"{checkpoint.name} lacks {len(missing)} tensors of model.safetensors, e.g. {missing[:3]}")
    different = [k for k in saved if not torch.equal(reference[k].to(saved[k].dtype), saved[k])]
    if different:
        raise RuntimeError(f"model.safetensors differs from {checkpoint.name} in {different[:3]}")
    return len(saved)


def checkpoint_weights(checkpoint: Path, kind: str) -> dict:
    """The full model state of a sharded checkpoint, read on one process."""
    import torch

    if kind == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as folder:  # accelerate saves {"model": state_dict} with DCP, one folder
        dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", Path(folder) / "model.pt")
        state = torch.load(Path(folder) / "model.pt", weights_only=True)
    return state.get("model", state)
