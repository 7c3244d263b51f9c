"""Issue 14's CAM defects, each with a case that failed before, and the behaviours that were already right
(the layer's own output on DenseNet, Ablation-CAM ablating to 0), each checked against a computation by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from cam_helpers import peer_raw
from torch import nn

from convlens.cam import CAM, AblationCAM, CAMWarning, EigenCAM, GradCAM, ScoreCAM, min_max_per_image
from convlens.cam.methods import distinct_maps
from convlens.errors import ConvlensError

pg = pytest.importorskip("pytorch_grad_cam")


# --- 1. Score-CAM groups channels by the mask it applies -----------------------------------------------------
class EpsPair(nn.Module):
    """At ``features``: a channel with span 2^-30 (~1e-9), the same map with span 1, and a third channel.
    Scaled to [0, 1] the first two are equal, but the mask's ``+ 1e-8`` makes the first mask ~0.085 times the
    second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3, padding=1, stride=2)
        self.features = nn.Identity()
        self.head = nn.Linear(3, 4)
        with torch.no_grad():
            self.head.weight.mul_(10)

    def forward(self, x):
        a = self.conv(x)
        shape = a[:, :1]
        low, high = shape.amin((2, 3), keepdim=True), shape.amax((2, 3), keepdim=True)
        shape = (shape - low) / (high - low)
        features = self.features(torch.cat([shape * 2.0 ** -30, shape, a[:, 1:].relu()], 1))
        return self.head(features.mean((2, 3)))


def test_scorecam_does_not_share_a_pass_where_the_eps_changes_the_mask():
    model = EpsPair().eval()
    inputs = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        features = model.conv(inputs)
    tiny = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(2))
    pair = torch.cat([tiny * 2.0 ** -30, tiny, tiny * 4])  # spans ~1e-9, ~1 and ~4
    groups, first = distinct_maps(pair, (16, 16))
    assert groups.tolist() == [0, 1, 1] and first.tolist() == [0, 1]  # large spans still share
    result = ScoreCAM(model, "features")(inputs, [0])
    expected = peer_raw(pg.ScoreCAM, model, "features", inputs, [0], tuple(features.shape[-2:]))
    # before: both channels got the 1e-9 channel's score, and the map was off by 0.2
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)


# --- 2. Ablation-CAM says when y = 0 makes its weights 0/0 ---------------------------------------------------
class ReluLogits(nn.Module):
    """squeezenet1_1's head: a 1x1 conv to the classes, ReLU, average pool; class 3 can never be positive."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            self.classifier[0].bias.copy_(torch.tensor([5.0, 5.0, 5.0, -100.0]))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_ablationcam_zero_score_is_a_warning_and_nan_not_silent_zeros():
    model = ReluLogits().eval()
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(10))
    with pytest.warns(CAMWarning, match=r"score of class 3 on image 1 is exactly 0.*NaN.*gradcam"):
        result = AblationCAM(model, "features.1", batch_size=5)(inputs, [0, 3])
    assert result.scores[1] == 0 and result.scores[0] > 0
    assert torch.isnan(result.cam_raw[1]).all() and torch.isnan(result.maps[1]).all()
    assert torch.isfinite(result.maps[0]).all() and len(result.notes) == 1
    assert result.summary()["notes"] == list(result.notes)
    # the defined image is still the peer's; pytorch-grad-cam gives NaN for the other (numpy's 0/0 warning)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = peer_raw(pg.AblationCAM, model, "features.1", inputs, [0, 3], (8, 8))
    np.testing.assert_allclose(min_max_per_image(result.cam_raw[:1]).numpy(), expected[:1], atol=1e-4)
    assert np.isnan(expected[1]).all()
    assert set(result.figures()) == {"cam-0", "cam-1"}  # an undefined map draws as "undefined", no crash


# --- 3. CAM on ConvNeXt names the LayerNorm ------------------------------------------------------------------
def test_cam_on_convnext_names_the_layernorm_between_pooling_and_linear():
    model = torchvision.models.convnext_tiny(num_classes=5).eval()
    for size in (64, 96):  # the reason does not depend on the input size
        with pytest.raises(ConvlensError, match=r"classifier\.0 \(LayerNorm2d\) sits between.*use gradcam"):
            CAM(model, input_size=(size, size))


# --- 9. Eigen-CAM's orientation on layers without a ReLU -----------------------------------------------------
CUP_BOX = (30, 0, 190, 120)  # the cup in the 224 x 224 crop of skimage's coffee; the saucer starts below


@pytest.mark.parametrize("layer", ["conv_head", "blocks.6", "bn2"])
def test_eigencam_lands_on_the_cup_at_layers_with_and_without_relu(default_model, sample_photos, layer):
    maps = EigenCAM(default_model, layer)(sample_photos[:1]).maps[0]
    x0, y0, x1, y1 = CUP_BOX
    cup, saucer = maps[y0:y1, x0:x1].mean(), maps[y1:, :].mean()
    assert cup > 0.3 and cup > 4 * saucer  # before: conv_head and blocks.6 gave cup 0.02, saucer 0.7


# --- already right: keep it so ---------------------------------------------------------------------------------
def test_densenet_layer_is_explained_by_its_own_output():
    """DenseNet's forward applies ``F.relu(features, inplace=True)`` after ``features``: convlens explains the
    layer's own (pre-ReLU) output with its own gradient; pytorch-grad-cam pairs the post-ReLU activations
    (its stored tensor shares memory with the in-place ReLU) with the pre-ReLU gradients."""
    torch.manual_seed(11)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                        num_classes=5).eval()
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    result = GradCAM(model, "features")(inputs, [1, 4])
    features = model.features(inputs).detach().requires_grad_()
    logits = model.classifier(torch.relu(features).mean((2, 3)))
    (gradients,) = torch.autograd.grad(logits[0, 1] + logits[1, 4], features)
    weights = gradients.mean((2, 3), keepdim=True)
    own = torch.relu((weights * features).sum(1)).detach()
    torch.testing.assert_close(result.cam_raw, own, atol=1e-5, rtol=1e-4)
    mixed = torch.relu((weights * torch.relu(features)).sum(1)).detach()
    peer = peer_raw(pg.GradCAM, model, "features", inputs, [1, 4], tuple(own.shape[-2:]))
    np.testing.assert_allclose(peer, min_max_per_image(mixed).numpy(), atol=1e-4)
    assert np.abs(peer - min_max_per_image(own).numpy()).max() > 0.05


def test_ablationcam_ablates_to_zero_on_layers_with_negative_values():
    """As in the paper: a channel set to 0, also after batch norm (pytorch-grad-cam uses min - 1e7 there)."""
    torch.manual_seed(13)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[1].running_var.fill_(0.5)
        model[1].bias.copy_(torch.linspace(-0.5, 0.5, 6))
    inputs = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(14))
    result = AblationCAM(model, "1")(inputs, [2])
    with torch.inference_mode():
        activations = model[1](model[0](inputs))
        assert activations.min() < 0

        def score(a):
            return model[5](model[4](model[3](model[2](a))))[0, 2]

        original = score(activations)
        weights = []
        for channel in range(6):
            ablated = activations.clone()
            ablated[:, channel] = 0
            weights.append((original - score(ablated)) / original)
        by_hand = torch.relu((torch.stack(weights)[:, None, None] * activations[0]).sum(0))
    torch.testing.assert_close(result.cam_raw[0], by_hand, atol=1e-5, rtol=1e-4)


def test_cli_prints_the_zero_score_warning_on_one_line(tmp_path):
    from testkit import make_image
    from typer.testing import CliRunner

    from convlens.cli import app
    from convlens.models import Preprocessing, save_checkpoint
    from convlens.models.zoo import replace_head

    torch.manual_seed(0)
    module = replace_head(torchvision.models.resnet18(), 3)
    with torch.no_grad():
        module.fc.weight[2] = 0
        module.fc.bias[2] = 0  # class "c" always scores exactly 0
    preprocessing = Preprocessing(crop=(64, 64), resize=None, squash=True)
    save_checkpoint(tmp_path / "run" / "best", module, {"architecture": "torchvision:resnet18",
                                                        "class_names": ["a", "b", "c"],
                                                        "preprocessing": preprocessing.to_dict()})
    image = make_image(tmp_path / "x.png", size=(64, 64))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["cam", str(tmp_path / "run"), str(image), "--method", "ablationcam",
                                      "--layer", "layer1", "--target", "c", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "score of class 2 on image 0 is exactly 0" in lines[0]
    assert json.loads((out / "summary.json").read_text())["notes"][0].startswith("Ablation-CAM: the score")
    assert np.isnan(np.load(out / "arrays.npz")["cam"]).all()
