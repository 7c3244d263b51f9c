"""The command line: real predictions, one-line errors, atomic output folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from testkit import run_cli as run

from convlens.cli import main


def test_predict_json_ranks_espresso_first(sample_photos, capsys, tmp_path):
    coffee = [p for p in sample_photos if p.stem == "coffee"][0]
    code, out, err = run(["predict", "efficientnet_lite0", str(coffee), "--json", "--device", "cpu",
                          "--out", str(tmp_path / "pred")], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["predictions"][0]["name"] == "espresso" and len(rows[0]["predictions"]) == 3
    arrays = np.load(tmp_path / "pred" / "arrays.npz")
    assert arrays["input"].shape == (1, 3, 224, 224)
    assert np.isclose(arrays["probabilities"][0].max(), rows[0]["predictions"][0]["probability"], atol=1e-6)


def test_predict_golden_retriever(shared_data, capsys):
    code, out, _ = run(["predict", "efficientnet_lite0", str(shared_data / "photos" / "golden_retriever.jpeg"),
                        "--device", "cpu"], capsys)
    assert code == 0 and out.split(": ", 1)[1].startswith("golden retriever")


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    code, _, err = run(["predict", "efficientnet_lite0", str(bad)], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and str(bad) in err and "Traceback" not in err


def test_unknown_model_message(capsys):
    code, _, err = run(["layers", "torchvision:vgg61"], capsys)
    assert code == 2 and "nearest: " in err and "vgg16" in err


def test_debug_shows_the_traceback(tmp_path):
    from convlens.errors import ConvlensError

    with pytest.raises(ConvlensError):
        main(["--debug", "predict", "efficientnet_lite0", str(tmp_path / "missing.png")])


def test_layers_json(capsys):
    code, out, _ = run(["layers", "baseline:128:3", "--json"], capsys)
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)["layers"]}
    assert rows["conv1"]["output_shape"] == [64, 128, 128] and rows["fc2"]["output_shape"] == [3]
