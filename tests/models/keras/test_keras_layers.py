"""Every converted layer kind against Keras on small hand-built models: TF "same" padding (odd sizes, stride 2,
even kernels), merges, activations, Flatten orders, channels_first, nested and shared layers, binary sigmoid
outputs, and the JSON + weights route."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from keras_helpers import converted_activation, converted_probabilities, nhwc_images, randomize
from torch import nn

import convlens
from convlens.models.keras.modules import SameAvgPool2d, SameConv2d, SameMaxPool2d

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _save_both(model, tmp_path, name="model"):
    paths = [tmp_path / f"{name}.keras", tmp_path / f"{name}.h5"]
    for path in paths:
        model.save(path)
    return paths


def _assert_equal_to_keras(model, tmp_path, images, layers: dict[str, str]):
    """``layers``: Keras layer name -> the converted module with its output (``NAME_ACT`` after a fused
    activation, since Keras's layer output is after the activation)."""
    expected = model.predict(images, verbose=0)
    inner_expected = keras_inner(model, {name: model.get_layer(name).output for name in layers}, images)
    for path in _save_both(model, tmp_path):
        classifier = convlens.load_model(f"keras:{path}", device="cpu")
        np.testing.assert_allclose(converted_probabilities(classifier, images), expected, rtol=0, atol=1e-4)
        for name, value in inner_expected.items():
            np.testing.assert_allclose(converted_activation(classifier, layers[name], images), value,
                                       rtol=1e-4, atol=1e-4)
    return classifier


def keras_inner(model, outputs: dict, images) -> dict:
    import keras

    if not outputs:
        return {}
    values = keras.Model(model.inputs, list(outputs.values())).predict(images, verbose=0)
    values = values if isinstance(values, list) else [values]
    return dict(zip(outputs, values, strict=True))


def test_layer_kinds_in_a_functional_graph(keras, tmp_path):
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((19, 21, 3))
    x = layers.Rescaling(0.5, offset=0.1)(inputs)
    x = layers.Normalization(mean=[0.1, 0.2, 0.3], variance=[0.5, 1.0, 2.0])(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="elu", name="same_s2")(x)  # 10 x 11, pad 0/1
    x = layers.BatchNormalization(center=False, name="bn_nocenter")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="selu", name="dw")(x)
    x = layers.SeparableConv2D(8, 3, padding="same", activation="hard_sigmoid", name="sep")(x)
    x = layers.BatchNormalization(scale=False, epsilon=1e-2)(x)
    shared = layers.Conv2D(8, 1, activation="gelu", name="shared")
    a = shared(layers.Conv2D(8, 2, padding="same", activation="tanh", name="even_kernel")(x))
    b = shared(layers.ReLU(max_value=6.0)(x))
    x = layers.Concatenate(name="concat")([a, b, layers.LeakyReLU(negative_slope=0.2)(x)])
    x = layers.Conv2D(8, 1)(x)
    y = layers.ReLU(negative_slope=0.1, threshold=0.5)(x)
    x = layers.Add()([x, y])
    x = layers.Multiply()([x, layers.ELU(alpha=0.5)(x)])
    x = layers.Average()([x, layers.Activation("swish")(x)])
    x = layers.Maximum()([x, layers.Activation("softplus")(x)])
    x = layers.Subtract()([x, layers.Activation("relu6")(x)])
    squeeze = layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = layers.Multiply(name="excite")([x, layers.Conv2D(8, 1, activation="sigmoid")(squeeze)])
    x = layers.ZeroPadding2D(((1, 0), (0, 2)))(x)
    pooled = layers.MaxPooling2D(3, strides=2, padding="same", name="max_same")(x)
    averaged = layers.AveragePooling2D(3, strides=2, padding="same", name="avg_same")(x)
    x = layers.Add(name="pools")([pooled, averaged])
    flat = layers.Flatten(name="flat")(x)  # feeds a Concatenate: flattened channels-last at run time
    x = layers.Concatenate()([flat, layers.GlobalMaxPooling2D()(x), layers.Reshape((-1,))(x)])
    x = layers.Dense(16, activation="relu")(x)
    x = layers.Reshape((2, 2, 4))(x)
    x = layers.Conv2D(4, 1, data_format="channels_last")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(5, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    randomize(model)
    images = nhwc_images((19, 21))
    layers = {"same_s2": "same_s2_elu", "dw": "dw_selu", "concat": "concat", "excite": "excite",
              "avg_same": "avg_same", "pools": "pools"}
    classifier = _assert_equal_to_keras(model, tmp_path, images, layers)
    module = classifier.module
    assert isinstance(module.same_s2, SameConv2d) and isinstance(module.same_s2_elu, nn.ELU)
    assert isinstance(module.even_kernel, SameConv2d)
    assert isinstance(module.max_same, SameMaxPool2d) and isinstance(module.avg_same, SameAvgPool2d)
    assert isinstance(module.re_lu, nn.ReLU6)
    assert not any(isinstance(m, nn.Softmax) for m in module.modules())  # split off: the module gives logits


def test_sequential_flatten_permutes_dense_weights_and_sigmoid_becomes_two_logits(keras, tmp_path):
    layers = keras.layers
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((12, 10, 3)),
        layers.Conv2D(6, 3, activation="relu", name="conv"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Flatten(name="flatten"),
        layers.Dropout(0.3),
        layers.Dense(1, activation="sigmoid", name="out"),
    ])
    randomize(model)
    images = nhwc_images((12, 10), count=4)
    probability = model.predict(images, verbose=0)[:, 0]
    for path in _save_both(model, tmp_path):
        classifier = convlens.load_model(f"keras:{path}", device="cpu")
        assert isinstance(classifier.module.flatten, nn.Flatten)  # no run-time transpose: weights permuted
        assert classifier.metadata["output_activation"] == "sigmoid" and len(classifier.class_names) == 2
        np.testing.assert_allclose(converted_probabilities(classifier, images)[:, 1], probability, atol=1e-5)


@pytest.mark.parametrize("flatten_format", ["channels_last", "channels_first"])
def test_channels_first_model(keras, tmp_path, flatten_format):
    layers = keras.layers
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((3, 15, 14)),
        layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", data_format="channels_first"),
        layers.BatchNormalization(axis=1),
        layers.MaxPooling2D(2, data_format="channels_first"),
        layers.Conv2D(4, 3, padding="same", data_format="channels_first", activation="relu"),
        layers.Flatten(data_format=flatten_format),  # channels_first: Keras flattens as H, W, C
        layers.Dense(3, activation="softmax"),
    ])
    randomize(model)
    images_nchw = nhwc_images((15, 14)).transpose(0, 3, 1, 2).copy()
    expected = model.predict(images_nchw, verbose=0)
    for path in _save_both(model, tmp_path):
        classifier = convlens.load_model(f"keras:{path}", device="cpu")
        assert classifier.input_size == (15, 14)
        with torch.inference_mode():
            probabilities = torch.softmax(classifier.module(torch.from_numpy(images_nchw)), 1).numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def _nested(keras):
    layers = keras.layers
    keras.utils.set_random_seed(3)
    base_in = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="base_conv")(base_in)
    x = layers.BatchNormalization(name="base_bn")(x)
    x = layers.Activation("relu", name="base_relu")(x)
    base = keras.Model(base_in, x, name="base")
    head = keras.Sequential([layers.Conv2D(4, 1, activation="relu", name="head_conv"),
                             layers.GlobalAveragePooling2D(name="head_pool")], name="head")
    inputs = keras.Input((16, 16, 3))
    outputs = layers.Dense(3, activation="softmax", name="predictions")(head(base(inputs)))
    model = keras.Model(inputs, outputs)
    randomize(model)
    return model


def test_nested_models_keep_their_layer_names(keras, tmp_path):
    model = _nested(keras)
    images = nhwc_images((16, 16))
    expected = model.predict(images, verbose=0)
    inner = model.get_layer("base").predict(images, verbose=0)
    for path in _save_both(model, tmp_path):
        classifier = convlens.load_model(f"keras:{path}", device="cpu")
        names = dict(classifier.module.named_modules())
        expected_names = {"base.base_conv", "base.base_bn", "base.base_relu", "head.head_conv", "head.head_conv_relu"}
        assert expected_names <= set(names)
        np.testing.assert_allclose(converted_probabilities(classifier, images), expected, atol=1e-4)
        np.testing.assert_allclose(converted_activation(classifier, "base.base_relu", images), inner, atol=1e-4)


def test_json_architecture_with_keras3_weights_file(keras, tmp_path):
    model = _nested(keras)
    (tmp_path / "arch.json").write_text(model.to_json())
    model.save_weights(tmp_path / "w.weights.h5")
    images = nhwc_images((16, 16))
    classifier = convlens.load_model(f"keras:{tmp_path / 'arch.json'}", weights=tmp_path / "w.weights.h5",
                                     device="cpu", classes="a,b,c", preprocess="tf")
    assert classifier.class_names == ["a", "b", "c"]
    assert classifier.preprocessing.mean == (0.5, 0.5, 0.5) and classifier.preprocessing.interpolation == "nearest"
    np.testing.assert_allclose(converted_probabilities(classifier, images), model.predict(images, verbose=0),
                               atol=1e-4)
