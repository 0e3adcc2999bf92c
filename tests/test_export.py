"""ONNX export: a faithful graph (ONNX Runtime vs PyTorch on test-split inputs), dynamic batch, one-line errors."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from hftk.cli import main
from hftk.tasks import get_task, image_classification
from hftk.tasks.object_detection import serving as detection_serving


def test_image_classifier_exports_with_parity_and_dynamic_batch(digits_run, cli, tmp_path):
    code, out, err = cli("export", digits_run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 0, err
    report = json.loads((tmp_path / "onnx" / "export.json").read_text())
    graph = report["graphs"][0]
    assert graph["max_error"] <= graph["tolerance"] == 1e-4 and graph["batch_sizes_checked"][0] == 1
    assert graph["max_error"] <= graph["max_abs_error"]  # measured against logits of at least 1
    assert graph["onnx_ms_batch32"] > 0 and graph["torch_ms_batch32"] > 0
    assert (tmp_path / "onnx" / "config.json").is_file() and "model.onnx" in out
    # the exported graph classifies the demo examples as predict does, 3 at once (another batch size)
    task = get_task("image-classification")
    examples = task.example_inputs(digits_run, 3)
    _, processor = image_classification.load_run_model(digits_run)
    images = [Image.open(p).convert("RGB") for p in examples]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"].numpy()
    logits = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, {"pixel_values": pixels})[0]
    labels = [task.predict(digits_run, [p])[0]["predictions"][0]["label"] for p in examples]
    id2label = AutoConfig.from_pretrained(digits_run).id2label
    assert [id2label[int(i)] for i in np.argmax(logits, axis=1)] == labels


@pytest.mark.parametrize("model_args", ["{n_layer: 1, n_embd: 32, n_head: 2}"], ids=["gpt"])
def test_language_model_exports_with_dynamic_length(tmp_path, model_args):
    task = get_task("text-generation")
    run = tmp_path / "run"
    assert main(["-q", "train", "text-generation", *task.tiny_overrides, "--output-dir", str(run)]) == 0
    assert main(["-q", "export", str(run)]) == 0
    session = ort.InferenceSession(str(run / "onnx" / "model.onnx"))
    for length in (3, 17):  # any length up to the context, any batch
        ids = np.random.default_rng(0).integers(1, 300, size=(2, length))
        logits = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert logits.shape[:2] == (2, length)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--format", "tflite"), "--format tflite: not supported; supported formats: onnx"),
    ],
)
def test_bad_export_requests_are_one_line(digits_run, cli, tmp_path, args, message):
    code, _, err = cli("export", digits_run, *args, "--out", tmp_path / "x")
    assert code == 2 and message in err and err.count("\n") == 1


def test_export_of_a_folder_without_a_model_is_one_line(cli, tmp_path):
    (tmp_path / "recipe.yaml").write_text("task: image-classification\n")
    code, _, err = cli("export", tmp_path)
    assert code == 2 and "no trained model yet" in err


def test_a_task_without_an_exporter_says_which_tasks_can(digits_run, cli, monkeypatch):
    import dataclasses

    from hftk.tasks import image_classification

    monkeypatch.setattr(image_classification, "SPEC", dataclasses.replace(image_classification.SPEC, onnx_graphs=None))
    code, _, err = cli("export", digits_run)
    assert code == 2 and "image-classification runs cannot be exported to ONNX yet" in err and "text-generation" in err


def test_detector_exports_and_finds_the_boxes_pytorch_finds(tmp_path, cli):
    import torch

    task = get_task("object-detection")
    run = tmp_path / "detr"
    overrides = [*task.tiny_overrides, *task.deterministic_overrides]  # a Conditional DETR
    assert main(["-q", "train", "object-detection", *overrides, "--output-dir", str(run)]) == 0
    code, _, err = cli("export", run)
    assert code == 0, err
    model, processor = detection_serving.load_run_model(run)
    images = [Image.open(p).convert("RGB") for p in task.example_inputs(run, 3)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    logits, boxes = ort.InferenceSession(str(run / "onnx" / "model.onnx")).run(None, {"pixel_values": pixels.numpy()})
    with torch.no_grad():
        expected = model(pixel_values=pixels)
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, expected.pred_boxes.numpy(), atol=1e-4)


class _LoopsOverTheBatch(torch.nn.Module):
    """Reads the batch size into Python, as RT-DETR's forward does in transformers 5.24 (len() of a tensor)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 2)

    def forward(self, *tensors):  # positional, as hftk.export.NamedOutputs wraps a model
        (x,) = tensors
        return (torch.stack([self.linear(x[i]).tanh() for i in range(len(x))]),)


def test_a_graph_the_exporter_fixes_to_one_batch_size_runs_per_example_with_parity(tmp_path):
    from hftk.export import OnnxGraph, check_parity, export_graph, measure_latency

    torch.manual_seed(0)
    graph = OnnxGraph("model", _LoopsOverTheBatch(), {"x": torch.randn(3, 6)}, ["y"], {"x": {0: "batch"}})
    exported = export_graph(graph, tmp_path / "model.onnx")
    assert exported.per_example and exported.inputs["x"].shape[0] == 3
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert session.get_inputs()[0].shape[0] == 1  # batch 1, not fixed at the example's 3
    assert check_parity(exported, tmp_path / "model.onnx")["max_abs_error"] < 1e-6  # per example, concatenated
    assert measure_latency(exported, tmp_path / "model.onnx", repeats=1)["onnx_ms_batch32"] > 0
