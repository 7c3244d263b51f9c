"""Deconvnet / guided / gradient projections against Captum and against a hand-written Zeiler & Fergus deconvnet."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.models import BaselineCNN
from convlens.zeiler.deconv import (
    deconv_projection,
    project_activations,
    strongest_position,
    strongest_units,
    unit_activations,
)
from convlens.zeiler.figures import projection_image

CAPTUM = {"deconvnet": "NeuronDeconvolution", "guided": "NeuronGuidedBackprop", "gradient": "NeuronGradient"}


def captum_neuron(model: nn.Module, layer: str, rule: str, inputs: torch.Tensor, selector) -> torch.Tensor:
    import captum.attr

    method = getattr(captum.attr, CAPTUM[rule])(model, dict(model.named_modules())[layer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks on ReLUs
        return method.attribute(inputs, selector).detach()[0]


def strongest(model: nn.Module, inputs: torch.Tensor, layer: str, unit: int) -> tuple[tuple[int, ...], float]:
    activations = unit_activations(model, inputs, layer)[0, unit]
    position = strongest_position(activations)
    return position, float(activations[position])


def state_of(model: nn.Module) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "flags": [(m.training, getattr(m, "inplace", None)) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["flags"] == after["flags"]
    assert before["requires_grad"] == after["requires_grad"]
    assert all(a is b for a, b in zip(before["grads"], after["grads"], strict=True))
    assert before["hooks"] == after["hooks"]
    for key, value in before["params"].items():
        torch.testing.assert_close(after["params"][key], value, rtol=0, atol=0)


@pytest.fixture(scope="module")
def vgg16():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()  # random init; its ReLUs are in place


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_vgg16_single_neuron_matches_captum(vgg16, rule):
    torch.manual_seed(1)
    inputs = torch.randn(1, 3, 64, 64)
    layer, unit = "features.29", 7  # the last conv block's in-place ReLU: 4 max-pools and 13 ReLUs below
    position, value = strongest(vgg16, inputs, layer, unit)
    assert value > 0
    before = state_of(vgg16)
    ours = deconv_projection(vgg16, inputs, layer, unit, position="max", rule=rule)
    assert_same_state(before, state_of(vgg16))
    assert ours.shape == (3, 64, 64) and ours.dtype == torch.float32 and ours.device.type == "cpu"
    theirs = captum_neuron(vgg16, layer, rule, inputs, (unit, *position))
    assert theirs.abs().max() > 0
    torch.testing.assert_close(ours, value * theirs, rtol=1e-4, atol=1e-6 * float(ours.abs().max()))


def test_rules_really_differ_on_vgg16(vgg16):
    torch.manual_seed(1)
    inputs = torch.randn(1, 3, 64, 64)
    projections = {rule: deconv_projection(vgg16, inputs, "features.16", 3, "max", rule)
                   for rule in ("deconvnet", "guided", "gradient")}
    # deconvnet ignores the forward masks; guided keeps them and rectifies: the three are distinct maps
    for a, b in (("deconvnet", "guided"), ("guided", "gradient"), ("deconvnet", "gradient")):
        assert not torch.allclose(projections[a], projections[b], atol=1e-6)


@pytest.fixture(scope="module")
def baseline():
    torch.manual_seed(2)
    return BaselineCNN(3, 32).eval()


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("layer", ["conv2", "relu3", "pool3"])
def test_baseline_single_neuron_matches_captum(baseline, rule, layer):
    torch.manual_seed(3)
    inputs = torch.rand(1, 3, 32, 32)
    unit = 5
    position, value = strongest(baseline, inputs, layer, unit)
    ours = deconv_projection(baseline, inputs, layer, unit, position="max", rule=rule)
    theirs = captum_neuron(baseline, layer, rule, inputs, (unit, *position))
    torch.testing.assert_close(ours, value * theirs, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_baseline_whole_map_matches_captum(baseline, rule):
    """``position="map"`` feeds the whole map down: the gradient of sum(a * a.detach()) over the channel."""
    torch.manual_seed(4)
    inputs = torch.rand(1, 3, 32, 32)
    unit = 11
    ours = deconv_projection(baseline, inputs, "relu2", unit, position="map", rule=rule)
    theirs = captum_neuron(baseline, "relu2", rule, inputs,
                           lambda out: (out[:, unit] * out[:, unit].detach()).sum(dim=(1, 2)))
    assert theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)


class FunctionalNet(nn.Module):
    """ReLUs only as function calls, in every spelling, plus a skip connection and max-pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 6, 3, padding=1)
        self.out = nn.Identity()

    def forward(self, x):
        x = F.relu(self.conv1(x))
        skip = x
        y = torch.relu(self.conv2(x))
        y = self.conv3(y)
        y = y + skip
        y.relu_()  # in place, return value ignored
        y = F.max_pool2d(y, 2)
        y = F.relu(self.conv4(y), inplace=True)
        return self.out(y.relu())


class ModuleNet(nn.Module):
    """The same network written with nn.ReLU modules (what Captum can hook)."""

    def __init__(self, functional: FunctionalNet) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.conv4 = (functional.conv1, functional.conv2, functional.conv3,
                                                          functional.conv4)
        self.relu1, self.relu2, self.relu3, self.relu4, self.relu5 = (nn.ReLU() for _ in range(5))
        self.pool = nn.MaxPool2d(2)
        self.out = nn.Identity()

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        y = self.relu2(self.conv2(x))
        y = self.relu3(self.conv3(y) + x)
        y = self.pool(y)
        return self.out(self.relu5(self.relu4(self.conv4(y))))


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_functional_relus_match_module_relus_and_captum(rule):
    torch.manual_seed(5)
    functional = FunctionalNet().eval()
    modules = ModuleNet(functional).eval()
    inputs = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(functional(inputs), modules(inputs))
    for layer in ("conv3", "out"):
        unit = strongest_units(unit_activations(functional, inputs, layer)[0], 1)[0]
        position, value = strongest(functional, inputs, layer, unit)
        assert value > 0  # the rules rectify: a projection scales with a positive activation only
        ours = deconv_projection(functional, inputs, layer, unit, position="max", rule=rule)
        theirs = captum_neuron(modules, layer, rule, inputs, (unit, *position))
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, value * theirs, rtol=1e-4, atol=1e-7)


class Relu6Net(nn.Module):
    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.act = nn.ReLU6(inplace=True)
        self.functional = functional

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu6(x) if self.functional else self.act(x)
        x = F.max_pool2d(x, 2)
        return self.conv2(x)


@pytest.mark.parametrize("functional", [False, True])
def test_relu6_deconvnet_matches_hand_written_deconvnet(functional):
    """Zeiler & Fergus step by step: transposed conv, rectify, unpool through the switches, transposed conv."""
    torch.manual_seed(6)
    net = Relu6Net(functional).eval()
    inputs = torch.randn(1, 3, 12, 12) * 3  # large enough that some activations pass 6
    unit = 1
    activations = unit_activations(net, inputs, "conv2")[0, unit]
    seed = torch.zeros(1, 5, 6, 6)
    seed[0, unit] = activations
    with torch.no_grad():
        hidden = F.relu6(net.conv1(inputs))
        assert (hidden >= 6).any()
        _, switches = F.max_pool2d(hidden, 2, return_indices=True)
        down = F.conv_transpose2d(seed, net.conv2.weight, padding=1)
        down = F.max_unpool2d(F.relu(down), switches, 2, output_size=hidden.shape[-2:])
        expected = F.conv_transpose2d(down, net.conv1.weight, padding=1)[0]
    ours = deconv_projection(net, inputs, "conv2", unit, position="map", rule="deconvnet")
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_batched_projections_equal_single_ones(baseline):
    torch.manual_seed(7)
    inputs = torch.rand(2, 3, 32, 32)
    output = unit_activations(baseline, inputs, "relu2")
    positions = [strongest_position(output[b, 4]) for b in range(2)]
    batched = project_activations(baseline, inputs, "relu2", [4, 4], positions)
    single = [deconv_projection(baseline, inputs[b:b + 1], "relu2", 4, "max") for b in range(2)]
    torch.testing.assert_close(batched, torch.stack(single))
    # with the true gradient the signal is linear: the whole map is the sum of its activations fed down one by one
    # (deconvnet and guided rectify the signal on the way, so there only positive scaling carries through)
    rows, cols = torch.nonzero(output[0, 4] > 0, as_tuple=True)
    parts = project_activations(baseline, inputs[:1].expand(len(rows), -1, -1, -1), "relu2", [4] * len(rows),
                                list(zip(rows.tolist(), cols.tolist(), strict=True)), rule="gradient")
    whole = deconv_projection(baseline, inputs[:1], "relu2", 4, "map", rule="gradient")
    torch.testing.assert_close(parts.sum(0), whole, rtol=1e-4, atol=1e-6)


def test_model_untouched_after_an_error(baseline):
    before = state_of(baseline)
    with pytest.raises(ConvlensError, match="out of range"):
        deconv_projection(baseline, torch.rand(1, 3, 32, 32), "relu2", 999)
    with pytest.raises(ConvlensError, match="nearest"):
        deconv_projection(baseline, torch.rand(1, 3, 32, 32), "relu22", 0)
    with pytest.raises(ConvlensError, match="rule"):
        deconv_projection(baseline, torch.rand(1, 3, 32, 32), "relu2", 0, rule="lrp")
    assert_same_state(before, state_of(baseline))


def test_projection_image_centres_zero_on_grey():
    projection = torch.zeros(3, 4, 4)
    projection[0, 1, 1], projection[2, 2, 2] = 2.0, -2.0
    shown = projection_image(projection, percentile=100)
    assert shown.shape == (4, 4, 3)
    assert shown[0, 0].tolist() == [0.5, 0.5, 0.5]
    assert shown[1, 1, 0] == 1.0 and shown[2, 2, 2] == 0.0
    assert np.all(projection_image(torch.zeros(3, 2, 2)) == 0.5)


def test_default_model_projection_stays_inside_receptive_field(default_model, sample_photos):
    """The real EfficientNet-Lite0 (ReLU6 in timm's BatchNormAct2d, "same" padding): a single activation's
    projection is non-zero only inside that position's receptive field."""
    from convlens.zeiler.receptive_field import receptive_field

    inputs = default_model.prepare(sample_photos[:1])
    layer = "blocks.2"
    position, value = strongest(default_model, inputs, layer, 3)
    projection = deconv_projection(default_model, inputs, layer, 3, position="max", rule="guided")
    assert value > 0 and projection.abs().max() > 0
    field = receptive_field(default_model, layer, rows=[position[0]], cols=[position[1]])
    top, left, bottom, right = field.box(*position)
    outside = projection.clone()
    outside[:, top:bottom, left:right] = 0
    assert outside.abs().max() == 0
    assert projection[:, top:bottom, left:right].abs().sum() > 0


def test_cli_deconv_writes_projections(tmp_path, baseline):
    from testkit import make_image

    from convlens.cli import main
    from convlens.models import baseline_preprocessing, save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "model", baseline, {
        "architecture": "baseline", "img_size": 32, "class_names": ["a", "b", "c"],
        "preprocessing": baseline_preprocessing(32).to_dict()})
    image = make_image(tmp_path / "noise.png", size=(40, 36))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["deconv", str(checkpoint), str(image), "--layer", "relu2", "--top", "3", "--position", "max",
              "--rule", "guided", "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    arrays = np.load(out / "arrays.npz")
    assert arrays["projection"].shape == (3, 3, 32, 32) and len(arrays["units"]) == 3
    assert (out / "projections.png").is_file()
    assert len(list(out.glob("projection_unit*.png"))) == 3
    inputs = torch.from_numpy(arrays["input"])
    peaks = unit_activations(baseline, inputs, "relu2")[0].flatten(1).amax(1)
    assert arrays["units"].tolist() == torch.argsort(peaks, descending=True)[:3].tolist()
    expected = deconv_projection(baseline, inputs, "relu2", int(arrays["units"][0]), "max", "guided")
    np.testing.assert_allclose(arrays["projection"][0], expected.numpy(), rtol=1e-5, atol=1e-7)
    # the CLI saves exactly what the library returns for the same inputs, and lists every PNG it writes
    from convlens.zeiler import deconv

    api = deconv(baseline, inputs, "relu2", top=3, position="max", rule="guided")
    assert sorted(api.arrays()) == sorted(arrays.files)
    for name, value in api.arrays().items():
        np.testing.assert_allclose(arrays[name], value, rtol=1e-6, atol=1e-8, err_msg=name)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["figures"]) == {p.name for p in out.glob("*.png")}  # issue 14.11
    assert {f"projection_unit{u:04d}.png" for u in arrays["units"]} <= set(summary["figures"])
    assert summary["rule"] == "guided" and summary["units"] == arrays["units"].tolist()


def test_deconv_rows_per_image_and_unit(baseline):
    """Several images: one row per (image, unit), image-major; each row is that image's own projection."""
    from convlens.zeiler import deconv

    torch.manual_seed(8)
    inputs = torch.rand(2, 3, 32, 32)
    result = deconv(baseline, inputs, "relu2", units="4,9", position="max", rule="deconvnet", batch_size=3)
    assert result.image.tolist() == [0, 0, 1, 1] and result.units.tolist() == [4, 9, 4, 9]
    for row, (b, unit) in enumerate(zip(result.image, result.units, strict=True)):
        expected = deconv_projection(baseline, inputs[b:b + 1], "relu2", int(unit), "max", "deconvnet")
        np.testing.assert_allclose(result.projections[row], expected.numpy(), rtol=1e-5, atol=1e-8)
        activations = unit_activations(baseline, inputs[b:b + 1], "relu2")[0, unit]
        # a batch of 2 against 1 image: oneDNN may block the sums differently (AMD EPYC: 5e-6 relative)
        assert result.peaks[row] == pytest.approx(float(activations.max()), rel=1e-5)
    assert result.figure_names()[1:] == ["projection_image000_unit0004", "projection_image000_unit0009",
                                         "projection_image001_unit0004", "projection_image001_unit0009"]
    assert result.summary()["peaks"][3]["image"] == 1 and "compute_seconds" in result.summary()
    top = deconv(baseline, inputs, "relu2", top=2)
    assert [int(u) for u in top.units[:2]] == strongest_units(unit_activations(baseline, inputs[:1], "relu2")[0], 2)
    with pytest.raises(ConvlensError, match="not both"):
        deconv(baseline, inputs, "relu2", units=[1], top=2)
    with pytest.raises(ConvlensError, match="position"):
        deconv(baseline, inputs, "relu2", position="peak")


def test_default_rule_follows_the_downsampling():
    """Issue 14.8: deconvnet where only max-pooling downsamples (the paper's setting), guided where convolutions
    are strided."""
    import timm
    import torchvision

    from convlens.zeiler import default_rule

    assert default_rule(BaselineCNN(3, 32)) == "deconvnet"
    assert default_rule(torchvision.models.vgg11()) == "deconvnet"
    assert default_rule(torchvision.models.resnet18()) == "guided"
    assert default_rule(timm.create_model("tf_efficientnet_lite0", pretrained=False)) == "guided"


def nyquist_share(projection: np.ndarray) -> float:
    """The share of a projection's spectral power at the highest frequency (a period-2 checkerboard)."""
    power = np.abs(np.fft.fft2(projection.sum(axis=0))) ** 2
    fy = np.abs(np.fft.fftfreq(power.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(power.shape[1]))[None, :]
    return float(power[(fy == 0.5) | (fx == 0.5)].sum() / power.sum())


def test_default_rule_draws_no_checkerboard_on_the_default_model(default_model, sample_photos):
    """Issue 14.8: the default model's first `deconv` is readable. EfficientNet-Lite0 downsamples by strided
    convolutions: deconvnet puts 11-17 % of the power (blocks.3) at the period-2 frequency, guided backprop,
    the default there, under 4 %; the figures say which rule drew them."""
    from convlens.zeiler import deconv

    photos = sample_photos[:2]
    default = deconv(default_model, photos, "blocks.3", units=[3, 10], position="max")
    assert (default.rule, default.rule_requested) == ("guided", "auto")
    deconvnet = deconv(default_model, photos, "blocks.3", units=[3, 10], position="max", rule="deconvnet")
    for ours, paper in zip(default.projections, deconvnet.projections, strict=True):
        assert nyquist_share(paper) > 0.08 and nyquist_share(ours) < nyquist_share(paper) / 3
    figures = default.figures()
    assert "guided backprop (default for this model)" in figures["projections"]._suptitle.get_text()
    assert "guided backprop" in figures["projection_image000_unit0003"].axes[0].get_title()
    assert "rule: deconvnet" in deconvnet.figures()["projections"]._suptitle.get_text()


def test_deconvnet_ignores_the_image_without_max_pool_switches(default_model, sample_photos):
    """Why deconvnet checkerboards here (docs/deconvnet.md): with no max-pool on the way its signal never
    depends on the image, so one activation's projection is the same pattern on every photo, scaled by the
    activation; guided backprop's differs from photo to photo."""
    inputs = default_model.prepare(sample_photos)
    layer, unit, position = "blocks.5", 3, (4, 4)
    values = unit_activations(default_model, inputs, layer)[:, unit, position[0], position[1]]
    positive = torch.nonzero(values > 0).flatten()
    assert len(positive) >= 2
    count = len(positive)
    for rule, same in (("deconvnet", True), ("guided", False)):
        projections = project_activations(default_model, inputs[positive], layer, [unit] * count,
                                          [position] * count, rule)
        per_unit = projections / values[positive].view(-1, 1, 1, 1)
        assert torch.allclose(per_unit[1:], per_unit[:1].expand_as(per_unit[1:]), rtol=1e-3,
                              atol=1e-4 * float(per_unit.abs().max())) == same
