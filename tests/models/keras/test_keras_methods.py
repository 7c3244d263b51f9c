"""Every method of convlens on a converted Keras model, with the model's state restored afterwards as for a
native one (weights, training flags, requires_grad, .grad, hooks). Written against today's module APIs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens.cam import METHODS, explain

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIZE = 24


@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory):
    """A small Keras CNN (fused ReLUs, BatchNorm, max pooling, global pooling + Dense head) as .keras, its
    converted classifier, and the Keras model itself."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from keras_helpers import randomize

    layers = keras.layers
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.Conv2D(8, 5, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(12, 3, padding="same", name="conv2"),
        layers.BatchNormalization(name="bn2"),
        layers.Activation("relu", name="relu2"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(3, activation="softmax", name="predictions"),
    ])
    randomize(model)
    folder = tmp_path_factory.mktemp("keras_methods")
    model.save(folder / "cnn.keras")
    classifier = convlens.load_model(f"keras:{folder / 'cnn.keras'}", device="cpu", classes="a,b,c")
    images = []
    for index in range(4):
        path = folder / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        pixels = np.random.default_rng(index).integers(0, 256, (30 + index, 28, 3), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(pixels).save(path)
        images.append(path)
    return classifier, model, images


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def assert_restored(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before["grad"], after["grad"],
                                                                              strict=True))
    assert before["hooks"] == after["hooks"]


@pytest.fixture
def state(keras_cnn):
    classifier = keras_cnn[0]
    classifier.module.train()  # methods must work in eval mode and give this back
    classifier.module.conv1.weight.requires_grad_(False)
    before = snapshot(classifier.module)
    yield classifier
    assert_restored(before, classifier.module)
    classifier.module.conv1.weight.requires_grad_(True)
    classifier.module.eval()


def test_filters_are_the_keras_kernels(keras_cnn, state, tmp_path):
    from convlens.filters import filters, kernels

    kernel = keras_cnn[1].get_layer("conv1").get_weights()[0]  # kh, kw, in, out
    np.testing.assert_array_equal(kernels(state, "conv1").numpy(), kernel.transpose(3, 2, 0, 1))
    filters(state, ["conv1", "conv2"]).save(tmp_path / "filters")
    assert (tmp_path / "filters" / "summary.json").exists()


def test_feature_maps(keras_cnn, state):
    from convlens.featuremaps import feature_maps

    classifier, model, images = keras_cnn
    result = feature_maps(state, images[0], ["relu2"])
    inputs = classifier.prepare(images[:1]).permute(0, 2, 3, 1).numpy()
    import keras

    expected = keras.Model(model.inputs, model.get_layer("relu2").output).predict(inputs, verbose=0)
    np.testing.assert_allclose(result.activations["relu2"].permute(0, 2, 3, 1).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_deconv_projection(keras_cnn, state, rule):
    from convlens.zeiler import deconv_projection

    projection = deconv_projection(state, state.prepare(keras_cnn[2][:1]), "relu2", unit=0, rule=rule)
    assert projection.shape == (3, SIZE, SIZE) and torch.isfinite(projection).all() and projection.abs().sum() > 0


def test_top_activations(keras_cnn, state):
    from convlens.zeiler import top_activations

    found = top_activations(state, keras_cnn[2], "conv1_relu", units=[0, 1], k=2)
    assert found.values.shape[:2] == (2, 2) and (found.values[:, 0] >= found.values[:, 1]).all()
    assert np.isfinite(found.values).all()


def test_occlusion(keras_cnn, state):
    from convlens.occlusion import occlusion

    classifier, model, images = keras_cnn
    result = occlusion(state, images[0], window=8, stride=4)
    pixels = result.input.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(result.clean_probabilities.numpy(), model.predict(pixels, verbose=0)[0], atol=1e-5)


def test_invariance(keras_cnn, state):
    from convlens.invariance import invariance

    result = invariance(state, keras_cnn[2][:2], transforms=["rotate"], amounts={"rotate": [0.0, 90.0]},
                        layers=("conv1_relu", "relu2"))
    assert set(result.curves) == {"rotate"} and result.inputs.shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_cam_method(keras_cnn, state, method):
    result = explain(state, keras_cnn[2][:2], method, layer="relu2", targets="predicted")
    assert result.maps.shape == (2, SIZE, SIZE) and torch.isfinite(result.maps).all()
