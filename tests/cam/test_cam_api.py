"""Targets, errors, the result protocol, real photos, and the CLI (whose arrays are the API's)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cam_helpers import labelled_folder, make_resnet, run_cli, write_checkpoint
from torch import nn

import convlens
from convlens.cam import CAM, GradCAM, GradCAMPlusPlus, XGradCAM, cam_method
from convlens.errors import ConvlensError


@pytest.fixture(scope="module")
def resnet():
    return make_resnet()


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 2)

    def forward(self, x):
        pooled = self.features(x).mean(dim=(2, 3))
        return self.a(pooled), self.b(pooled)


def test_callable_targets_on_a_multi_output_model():
    torch.manual_seed(8)
    model = TwoHeads().eval()
    inputs = torch.randn(2, 3, 8, 8)
    result = GradCAM(model, "features.1")(inputs, lambda out: out[1][:, 1])
    assert result.targets == (None, None) and result.logits is None
    features = model.features(inputs).detach().requires_grad_()
    score = model.b(features.mean(dim=(2, 3)))[:, 1].sum()
    (gradients,) = torch.autograd.grad(score, features)
    by_hand = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * features).sum(1)).detach()
    torch.testing.assert_close(result.cam_raw, by_hand)
    with pytest.raises(ConvlensError, match="callables"):
        GradCAM(model, "features.1")(inputs, "predicted")


def test_targets_by_name_predicted_and_per_image(default_model, sample_photos):
    inputs = default_model.prepare(sample_photos[:2])
    with GradCAM(default_model) as cam:
        predicted = cam(inputs)
        by_name = cam(inputs, default_model.class_name(predicted.predicted[0]))
        per_image = cam(inputs, [predicted.predicted[0], "predicted"])
    assert predicted.targets == predicted.predicted
    assert by_name.targets == (predicted.predicted[0],) * 2
    torch.testing.assert_close(per_image.raw[0][0], predicted.raw[0][0])
    torch.testing.assert_close(per_image.raw[0][1], predicted.raw[0][1])
    with pytest.raises(ConvlensError, match="unknown class"):
        cam(inputs, "no such class")
    with pytest.raises(ConvlensError, match="3 targets given for 2 images"):
        cam(inputs, [1, 2, 3])


def test_errors_name_the_thing_to_fix(resnet):
    model, _, inputs, _ = resnet
    with pytest.raises(ConvlensError, match="unknown layer 'layer5'.*layer4"):
        GradCAM(model, "layer5")
    with pytest.raises(ConvlensError, match="not an N x C x H x W"):
        GradCAM(model, "fc")(inputs[:1])
    with pytest.raises(ConvlensError, match=r"unknown CAM method 'gradcam\+'"):
        cam_method("gradcam+")
    assert cam_method("GradCAM++") is GradCAMPlusPlus and cam_method("grad-cam-pp") is GradCAMPlusPlus
    with pytest.raises(ConvlensError, match="ImageClassifier"):
        GradCAM(model, "layer4")(["some.png"])


def test_result_saves_and_is_deterministic(resnet, tmp_path):
    model, layer, inputs, targets = resnet
    first = XGradCAM(model, layer)(inputs, targets)
    second = XGradCAM(model, layer, batch_size=1)(inputs, targets)  # chunking changes nothing
    torch.testing.assert_close(first.raw[0], second.raw[0], atol=1e-6, rtol=1e-5)
    folder = first.save(tmp_path / "xgradcam")  # the shared Result.save: arrays.npz, summary.json, PNGs
    saved = np.load(folder / "arrays.npz")
    assert set(saved.files) == {"input", "cam", "cam_raw", "target", "predicted", "score", "probability"}
    np.testing.assert_array_equal(saved["cam_raw"], first.cam_raw.numpy())
    np.testing.assert_array_equal(saved["input"], inputs.numpy())
    assert saved["target"].tolist() == targets
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["methods"] == [{"method": "xgradcam", "layers": [layer]}]
    assert summary["figures"] == ["cam-0.png", "cam-1.png"] and summary["compute_seconds"] > 0
    with pytest.raises(Exception, match="frozen|cannot assign"):
        first.method = "other"


# --- real weights, real photos ------------------------------------------------------------------------------
# Hand-checked boxes (x0, y0, x1, y1) in the 224 x 224 centre crop the default model sees.
DOG_BOX = (35, 0, 210, 224)  # the golden retriever puppy (head 40..165 x 0..90, body below)
DOG_HEAD_BOX = (40, 0, 170, 95)
CUP_BOX = (30, 0, 190, 120)  # the white cup and the espresso in it (the saucer starts below)


def peak(heatmap: torch.Tensor) -> tuple[int, int]:
    row, col = divmod(int(heatmap.argmax()), heatmap.shape[1])
    return col, row


def inside(point, box) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def test_gradcam_peak_on_the_object(default_model, shared_data, sample_photos):
    photos = [shared_data / "photos" / "golden_retriever.jpeg", sample_photos[0]]  # coffee
    result = GradCAM(default_model)(photos)
    names = [default_model.class_name(i) for i in result.predicted]
    assert names == ["golden retriever", "espresso"]
    dog, cup = result.maps
    assert inside(peak(dog), DOG_HEAD_BOX) and inside(peak(dog), DOG_BOX)
    assert inside(peak(cup), CUP_BOX)
    x0, y0, x1, y1 = CUP_BOX
    assert cup[y0:y1, x0:x1].mean() > 2 * cup[y1:, :].mean()  # the cup, not the saucer below it



def test_cli_folder_grid_with_true_and_predicted_labels(tmp_path):
    classes = ["HR", "normal", "sick"]
    run_dir = write_checkpoint(tmp_path / "run", classes)
    data = labelled_folder(tmp_path / "validation", classes, per_class=3)
    out = tmp_path / "out"
    run_cli("cam", str(run_dir), str(data), "--method", "cam", "--limit", "7", "--out", str(out))
    arrays = np.load(out / "arrays.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "grid.png").is_file() and summary["figures"] == ["grid.png"]
    assert arrays["input"].shape == (7, 3, 64, 64) and arrays["input"].dtype == np.float32
    assert arrays["cam"].shape == (7, 64, 64) and arrays["cam_raw"].shape == (7, 2, 2)
    assert arrays["cam"].min() >= 0 and arrays["cam"].max() == pytest.approx(1)
    # an even sample: 3 + 2 + 2 images, labels from the subfolders
    assert arrays["label"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert summary["methods"] == [{"method": "cam", "layers": ["layer4"]}]
    assert summary["parameters"]["images_found"] == 9 and summary["parameters"]["images_used"] == 7
    assert summary["images"][3]["label"]["name"] == "normal"
    # the numbers are the Python API's on the same inputs

    model = convlens.load_model(run_dir, device="cpu")
    expected = CAM(model)(torch.from_numpy(arrays["input"]))
    np.testing.assert_allclose(arrays["cam_raw"], expected.cam_raw.numpy(), atol=1e-5)
    assert arrays["predicted"].tolist() == list(expected.predicted)
    assert arrays["target"].tolist() == list(expected.predicted)


def test_cli_several_methods_on_image_files(tmp_path, sample_photos):
    from testkit import make_image

    run_dir = write_checkpoint(tmp_path / "run", ["a", "b", "c"])
    image = make_image(tmp_path / "noise.png")
    out = tmp_path / "out"
    run_cli("cam", str(run_dir), str(image), str(sample_photos[1]), "--method", "gradcam", "--method",
            "eigencam", "--layer", "layer3", "--target", "b", "--out", str(out))
    arrays = np.load(out / "arrays.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["figures"]) == ["cam-chelsea.png", "cam-noise.png"]
    assert {"cam.gradcam", "cam_raw.gradcam", "cam.eigencam", "cam_raw.eigencam"} <= set(arrays.files)
    assert arrays["cam_raw.gradcam"].shape == (2, 4, 4) and arrays["target"].tolist() == [1, 1]
    assert summary["targets"]["spec"] == "b" and summary["layer"] == ["layer3"]
    assert summary["compute_seconds"] > 0 and "label" not in arrays.files
    model = convlens.load_model(run_dir, device="cpu")
    api = convlens.cam(model, [image, sample_photos[1]], method=["gradcam", "eigencam"], layer="layer3",
                       target="b")
    assert set(api.arrays()) == set(arrays.files) and api.methods == ("gradcam", "eigencam")
    for name, value in api.arrays().items():
        np.testing.assert_allclose(arrays[name], value, atol=1e-5, err_msg=name)
    assert sorted(api.figures()) == ["cam-chelsea", "cam-noise"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from convlens.cli import main

    image = tmp_path / "x.png"
    from testkit import make_image

    make_image(image)
    for args, message in [(["--method", "nope"], "unknown CAM method 'nope'"),
                          (["--method", "cam"], "CAM needs global average pooling")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["cam", "baseline", str(image), *args, "--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        error = "\n".join(line for line in lines if "random weights" not in line)  # baseline: untrained, said so
        assert error.startswith("error: ") and message in error and "\n" not in error
    assert not (tmp_path / "o").exists()


def test_train_then_cam_workflow(tmp_path):
    """The EuroSAT CAM workflow end to end: ``convlens train`` a torchvision resnet on a labelled folder, then
    ``convlens cam RUN_DIR DATA/validation --method cam``."""
    classes = ["HR", "normal", "sick"]
    labelled_folder(tmp_path / "data" / "train", classes, per_class=4)
    labelled_folder(tmp_path / "data" / "validation", classes, per_class=2)
    run_dir = tmp_path / "run"
    run_cli("train", str(tmp_path / "data"), "--arch", "torchvision:resnet18", "--img-size", "64", "--epochs", "1",
            "--out", str(run_dir))
    out = tmp_path / "cam"
    run_cli("cam", str(run_dir), str(tmp_path / "data" / "validation"), "--method", "cam", "--out", str(out))
    arrays = np.load(out / "arrays.npz")
    assert arrays["label"].tolist() == [0, 0, 1, 1, 2, 2]
    assert arrays["cam"].shape[0] == 6 and (out / "grid.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"][0]["layers"] == ["layer4"]
    assert [image["label"]["name"] for image in summary["images"]] == ["HR", "HR", "normal", "normal", "sick", "sick"]

