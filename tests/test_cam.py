"""CAM methods against pytorch-grad-cam and torchcam, on real photos, through the CLI, and model hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from convlens.cam import (
    CAM,
    METHODS,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    cam_method,
    min_max_per_image,
)
from convlens.cam.methods import distinct_maps
from convlens.errors import ConvlensError

pg = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

PEERS = {
    GradCAM: pg.GradCAM,
    GradCAMPlusPlus: pg.GradCAMPlusPlus,
    XGradCAM: pg.XGradCAM,
    LayerCAM: pg.LayerCAM,
    ScoreCAM: pg.ScoreCAM,
    EigenCAM: pg.EigenCAM,
    AblationCAM: pg.AblationCAM,
}
# One forward pass per channel: on a layer with 128 channels and smaller inputs (vgg16: one image), to stay fast.
EXPENSIVE = {ScoreCAM: {"resnet": ("layer2", 2, 64), "vgg": ("features.8", 1, 48)},
             AblationCAM: {"resnet": ("layer2", 2, 64), "vgg": ("features.8", 1, 48)}}


@pytest.fixture(scope="module")
def resnet():
    """Random-init resnet18 (seed 0), 112 px: layer3 is 7x7 x 256, layer2 14x14 x 128 (post-ReLU blocks)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    inputs = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    return model, "layer3", inputs, [3, 7]


@pytest.fixture(scope="module")
def vgg():
    """Random-init vgg16 (seed 0), 64 px: features.15 is the ReLU(inplace) after conv3_3 (16x16 x 256),
    features.8 the one after conv2_2 (32x32 x 128)."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(num_classes=10).eval()
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return model, "features.15", inputs, [1, 8]


def peer_raw(peer_class, model, layer, inputs, targets, layer_size):
    """pytorch-grad-cam's map, scaled to 0..1 at the layer's resolution (its resize made the identity)."""
    peer = peer_class(model, [model.get_submodule(layer)])
    peer.get_target_width_height = lambda _inputs: (layer_size[1], layer_size[0])
    with peer:
        return peer(inputs, [ClassifierOutputTarget(t) for t in targets])


@pytest.mark.parametrize("model_name", ["resnet", "vgg"])
@pytest.mark.parametrize("method", list(PEERS), ids=lambda m: m.name)
def test_cam_raw_matches_pytorch_grad_cam(model_name, method, request):
    model, layer, inputs, targets = request.getfixturevalue(model_name)
    if method in EXPENSIVE:
        layer, count, size = EXPENSIVE[method][model_name]
        inputs, targets = inputs[:count, :, :size, :size].contiguous(), targets[:count]
    # batch_size 48 does not divide the 128 channels: Score/Ablation batches straddle two images.
    result = method(model, layer, batch_size=48)(inputs, targets)
    raw = result.cam_raw
    assert raw.shape[0] == len(inputs) and raw.min() >= 0
    expected = peer_raw(PEERS[method], model, layer, inputs, targets, raw.shape[-2:])
    np.testing.assert_allclose(min_max_per_image(raw).numpy(), expected, atol=1e-4)
    assert result.targets == tuple(targets)


def test_cam_matches_torchcam(resnet):
    torchcam = pytest.importorskip("torchcam.methods")
    model, _, inputs, targets = resnet
    extractor = CAM(model, input_size=(112, 112))
    assert (extractor.layers, extractor.classifier_name) == (["layer4"], "fc")
    result = extractor(inputs, targets)
    with torchcam.CAM(model, "layer4", "fc") as peer, torch.inference_mode():
        model(inputs)
        expected = peer(targets)[0]
    assert result.cam_raw.min() < 0  # CAM has no ReLU (Zhou et al., torchcam)
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected.numpy(), atol=1e-4)
    # The raw CAM is the classifier rows applied to the pooled layer: check one pixel by hand.
    with torch.inference_mode():
        features = nn.Sequential(*list(model.children())[:-2])(inputs)
        by_hand = (model.fc.weight[targets[0]] * features[0, :, 2, 1]).sum()
    assert torch.isclose(result.cam_raw[0, 2, 1], by_hand, atol=1e-4)


def test_cam_finds_the_pooled_layer_and_explains_misfits(resnet):
    model, *_ = resnet
    assert CAM(model, "layer4.1", input_size=(112, 112)).layers == ["layer4.1"]
    with pytest.raises(ConvlensError, match="global average pooling reads.*layer4"):
        CAM(model, "layer3", input_size=(112, 112))
    with pytest.raises(ConvlensError, match="not the average of any layer"):
        CAM(torchvision.models.vgg11(num_classes=4), input_size=(64, 64))
    with pytest.raises(ConvlensError, match="1x1 at 32x32 input"):
        CAM(model, input_size=(32, 32))
    from convlens.models import BaselineCNN

    with pytest.raises(ConvlensError, match="not the average of any layer"):
        CAM(BaselineCNN(3, 32), input_size=(32, 32))
    with pytest.raises(ConvlensError, match="class logits"):
        CAM(model, input_size=(112, 112))(torch.zeros(1, 3, 112, 112), lambda out: out[:, 0].exp())


def test_final_maps_match_pytorch_grad_cam_at_input_size(resnet):
    """``maps`` (upsampled, 0..1) against pytorch-grad-cam's own output, also fusing two layers."""
    model, layer, inputs, targets = resnet
    for layers in ([layer], ["layer2", "layer3"]):
        result = GradCAM(model, layers)(inputs, targets)
        peer = pg.GradCAM(model, [model.get_submodule(name) for name in layers])
        with peer:
            expected = peer(inputs, [ClassifierOutputTarget(t) for t in targets])
        assert result.maps.shape == (2, 112, 112)
        np.testing.assert_allclose(result.maps.numpy(), expected, atol=1e-4)
    assert len(result.raw) == 2 and result.raw[0].shape[-1] == 14
    with pytest.raises(ConvlensError, match="use .raw"):
        _ = result.cam_raw


def test_eigencam_sign_follows_the_activations(resnet):
    """The principal component's sign is arbitrary: ours correlates positively with the channel-summed
    activations; the projection itself is pytorch-grad-cam's."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model, layer, inputs, _ = resnet
    activations = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: activations.setdefault("a", o))
    with torch.inference_mode():
        model(inputs)
    handle.remove()
    acts = activations["a"].numpy()
    projection = get_2d_projection(acts)
    total = acts.sum(1)
    signs = np.sign(((projection - projection.mean((1, 2), keepdims=True)) * total).sum((1, 2)))
    expected = min_max_per_image(torch.from_numpy(np.maximum(signs[:, None, None] * projection, 0))).numpy()
    result = EigenCAM(model, layer)(inputs)
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)


def test_scorecam_shares_one_pass_between_equal_masks():
    activations = torch.zeros(6, 3, 3)
    activations[1, 0, 0] = 2.0  # one-hot at (0, 0) ...
    activations[2, 0, 0] = 5.0  # ... the same mask once scaled
    activations[3] = torch.arange(9.0).view(3, 3)
    activations[4] = 3 * torch.arange(9.0).view(3, 3) + 1  # affine copy of channel 3
    activations[5] = 7.0  # constant: the zero mask, like channel 0
    groups, first = distinct_maps(activations)
    assert first.tolist() == [0, 1, 3]
    assert groups.tolist() == [0, 1, 1, 2, 2, 0]


def test_scorecam_with_all_zero_channels_matches_peer():
    """A ReLU layer with dead channels (as trained models have): shared passes give the peer's numbers."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()
    with torch.no_grad():
        model[2].bias[:12] = -100.0  # half the channels of layer 3 are dead
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    rows = []
    counter = model[0].register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        result = ScoreCAM(model, "3", batch_size=5)(inputs, [1, 4])
    finally:
        counter.remove()
    # the first pass (2 images), then per image one zero mask for the 12 dead channels + 12 live ones
    assert sum(rows) == 2 + 2 * (1 + 12)
    expected = peer_raw(pg.ScoreCAM, model, "3", inputs, [1, 4], (8, 8))
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)


# --- model hygiene ----------------------------------------------------------------------------------------------
class Branchy(nn.Module):
    """In-place ops right after the hooked layer (functional ``relu_``, ``ReLU(inplace=True)``), batch norm,
    and global average pooling + linear (so CAM applies)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace))
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.conv(self.stem(x))
        x = x.relu_() if self.inplace else x.relu()
        x = self.act(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def assert_same(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for old, new in zip(before["grad_values"], after["grad_values"], strict=True):
        assert (old is None and new is None) or torch.equal(old, new)
    assert before["hooks"] == after["hooks"]


@pytest.fixture
def branchy():
    torch.manual_seed(5)
    model = Branchy()
    model.train()  # the methods must run in eval mode and restore this
    model.stem[0].weight.requires_grad_(False)
    model.head.weight.grad = torch.full_like(model.head.weight, 0.5)
    model.stem.register_forward_hook(lambda m, i, o: None)
    return model


@pytest.mark.parametrize("method", list(METHODS.values()), ids=lambda m: m.name)
def test_model_is_exactly_as_before_also_after_an_error(method, branchy):
    inputs = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    before = snapshot(branchy)
    layer = "conv" if method is not CAM else None
    result = method(branchy, layer, batch_size=5, input_size=(12, 12))(inputs, [0, 1, 2])
    assert torch.isfinite(result.maps).all()
    assert_same(before, branchy)

    def boom(output):
        raise RuntimeError("target failed")

    with pytest.raises((RuntimeError, ConvlensError)):
        method(branchy, layer, input_size=(12, 12))(inputs, boom)
    assert_same(before, branchy)


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM], ids=lambda m: m.name)
def test_model_restored_when_a_masked_pass_fails(method, branchy):
    """The target works on the first pass and fails during the per-channel passes (hooks are in place then)."""
    inputs = torch.randn(1, 3, 12, 12)
    calls = []

    def flaky(output):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("failed mid-way")
        return output[:, 0]

    before = snapshot(branchy)
    with pytest.raises(RuntimeError, match="mid-way"):
        method(branchy, "conv", batch_size=4)(inputs, flaky)
    assert_same(before, branchy)


def test_inplace_relu_does_not_change_gradients(branchy):
    """Grad-CAM on the model with in-place ReLUs equals Grad-CAM computed by hand on its out-of-place twin."""
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    twin = Branchy(inplace=False)
    twin.load_state_dict(branchy.state_dict())
    twin.eval()
    for layer in ("conv", "conv2"):
        result = GradCAM(branchy, layer)(inputs, [2, 3])
        features = twin.conv(twin.stem(inputs))
        if layer == "conv2":
            features = twin.conv2(features.relu())
        features = features.detach().requires_grad_()
        rest = twin.act(twin.conv2(features.relu())) if layer == "conv" else twin.act(features)
        logits = twin.head(rest.mean(dim=(2, 3)))
        (gradients,) = torch.autograd.grad(logits[0, 2] + logits[1, 3], features)
        by_hand = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * features).sum(1)).detach()
        torch.testing.assert_close(result.cam_raw, by_hand, atol=1e-5, rtol=1e-4)
    assert branchy.head.weight.grad.eq(0.5).all()  # .grad untouched


# --- targets --------------------------------------------------------------------------------------------------
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
    saved = np.load(first.save(tmp_path / "xgradcam"))
    assert set(saved.files) == {"cam", "cam_raw", "target", "predicted", "score"}
    np.testing.assert_array_equal(saved["cam_raw"], first.cam_raw.numpy())
    assert saved["target"].tolist() == targets
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


# --- CLI ------------------------------------------------------------------------------------------------------
def write_checkpoint(folder: Path, classes: list[str]) -> Path:
    """A convlens checkpoint of a resnet18 with a 3-class head at 64 px (random weights, seed 0)."""
    from convlens.models import Preprocessing, save_checkpoint
    from convlens.models.zoo import replace_head

    torch.manual_seed(0)
    module = replace_head(torchvision.models.resnet18(), len(classes))
    preprocessing = Preprocessing(crop=(64, 64), resize=None, squash=True)
    save_checkpoint(folder / "best", module, {"architecture": "torchvision:resnet18", "class_names": classes,
                                              "preprocessing": preprocessing.to_dict()})
    return folder


def labelled_folder(root: Path, classes: list[str], per_class: int) -> Path:
    from conftest import make_image

    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            make_image(root / name / f"{k}.png", size=(40, 36), seed=10 * index + k)
    return root


def run_cli(*args: str) -> None:
    from typer.testing import CliRunner

    from convlens.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


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
    import convlens

    model = convlens.load_model(run_dir, device="cpu")
    expected = CAM(model)(torch.from_numpy(arrays["input"]))
    np.testing.assert_allclose(arrays["cam_raw"], expected.cam_raw.numpy(), atol=1e-5)
    assert arrays["predicted"].tolist() == list(expected.predicted)
    assert arrays["target"].tolist() == list(expected.predicted)


def test_cli_several_methods_on_image_files(tmp_path, sample_photos):
    from conftest import make_image

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


def test_cli_errors_are_one_line(tmp_path, capsys):
    from convlens.cli import main

    image = tmp_path / "x.png"
    from conftest import make_image

    make_image(image)
    for args, message in [(["--method", "nope"], "unknown CAM method 'nope'"),
                          (["--method", "cam"], "CAM needs global average pooling")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["cam", "baseline", str(image), *args, "--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
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
