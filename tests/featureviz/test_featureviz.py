"""Feature visualization: the parametrization against numpy and Lucent, objectives against hooked activations,
the model left as it was, reproducibility, and real visualizations beating the best natural photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import SHARED_DATA
from torch import nn

import convlens
from convlens.errors import ConvlensError
from convlens.featureviz import FourierImage, Objective, Robustness, diversity_penalty, feature_viz
from convlens.hooks import capture


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def numpy_image(spectrum: np.ndarray, height: int, width: int) -> np.ndarray:
    """Lucid's image from a spectrum, written independently with numpy."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1.0 / max(height, width))
    coefficients = (spectrum[..., 0] + 1j * spectrum[..., 1]) * scale
    spatial = np.fft.irfft2(coefficients, s=(height, width), norm="ortho") / 4.0
    sqrt = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    normalized = sqrt / np.linalg.norm(sqrt, axis=0).max()
    rgb = np.einsum("nchw,dc->ndhw", spatial, normalized)
    return 1 / (1 + np.exp(-rgb))


@pytest.mark.parametrize("size", [(16, 16), (15, 22)])
def test_image_from_a_fixed_spectrum_matches_numpy(size):
    image = FourierImage(2, *size)
    spectrum = np.random.default_rng(1).normal(size=tuple(image.spectrum.shape))
    with torch.no_grad():
        image.spectrum.copy_(torch.from_numpy(spectrum))
        ours = image().numpy()
    np.testing.assert_allclose(ours, numpy_image(spectrum, *size), atol=1e-5)


def test_parametrization_matches_lucent():
    from lucent.optvis.param.color import to_valid_rgb
    from lucent.optvis.param.spatial import fft_image

    torch.manual_seed(3)
    params, image_f = fft_image((2, 3, 20, 20), sd=0.5)
    theirs = to_valid_rgb(image_f, decorrelate=True)().detach()
    ours = FourierImage(2, 20, 20)
    with torch.no_grad():
        ours.spectrum.copy_(params[0].detach())
        np.testing.assert_allclose(ours().numpy(), theirs.numpy(), atol=1e-5)


def test_objectives_equal_the_hooked_activation():
    net = tiny_net().eval()
    inputs = torch.rand(3, 3, 12, 12)
    with capture(net, "4") as seen:
        net(inputs)
    activation = seen["4"]
    units = torch.tensor([0, 5, 2])
    rows = torch.arange(3)
    np.testing.assert_allclose(Objective("channel", units)(activation), activation[rows, units].mean(dim=(1, 2)),
                               atol=1e-6)
    np.testing.assert_allclose(Objective("neuron", units, position=(1, 4))(activation),
                               activation[rows, units, 1, 4], atol=1e-6)
    vectors = torch.randn(3, 6)
    expected = torch.stack([(activation[i] * vectors[i][:, None, None]).sum(0).mean() for i in range(3)])
    np.testing.assert_allclose(Objective("direction", units, vectors=vectors)(activation), expected, atol=1e-5)


def test_reached_is_the_activation_of_the_final_image():
    net = tiny_net()
    result = feature_viz(net, "4", [1, 3, 5], steps=6, size=16, seed=2)
    with capture(net, "4") as seen:
        net(torch.from_numpy(result.arrays()["images"]))
    independent = seen["4"][torch.arange(3), torch.tensor([1, 3, 5])].mean(dim=(1, 2))
    np.testing.assert_allclose(result.arrays()["reached"], independent.numpy(), atol=1e-5)
    # the optimisation raised the objective (curves are on transformed images: compare ends, not exact values)
    curves = result.arrays()["curves"][:, :, 0]
    assert (curves[-1] > curves[0]).all()


def test_diversity_penalty_is_the_summed_gram_cosine_similarity():
    output = torch.rand(4, 3, 5, 5)
    penalty = diversity_penalty(output, groups=2, per_group=2)
    grams = [(o.flatten(1) @ o.flatten(1).T).flatten() for o in output]
    grams = [g / g.norm() for g in grams]
    expected = torch.tensor([grams[0] @ grams[1], grams[1] @ grams[0], grams[2] @ grams[3], grams[3] @ grams[2]]) / 2
    np.testing.assert_allclose(penalty.numpy(), expected.numpy(), atol=1e-6)
    result = feature_viz(tiny_net(), "4", [0, 1], steps=4, size=16, diversity=3)
    assert result.arrays()["diversity_images"].shape == (2, 3, 3, 16, 16)
    assert result.arrays()["images"].shape == (2, 3, 16, 16)


def test_model_state_is_restored_also_when_it_raises():
    net = tiny_net()
    net.train()
    net[0].weight.requires_grad_(False)
    net[3].weight.grad = torch.full_like(net[3].weight, 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    requires = [p.requires_grad for p in net.parameters()]
    feature_viz(net, "5", [0, 2], steps=3, size=16)
    with pytest.raises(ConvlensError, match="out of range"):
        feature_viz(net, "5", [99], steps=3, size=16)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [m.training for m in net.modules()] == flags
    assert [p.requires_grad for p in net.parameters()] == requires
    assert torch.equal(net[3].weight.grad, torch.full_like(net[3].weight, 0.5))
    assert net[0].weight.grad is None
    assert all(not m._forward_hooks for m in net.modules())


def test_same_seed_same_images_and_class_objective():
    net = tiny_net()
    first = feature_viz(net, "4", [0, 1], steps=5, size=16, seed=7).arrays()["images"]
    again = feature_viz(net, "4", [0, 1], steps=5, size=16, seed=7).arrays()["images"]
    other = feature_viz(net, "4", [0, 1], steps=5, size=16, seed=8).arrays()["images"]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    classes = feature_viz(net, None, [2], objective="class", steps=5, size=16)
    logits = net.eval()(torch.from_numpy(classes.arrays()["images"]))
    np.testing.assert_allclose(classes.arrays()["reached"], logits[:, 2].detach().numpy(), atol=1e-5)


def test_bad_requests_are_one_line_errors():
    net = tiny_net()
    with pytest.raises(ConvlensError, match="unknown layer"):
        feature_viz(net, "nope", [0], steps=2, size=16)
    with pytest.raises(ConvlensError, match="needs a layer"):
        feature_viz(net, None, [0], steps=2, size=16)
    with pytest.raises(ConvlensError, match="not an N x C x H x W"):
        feature_viz(net, "8", [0], steps=2, size=16)
    with pytest.raises(ConvlensError, match="steps"):
        feature_viz(net, "4", [0], steps=0, size=16)


def baseline_checkpoint(folder) -> str:
    """A saved baseline CNN (random weights, seed 0), so the CLI and the API load the same model."""
    from convlens.models import Preprocessing, save_checkpoint
    from convlens.models.baseline import BaselineCNN

    torch.manual_seed(0)
    preprocessing = Preprocessing(crop=(32, 32), resize=None, squash=True)
    save_checkpoint(folder / "best", BaselineCNN(3, 32), {"architecture": "baseline", "img_size": 32,
                                                          "class_names": ["a", "b", "c"],
                                                          "preprocessing": preprocessing.to_dict()})
    return str(folder)


@pytest.mark.parametrize("transforms", ["lucid", "scaled"])
def test_cli_writes_the_api_numbers(tmp_path, transforms):
    from convlens.cli import main

    checkpoint = baseline_checkpoint(tmp_path / "run")
    try:
        main(["featureviz", checkpoint, "--layer", "relu3", "--units", "0:3,7", "--steps", "4",
              "--transforms", transforms, "--out", str(tmp_path / "out")])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    saved = np.load(tmp_path / "out" / "arrays.npz")
    model = convlens.load_model(checkpoint, device="cpu")
    robustness = Robustness() if transforms == "lucid" else Robustness(pad=2, jitter=2, jitter_after=1)
    api = feature_viz(model, "relu3", [0, 1, 2, 7], steps=4, robustness=robustness).arrays()
    for name in ("images", "input", "reached", "units"):
        np.testing.assert_allclose(saved[name], api[name], atol=1e-6, err_msg=name)
    assert {"units.png", "curves.png", "summary.json"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_scaled_transforms_follow_the_image_side():
    """Lucid's pixel values (pad 12, largest shifts 7 and 3) at 224 px, and in proportion below."""
    assert Robustness.scaled(224) == Robustness()
    small = Robustness.scaled(32)  # 12/7, 7/7 and 3/7 px, rounded
    assert (small.pad, small.jitter - 1, small.jitter_after - 1) == (2, 1, 0)
    assert (small.scales, small.angles) == (Robustness().scales, Robustness().angles)
    assert Robustness.scaled(112) == Robustness(pad=6, jitter=5, jitter_after=3)  # 6, 3.5 -> 4, 1.5 -> 2


@pytest.mark.slow
def test_default_model_visualizations_beat_the_best_photos(default_model, sample_photos):
    """16 units of a late layer of EfficientNet-Lite0: each visualization exceeds the unit's best activation
    over the shared photos and scikit-image's bundled ones (64 steps at 128 px keep the test short)."""
    photos = list(sample_photos)
    if (SHARED_DATA / "photos").is_dir():
        photos += sorted(p for p in (SHARED_DATA / "photos").iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    result = feature_viz(default_model, "blocks.6", list(range(16)), steps=64, size=128, reference=photos,
                         robustness=Robustness())
    assert result.natural.count == len(photos)
    assert result.beats_natural.all(), result.summary()["units"]
    assert result.summary()["flagged_units"] == []


def test_examples_figure_puts_each_units_patches_beside_its_image(sample_photos):
    from convlens.featureviz.figures import examples_figure

    torch.manual_seed(0)
    model = convlens.load_model("baseline:32", device="cpu")
    result = feature_viz(model, "conv3", [0, 5], steps=2, reference=sample_photos[:3])
    top = convlens.top_activations(model, sample_photos[:3], "conv3", units=[5, 0], k=9)  # the other order
    axes = examples_figure(result, top).axes
    assert len(axes) == 2 * (1 + 9)
    for block, unit in enumerate(result.units):
        shown = axes[block * 10]
        np.testing.assert_allclose(shown.images[0].get_array(), result.images[block, 0].permute(1, 2, 0).numpy())
        assert shown.get_title(loc="left").startswith(f"unit {unit}, reached {float(result.reached[block, 0]):.3g}")
        row = list(top.units).index(unit)
        for rank in range(9):
            images = axes[block * 10 + 1 + rank].images
            assert len(images) == (rank < 3)  # three photos: three patches, six empty slots
            if images:
                np.testing.assert_allclose(images[0].get_array(), top.patches[row, rank])
    with pytest.raises(ValueError, match=r"units \[0\] have no top-k patches"):
        examples_figure(result, convlens.top_activations(model, sample_photos[:3], "conv3", units=[5], k=9))
