"""Export a run's model to ONNX, then check it: ONNX Runtime vs PyTorch on test-split inputs, and the latency of both.

Usage:
    hftk export runs/resnet-mnist --format onnx [--out runs/resnet-mnist/onnx]

A task that can be exported provides ``onnx_graphs(run_dir, batch_size) -> list[OnnxGraph]``: the module(s) to
export (the model behind a plain tensor interface), a batch of real test-split inputs, and which axes are dynamic
(the batch always is). Each graph is exported with ``torch.onnx.export`` (the dynamo exporter), run in ONNX Runtime
on those inputs and on a batch of another size, and compared with PyTorch within the graph's tolerance. The export
folder holds the ``.onnx`` files, the run's config and processor/tokenizer files, and ``export.json`` with the
parity errors and latencies (batch 1 and 32), and what the task's ``onnx_check`` reports on the export as a whole
(chat: greedy answers through the graphs equal to ``generate``'s). optimum's exporter is not used: optimum-onnx 0.1
requires transformers < 4.58.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hftk.errors import HftkError

logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
COPIED = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "spiece.model",
    "chat_template.jinja",  # the chat template of a decoder-only chat model (transformers 5 keeps it apart)
    "recipe.yaml",  # how the run writes a prompt (chat: turn separator, history, input length)
    "chat_memory.json",  # the training exchanges a chat run with data.retrieve reads
)


@dataclass
class OnnxGraph:
    """One graph to export: ``module(*inputs.values())`` returns a tuple of tensors named ``outputs``."""

    name: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]  # input -> {axis: name}; axes sharing a name share a size
    max_sizes: dict[str, int] | None = None  # axis name -> largest size (e.g. the model's context)
    tolerance: float = 1e-4
    per_example: bool = False  # a batch-1 graph that ONNX Runtime runs once per example (set by export_graph)
    named_axes: bool = False  # axes as names only: torch.export may guard them (see _export); max_sizes unused


class NamedOutputs(torch.nn.Module):
    """A transformers model behind a plain interface: tensors in (in ``inputs`` order), the named outputs out.

    Positional on purpose: with a ``**kwargs`` forward, torch.export (torch 2.14) writes guards that fail with
    "NameError: name 'L' is not defined" for some models (GPT-2 here). Constant arguments (``use_cache=False``)
    belong in the model's config for the same reason.
    """

    def __init__(self, model: torch.nn.Module, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model = model
        self.input_names = inputs
        self.output_names = outputs

    def forward(self, *tensors: torch.Tensor):
        out = self.model(**dict(zip(self.input_names, tensors)))
        return tuple(out[name] for name in self.output_names)


def export_run(run_dir: Path, fmt: str = "onnx", out_dir: Path | None = None, batch_size: int = 8) -> dict:
    """Export ``run_dir``'s model, check parity and latency, and return the report written to ``export.json``."""
    from hftk.runs import load_run
    from hftk.tasks import TASKS, get_task

    run_dir = Path(run_dir)
    _, task = load_run(run_dir)
    if fmt not in FORMATS:
        raise HftkError(f"--format {fmt}: not supported; supported formats: {', '.join(FORMATS)}")
    if task.onnx_graphs is None:
        able = [t for t in TASKS if get_task(t).onnx_graphs is not None]
        raise HftkError(f"{task.task} runs cannot be exported to ONNX yet; tasks that can: {', '.join(able)}")
    for module in ("onnxscript", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise HftkError(f"hftk export needs {module}: pip install 'hftk[export]'")
    out_dir = Path(out_dir) if out_dir else run_dir / "onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out_dir / name)
    report = {"run": str(run_dir), "task": task.task, "format": fmt, "graphs": []}
    for graph in task.onnx_graphs(run_dir, batch_size):
        path = out_dir / f"{graph.name}.onnx"
        graph = export_graph(graph, path)
        batch = "1, run once per example" if graph.per_example else "dynamic"
        entry = {"file": path.name, "batch": batch, **check_parity(graph, path), **measure_latency(graph, path)}
        report["graphs"].append(entry)
        logger.info(
            "%s: |onnx - torch| %.2e of the outputs' scale (tolerance %.0e)",
            path.name,
            entry["max_error"],
            graph.tolerance,
        )
    if task.onnx_check is not None:
        report.update(task.onnx_check(run_dir, out_dir))
    (out_dir / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def export_graph(graph: OnnxGraph, path: Path) -> OnnxGraph:
    """``torch.onnx.export`` with the graph's dynamic axes (the dynamo exporter takes ``torch.export.Dim``s).

    An architecture whose forward reads the batch size into Python (RT-DETR in transformers 5.24 takes ``len()`` of
    a tensor) comes out with the batch fixed at the example's size, or does not export with a dynamic batch at all.
    Then the graph is exported again at batch 1 without a batch axis, and ONNX Runtime runs it once per example:
    the same outputs, checked for parity like any other graph. Returns the graph as exported.
    """
    try:
        _export(graph, path)
        _check_dynamic_axes(graph, path)
        return graph
    except (_BatchFixed, HftkError) as err:
        if not any(axes.get(0) for axes in graph.dynamic.values()):
            raise
        others = {name: {a: n for a, n in axes.items() if a != 0} for name, axes in graph.dynamic.items()}
        single = replace(graph, inputs=_resize_batch(graph.inputs, 1), dynamic=others, per_example=True)
        try:
            _export(single, path)
            _check_dynamic_axes(single, path)
        except HftkError:
            raise err from None
        logger.info(
            "%s: no graph with a dynamic batch (%s); exported at batch 1, run once per example", graph.name, err
        )
        return replace(single, inputs=graph.inputs)


class _BatchFixed(Exception):
    """The exporter traced the batch axis as the example's batch size."""


def _export(graph: OnnxGraph, path: Path) -> None:
    """A ``torch.export.Dim`` per axis name; with ``graph.named_axes`` the names themselves, which the exporter turns
    into ``Dim.DYNAMIC`` axes carrying those names. A ``Dim`` must hold for every size in its range, so torch.export
    refuses it over a guard it adds on a symbolic size that no model code asked for (T5's decoder with its key/value
    cache in transformers 5.24 gets ``decoder_sequence != 5`` from a contiguity check of torch 2.14); a
    ``Dim.DYNAMIC`` axis takes such a guard as a refinement, and ``_check_dynamic_axes`` still refuses a fixed one."""
    dims: dict[str, Any] = {}
    max_sizes = graph.max_sizes or {}
    shapes = tuple(
        {
            axis: label
            if graph.named_axes
            else dims.setdefault(label, torch.export.Dim(label, max=max_sizes.get(label, 2**20)))
            for axis, label in graph.dynamic.get(name, {}).items()
        }
        for name in graph.inputs
    )
    graph.module.eval()
    progress = io.StringIO()  # the exporter prints its steps; they go to the debug log, not the user's terminal
    try:
        with contextlib.redirect_stdout(progress), warnings.catch_warnings():
            # named axes: the exporter warns that an axis keeps a name when two inputs share it, which they mean to
            warnings.filterwarnings("ignore", message="# The axis name")
            torch.onnx.export(
                graph.module,
                tuple(graph.inputs.values()),
                str(path),
                input_names=list(graph.inputs),
                output_names=graph.outputs,
                dynamic_shapes={"tensors": shapes},
                dynamo=True,
                external_data=False,
            )
    except Exception as err:  # the exporter raises many types for operators it cannot translate
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise HftkError(f"ONNX export of {graph.name} failed ({first}); this architecture is not exportable") from None
    finally:
        logger.debug("torch.onnx.export: %s", progress.getvalue())


def _check_dynamic_axes(graph: OnnxGraph, path: Path) -> None:
    """The exporter may trace a dynamic axis as the example's size (a model that reads the batch size into Python);
    such a graph would refuse every other batch size, so it is an error, not a file."""
    import onnx

    inputs = {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.input}
    for name, axes in graph.dynamic.items():
        dims = inputs[name].type.tensor_type.shape.dim if name in inputs else []
        fixed = [f"{label}={dims[axis].dim_value}" for axis, label in axes.items() if dims[axis].HasField("dim_value")]
        if fixed and not graph.per_example and [f.split("=")[0] for f in fixed] == [axes.get(0)]:
            path.unlink(missing_ok=True)
            raise _BatchFixed(f"the exporter fixed {fixed[0]} of input {name}")
        if fixed:
            path.unlink(missing_ok=True)
            raise HftkError(
                f"ONNX export of {graph.name}: the exporter fixed {', '.join(fixed)} of input {name} (this "
                "architecture's code specialises on it); a graph for one batch size only is not written"
            )


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_outputs(graph: OnnxGraph, inputs: dict[str, torch.Tensor]) -> list:
    with torch.no_grad():
        out = graph.module(*inputs.values())
    return [t.float().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _resize_batch(inputs: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """The inputs with ``size`` rows (repeating the real ones), to check and time another batch size."""
    out = {}
    for name, tensor in inputs.items():
        reps = -(-size // tensor.shape[0])
        out[name] = tensor.repeat(reps, *([1] * (tensor.dim() - 1)))[:size]
    return out


def run_session(session: Any, graph: OnnxGraph, inputs: dict[str, torch.Tensor]) -> list:
    """ONNX Runtime's outputs for a batch: one call, or one call per example for a batch-1 graph (concatenated)."""
    import numpy as np

    if not graph.per_example:
        return session.run(None, {k: v.numpy() for k, v in inputs.items()})
    rows = next(iter(inputs.values())).shape[0]
    calls = [session.run(None, {k: v[i : i + 1].numpy() for k, v in inputs.items()}) for i in range(rows)]
    return [np.concatenate(parts) for parts in zip(*calls)]


def check_parity(graph: OnnxGraph, path: Path) -> dict:
    """ONNX Runtime against PyTorch on the real batch and on batch 1: the largest absolute difference, and the same
    measured against each output's scale (``max|onnx - torch| / max(1, max|torch|)``), which the tolerance bounds.

    Float32 kernels differ in summation order, so a deeper network with large outputs (an ImageNet classifier's
    logits reach 50) differs by more in absolute terms than a tiny one while agreeing as closely relative to them.
    """
    session = _session(path)
    worst, relative = 0.0, 0.0
    sizes = sorted({next(iter(graph.inputs.values())).shape[0], 1})
    for size in sizes:
        inputs = _resize_batch(graph.inputs, size)
        ours = run_session(session, graph, inputs)
        for onnx_out, torch_out in zip(ours, _torch_outputs(graph, inputs)):
            gap = float(abs(onnx_out.astype("float32") - torch_out).max())
            worst = max(worst, gap)
            relative = max(relative, gap / max(1.0, float(abs(torch_out).max())))
    if relative > graph.tolerance:
        raise HftkError(
            f"{path.name}: ONNX Runtime differs from PyTorch by {relative:.2e} of the outputs' scale (tolerance "
            f"{graph.tolerance:.0e}); the export is not faithful, so it is not kept as good"
        )
    return {"max_abs_error": worst, "max_error": relative, "tolerance": graph.tolerance, "batch_sizes_checked": sizes}


def measure_latency(graph: OnnxGraph, path: Path, repeats: int = 10) -> dict:
    """Median milliseconds per call of ONNX Runtime and PyTorch at batch 1 and 32 (same inputs, same threads)."""
    session = _session(path)
    result = {}
    for size in (1, 32):
        inputs = _resize_batch(graph.inputs, size)
        for label, call in (
            ("onnx", lambda inputs=inputs: run_session(session, graph, inputs)),
            ("torch", lambda inputs=inputs: _torch_outputs(graph, inputs)),
        ):
            call()  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1000)
            result[f"{label}_ms_batch{size}"] = round(statistics.median(times), 3)
    return result
