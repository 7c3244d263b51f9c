"""Keras 2 files (tf.keras 2.x): a functional config with Keras 2's inbound-node lists and ``batch_input_shape``,
weights in Keras 2's HDF5 layout (``layer_names``, ``weight_names`` like ``conv/kernel:0``), as a full-model
``.h5`` and as JSON + weights. Keras 3 cannot write these, so the test writes them from a Keras 3 model's
config and weights in Keras 2's layout, and compares with that Keras 3 model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from keras_helpers import converted_probabilities, nhwc_images, randomize

import convlens

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def keras2_config(model) -> dict:
    """The Keras 3 functional config rewritten the way Keras 2.3 writes ``model.to_json()``."""
    config = model.get_config()
    layers = []
    for layer in config["layers"]:
        inner = dict(layer["config"])
        if layer["class_name"] == "InputLayer":
            inner["batch_input_shape"] = inner.pop("batch_shape")
        inner.pop("dtype", None)
        nodes = []
        for node in layer["inbound_nodes"]:
            args = node["args"][0] if isinstance(node["args"][0], list) else node["args"]
            nodes.append([[t["config"]["keras_history"][0], t["config"]["keras_history"][1],
                           t["config"]["keras_history"][2], {}] for t in args])
        layers.append({"name": layer["name"], "class_name": layer["class_name"], "config": inner,
                       "inbound_nodes": nodes})
    body = {"name": config["name"], "layers": layers, "input_layers": config["input_layers"],
            "output_layers": config["output_layers"]}
    return {"class_name": "Model", "config": body, "keras_version": "2.3.1", "backend": "tensorflow"}


def write_keras2_weights(model, group) -> None:
    import numpy as np

    group.attrs["layer_names"] = np.array([layer.name.encode() for layer in model.layers])
    group.attrs["backend"], group.attrs["keras_version"] = b"tensorflow", b"2.3.1"
    for layer in model.layers:
        names = [f"{layer.name}/{w.name}:0".encode() for w in layer.weights]
        sub = group.create_group(layer.name)
        sub.attrs["weight_names"] = np.array(names) if names else np.zeros(0)
        for name, weight in zip(names, layer.weights, strict=True):
            sub.create_dataset(name.decode(), data=np.asarray(weight.numpy()))


@pytest.fixture(scope="module")
def functional(tmp_path_factory):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    layers = keras.layers
    keras.utils.set_random_seed(11)
    inputs = keras.Input((17, 17, 3), name="input_1")
    x = layers.ZeroPadding2D(1, name="pad")(inputs)
    x = layers.Conv2D(8, 3, strides=2, name="conv1")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name="bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    a = layers.Conv2D(8, 3, padding="same", activation="relu", name="branch_a")(x)
    b = layers.Conv2D(8, 1, name="branch_b")(x)
    x = layers.Add(name="add")([a, b])
    x = layers.Concatenate(name="concat")([x, layers.MaxPooling2D(3, 1, padding="same", name="pool")(x)])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(4, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="model_1")
    randomize(model)
    return model, tmp_path_factory.mktemp("keras2")


def test_keras2_full_h5_and_json_with_weights(functional):
    import h5py

    model, folder = functional
    config = keras2_config(model)
    full = folder / "model.h5"
    with h5py.File(full, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config).encode()
        h5.attrs["keras_version"], h5.attrs["backend"] = b"2.3.1", b"tensorflow"
        write_keras2_weights(model, h5.create_group("model_weights"))
    (folder / "arch.json").write_text(json.dumps(config))
    with h5py.File(folder / "weights.h5", "w") as h5:
        write_keras2_weights(model, h5)
    images = nhwc_images((17, 17))
    expected = model.predict(images, verbose=0)
    for spec, weights in ((f"keras:{full}", None), (f"keras:{folder / 'arch.json'}", folder / "weights.h5")):
        classifier = convlens.load_model(spec, weights=weights, device="cpu")
        assert classifier.metadata["keras_version"] == "2.3.1"
        np.testing.assert_allclose(converted_probabilities(classifier, images), expected, atol=1e-4)
