"""Image classification: models from every source train, save, reload and match pipeline(); data edge cases."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from hftk.config import load_recipe
from hftk.data.embedded import load_mnist_5k
from hftk.data.images import load_image_data, to_rgb
from hftk.errors import HftkError
from hftk.tasks import image_classification as task
from hftk.tasks.contract import TrainerInputs
from hftk.training import build_training_arguments

LABELS = ["cat", "dog", "fox"]
DIGITS = "recipes/image-classification/resnet-digits.yaml"  # a recipe without model_args
TINY_MODELS = {
    "timm": ("test_resnet", {}),
    "timm-vit": ("test_vit", {}),
    "vit": (
        "vit",
        {
            "patch_size": 4,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    ),
    "resnet": ("resnet", {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1]}),
    "convnext": ("convnext", {"num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1]}),
}


def _recipe(name, model_args, **data):
    overrides = [f"model.name={name}", f"model.model_args={json.dumps(model_args)}", "data.image_size=16"]
    return load_recipe(DIGITS, overrides + [f"data.{k}={v}" for k, v in data.items()])


def _images(n=12, size=16):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("kind", TINY_MODELS)
def test_model_trains_saves_reloads_and_matches_pipeline(kind, tmp_path):
    name, args = TINY_MODELS[kind]
    recipe = _recipe(name, args)
    model, processor = task.build_image_classifier(recipe.model, LABELS, 16)
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.label2id["dog"] == 1
    images, labels = _images(), torch.tensor([i % 3 for i in range(12)])
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0] * 0.7, losses

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)  # what the Trainer does (timm's keeps its settings in config.json)
    assert (tmp_path / "model.safetensors").is_file()
    model.eval()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
        expected = torch.softmax(model(pixel_values=pixels[:1]).logits, -1)[0]
    top = pipeline("image-classification", model=str(tmp_path), device="cpu")(images[0], top_k=3)
    assert {p["label"] for p in top} == set(LABELS)
    by_label = {p["label"]: p["score"] for p in top}
    assert by_label["dog"] == pytest.approx(expected[1].item(), abs=1e-5)


def test_freeze_backbone_leaves_only_the_head_trainable():
    from hftk.models.parts import apply_freeze

    model, _ = task.build_image_classifier(_recipe("test_resnet", {}).model, LABELS, 16)
    apply_freeze(model, task.model_parts(model), "backbone")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".fc." in n for n in trainable), trainable


def test_unknown_model_name_suggests_the_close_one():
    recipe = _recipe("resnet1", {})
    recipe.model.name = "resnett18"
    with pytest.raises(HftkError, match="did you mean 'resnet18'"):
        task.build_image_classifier(recipe.model, LABELS, 16)


def test_pretrained_weights_offline_give_a_clear_error():
    recipe = _recipe("resnet18", {})
    recipe.model.pretrained = True
    with pytest.raises(HftkError, match=r"could not fetch timm/resnet18.a1_in1k/model.safetensors"):
        task.build_image_classifier(recipe.model, LABELS, 32)


def test_mnist_5k_test_split_is_fixed_stratified_and_unseen():
    recipe = load_recipe("image-classification", ["data.validation_size=0.1"])
    data = load_image_data(recipe.data)
    assert {k: len(v) for k, v in data.items()} == {"train": 3600, "validation": 400, "test": 1000}
    assert np.bincount(data["test"]["label"]).tolist() == [100] * 10
    other = load_image_data(
        load_recipe("image-classification", ["data.split_seed=7", "data.validation_size=0.1"]).data
    )
    fingerprint = lambda ds: sorted(hashlib.sha1(np.asarray(im).tobytes()).hexdigest() for im in ds["image"])  # noqa: E731
    assert fingerprint(other["test"]) == fingerprint(data["test"])  # the seed moves validation, never test
    test_set = set(fingerprint(data["test"]))
    assert not test_set & set(fingerprint(data["train"])) and not test_set & set(fingerprint(data["validation"]))
    assert len(load_mnist_5k()["train"]) == 4000


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "F", "1"])
def test_any_image_mode_becomes_8bit_rgb(mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8))
    image = (
        base.convert(mode)
        if mode not in ("I;16", "F")
        else Image.fromarray((np.arange(117).reshape(9, 13) * 300).astype(np.uint16 if mode == "I;16" else np.float32))
    )
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (13, 9)
    if mode in ("I;16", "F"):
        arr = np.asarray(rgb)
        assert arr.min() == 0 and arr.max() == 255  # rescaled, not clipped to white


def _imagefolder(root, classes=("cat", "dog"), per_class=6, corrupt=0):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, im in enumerate(_images(per_class, size=20)):
            im.resize((20 + i, 17)).convert("L" if i % 2 else "RGBA").save(root / c / f"{i}.png")  # odd sizes, modes
    for i in range(corrupt):
        (root / classes[0] / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _folder_recipe(path, **extra):
    overrides = [f"data.path={path}", "data.name=null", "data.validation_size=0.2", "data.test_size=0.2"]
    return load_recipe("image-classification", overrides + [f"data.{k}={v}" for k, v in extra.items()])


def test_imagefolder_splits_and_labels(tmp_path):
    data = load_image_data(_folder_recipe(_imagefolder(tmp_path / "pets")).data)
    assert data["train"].features["label"].names == ["cat", "dog"]
    assert sum(len(d) for d in data.values()) == 12


def test_corrupt_images_are_skipped_with_a_count_or_stop_the_run(tmp_path, caplog):
    folder = _imagefolder(tmp_path / "pets", corrupt=2)
    data = load_image_data(_folder_recipe(folder).data)
    assert sum(len(d) for d in data.values()) == 12
    assert "skipped 2 unreadable image(s)" in caplog.text
    with pytest.raises(HftkError, match=r"broken\d.png: not a readable image \(2 such files\)"):
        load_image_data(_folder_recipe(folder, on_bad_image="error").data)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.mkdir(), "no images found"),
        (lambda p: _imagefolder(p, classes=("only",)), "single class"),
        (lambda p: None, "no such file or folder"),
    ],
)
def test_bad_imagefolders_give_one_clear_line(tmp_path, setup, message):
    folder = tmp_path / "data"
    setup(folder)
    with pytest.raises(HftkError, match=message):
        load_image_data(_folder_recipe(folder).data)


def test_missing_label_column_names_the_columns(tmp_path):
    folder = _imagefolder(tmp_path / "pets")
    with pytest.raises(HftkError, match="data.label_column 'species': no such column .* columns: image, label"):
        load_image_data(_folder_recipe(folder, label_column="species").data)


def test_unknown_embedded_dataset_suggests_close_name():
    with pytest.raises(HftkError, match="did you mean 'mnist-5k'"):
        load_image_data(load_recipe("image-classification", ["data.name=mnist5k"]).data)


def test_mixup_trainer_trains_with_soft_targets(tmp_path):
    overrides = ["data.augment.mixup_alpha=0.4", "data.augment.cutmix_alpha=1.0", "train.label_smoothing_factor=0.1"]
    overrides.append("train.eval_strategy=no")
    recipe = load_recipe("image-classification", overrides)
    model, processor = task.build_image_classifier(_recipe("test_resnet", {}).model, LABELS, 16)
    args = build_training_arguments(recipe, tmp_path, task.SPEC.training_arguments)
    trainer = task.build_trainer(
        TrainerInputs(recipe, model, processor, {"train": None, "validation": None}, args, [])
    )
    assert isinstance(trainer, task.ImageClassificationTrainer) and trainer.mixup.mixup_alpha == 0.4
    inputs = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 0])}
    model.train()
    loss = trainer.compute_loss(model, inputs)
    assert torch.isfinite(loss) and loss.requires_grad
    plain = task.build_trainer(
        TrainerInputs(
            load_recipe(DIGITS, ["train.eval_strategy=no"]),
            model,
            processor,
            {"train": None, "validation": None},
            args,
            [],
        )
    )
    assert type(plain).__name__ == "Trainer"  # no batch augmentation asked: the plain Trainer


def test_batched_random_affine_moves_pixels_and_fills_borders_with_black():
    image = torch.zeros(1, 1, 16, 16)
    image[:, :, 4:12, 4:12] = 1.0  # a white square on black, already "normalised" with mean 0, std 1
    batch = image.repeat(64, 1, 1, 1)
    fill = torch.zeros(1, 1, 1, 1)
    same = task.random_affine(batch, 0.0, 0.0, None, fill)
    torch.testing.assert_close(same, batch, atol=1e-5, rtol=0)  # identity when nothing is asked
    moved = task.random_affine(batch, 30.0, 0.2, [0.8, 1.2], fill)
    assert not torch.allclose(moved[0], moved[1])  # every image gets its own transform
    assert (moved[:, :, 0, 0].abs() < 1e-6).all()  # corners stay black
    grey = torch.full((1, 1, 1, 1), -0.5)
    shifted = task.random_affine(torch.full((4, 1, 8, 8), -0.5), 0.0, 0.5, None, grey)
    torch.testing.assert_close(shifted, torch.full((4, 1, 8, 8), -0.5))  # borders get the fill value


def test_pretrained_folder_without_safetensors_is_refused(tmp_path):
    model, processor = task.build_image_classifier(_recipe("test_resnet", {}).model, LABELS, 16)
    from safetensors.torch import load_file

    model.save_pretrained(tmp_path / "pickled")  # transformers 5 writes safetensors only: make the pickle by hand
    weights = tmp_path / "pickled" / "model.safetensors"
    torch.save(load_file(weights), tmp_path / "pickled" / "pytorch_model.bin")
    weights.unlink()
    recipe = _recipe(str(tmp_path / "pickled"), {})
    recipe.model.pretrained = True
    with pytest.raises(HftkError, match="safetensors only"):
        task.build_image_classifier(recipe.model, LABELS, 16)
