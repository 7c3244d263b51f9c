"""Invariance curves against features computed here, with transformations written out independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

import convlens
from convlens.errors import ConvlensError
from convlens.hooks import capture
from convlens.invariance import default_amounts, early_and_late_layers, invariance, transformed_pixels
from convlens.models.preprocessing import Preprocessing

PREPROCESSING = Preprocessing(crop=(64, 64), resize=72)


@pytest.fixture(scope="module")
def model() -> convlens.ImageClassifier:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        module.fc.weight.mul_(20.0)  # spread the random logits so that probabilities differ visibly
    return convlens.ImageClassifier(module, PREPROCESSING, [f"class {i}" for i in range(10)])


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Square smooth-ish photos-to-be: 96 px resizes to exactly 72 x 72 (rotations by 90 degrees stay on the grid)."""
    rng = np.random.default_rng(1)
    pictures = []
    for _ in range(2):
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        pictures.append(Image.fromarray(coarse).resize((96, 96), Image.BILINEAR))
    return pictures


def resized(image: Image.Image) -> torch.Tensor:
    pixels = TF.resize(image, 72, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(pixels).float() / 255


def by_hand(image: Image.Image, transform: str, amount: float) -> torch.Tensor:
    """The transformation written out: shift rows, rot90, or upsample x2 then crop; then crop 64 and normalise."""
    pixels = resized(image)
    mean = torch.tensor(PREPROCESSING.mean).view(3, 1, 1)
    if transform == "translate":
        shifted = mean.expand_as(pixels).clone()
        shift = int(amount)
        if shift >= 0:
            shifted[:, shift:] = pixels[:, :72 - shift]
        else:
            shifted[:, :72 + shift] = pixels[:, -shift:]
        pixels = shifted
    elif transform == "rotate":
        pixels = torch.rot90(pixels, int(amount) // 90, dims=(1, 2))  # anticlockwise, about the centre
    elif transform == "scale" and amount != 1.0:
        assert amount == 2.0
        pixels = TF.center_crop(F.interpolate(pixels[None], scale_factor=2, mode="bilinear")[0], [72, 72])
    return PREPROCESSING.normalize(TF.center_crop(pixels, [64, 64]))


def features_by_hand(model, inputs: torch.Tensor):
    with torch.inference_mode(), capture(model, ["conv1", "avgpool"]) as captured:
        probs = torch.softmax(model.module(inputs), dim=1)
    return captured["conv1"].flatten(1), captured["avgpool"].flatten(1), probs


def test_identity_amount_is_exactly_the_models_preprocessing(images):
    expected = TF.pil_to_tensor(PREPROCESSING.geometry(images[0])).float() / 255
    for transform, amount in (("translate", 0), ("rotate", 0), ("scale", 1.0)):
        assert torch.equal(transformed_pixels(PREPROCESSING, images[0], transform, amount), expected)
    squash = Preprocessing(crop=(32, 32), resize=None, squash=True)
    assert torch.equal(transformed_pixels(squash, images[0], "rotate", 0),
                       TF.pil_to_tensor(squash.geometry(images[0])).float() / 255)


def test_distances_and_probability_match_features_computed_here(model, images):
    amounts = {"translate": [-60, -8, 0, 12], "rotate": [0, 90, 180, 270], "scale": [1.0, 2.0]}
    result = invariance(model, images, transforms=("translate", "rotate", "scale"), amounts=amounts,
                        layers=("conv1", "fc:input"), batch_size=3)
    originals = torch.stack([by_hand(image, "rotate", 0) for image in images])
    early_ref, late_ref, probs_ref = features_by_hand(model, originals)
    targets = probs_ref.argmax(dim=1)
    assert result.targets == targets.tolist()
    for transform, sweep in amounts.items():
        curves = result[transform]
        assert curves.early_distance.shape == (2, len(sweep))
        for index, image in enumerate(images):
            batch = torch.stack([by_hand(image, transform, amount) for amount in sweep])
            early, late, probs = features_by_hand(model, batch)
            torch.testing.assert_close(curves.early_distance[index], (early - early_ref[index]).norm(dim=1),
                                       rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(curves.late_distance[index], (late - late_ref[index]).norm(dim=1),
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(curves.score[index], probs[:, targets[index]], rtol=1e-4, atol=1e-5)
    # Not a trivial agreement: the transformations move the features and the probability.
    assert float(result["rotate"].late_distance[:, 1:].min()) > 0.1
    assert float((result["translate"].score - result.clean_score[:, None]).abs().max()) > 0.01


def test_no_transformation_gives_distance_zero_and_the_clean_probability(model, images):
    result = invariance(model, images, transforms=("translate", "rotate"),
                        amounts={"translate": [-10, 0, 10], "rotate": [0, 30]}, targets=[3, "class 7"])
    assert result.targets == [3, 7]
    with torch.inference_mode():
        clean = torch.softmax(model.module(model.prepare(images)), dim=1)[:, [3, 7]].diagonal()
    torch.testing.assert_close(result.clean_score, clean, rtol=0, atol=1e-6)
    for transform, column in (("translate", 1), ("rotate", 0)):
        curves = result[transform]
        assert torch.all(curves.early_distance[:, column] == 0) and torch.all(curves.late_distance[:, column] == 0)
        torch.testing.assert_close(curves.score[:, column], clean, rtol=0, atol=1e-6)
        other = [i for i in range(len(curves.amounts)) if i != column]
        assert float(curves.early_distance[:, other].min()) > 0


def test_defaults_follow_the_paper(model, default_model):
    assert early_and_late_layers(model) == ("conv1", "fc:input")
    assert early_and_late_layers(default_model) == ("conv_stem", "classifier:input")
    np.testing.assert_allclose(default_amounts("translate"), np.arange(-60, 61, 10))
    np.testing.assert_allclose(default_amounts("scale"), np.linspace(1.0, 1.8, 9))
    np.testing.assert_allclose(default_amounts("rotate"), np.arange(0, 361, 10))
    np.testing.assert_allclose(default_amounts("rotate", points=5), [0, 90, 180, 270, 360])


def test_model_state_untouched_and_bad_input_errors(model, images):
    module = model.module
    module.train()
    try:
        invariance(model, images[:1], transforms=("scale",), amounts={"scale": [1.0, 1.5]})
        assert all(m.training for m in module.modules())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    finally:
        module.eval()
    with pytest.raises(ConvlensError, match="unknown transformation 'shear'"):
        invariance(model, images, transforms=("shear",))
    with pytest.raises(ConvlensError, match="2 targets given for 1 images|1 images"):
        invariance(model, images[:1], transforms=("rotate",), targets=[1, 2], points=2)
    with pytest.raises(ConvlensError, match="nearest"):
        invariance(model, images, layers=("conv1", "fc9:input"))


def test_logit_score_and_callable_targets_match_features_computed_here(model, images):
    amounts = {"rotate": [0, 90, 180]}
    logit = invariance(model, images, transforms=("rotate",), amounts=amounts, targets=[2, "class 5"], score="logit")
    custom = invariance(model, images, transforms=("rotate",), amounts=amounts,
                        targets=lambda out: out[:, 2] - out[:, 5])
    for index, image in enumerate(images):
        batch = torch.stack([by_hand(image, "rotate", amount) for amount in amounts["rotate"]])
        with torch.inference_mode():
            logits = model.module(batch)
        torch.testing.assert_close(logit["rotate"].score[index], logits[:, [2, 5][index]], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(custom["rotate"].score[index], logits[:, 2] - logits[:, 5], rtol=1e-4, atol=1e-4)
    assert logit.targets == [2, 5] and custom.targets == [None, None]
    assert logit.summary()["score"] == "logit" and float(logit["rotate"].score.std()) > 0.1


def baseline_checkpoint(folder, size: int = 32):
    """A seeded baseline CNN saved as a convlens checkpoint, so that the CLI and the API load the same weights."""
    from convlens.models import save_checkpoint

    torch.manual_seed(0)
    model = convlens.load_model(f"baseline:{size}", device="cpu")
    save_checkpoint(folder / "best", model.module, {"architecture": "baseline", "img_size": size,
                                                    "class_names": model.class_names,
                                                    "preprocessing": model.preprocessing.to_dict()})
    return folder


def test_cli_writes_the_apis_curves_figure_and_summary(tmp_path, sample_photos):
    from convlens.cli import main

    run = baseline_checkpoint(tmp_path / "run")
    out = tmp_path / "inv"
    with pytest.raises(SystemExit) as exit_info:
        main(["invariance", str(run), str(sample_photos[0]), str(sample_photos[1]), "--transform", "rotate",
              "--transform", "translate", "--points", "3", "--target", "1", "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    arrays = np.load(out / "arrays.npz")
    assert summary["layers"] == {"early": "conv1", "late": "fc2:input"}
    assert summary["parameters"]["transforms"] == {"rotate": [0.0, 180.0, 360.0], "translate": [-60.0, 0.0, 60.0]}
    assert [t["index"] for t in summary["targets"]] == [1, 1]
    assert arrays["input"].shape == (2, 3, 32, 32)
    assert arrays["rotate_early_distance"].shape == (2, 3) and arrays["translate_score"].shape == (2, 3)
    assert arrays["translate_late_distance"][:, 1].tolist() == [0.0, 0.0]
    assert summary["figures"] == ["invariance.png"] and summary["compute_seconds"] > 0
    # The numbers are the Python API's on the same inputs.
    model = convlens.load_model(run, device="cpu")
    expected = convlens.invariance(model, sample_photos[:2], transforms=["rotate", "translate"], points=3,
                                   targets=1).arrays()
    assert set(arrays.files) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(arrays[name], values, atol=1e-6, err_msg=name)
    assert float(arrays["rotate_early_distance"].max()) > 0


def test_cli_layers_option(tmp_path, sample_photos):
    from convlens.cli import main

    out = tmp_path / "inv"
    with pytest.raises(SystemExit) as exit_info:
        main(["invariance", "baseline:32", str(sample_photos[2]), "--transform", "scale,translate", "--points", "2",
              "--layers", "conv2", "relu4", "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == {"early": "conv2", "late": "relu4"}
    assert list(summary["parameters"]["transforms"]) == ["scale", "translate"]
