"""Feature maps: saved activations equal a forward pass hooked independently here, with plain forward hooks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from testkit import make_image
from torch import nn

from convlens.errors import ConvlensError
from convlens.featuremaps import channel_order, feature_maps, layer_figure, stage_end_layers
from convlens.filters import filters
from convlens.models import BaselineCNN


def hooked_forward(module: nn.Module, inputs: torch.Tensor, layers: list[str]):
    """Outputs of ``layers`` via plain ``register_forward_hook`` (cloned: an in-place op may follow)."""
    seen, handles = {}, []
    for name in layers:
        def hook(_module, _inputs, output, name=name):
            seen[name] = output.detach().clone()

        handles.append(module.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            output = module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen, output


@pytest.fixture
def baseline(seeded) -> BaselineCNN:
    return BaselineCNN(num_classes=3, img_size=32).eval()


def test_feature_maps_equal_independent_hooks_on_the_baseline(baseline):
    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    layers = ["conv1", "relu2", "conv3"]
    import convlens

    assert convlens.feature_maps is feature_maps
    maps = feature_maps(baseline, inputs, layers).activations
    expected, _ = hooked_forward(baseline, inputs, layers)
    for name in layers:
        torch.testing.assert_close(maps[name], expected[name], rtol=0, atol=1e-6)
    assert maps["conv1"].shape == (2, 64, 32, 32) and maps["conv1"].min() < 0  # before its ReLU
    again = feature_maps(baseline, inputs, layers).activations
    assert all(torch.equal(again[name], maps[name]) for name in layers)  # deterministic


def test_feature_maps_before_an_inplace_relu_are_not_overwritten(seeded):
    from torchvision.models import resnet18

    model = resnet18(num_classes=10).eval()
    assert model.relu.inplace
    inputs = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    layers = ["bn1", "layer1.0.bn2", "layer2"]
    maps = feature_maps(model, inputs, layers).activations
    expected, _ = hooked_forward(model, inputs, layers)
    for name in layers:
        torch.testing.assert_close(maps[name], expected[name], rtol=0, atol=1e-5)
    assert maps["bn1"].min() < 0 and maps["layer1.0.bn2"].min() < 0  # the in-place ReLU came after


def test_run_featuremaps_saves_what_the_default_model_computed(default_model, shared_data, tmp_path):
    photo = shared_data / "photos" / "golden_retriever.jpeg"
    out = feature_maps(default_model, photo, max_channels=16, order="activation").save(tmp_path / "dog")
    arrays = np.load(out / "arrays.npz")
    summary = json.loads((out / "summary.json").read_text())
    layers = ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "bn2"]
    assert summary["layers"] == layers
    inputs = torch.from_numpy(arrays["input"])
    torch.testing.assert_close(inputs, default_model.prepare(photo), rtol=0, atol=0)
    expected, logits = hooked_forward(default_model.module, inputs, layers)
    for name in layers:
        np.testing.assert_allclose(arrays[f"activation/{name}"], expected[name].numpy(), rtol=0, atol=1e-5)
        strongest = np.argsort(-expected[name][0].mean(dim=(1, 2)).numpy(), kind="stable")[:16]
        np.testing.assert_array_equal(arrays[f"channels/{name}"], strongest[None])  # one row per image
    np.testing.assert_allclose(arrays["probabilities"], torch.softmax(logits, 1).numpy(), atol=1e-6)
    assert arrays["activation/blocks.0"].shape == (1, 16, 112, 112)
    assert arrays["activation/bn2"].min() >= 0  # BatchNormAct2d includes its ReLU6
    assert summary["predictions"][0][0]["name"] == "golden retriever"  # image 0's top class
    assert summary["figures"] == ["overview.png"] + [f"featuremaps-{name}.png" for name in layers]


def test_stage_end_layers_end_each_stage():
    from torchvision.models import inception_v3, resnet50, vgg16

    assert stage_end_layers(BaselineCNN(3, 32), (32, 32)) == ["relu1", "relu2", "relu3"]
    with torch.device("meta"):  # only output shapes matter: no memory, no weight initialisation
        vgg, resnet, inception = vgg16(), resnet50(), inception_v3(init_weights=False, aux_logits=False)
    # VGG16's block1_conv2 ... block5_conv3, after their ReLU
    assert stage_end_layers(vgg, (224, 224)) == ["features.3", "features.8", "features.15", "features.22",
                                               "features.29"]
    assert stage_end_layers(resnet, (224, 224)) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert stage_end_layers(inception, (299, 299)) == ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e",
                                                     "Mixed_7c"]


def test_stage_end_layers_of_the_timm_default_model(default_model):
    assert stage_end_layers(default_model) == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "bn2"]


def test_channel_order_index_and_activation():
    activation = torch.tensor([[[1.0, 1.0]], [[5.0, -1.0]], [[0.0, 9.0]], [[2.0, 0.0]]])  # means 1, 2, 4.5, 1
    assert channel_order(activation).tolist() == [0, 1, 2, 3]
    assert channel_order(activation, "activation").tolist() == [2, 1, 0, 3]  # ties keep index order
    assert channel_order(activation, "activation", 2).tolist() == [2, 1]
    with pytest.raises(ConvlensError, match="--order"):
        channel_order(activation, "max")


def test_a_2048_channel_layer_gets_a_bounded_figure():
    import matplotlib.pyplot as plt

    activation = torch.rand(2048, 7, 7, generator=torch.Generator().manual_seed(5))
    figure = layer_figure("layer4", activation, channel_order(activation))
    width, height = figure.get_size_inches()
    assert 20 < width < 40 and 20 < height < 45  # grows with the grid, stops near 30 inches a side
    plt.close(figure)


def test_unknown_or_flat_layer_is_a_one_line_error(baseline):
    inputs = torch.rand(1, 3, 32, 32)
    with pytest.raises(ConvlensError, match=r"unknown layer 'conv0'; nearest: .*conv1"):
        feature_maps(baseline, inputs, ["conv0"])
    with pytest.raises(ConvlensError, match="'fc1' outputs .*not feature maps"):
        feature_maps(baseline, inputs, ["fc1"])
    with pytest.raises(ConvlensError, match="preprocessed N x 3 x H x W tensor"):
        feature_maps(baseline, "photo.jpg", ["conv1"])


def test_model_state_is_unchanged_even_after_an_error(baseline, tmp_path):
    baseline.train()
    baseline.conv1.weight.requires_grad_(False)
    baseline.conv3.weight.grad = torch.full_like(baseline.conv3.weight, 2.0)
    before = {k: v.clone() for k, v in baseline.state_dict().items()}
    inputs = torch.rand(1, 3, 32, 32)
    feature_maps(baseline, inputs, ["relu1", "conv3"])
    with pytest.raises(ConvlensError):
        feature_maps(baseline, inputs, ["relu1", "fc2"])
    filters(baseline).save(tmp_path / "f")
    assert all(m.training for m in baseline.modules())
    assert not baseline.conv1.weight.requires_grad and baseline.conv3.weight.requires_grad
    assert torch.equal(baseline.conv3.weight.grad, torch.full_like(baseline.conv3.weight, 2.0))
    assert baseline.conv1.weight.grad is None
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in baseline.modules())


def test_default_draws_the_64_strongest_channels_and_says_so(default_model, sample_photos):
    """Issue 14.11: by default every map of bn2 (1280) was drawn in a 3473 x 4115 px grid; now the 64 strongest."""
    import matplotlib.pyplot as plt

    photo = next(p for p in sample_photos if p.stem == "coffee")
    result = feature_maps(default_model, photo, ["blocks.2", "bn2"])
    expected, _ = hooked_forward(default_model.module, default_model.prepare(photo), ["bn2"])
    strongest = np.argsort(-expected["bn2"][0].mean(dim=(1, 2)).numpy(), kind="stable")[:64]
    np.testing.assert_array_equal(result.arrays()["channels/bn2"], strongest[None])
    assert result.arrays()["activation/bn2"].shape == (1, 1280, 7, 7)  # every channel is still saved
    summary = result.summary()
    assert summary["parameters"]["max_channels"] == 64 and summary["parameters"]["order"] == "activation"
    assert summary["shown"]["bn2"] == {"channels": 64, "of": 1280, "chosen_by": "strongest mean activation"}
    figures = result.figures()
    assert list(figures) == ["overview", "featuremaps-blocks.2", "featuremaps-bn2"]
    grid = figures["featuremaps-bn2"]
    assert "the 64 strongest of 1280 channels" in grid.axes[0].get_title()
    assert max(grid.get_size_inches()) < 12  # an 8 x 8 grid, not 36 x 36
    for figure in figures.values():
        plt.close(figure)


def test_several_images_get_their_own_channels_and_figures(baseline):
    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    events = []
    result = feature_maps(baseline, inputs, "relu2", max_channels=5, per_row=3,
                          progress=lambda *event: events.append(event))
    expected, logits = hooked_forward(baseline, inputs, ["relu2"])
    for index in range(2):
        strongest = np.argsort(-expected["relu2"][index].mean(dim=(1, 2)).numpy(), kind="stable")
        np.testing.assert_array_equal(result.channels["relu2"][index].numpy(), strongest[:5])
        np.testing.assert_array_equal(result.overview_channels["relu2"][index].numpy(), strongest[:3])
        top = torch.softmax(logits[index], 0).argmax().item()
        assert result.predictions[index][0].name == f"class {top}"  # a bare module has no class names
    assert result.summary()["inputs"] == ["tensor", "tensor"]
    names = [name for name, figure in result.iter_figures()]
    assert names == ["overview-image0", "featuremaps-relu2-image0", "overview-image1", "featuremaps-relu2-image1"]
    assert events[0] == ("feature maps", 0, 1) and events[-1] == ("feature maps", 1, 1)
    with pytest.raises(ConvlensError, match="--order 'max'"):
        feature_maps(baseline, inputs, "relu2", order="max")


def test_cli_featuremaps_saves_what_the_api_computes(tmp_path):
    from typer.testing import CliRunner

    import convlens.cli  # noqa: F401 - registers the commands
    from convlens.cli.app import app
    from convlens.models import load_model

    image = make_image(tmp_path / "noise.png", size=(50, 40))
    out = tmp_path / "cli"
    torch.manual_seed(9)  # `baseline` has random weights: the API call below draws the same ones
    result = CliRunner().invoke(app, ["featuremaps", "baseline", str(image), "--layer", "relu1", "--layer", "conv2",
                                      "--max", "8", "--order", "activation", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"] == ["overview.png", "featuremaps-relu1.png", "featuremaps-conv2.png"]
    assert summary["inputs"] == [str(image)] and len(summary["predictions"][0]) == 3
    arrays = np.load(out / "arrays.npz")
    assert arrays["input"].shape == (1, 3, 32, 32) and arrays["input"].dtype == np.float32
    for name, side in (("relu1", 32), ("conv2", 16)):
        activation = arrays[f"activation/{name}"][0]
        assert activation.shape == (64, side, side)
        strongest = np.argsort(-activation.mean(axis=(1, 2)), kind="stable")[:8]
        np.testing.assert_array_equal(arrays[f"channels/{name}"][0], strongest)
        assert summary["channels"][name] == [strongest.tolist()]
    torch.manual_seed(9)
    model = load_model("baseline", device="cpu")
    expected = feature_maps(model, image, ["relu1", "conv2"], max_channels=8, order="activation").arrays()
    assert sorted(arrays.files) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_allclose(arrays[name], array, rtol=0, atol=1e-6, err_msg=name)
    assert expected["probabilities"].shape == (1, 3)
