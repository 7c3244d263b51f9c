"""The leaf study's real Keras 2.3 model (JSON + HDF5 weights) against Keras 3 rebuilt layer by layer: same
pixels (Keras's load_img nearest resize), probabilities to 1e-4, the same top class on every leaf image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convlens
from convlens.data import list_images

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CLASSES = ["HR", "normal", "sick"]


def keras_leaf_model(keras, weights_path):
    """The architecture of ``baseline_CNN30.json`` written out in Keras 3, weights read with h5py."""
    import h5py

    layers = keras.layers
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2d_35"),
        layers.MaxPooling2D(2, name="max_pooling2d_35"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2d_36"),
        layers.MaxPooling2D(2, name="max_pooling2d_36"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2d_37"),
        layers.MaxPooling2D(2, name="max_pooling2d_37"),
        layers.Flatten(name="flatten_14"),
        layers.Dense(512, activation="relu", name="dense_27"),
        layers.Dense(3, activation="softmax", name="dense_28"),
    ])
    with h5py.File(weights_path, "r") as h5:
        for name in ("conv2d_35", "conv2d_36", "conv2d_37", "dense_27", "dense_28"):
            group = h5[name][name]
            model.get_layer(name).set_weights([np.asarray(group["kernel:0"]), np.asarray(group["bias:0"])])
    return model


@pytest.fixture(scope="module")
def leaf(shared_data):
    folder = shared_data / "leaf-keras"
    classifier = convlens.load_model(f"keras:{folder / 'baseline_CNN30.json'}",
                                     weights=folder / "baseline_CNN_weight30.h5", device="cpu",
                                     classes=shared_data / "leaf" / "train", preprocess="unit")
    return classifier, folder / "baseline_CNN_weight30.h5"


def test_leaf_model_equals_keras_on_every_leaf_image(keras, shared_data, leaf):
    classifier, weights = leaf
    assert classifier.class_names == CLASSES
    reference = keras_leaf_model(keras, weights)
    paths = [p for split in ("train", "validation") for c in CLASSES
             for p in list_images(shared_data / "leaf" / split / c)]
    assert len(paths) == 804
    pixels = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(32, 32))) for p in paths])
    inputs = classifier.prepare(paths)  # convlens's own loading and resizing
    np.testing.assert_allclose(inputs.permute(0, 2, 3, 1).numpy(), pixels / 255.0, atol=1e-6)
    expected = reference.predict(pixels / 255.0, batch_size=128, verbose=0)
    with torch.inference_mode():
        probabilities = torch.softmax(classifier.module(inputs), dim=1).numpy()
    assert np.abs(probabilities - expected).max() < 1e-4
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
