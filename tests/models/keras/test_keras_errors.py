"""Bad Keras inputs: each one line (exit 2, no traceback) naming what to fix, and nothing written."""

from __future__ import annotations

import json

import pytest

from convlens.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def convert_fails(args, tmp_path, capsys) -> str:
    out = tmp_path / "converted"
    with pytest.raises(SystemExit) as info:
        main(["convert", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".converted*"))  # nothing written, no leftovers
    return err


def _small(keras, kernel=3, extra=()):
    layers = keras.layers
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, kernel, name="conv"), *extra,
                             layers.Flatten(name="flat"), layers.Dense(2, activation="softmax", name="out")])


def test_corrupt_h5(tmp_path, capsys):
    bad = tmp_path / "model.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"not really" * 20)
    err = convert_fails([f"keras:{bad}"], tmp_path, capsys)
    assert "model.h5" in err and "not a readable HDF5 file" in err


def test_weights_only_h5_needs_its_architecture(keras, tmp_path, capsys):
    weights = tmp_path / "only.weights.h5"
    _small(keras).save_weights(weights)
    err = convert_fails([f"keras:{weights}"], tmp_path, capsys)
    assert "weights only" in err and "keras:ARCH.json --weights" in err


def test_keras2_weights_only_h5(shared_data, tmp_path, capsys):
    err = convert_fails([f"keras:{shared_data / 'leaf-keras' / 'baseline_CNN_weight30.h5'}"], tmp_path, capsys)
    assert "weights only" in err


def test_weights_that_do_not_fit_the_json_name_layer_and_both_shapes(keras, tmp_path, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(_small(keras, kernel=5).to_json())
    weights = tmp_path / "w.weights.h5"
    _small(keras, kernel=3).save_weights(weights)
    err = convert_fails([f"keras:{arch}", "--weights", str(weights)], tmp_path, capsys)
    assert "layer conv kernel has shape (3, 3, 3, 4) in the weights file" in err
    assert "the architecture needs (5, 5, 3, 4)" in err


def test_leaf_json_with_a_changed_layer(shared_data, tmp_path, capsys):
    config = json.loads((shared_data / "leaf-keras" / "baseline_CNN30.json").read_text())
    config["config"]["layers"][2]["config"]["filters"] = 48  # conv2d_36: 64 -> 48 filters
    arch = tmp_path / "leaf.json"
    arch.write_text(json.dumps(config))
    err = convert_fails([f"keras:{arch}", "--weights", str(shared_data / "leaf-keras" / "baseline_CNN_weight30.h5")],
                        tmp_path, capsys)
    assert "conv2d_36 kernel has shape (3, 3, 64, 64)" in err and "needs (3, 3, 64, 48)" in err


def test_unsupported_layer_names_layer_and_class(keras, tmp_path, capsys):
    path = tmp_path / "up.keras"
    _small(keras, extra=[keras.layers.UpSampling2D(name="upsample")]).save(path)
    err = convert_fails([f"keras:{path}"], tmp_path, capsys)
    assert "unsupported layer upsample (class UpSampling2D)" in err


def test_lambda_layer_is_refused(keras, tmp_path, capsys):
    path = tmp_path / "lambda.h5"
    _small(keras, extra=[keras.layers.Lambda(lambda x: x * 2.0, name="double")]).save(path)
    err = convert_fails([f"keras:{path}"], tmp_path, capsys)
    assert "double" in err and "Lambda" in err and "would run Python code stored in the model file" in err


def test_custom_layer_is_refused(keras, tmp_path, capsys):
    @keras.saving.register_keras_serializable(package="mine")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    path = tmp_path / "custom.keras"
    _small(keras, extra=[Scale(name="scale")]).save(path)
    err = convert_fails([f"keras:{path}"], tmp_path, capsys)
    assert "layer scale is a custom object (mine>Scale" in err and "would run code from the model file" in err


def test_custom_activation_function_is_refused(keras, tmp_path, capsys):
    @keras.saving.register_keras_serializable(package="mine")
    def cube(x):
        return x * x * x

    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, activation=cube, name="conv"),
                              layers.Flatten(), layers.Dense(2)])
    path = tmp_path / "act.keras"
    model.save(path)
    err = convert_fails([f"keras:{path}"], tmp_path, capsys)
    assert "layer conv" in err and "custom activation" in err and "would run code" in err


def test_missing_extra_names_it(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # as if convlens[import] were not installed
    path = tmp_path / "model.h5"
    path.write_bytes(b"x")
    err = convert_fails([f"keras:{path}"], tmp_path, capsys)
    assert "convlens[import]" in err


def test_config_the_converter_cannot_read(tmp_path, capsys):
    arch = tmp_path / "odd.json"
    arch.write_text(json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Conv2D", "config": {"name": "c", "batch_input_shape": [None, 8, 8, 3], "nb_filter": 4}}]}}))
    weights = tmp_path / "w.h5"
    import h5py

    with h5py.File(weights, "w") as h5:
        h5.attrs["layer_names"] = [b"c"]
        h5.create_group("c").attrs["weight_names"] = [b"c/kernel:0"]
        h5["c"].create_dataset("c/kernel:0", data=[[[[0.0] * 4] * 3] * 3] * 3)
    err = convert_fails([f"keras:{arch}", "--weights", str(weights)], tmp_path, capsys)
    assert "layer c (Conv2D)" in err and "not one the Keras converter reads" in err
