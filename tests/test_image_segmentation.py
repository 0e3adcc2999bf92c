"""Image segmentation: the shapes masks are the drawn shapes, the metric on known masks, every data layout and each
kind of bad mask as one line, augmentation that keeps image and mask aligned, the model families, a tiny run whose
masks match the pipeline's, predict's files, ONNX parity, LoRA and freezing through the shared machinery."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hftk.config import load_recipe
from hftk.data import segmentation as seg_data
from hftk.data import segmentation_transforms as seg_transforms
from hftk.data.shapes import CLASSES, ShapesSpec, draw_image, draw_scene, shapes_dir, shapes_masks_dir
from hftk.errors import HftkError
from hftk.evaluation import load_metric
from hftk.evaluation.segmentation import IoUTotals
from hftk.models.segmentation import build_segmenter, segmentation_parts
from hftk.tasks import get_task
from hftk.tasks.image_segmentation import serving

TASK = "image-segmentation"
TINY = get_task(TASK).tiny_overrides


def _recipe(*overrides):
    return load_recipe(TASK, [*TINY, *overrides])


# ---------------------------------------------------------------- the shapes scenes as class maps


def test_shapes_detection_files_are_unchanged_by_the_mask_writer(tmp_path):
    # the digest of the set the detection task has always drawn for this spec (before masks existed)
    folder = shapes_dir(ShapesSpec(train=3, validation=1, test=1, image_size=64), tmp_path)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    assert digest.hexdigest() == "688dc3dc84ccbc1977b37438c144d4d0317ca2229bcc2bd4121be7b4ed6905d8"


def test_shapes_masks_are_the_drawn_shapes_in_painting_order(tmp_path):
    spec = ShapesSpec(train=12, validation=1, test=1, image_size=96)
    masks = shapes_masks_dir(spec, tmp_path)
    overlapped = 0
    for index in range(spec.train):
        image, objects, label_map = draw_scene(np.random.default_rng([0, 0, index]), spec)
        again, same_objects = draw_image(np.random.default_rng([0, 0, index]), spec)
        assert again.tobytes() == image.tobytes() and same_objects == objects  # drawing the map draws nothing else
        stored = np.asarray(Image.open(masks / "train" / f"{index:06d}.png"))
        assert (stored == label_map).all()
        inside = np.zeros(label_map.shape, bool)
        for k, (name, (x, y, w, h)) in enumerate(objects):
            box = np.zeros_like(inside)
            box[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
            inside |= box
            assert (label_map[box] == CLASSES.index(name) + 1).any(), f"image {index}: {name} left no pixel"
            later = {CLASSES.index(n) + 1 for n, _ in objects[k + 1 :]}
            overlapped += bool(later - {CLASSES.index(name) + 1})
            # every pixel of a class lies in a box of that class or of a later shape painted over it
        assert (label_map[~inside] == 0).all(), "lines and specks outside the shapes are background"
        for value in np.unique(label_map[label_map > 0]):
            boxes = [b for n, b in objects if CLASSES.index(n) + 1 == value]
            region = np.zeros_like(inside)
            for x, y, w, h in boxes:
                region[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
            assert region[label_map == value].all()
    assert overlapped, "some scenes stack shapes of different classes"


def test_a_later_shape_covers_an_earlier_one():
    from hftk.data.shapes import _cover

    label_map = np.zeros((8, 8), np.uint8)
    full = Image.new("L", (6, 6), 255)
    _cover(label_map, full, (0, 0), 1)
    _cover(label_map, Image.new("L", (4, 4), 200), (4, 4), 3)  # clipped at the edge, covers the first
    _cover(label_map, Image.new("L", (2, 2), 100), (0, 0), 2)  # under half a pixel: not the shape's
    assert (label_map[:4, :4] == 1).all() and (label_map[4:, 4:] == 3).all() and label_map[0, 7] == 0


# ---------------------------------------------------------------- metric


def test_mean_iou_on_known_masks_ignores_ignore_index():
    reference = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = np.array([[0, 0, 1, 0], [0, 0, 1, 1], [2, 1, 0, 2]])
    result = load_metric("mean_iou").compute(
        predictions=[prediction], references=[reference], num_labels=3, ignore_index=255
    )
    # class 0: 4 right of 4 true, 5 predicted -> 4/5; class 1: 3 of 4 true, 4 predicted -> 3/5; class 2: 1/2
    np.testing.assert_allclose(result["per_category_iou"], [0.8, 0.6, 0.5])
    assert result["mean_iou"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert result["overall_accuracy"] == pytest.approx(8 / 10)
    np.testing.assert_allclose(result["per_category_accuracy"], [1.0, 0.75, 0.5])
    totals = IoUTotals(["a", "b", "c"], 255)
    totals.add([prediction[:2]], [reference[:2]])
    totals.add([prediction[2:]], [reference[2:]])
    summed = totals.result()
    assert summed["mean_iou"] == pytest.approx(result["mean_iou"]) and summed["iou_c"] == pytest.approx(0.5)
    assert summed["pixel_accuracy"] == pytest.approx(0.8)


def test_a_class_absent_everywhere_has_no_iou():
    totals = IoUTotals(["a", "b", "c"], 255)
    totals.add([np.zeros((2, 2), int)], [np.zeros((2, 2), int)])
    assert totals.result()["iou_b"] is None and totals.result()["mean_iou"] == pytest.approx(1.0)


# ---------------------------------------------------------------- data layouts


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _folder(root, count=4, size=(12, 10), split=None):
    """``images/`` + ``masks/`` (under ``split/`` if given): grey label maps of classes 0-2, one pixel 255."""
    base = root / split if split else root
    images, masks = base / "images", base / "masks"
    for i in range(count):
        label_map = np.zeros(size[::-1], np.uint8)
        label_map[:, : size[0] // 2] = 1 + i % 2
        label_map[0, 0] = 255
        _save(images / f"im{i}.png", np.full((*size[::-1], 3), 40 * i))
        _save(masks / f"im{i}.png", label_map)
    return root


def test_images_and_masks_folder_with_label_file(tmp_path):
    root = _folder(tmp_path / "data", count=10)
    (root / "id2label.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    data = seg_data.load_segmentation_data(_recipe(f"data.path={root}").data)
    assert seg_data.class_names(data["train"]) == ["sky", "road", "car"]
    assert sum(len(d) for d in data.values()) == 10
    row = data["train"][0]
    assert set(row["classes"]) <= {0, 1, 2} and 0 in row["classes"]  # 255 is not a class


def test_split_folders_rgb_palette_masks_and_reduced_labels(tmp_path):
    for split in ("train", "val", "test"):
        _folder(tmp_path / "data", count=3, split=split)
    data = seg_data.load_segmentation_data(_recipe(f"data.path={tmp_path / 'data'}").data)
    assert sorted(data) == ["test", "train", "validation"] and len(data["validation"]) == 3
    palette = _recipe("data.palette={_ignore: [255, 255, 255], a: [255, 0, 0], b: [0, 0, 255]}").data
    labels = seg_data.label_space(palette, ["a", "b"])
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 255
    rgb[1, 2] = (0, 0, 255)
    rgb[0, 0] = (255, 255, 255)  # void
    mask = Image.fromarray(rgb, "RGB")
    assert seg_data.read_mask(mask, labels, "m").tolist() == [[255, 0, 0], [0, 0, 1]]
    ade = seg_data.LabelSpace(["wall", "floor"], 255, reduce_labels=True)
    grey = Image.fromarray(np.array([[0, 1, 2, 255]], np.uint8), "L")
    assert seg_data.read_mask(grey, ade, "m").tolist() == [[255, 0, 1, 255]]


def test_hub_style_image_and_annotation_columns(tmp_path):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    rows = {"image": [], "annotation": []}
    for i in range(6):
        rows["image"].append(Image.fromarray(np.full((6, 8, 3), 30 * i, np.uint8)))
        rows["annotation"].append(Image.fromarray(np.full((6, 8), i % 3, np.uint8), "L"))
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hub"))
    recipe = _recipe(f"data.path={tmp_path / 'hub'}", "data.reduce_labels=true", "data.label_names=[wall, floor]")
    data = seg_data.load_segmentation_data(recipe.data)
    found = {c for split in data.values() for classes in split["classes"] for c in classes}
    assert found == {0, 1}  # 1 -> 0, 2 -> 1, and 0 ("other") ignored


@pytest.mark.parametrize(
    "broken, message",
    [
        ("size", "mask is 6x5 but its image is 12x10; expected the same size"),
        ("class", "class id 7 beyond the label map (3 classes: 0-2); expected ids 0-2 or 255 (data.ignore_index)"),
        ("missing", "no mask (expected"),
        ("colour", "colour [0, 255, 0] is not in data.palette (3 colours)"),
    ],
)
def test_bad_masks_are_one_line_naming_the_file(cli, tmp_path, broken, message):
    root = _folder(tmp_path / "data", count=6)
    extra = []
    bad = root / "masks" / "im2.png"
    if broken == "size":
        _save(bad, np.zeros((5, 6)))
    elif broken == "class":
        (root / "id2label.json").write_text(json.dumps(["a", "b", "c"]))
        _save(bad, np.full((10, 12), 7))
    elif broken == "missing":
        bad.unlink()
        bad = root / "images" / "im2.png"
    else:
        for i in range(6):
            rgb = np.zeros((10, 12, 3), np.uint8)
            rgb[..., 2 if i != 2 else 1] = 255
            _save(root / "masks" / f"im{i}.png", rgb)
        extra = ["data.palette={a: [0, 0, 0], b: [255, 0, 0], c: [0, 0, 255]}"]
    code, _, err = cli("train", TASK, *TINY, f"data.path={root}", *extra, "--output-dir", tmp_path / "run")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hftk: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(bad) in lines[0] and message in lines[0], lines[0]


# ---------------------------------------------------------------- augmentation


def test_augmentation_moves_image_and_mask_together():
    aug = seg_transforms.build_augmentation(
        seg_transforms.SegmentationAugmentConfig(hflip=0.5, vflip=0.5, crop_scale=[0.2, 0.8], degrees=30), 255
    )
    colours = torch.tensor([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250]], dtype=torch.uint8)
    label_map = torch.zeros(64, 80, dtype=torch.long)
    label_map[5:40, 10:50], label_map[30:60, 40:75], label_map[:20, 60:] = 1, 2, 3
    pixels = colours[label_map].permute(2, 0, 1).contiguous()
    for seed in range(8):
        torch.manual_seed(seed)
        out_pixels, out_mask = aug(pixels, label_map)
        assert out_pixels.shape[-2:] == out_mask.shape == label_map.shape
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3, 255}, "nearest-neighbour: no blended class ids"
        image = out_pixels.permute(1, 2, 0)
        pure = [(image == colour).all(-1) & (out_mask != 255) for colour in colours]
        agree = sum(int((out_mask[p] == c).sum()) for c, p in enumerate(pure))
        assert agree / max(1, sum(int(p.sum()) for p in pure)) > 0.99, f"seed {seed}"


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    "overrides, head",
    [
        (["model.name=segformer"], "decode_head"),
        (
            [
                "model.name=mobilevit",
                "model.model_args={hidden_sizes: [16, 16, 16], neck_hidden_sizes: "
                "[8, 8, 8, 8, 8, 16, 16], aspp_out_channels: 16}",
            ],
            "segmentation_head",
        ),  # fmt: skip
        (
            [
                "model.name=upernet",
                "model.backbone=convnext",
                "model.backbone_args={hidden_sizes: [8, 8, 16, 16], depths: [1, 1, 1, 1]}",
                "model.model_args={hidden_size: 16, auxiliary_channels: 8, use_auxiliary_head: true}",
            ],
            "auxiliary_head",
        ),
        (
            [
                "model.name=upernet",
                "model.backbone=test_efficientnet",
                "model.model_args={hidden_size: 16, use_auxiliary_head: false}",
            ],
            "decode_head",
        ),
    ],
)
def test_model_families_train_with_ignore_index_and_have_a_head(overrides, head):
    recipe = _recipe(*overrides, "data.ignore_index=7", "model.backbone_pretrained=false")
    model, processor = build_segmenter(recipe.model, ["a", "b", "c"], 32, 7)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :8] = 7
    outputs = model(pixel_values=torch.randn(2, 3, 32, 32), labels=labels)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss) and outputs.logits.shape[1] == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert hasattr(processor, "post_process_semantic_segmentation") and processor.size["height"] == 32
    parts = segmentation_parts(model)
    assert parts.head and all(
        n.split(".")[0] in ("decode_head", "auxiliary_head", "segmentation_head") for n in parts.head
    )
    assert any(n.startswith(head) for n in parts.head) and len(parts.layers) >= 3


def test_frozen_batch_norms_keep_their_statistics():
    model, _ = build_segmenter(_recipe("model.batch_norm=frozen").model, ["a", "b"], 32, 255)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.randint(0, 2, (2, 32, 32))).loss.backward()
    after = model.state_dict()
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_of_another_task_is_refused():
    with pytest.raises(HftkError, match="model.name 'gpt2': a gpt2 model is not a semantic segmenter"):
        build_segmenter(_recipe("model.name=gpt2", "model.model_args={}").model, ["a", "b"], 32, 255)


# ---------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from hftk.cli import main

    run_dir = tmp_path_factory.mktemp("seg") / "run"
    assert main(["-q", "train", TASK, *TINY, "train.max_steps=12", "--output-dir", str(run_dir)]) == 0
    return run_dir


def test_tiny_run_writes_its_report_and_learns(tiny_run):
    history = json.loads((tiny_run / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    for name in ("best.png", "worst.png", "class_iou.png", "learning_curves.png", "report.md", "metrics.json"):
        assert (tiny_run / "eval" / name).is_file(), name
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert {"iou_background", "iou_circle", "accuracy_triangle", "pixel_accuracy"} <= set(metrics)
    assert "image-segmentation" in (tiny_run / "README.md").read_text()


def test_predict_masks_are_the_pipelines(tiny_run, tmp_path):
    from transformers import pipeline

    examples = get_task(TASK).example_inputs(tiny_run, 3)
    results = serving.predict(tiny_run, examples, masks=str(tmp_path / "masks"), batch_size=1)
    pipe = pipeline("image-segmentation", model=str(tiny_run), device="cpu")
    for example, result in zip(examples, results):
        segments = pipe(example)
        ours = np.asarray(Image.open(result["mask"]))
        theirs = np.full(ours.shape, -1)
        for s in segments:
            theirs[np.asarray(s["mask"]) == 255] = result_id(tiny_run, s["label"])
        assert (ours == theirs).all()
        assert [p["label"] for p in result["predictions"]] == [s["label"] for s in segments]


def result_id(run_dir, label):
    config = json.loads((run_dir / "config.json").read_text())
    return int(config["label2id"][label])


def test_predict_cli_writes_the_overlay_and_json(tiny_run, cli, tmp_path):
    example = get_task(TASK).example_inputs(tiny_run, 1)[0]
    code, out, err = cli("predict", tiny_run, example, "--out", tmp_path / "overlay.png", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[0])
    assert sum(p["pixels"] for p in result["predictions"]) == 64 * 64
    assert sum(p["fraction"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert Image.open(tmp_path / "overlay.png").size == Image.open(example).size
    code, _, err = cli("predict", tiny_run, example, example, "--out", tmp_path / "one.png")
    assert code == 2 and "give a folder to write the overlays into" in err


def test_onnx_export_matches_pytorch(tiny_run, tmp_path):
    from hftk.export import export_run

    report = export_run(tiny_run, "onnx", tmp_path / "onnx", batch_size=2)
    graph = report["graphs"][0]
    assert graph["max_abs_error"] <= graph["tolerance"] and (tmp_path / "onnx" / "model.onnx").is_file()


def test_lora_and_freezing_go_through_the_shared_machinery(tiny_run, tmp_path):
    from hftk.training import train

    lora = train(_recipe(f"model.name={tiny_run}", "model.pretrained=true", "model.peft.method=lora"), tmp_path / "a")
    assert (lora / "adapter_model.safetensors").is_file() and not (lora / "model.safetensors").exists()
    config = json.loads((lora / "adapter_config.json").read_text())
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targets == {"q_proj", "v_proj"}  # the attention's query and value projections
    assert config["modules_to_save"] and all(m.startswith("decode_head.") for m in config["modules_to_save"])
    assert serving.predict(lora, get_task(TASK).example_inputs(lora, 1))[0]["predictions"]
    frozen = train(_recipe(f"model.name={tiny_run}", "model.pretrained=true", "model.freeze=backbone"), tmp_path / "f")
    results = json.loads((frozen / "all_results.json").read_text())
    head = sum(
        p.numel() for n, p in build_segmenter(_recipe().model, ["a"] * 4, 64, 255)[0].named_parameters()
        if n.startswith("decode_head")
    )  # fmt: skip
    assert results["trainable_parameters"] == head


def test_an_upernet_on_a_timm_backbone_saves_reloads_and_matches_the_pipeline(tmp_path):
    from transformers import pipeline

    from hftk.cli import main

    run_dir = tmp_path / "upernet"
    upernet = [
        "model.name=upernet",
        "model.backbone=test_efficientnet",
        "model.model_args={hidden_size: 16, use_auxiliary_head: false}",
        "model.backbone_pretrained=false",
        "train.max_steps=4",
    ]
    assert main(["-q", "train", TASK, *TINY, *upernet, "--output-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "config.json").read_text())["backbone_config"]["model_type"] == "timm_backbone"
    examples = get_task(TASK).example_inputs(run_dir, 2)
    ours = serving.predict(run_dir, examples, batch_size=2)
    pipe = pipeline("image-segmentation", model=str(run_dir), device="cpu")
    for example, result in zip(examples, ours):
        areas = [(s["label"], int((np.asarray(s["mask"]) == 255).sum())) for s in pipe(example)]
        assert areas == [(p["label"], p["pixels"]) for p in result["predictions"]]
