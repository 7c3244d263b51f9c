"""Filters: the kernels drawn and saved are the module's weights, scaled and laid out as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.filters import conv_layer_names, default_filter_layer, filter_tiles, kernels, run_filters
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
    assert default_filter_layer(default_model) == "conv_stem"
    assert default_filter_layer(baseline) == "conv1"


def test_run_filters_saves_raw_kernels_and_figures(baseline, tmp_path):
    out = run_filters(baseline, ["conv1", "conv2"], tmp_path / "f")
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
    out = run_filters(default_model, None, tmp_path / "stem")
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
    out = run_filters(grouped, ["2"], tmp_path / "grouped")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kernels"]["2"]["groups"] == 2 and summary["kernels"]["2"]["shape"] == [12, 4, 3, 3]
    np.testing.assert_array_equal(np.load(out / "arrays.npz")["kernel/2"], grouped[2].weight.detach().numpy())


def test_unknown_or_non_conv_layer_names_the_candidates(baseline, default_model, tmp_path):
    with pytest.raises(ConvlensError, match=r"unknown conv layer 'conv4'; nearest: .*conv1"):
        kernels(baseline, "conv4")
    with pytest.raises(ConvlensError, match=r"'fc1' \(Linear\) is not a Conv2d; nearest convolutions"):
        kernels(baseline, "fc1")
    with pytest.raises(ConvlensError, match=r"its convolutions: blocks\.1\.0\.conv_pw"):
        run_filters(default_model, ["blocks.1.0"], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConvlensError, match="--reduce"):
        run_filters(baseline, None, tmp_path / "y", reduce="max")
    assert conv_layer_names(baseline) == ["conv1", "conv2", "conv3"]


def test_filters_leave_the_model_as_it_was(baseline, tmp_path):
    baseline.train()
    baseline.conv1.weight.requires_grad_(False)
    baseline.conv2.weight.grad = torch.ones_like(baseline.conv2.weight)
    before = {k: v.clone() for k, v in baseline.state_dict().items()}
    run_filters(baseline, ["conv1", "conv2"], tmp_path / "f", shared_scale=True)
    assert all(m.training for m in baseline.modules())
    assert not baseline.conv1.weight.requires_grad and baseline.conv2.weight.requires_grad
    assert torch.equal(baseline.conv2.weight.grad, torch.ones_like(baseline.conv2.weight))
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())


def test_cli_filters_writes_the_output_folder(tmp_path, capsys):
    from typer.testing import CliRunner

    import convlens.cli  # registers the commands
    from convlens.cli.app import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["filters", "baseline", "--layer", "conv2", "--reduce", "mean", "--max", "10",
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "filters" and summary["parameters"]["reduce"] == "mean"
    assert summary["parameters"]["max_filters"] == 10 and (out / "filters-conv2.png").is_file()
    assert np.load(out / "arrays.npz")["kernel/conv2"].shape == (64, 64, 3, 3)
    with pytest.raises(SystemExit) as exit_info:
        convlens.cli.main(["filters", "baseline", "--layer", "conv9", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert "unknown conv layer 'conv9'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
