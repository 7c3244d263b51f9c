"""Filters: the kernels drawn and saved are the module's weights, scaled and laid out as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.filters import (
    FiltersResult,
    conv_layer_names,
    filter_tiles,
    filters,
    first_conv_layer,
    kernel_layout,
    kernels,
    pointwise_matrix,
)
from convlens.models import BaselineCNN


@pytest.fixture
def baseline(seeded) -> BaselineCNN:
    return BaselineCNN(num_classes=3, img_size=32).eval()


def minmax(array: np.ndarray) -> np.ndarray:
    return (array - array.min()) / (array.max() - array.min())


def test_kernels_are_the_module_weights_on_two_architectures(baseline, default_model):
    assert torch.equal(kernels(baseline, "conv2"), baseline.conv2.weight.detach())
    timm_module = default_model.module
    # timm's Conv2dSame stem and a depthwise conv: still plain weights of shape out x in/groups x k x k
    assert type(timm_module.conv_stem).__name__ == "Conv2dSame"
    assert torch.equal(kernels(default_model, "conv_stem"), timm_module.conv_stem.weight.detach())
    depthwise = kernels(default_model, "blocks.1.0.conv_dw")
    assert depthwise.shape == (96, 1, 3, 3)
    assert torch.equal(depthwise, timm_module.blocks[1][0].conv_dw.weight.detach())
    assert first_conv_layer(default_model) == "conv_stem"
    assert first_conv_layer(baseline) == "conv1"


def test_filters_saves_raw_kernels_and_figures(baseline, tmp_path):
    import convlens

    result = convlens.filters(baseline, ["conv1", "conv2"])  # the package is the function
    assert isinstance(result, FiltersResult) and isinstance(result, convlens.Result)
    assert torch.equal(result["conv2"], baseline.conv2.weight.detach())
    out = result.save(tmp_path / "f")
    arrays = np.load(out / "arrays.npz")
    np.testing.assert_array_equal(arrays["kernel/conv1"], baseline.conv1.weight.detach().numpy())
    np.testing.assert_array_equal(arrays["kernel/conv2"], baseline.conv2.weight.detach().numpy())
    np.testing.assert_array_equal(arrays["bias/conv2"], baseline.conv2.bias.detach().numpy())
    assert arrays["input"].shape == (0, 3, 224, 224) and arrays["input"].dtype == np.float32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == ["conv1", "conv2"]
    assert summary["kernels"]["conv1"]["colour"] is True and summary["kernels"]["conv2"]["colour"] is False
    assert summary["figures"] == ["filters-conv1.png", "filters-conv2.png"]
    assert all((out / name).stat().st_size > 1000 for name in summary["figures"])


def test_default_model_first_layer_in_colour(default_model, tmp_path):
    out = filters(default_model).save(tmp_path / "stem")
    arrays = np.load(out / "arrays.npz")
    np.testing.assert_array_equal(arrays["kernel/conv_stem"], default_model.module.conv_stem.weight.detach().numpy())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == ["conv_stem"] and summary["kernels"]["conv_stem"]["colour"] is True
    assert summary["model"]["spec"] == "efficientnet_lite0"


def test_colour_tiles_scale_each_kernel_or_the_layer():
    weight = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    w = weight.double().numpy()
    own = filter_tiles(weight, max_filters=6)
    assert own.layout == "colour" and own.tiles.shape == (6, 5, 5, 3)
    for i in range(6):
        np.testing.assert_allclose(own.tiles[i], minmax(w[i]).transpose(1, 2, 0), atol=1e-12)
    shared = filter_tiles(weight, max_filters=6, shared_scale=True)
    # one scale over all eight filters of the layer, not just the six shown
    np.testing.assert_allclose(shared.tiles, minmax(w)[:6].transpose(0, 2, 3, 1), atol=1e-12)


def test_matrix_tiles_are_filters_by_channels_and_mean_reduces_channels():
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    w = weight.double().numpy()
    matrix = filter_tiles(weight, max_filters=5, max_channels=3)
    assert matrix.layout == "matrix" and matrix.ncols == 3 and matrix.tiles.shape == (15, 3, 3)
    assert matrix.row_labels == ["#0", "#1", "#2", "#3", "#4"] and matrix.col_labels == ["0", "1", "2"]
    for i in range(5):
        # each filter scaled over all four of its channels, then its first three drawn as a row
        expected = minmax(w[i])[:3]
        np.testing.assert_allclose(matrix.tiles[3 * i:3 * i + 3], expected, atol=1e-12)
    mean = filter_tiles(weight, reduce="mean")
    assert mean.layout == "mean" and mean.tiles.shape == (6, 3, 3)
    for i in range(6):
        np.testing.assert_allclose(mean.tiles[i], minmax(w[i].mean(axis=0)), atol=1e-12)


def test_depthwise_and_grouped_convolutions(default_model, tmp_path, seeded):
    depthwise = default_model.module.blocks[1][0].conv_dw
    tiles = filter_tiles(depthwise.weight, depthwise.groups)
    assert tiles.layout == "depthwise" and tiles.tiles.shape == (64, 3, 3)  # 64 of 96 by default
    np.testing.assert_allclose(tiles.tiles[5], minmax(depthwise.weight[5, 0].detach().double().numpy()), atol=1e-12)

    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3, groups=2))
    shown = filter_tiles(grouped[2].weight, groups=2)
    # 12 filters in 2 groups of 6: filters 0-5 read input channels 0-3, filters 6-11 read 4-7
    assert shown.row_labels[0] == "#0 (in 0-3)" and shown.row_labels[6] == "#6 (in 4-7)"
    assert shown.tiles.shape == (12 * 4, 3, 3)
    out = filters(grouped, ["2"]).save(tmp_path / "grouped")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kernels"]["2"]["groups"] == 2 and summary["kernels"]["2"]["shape"] == [12, 4, 3, 3]
    np.testing.assert_array_equal(np.load(out / "arrays.npz")["kernel/2"], grouped[2].weight.detach().numpy())


def test_unknown_or_non_conv_layer_names_the_candidates(baseline, default_model, tmp_path):
    with pytest.raises(ConvlensError, match=r"unknown conv layer 'conv4'; nearest: .*conv1"):
        kernels(baseline, "conv4")
    with pytest.raises(ConvlensError, match=r"'fc1' \(Linear\) is not a Conv2d; nearest convolutions"):
        kernels(baseline, "fc1")
    with pytest.raises(ConvlensError, match=r"its convolutions: blocks\.1\.0\.conv_pw"):
        filters(default_model, ["blocks.1.0"]).save(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConvlensError, match="--reduce"):
        filters(baseline, reduce="max").save(tmp_path / "y")
    assert conv_layer_names(baseline) == ["conv1", "conv2", "conv3"]


def test_filters_leave_the_model_as_it_was(baseline, tmp_path):
    baseline.train()
    baseline.conv1.weight.requires_grad_(False)
    baseline.conv2.weight.grad = torch.ones_like(baseline.conv2.weight)
    before = {k: v.clone() for k, v in baseline.state_dict().items()}
    filters(baseline, ["conv1", "conv2"], shared_scale=True).save(tmp_path / "f")
    assert all(m.training for m in baseline.modules())
    assert not baseline.conv1.weight.requires_grad and baseline.conv2.weight.requires_grad
    assert torch.equal(baseline.conv2.weight.grad, torch.ones_like(baseline.conv2.weight))
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())


def test_1x1_kernels_are_one_matrix_of_weights_on_one_scale(default_model, tmp_path):
    """Issue 14.10: conv_head's 1x1 kernels with --reduce mean were 64 black tiles (each 1x1 tile min-max
    scaled on its own); now one filters x input-channels matrix of the weights, one symmetric scale, a colour bar."""
    import matplotlib.pyplot as plt

    result = filters(default_model, "conv_head", reduce="mean")
    weight = default_model.module.conv_head.weight.detach().double().numpy()[:, :, 0, 0]  # 1280 x 320
    figure = result.figures()["filters-conv_head"]
    matrix_axis, bar_axis = figure.axes  # the matrix and its colour bar
    image = matrix_axis.images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), weight, rtol=0, atol=1e-7)
    limit = np.percentile(np.abs(weight), 99.5)
    assert image.norm.vmin == pytest.approx(-limit) and image.norm.vmax == pytest.approx(limit)
    assert 0.1 < limit < np.abs(weight).max()  # a few outliers saturate rather than wash the rest out
    assert "1x1 kernels as a filters x input-channels matrix" in matrix_axis.get_title()
    assert "--reduce mean does not apply" in matrix_axis.get_title()
    assert "99.5th percentile" in bar_axis.get_ylabel()
    plt.close(figure)
    summary = result.save(tmp_path / "head") / "summary.json"
    kernels_summary = json.loads(summary.read_text())["kernels"]["conv_head"]
    assert kernels_summary["layout"] == "pointwise" and kernels_summary["colour"] is False


def test_pointwise_matrix_limits_rows_and_columns():
    weight = torch.randn(10, 6, 1, 1, generator=torch.Generator().manual_seed(6))
    shown = pointwise_matrix(weight, max_filters=4, max_channels=5)
    np.testing.assert_array_equal(shown.values, weight[:4, :5, 0, 0].double().numpy())
    assert shown.largest == pytest.approx(float(weight.abs().max()))
    assert shown.limit == pytest.approx(float(np.percentile(weight.abs().numpy(), 99.5)))
    assert kernel_layout(weight, reduce="mean") == "pointwise" and kernel_layout(weight[:, :3]) == "pointwise"
    with pytest.raises(ConvlensError, match="1x1 kernels are drawn as one matrix"):
        filter_tiles(weight)


def test_cli_filters_saves_what_the_api_computes(tmp_path, capsys):
    from typer.testing import CliRunner

    import convlens.cli  # registers the commands
    from convlens.cli.app import app
    from convlens.models import load_model

    out = tmp_path / "cli"
    torch.manual_seed(7)  # `baseline` has random weights: the API call below draws the same ones
    result = CliRunner().invoke(app, ["filters", "baseline", "--layer", "conv2", "--reduce", "mean", "--max", "10",
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "filters" and summary["parameters"]["reduce"] == "mean"
    assert summary["parameters"]["max_filters"] == 10 and (out / "filters-conv2.png").is_file()
    saved = np.load(out / "arrays.npz")
    assert saved["kernel/conv2"].shape == (64, 64, 3, 3)
    torch.manual_seed(7)
    expected = filters(load_model("baseline", device="cpu"), ["conv2"], reduce="mean", max_filters=10).arrays()
    assert sorted(saved.files) == sorted(expected) == ["bias/conv2", "input", "kernel/conv2"]
    for name, array in expected.items():
        np.testing.assert_array_equal(saved[name], array)
    with pytest.raises(SystemExit) as exit_info:
        convlens.cli.main(["filters", "baseline", "--layer", "conv9", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert "unknown conv layer 'conv9'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
