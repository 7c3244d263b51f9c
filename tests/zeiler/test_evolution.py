"""Unit evolution across training snapshots (checkpoints written the way training writes them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from testkit import make_image

import convlens
from convlens.errors import ConvlensError
from convlens.models import BaselineCNN, baseline_preprocessing, save_checkpoint
from convlens.zeiler import evolution, find_snapshots
from convlens.zeiler.deconv import deconv_projection
from convlens.zeiler.figures import evolution_figure

EPOCHS = (0, 5, 12)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    for seed, epoch in enumerate(EPOCHS):
        torch.manual_seed(seed)
        save_checkpoint(run / "snapshots" / f"epoch_{epoch:03d}", BaselineCNN(3, 32), {
            "architecture": "baseline", "img_size": 32, "class_names": ["HR", "normal", "sick"],
            "preprocessing": baseline_preprocessing(32).to_dict(), "epoch": epoch})
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for index in range(6):
        make_image(folder / f"{index}.png", size=(40 + 4 * index, 36), seed=index)
    return folder


def test_strongest_projection_per_snapshot(run_dir, images):
    result = evolution(run_dir, images, "relu2", units="0:3", rule="deconvnet")
    assert result.epochs == list(EPOCHS) and result.units == [0, 1, 2]
    height, width = result.field.size
    assert (height, width) == (10, 10)
    for e, epoch in enumerate(EPOCHS):
        model = convlens.load_model(run_dir / "snapshots" / f"epoch_{epoch:03d}.safetensors", device="cpu")
        inputs = model.prepare(result.paths)
        with torch.no_grad():
            maps = torch.nn.Sequential(*list(model.module.children())[:5])(inputs)  # conv1 .. relu2, directly
        for u, unit in enumerate(result.units):
            peaks = maps[:, unit].flatten(1).amax(1)
            image = int(result.images[u, e])
            assert image == int(torch.argmax(peaks))
            assert result.values[u, e] == pytest.approx(float(peaks.max()), rel=1e-5)
            single = deconv_projection(model, inputs[image:image + 1], "relu2", unit, "max", "deconvnet")
            top, left, bottom, right = result.boxes[u, e]
            crop = result.projections[u, e]
            rows = slice(height - (bottom - top), height) if top == 0 else slice(0, bottom - top)
            cols = slice(width - (right - left), width) if left == 0 else slice(0, right - left)
            np.testing.assert_allclose(crop[:, rows, cols], single[:, top:bottom, left:right].numpy(),
                                       rtol=1e-5, atol=1e-8)
    assert not np.allclose(result.projections[:, 0], result.projections[:, -1])  # the weights differ
    figure = evolution_figure(result)
    assert len(figure.axes) == 2 * 3 * len(EPOCHS)


def test_single_image_and_missing_snapshots(run_dir, images, tmp_path):
    one = sorted(images.iterdir())[2]
    result = evolution(run_dir, one, "conv1", units=[4])
    assert result.images.tolist() == [[0, 0, 0]] and len(result.paths) == 1
    with pytest.raises(ConvlensError, match="snapshots"):
        find_snapshots(tmp_path)


def test_cli_evolution(run_dir, images, tmp_path):
    from convlens.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["evolution", str(run_dir), str(images), "--layer", "pool2", "--units", "1,6", "--out", str(out),
              "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == list(EPOCHS) and summary["units"] == [1, 6]
    arrays = np.load(out / "arrays.npz")
    assert arrays["projections"].shape[:2] == (2, len(EPOCHS)) and "input" in arrays
    assert (out / "evolution.png").is_file()
    # the numbers are the library's for the same inputs (the baseline has no strided conv: rule auto is deconvnet)
    api = evolution(run_dir, images, "pool2", units="1,6")
    assert summary["rule"] == api.rule == "deconvnet" and summary["rule_requested"] == "auto"
    assert sorted(api.arrays()) == sorted(arrays.files)
    for name, value in api.arrays().items():
        np.testing.assert_allclose(arrays[name], value, rtol=1e-6, atol=1e-8, err_msg=name)
    assert summary["strongest"] == api.summary()["strongest"]
