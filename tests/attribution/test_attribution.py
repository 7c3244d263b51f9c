"""Attributions against Captum on the same model, inputs, seed, baseline and steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlens
from convlens.attribution import attribution, integrated_gradients, method_name, smoothgrad
from convlens.errors import ConvlensError
from convlens.targets import ClassTarget


def small_net(inplace: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


@pytest.fixture
def images():
    return torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}, [p.requires_grad for p in module.parameters()]


def test_smoothgrad_equals_captum_noise_tunnel(images):
    from captum.attr import NoiseTunnel, Saliency

    net = small_net(inplace=False)
    targets = [1, 3, 0]
    ours = smoothgrad(net, images, [ClassTarget(t) for t in targets], samples=6, stdev=0.3, seed=7, batch_size=5)
    torch.manual_seed(7)
    theirs = NoiseTunnel(Saliency(net)).attribute(images, nt_type="smoothgrad", nt_samples=6, stdevs=0.3,
                                                  target=targets)
    assert ours.shape == images.shape
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_equals_captum(images, method):
    from captum.attr import IntegratedGradients

    net = small_net(inplace=False)
    targets = [2, 2, 4]
    baseline = torch.full_like(images, -0.5)
    ours = integrated_gradients(net, images, [ClassTarget(t) for t in targets], baseline=baseline, steps=16,
                                method=method, batch_size=7)
    theirs = IntegratedGradients(net).attribute(images, baselines=baseline, target=targets, n_steps=16,
                                                method=method)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-4, atol=1e-6)
    # completeness: the attributions add up to the score difference (Gauss-Legendre with 16 steps is close)
    if method == "gausslegendre":
        with torch.no_grad():
            gap = net(images)[range(3), targets] - net(baseline)[range(3), targets]
        torch.testing.assert_close(ours.sum(dim=(1, 2, 3)), gap, rtol=2e-2, atol=2e-3)


def test_guided_gradcam_equals_captum(images):
    from captum.attr import GuidedGradCam

    net = small_net(inplace=False)
    result = attribution(net, images, method="guided-gradcam", target=[0, 1, 2], layer="3")
    theirs = GuidedGradCam(net, net[3]).attribute(images, target=[0, 1, 2], interpolate_mode="bilinear")
    torch.testing.assert_close(result.attributions, theirs.detach(), rtol=1e-4, atol=1e-6)
    assert result.maps.shape == (3, 24, 24) and float(result.maps.amax()) == 1.0


def test_in_place_relu_and_model_left_as_found(images):
    net = small_net(inplace=True)
    net[4].train()
    before, flags = state(net)
    plain = attribution(small_net(inplace=False), images, method="guided", target=1).attributions
    ours = attribution(net, images, method="guided", target=1).attributions
    after, flags_after = state(net)
    assert net[4].training and flags == flags_after
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())
    net.eval()
    torch.testing.assert_close(ours, plain)


def test_saliency_is_the_true_gradient(images):
    net = small_net(inplace=False)
    x = images.clone().requires_grad_(True)
    net(x)[:, 3].sum().backward()
    result = attribution(net, images, method="saliency", target=3)
    torch.testing.assert_close(result.attributions, x.grad)
    torch.testing.assert_close(result.maps.amax(dim=(1, 2)), torch.ones(3))


def test_method_names_and_errors(images):
    assert method_name("IG") == "integrated-gradients" and method_name("Guided_GradCAM") == "guided-gradcam"
    with pytest.raises(ConvlensError, match="choose from saliency"):
        method_name("lime")
    with pytest.raises(ConvlensError, match="stdev"):
        attribution(small_net(), images, method="smoothgrad", stdev=[0.1, 0.2])


def test_top_level_function_and_save(tmp_path, images):
    import numpy as np

    result = convlens.attribution(small_net(), images[:2], method="smoothgrad", samples=3, seed=1)
    again = convlens.attribution(small_net(), images[:2], method="smoothgrad", samples=3, seed=1)
    torch.testing.assert_close(result.attributions, again.attributions, rtol=0, atol=0)
    out = result.save(tmp_path / "out")
    arrays = np.load(out / "arrays.npz")
    np.testing.assert_array_equal(arrays["attribution"], result.attributions.numpy())
    assert {"input", "map", "target"} <= set(arrays.files) and (out / "attribution.png").exists()


def test_cli_matches_the_api(tmp_path, capsys):
    import numpy as np
    import torchvision
    from PIL import Image
    from typer.testing import CliRunner

    from convlens.cli import app, main
    from convlens.models import Preprocessing, save_checkpoint
    from convlens.models.zoo import replace_head

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "best", replace_head(torchvision.models.resnet18(), 3), {
        "architecture": "torchvision:resnet18", "class_names": ["a", "b", "c"],
        "preprocessing": Preprocessing(crop=(64, 64), resize=None, squash=True).to_dict()})
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["attribution", str(tmp_path / "run"), str(image), "--method", "ig",
                                      "--steps", "8", "--target", "b", "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = convlens.attribution(convlens.load_model(tmp_path / "run", device="cpu"), [str(image)],
                                    method="integrated-gradients", steps=8, target="b")
    arrays = np.load(out / "arrays.npz")
    np.testing.assert_allclose(arrays["attribution"], expected.attributions.numpy(), rtol=1e-5, atol=1e-7)
    assert arrays["target"].tolist() == [1]
    with pytest.raises(SystemExit) as exit_info:
        main(["attribution", "baseline", str(image), "--method", "lrp", "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "unknown attribution method 'lrp'" in error and "\n" not in error
