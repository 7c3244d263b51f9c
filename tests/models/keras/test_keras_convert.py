"""``convlens convert`` and the Keras options on the CLI: the checkpoint reloads with neither Keras nor h5py,
class names and preprocessing from --classes / --preprocess or a sidecar, layer names as in Keras."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from keras_helpers import randomize
from testkit import run_cli as run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")



@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    layers = keras.layers
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(6, 3, activation="relu", name="conv"),
                              layers.MaxPooling2D(2, name="pool"), layers.Flatten(name="flat"),
                              layers.Dense(3, activation="softmax", name="out")])
    randomize(model)
    folder = tmp_path_factory.mktemp("keras_convert")
    model.save(folder / "small.h5")
    from PIL import Image

    image = folder / "leafy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    return model, folder / "small.h5", image


def test_convert_then_load_without_keras(small_model, tmp_path, capsys):
    model, path, image = small_model
    out = tmp_path / "converted"
    code, _, err = run(["convert", f"keras:{path}", "--out", str(out), "--classes", "HR,normal,sick",
                        "--preprocess", "caffe"], capsys)
    assert code == 0, err
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"] == "keras" and meta["class_names"] == ["HR", "normal", "sick"]
    assert meta["preprocessing"]["channels"] == "BGR" and meta["preprocessing"]["interpolation"] == "nearest"
    assert json.loads((out / "summary.json").read_text())["reload_max_abs_difference"] == 0.0
    code = (
        "import sys, json\n"
        "for name in ('keras', 'h5py', 'onnx', 'onnx2torch', 'tensorflow'): sys.modules[name] = None\n"
        "import convlens, torch\n"
        f"m = convlens.load_model({str(out)!r}, device='cpu')\n"
        f"p = convlens.predict(m, [{str(image)!r}], top=3)[0]\n"
        "x = m.prepare([" + repr(str(image)) + "])\n"
        "print(json.dumps({'top': [q.name for q in p], 'probs': [q.probability for q in p], "
        "'input': x.permute(0, 2, 3, 1).tolist(), 'names': [n for n, _ in m.module.named_modules()]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    expected = model.predict(np.asarray(result["input"], dtype="float32"), verbose=0)[0]
    order = np.argsort(-expected)
    assert result["top"] == [["HR", "normal", "sick"][i] for i in order]
    np.testing.assert_allclose(result["probs"], expected[order], atol=1e-5)
    assert {"conv", "conv_relu", "pool", "flat", "out"} <= set(result["names"])


def test_keras_caffe_preprocessing_is_keras_own(small_model):
    """``caffe``: RGB->BGR and the ImageNet mean subtracted on 0..255, as keras.applications does."""
    import keras

    import convlens

    _, path, image = small_model
    classifier = convlens.load_model(f"keras:{path}", device="cpu", preprocess="caffe")
    pixels = keras.utils.img_to_array(keras.utils.load_img(image, target_size=(16, 16)))[None]
    expected = keras.applications.imagenet_utils.preprocess_input(pixels.copy(), mode="caffe")
    np.testing.assert_allclose(classifier.prepare([image]).permute(0, 2, 3, 1).numpy(), expected, atol=1e-4)
    for mode in ("tf", "torch"):
        classifier = convlens.load_model(f"keras:{path}", device="cpu", preprocess=mode)
        expected = keras.applications.imagenet_utils.preprocess_input(pixels.copy(), mode=mode)
        np.testing.assert_allclose(classifier.prepare([image]).permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


def test_sidecar_gives_classes_and_preprocessing(small_model, tmp_path, capsys):
    import shutil

    _, path, image = small_model
    copy = tmp_path / "mine.h5"
    shutil.copy(path, copy)
    (tmp_path / "mine.convlens.json").write_text(json.dumps({"class_names": ["x", "y", "z"], "preprocess": "tf"}))
    code, out, err = run(["predict", f"keras:{copy}", str(image), "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    assert {p["name"] for p in json.loads(out)[0]["predictions"]} == {"x", "y", "z"}
    code, out, err = run(["layers", f"keras:{copy}", "--classes", "a,b", "--json"], capsys)
    assert code == 2 and "2 class names given" in err


def test_predict_and_layers_on_the_leaf_model(shared_data, capsys):
    folder = shared_data / "leaf-keras"
    spec = [f"keras:{folder / 'baseline_CNN30.json'}", "--weights", str(folder / "baseline_CNN_weight30.h5")]
    code, out, err = run(["layers", *spec, "--json"], capsys)
    assert code == 0, err
    names = [row["name"] for row in json.loads(out)["layers"]]
    assert names[:3] == ["conv2d_35", "conv2d_35_relu", "max_pooling2d_35"] and names[-1] == "dense_28"
    image = shared_data / "leaf" / "validation" / "sick" / "0.jpg"
    code, out, err = run(["predict", *spec, str(image), "--classes", str(shared_data / "leaf" / "train"),
                          "--preprocess", "unit", "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["predictions"][0]["name"] == "sick"
