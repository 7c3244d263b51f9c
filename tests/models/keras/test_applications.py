"""keras.applications architectures (seeded random weights), saved by Keras 3 as .keras and .h5, converted
without Keras: probabilities and an inner layer's output equal Keras's own ``predict`` on the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
from keras_helpers import converted_activation, converted_probabilities, nhwc_images, randomize

import convlens

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
slow = pytest.mark.slow
# name, input side (the smallest Keras accepts, or one that gives a Flatten more than 1x1), a layer to compare
ARCHITECTURES = [
    pytest.param("VGG16", 64, "block3_pool", id="VGG16"),
    pytest.param("VGG19", 32, "block4_pool", id="VGG19"),
    pytest.param("ResNet50", 32, "conv3_block4_out", id="ResNet50"),
    pytest.param("ResNet50V2", 32, "conv4_block1_out", id="ResNet50V2", marks=slow),
    pytest.param("InceptionV3", 75, "mixed2", id="InceptionV3", marks=slow),
    pytest.param("MobileNet", 32, "conv_pw_5_relu", id="MobileNet"),
    pytest.param("MobileNetV2", 32, "block_6_expand_relu", id="MobileNetV2"),
    pytest.param("DenseNet121", 32, "pool3_pool", id="DenseNet121", marks=slow),
    pytest.param("Xception", 71, "block4_pool", id="Xception", marks=slow),
    pytest.param("EfficientNetB0", 32, "block3a_project_bn", id="EfficientNetB0", marks=slow),
]


@pytest.mark.parametrize(("name", "size", "layer"), ARCHITECTURES)
def test_application_equals_keras(keras, tmp_path, name, size, layer):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
    randomize(model)
    images = nhwc_images((size, size))
    expected = model.predict(images, verbose=0)
    expected_inner = keras.Model(model.inputs, model.get_layer(layer).output).predict(images, verbose=0)
    assert expected.max(axis=1).min() < 0.99, "probabilities saturated: the comparison would be weak"
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"{name}{suffix}"
        model.save(path)
        classifier = convlens.load_model(f"keras:{path}", device="cpu")
        assert classifier.input_size == (size, size)
        assert classifier.metadata["output_activation"] == "softmax"
        np.testing.assert_allclose(converted_probabilities(classifier, images), expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(converted_activation(classifier, layer, images), expected_inner,
                                   rtol=1e-4, atol=1e-4)
