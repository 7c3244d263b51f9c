"""Occlusion maps against the definition: occlude one position, run the model once, read the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.transforms.functional import gaussian_blur

import convlens
from convlens.errors import ConvlensError
from convlens.hooks import capture
from convlens.models.preprocessing import Preprocessing
from convlens.occlusion import occlusion, window_origins

TOLERANCE = 1e-5


def loop_occlusion(module: nn.Module, inputs: torch.Tensor, size: int, stride: int, fill: torch.Tensor, layer: str,
                   target: int, channel: int, edges: str = "whole") -> dict[str, torch.Tensor]:
    """One occluded image and one forward pass per position; attribution by explicit accumulation (a window
    past the border is cropped by the slicing)."""
    height, width = inputs.shape[-2:]
    rows, cols = window_origins(height, size, stride, edges), window_origins(width, size, stride, edges)
    prob, top, feature = (torch.zeros(len(rows), len(cols)) for _ in range(3))
    with torch.inference_mode(), capture(module, layer) as captured:
        clean = torch.softmax(module(inputs), dim=1)[0, target]
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                occluded = inputs.clone()
                occluded[..., r:r + size, c:c + size] = fill[..., r:r + size, c:c + size]
                probs = torch.softmax(module(occluded), dim=1)[0]
                prob[i, j], top[i, j] = probs[target], probs.argmax()
                feature[i, j] = captured[layer][0, channel].sum()
    total, count = np.zeros((height, width)), np.zeros((height, width))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            total[r:r + size, c:c + size] += float(clean - prob[i, j])
            count[r:r + size, c:c + size] += 1
    attribution = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return {"target_score": prob, "top_class": top.long(), "feature_activation": feature,
            "attribution": torch.from_numpy(attribution).float()}


def assert_matches_loop(model, inputs, size, stride, layer=None, fill="mean", fill_values=None, edges="whole",
                        **kwargs):
    module = model.module if isinstance(model, convlens.ImageClassifier) else model
    results = {engine: occlusion(model, inputs, window=size, stride=stride, layer=layer, fill=fill, edges=edges,
                                 incremental=engine == "incremental", rule=None, **kwargs)
               for engine in ("incremental", "batched")}
    assert results["incremental"].engine == "incremental" and results["incremental"].incremental_nodes > 0
    assert results["incremental"].engine_reason == ""
    assert results["batched"].engine == "batched" and results["batched"].engine_reason == "incremental=False"
    first = results["incremental"]
    fill_values = torch.zeros_like(inputs) if fill_values is None else fill_values
    expected = loop_occlusion(module, inputs, size, stride, fill_values, first.layer, first.target,
                              first.feature_channel, edges)
    # The maps must vary, or agreeing with the loop would prove nothing.
    assert float(expected["target_score"].max() - expected["target_score"].min()) > 0.02
    assert float(expected["feature_activation"].std()) > 1e-3 * float(expected["feature_activation"].abs().max())
    for result in results.values():
        assert result.target_score.shape == expected["target_score"].shape
        torch.testing.assert_close(result.target_score, expected["target_score"], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(result.attribution, expected["attribution"], atol=TOLERANCE, rtol=0)
        scale = float(expected["feature_activation"].abs().max())
        torch.testing.assert_close(result.feature_activation / scale, expected["feature_activation"] / scale,
                                   atol=TOLERANCE, rtol=0)
        assert torch.equal(result.top_class, expected["top_class"])
    return results


def sharpened(module: nn.Module, head: nn.Linear, size: int, spread: float = 2.0) -> nn.Module:
    """A random model whose logits spread by about ``spread`` (a rescaled head), so that probabilities move."""
    module.eval()
    with torch.no_grad():
        head.bias.zero_()
        logits = module(torch.randn(4, 3, size, size))
        head.weight.mul_(spread / float(logits.std()))
    return module


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    return sharpened(model, model.fc, 80)


@pytest.fixture(scope="module")
def vgg11():
    torch.manual_seed(1)
    model = torchvision.models.vgg11(num_classes=10)
    return sharpened(model, model.classifier[6], 64)


def test_resnet18_matches_loop_shared_relu_layer(resnet18):
    torch.manual_seed(2)
    inputs = torch.randn(1, 3, 80, 80)
    # layer1.1.relu runs twice per block (torchvision's shared ReLU): its last call, as a hook sees it.
    assert_matches_loop(resnet18, inputs, size=16, stride=12, layer="layer1.1.relu", batch_size=16)


def test_bottleneck_resnet_with_trained_like_batch_norms_matches_loop():
    """ResNet-50's blocks (stride-2 3x3 convolutions, 1x1 stride-2 downsamples, residual additions), with batch
    norm statistics far from the identity: the engine folds them and fuses ReLUs and additions into the
    convolutions, and must still give the loop's numbers."""
    from testkit import small_resnet

    model = small_resnet(seed=5, num_classes=10)
    sharpened(model, model.fc, 96)
    results = assert_matches_loop(model, torch.randn(1, 3, 96, 96), size=24, stride=12, batch_size=16)
    assert results["incremental"].layer == "layer4.0.downsample.0"


def test_vgg11_matches_loop_default_layer_ragged_edge(vgg11):
    torch.manual_seed(3)
    inputs = torch.randn(1, 3, 64, 64)
    # (64 - 10) is not a multiple of 8: the last rows and columns are covered by no window.
    results = assert_matches_loop(vgg11, inputs, size=10, stride=8)
    result = results["incremental"]
    assert result.layer == "features.18"
    assert result.target_score.shape == (7, 7)
    assert float(result.attribution[-6:, :].abs().max()) == 0.0 and float(result.attribution[-7].abs().max()) > 0


def test_default_model_matches_loop_with_tf_same_padding(default_model, sample_photos):
    """EfficientNet-Lite0 (timm Conv2dSame, BatchNormAct2d, residual sums) with real weights on a photo."""
    inputs = default_model.prepare(sample_photos[1])
    assert_matches_loop(default_model, inputs, size=48, stride=32, batch_size=25)


@pytest.mark.parametrize("fill", ["zero", "0.5", "blur"])
def test_fills_match_loop(fill):
    torch.manual_seed(4)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                           nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    sharpened(module, module[-1], 40)
    preprocessing = Preprocessing(crop=(40, 40), resize=None, squash=True)
    model = convlens.ImageClassifier(module, preprocessing, [f"c{i}" for i in range(5)])
    inputs = torch.randn(1, 3, 40, 40)
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    # zero: black pixels; 0.5: mid-grey pixels; blur: Gaussian with sigma = size / 4 (kernel 2 * ceil(2 sigma) + 1)
    expected_fill = {"zero": ((0 - mean) / std).expand_as(inputs), "0.5": ((0.5 - mean) / std).expand_as(inputs),
                     "blur": gaussian_blur(inputs, [9, 9], [2.0, 2.0])}[fill]
    results = assert_matches_loop(model, inputs, size=8, stride=4, layer="3", fill=fill,
                                  fill_values=expected_fill)
    assert results["batched"].fill == ("0.5" if fill == "0.5" else fill)


class Viewing(nn.Module):
    """Old-style forward: ``view`` after a conv (fails on channels-last tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 10 * 10, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


class Branching(Viewing):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x):
        if x.mean() > 100:
            x = -x
        return super().forward(x)


@pytest.mark.parametrize("kind, engine", [(Viewing, "incremental"), (Branching, "batched")])
def test_view_and_untraceable_models_match_loop(kind, engine):
    torch.manual_seed(7)
    module = kind()
    sharpened(module, module.fc, 20)
    inputs = torch.randn(1, 3, 20, 20)
    result = occlusion(module, inputs, window=6, stride=2, layer="conv", rule=None)
    assert result.engine == engine
    if engine == "batched":  # the reason is recorded
        assert result.engine_reason.startswith("torch.fx cannot trace the model")
    expected = loop_occlusion(module, inputs, 6, 2, torch.zeros_like(inputs), "conv", result.target,
                              result.feature_channel)
    torch.testing.assert_close(result.target_score, expected["target_score"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(result.feature_activation, expected["feature_activation"], atol=1e-4, rtol=1e-5)


def test_attribution_matches_captum(resnet18):
    from captum.attr import Occlusion

    torch.manual_seed(5)
    inputs = torch.randn(1, 3, 64, 64)
    result = occlusion(resnet18, inputs, window=16, stride=8, batch_size=8, rule=None)

    def probabilities(x):
        return torch.softmax(resnet18(x), dim=1)

    with torch.no_grad():
        theirs = Occlusion(probabilities).attribute(inputs, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                    baselines=0.0, target=result.target, perturbations_per_eval=8)
    torch.testing.assert_close(result.attribution, theirs[0, 0], atol=TOLERANCE, rtol=0)
    assert float(result.attribution.abs().max()) > 1e-3


@pytest.fixture(scope="module")
def resnet18_64():
    torch.manual_seed(8)
    model = torchvision.models.resnet18(num_classes=10)
    return sharpened(model, model.fc, 64)


def test_captum_edges_match_captum_on_a_ragged_grid(resnet18_64):
    """(64 - 16) is not a multiple of 10: Captum adds a sixth row and column of windows cropped at the border."""
    from captum.attr import Occlusion

    torch.manual_seed(9)
    inputs = torch.randn(1, 3, 64, 64)

    def probabilities(x):
        return torch.softmax(resnet18_64(x), dim=1)

    results = assert_matches_loop(resnet18_64, inputs, size=16, stride=10, edges="captum", batch_size=16)
    result = results["incremental"]
    assert result.target_score.shape == (6, 6) and result.row_origins.tolist() == [0, 10, 20, 30, 40, 50]
    with torch.no_grad():
        theirs = Occlusion(probabilities).attribute(inputs, sliding_window_shapes=(3, 16, 16), strides=(3, 10, 10),
                                                    baselines=0.0, target=result.target, perturbations_per_eval=16)
    for engine_result in results.values():
        torch.testing.assert_close(engine_result.attribution, theirs[0, 0], atol=TOLERANCE, rtol=0)
    assert float(theirs[0, 0, -4:].abs().min()) > 0  # the bottom rows are covered by cropped windows only
    # The default keeps whole windows only: the same map inside, 0 on the edge no whole window reaches.
    whole = occlusion(resnet18_64, inputs, window=16, stride=10, batch_size=16, rule=None)
    assert whole.edges == "whole" and whole.target_score.shape == (5, 5)
    assert float(whole.attribution[-8:].abs().max()) == 0.0
    relative = float((whole.attribution - theirs[0, 0]).abs().max() / theirs[0, 0].abs().max())
    assert relative > 0.05


def test_logit_score_and_callable_target_match_loop():
    torch.manual_seed(10)
    module = Viewing()
    sharpened(module, module.fc, 20)
    inputs = torch.randn(1, 3, 20, 20)
    rows = window_origins(20, 6, 3)
    logit_3, difference = torch.zeros(len(rows), len(rows)), torch.zeros(len(rows), len(rows))
    with torch.inference_mode():
        clean = module(inputs)[0]
        for i, r in enumerate(rows):
            for j, c in enumerate(rows):
                occluded = inputs.clone()
                occluded[..., r:r + 6, c:c + 6] = 0
                logits = module(occluded)[0]
                logit_3[i, j], difference[i, j] = logits[3], logits[3] - logits[1]
    logit = occlusion(module, inputs, window=6, stride=3, layer="conv", target=3, score="logit", rule=None)
    torch.testing.assert_close(logit.target_score, logit_3, atol=TOLERANCE, rtol=0)
    assert logit.score == "logit" and logit.clean_score == pytest.approx(float(clean[3]), abs=1e-6)
    custom = occlusion(module, inputs, window=6, stride=3, layer="conv", target=lambda out: out[:, 3] - out[:, 1],
                       rule=None)
    torch.testing.assert_close(custom.target_score, difference, atol=TOLERANCE, rtol=0)
    assert custom.target is None and custom.summary()["targets"] == [{"index": None, "name": "custom target"}]
    assert float(difference.max() - difference.min()) > 0.05


def test_model_state_is_untouched(resnet18):
    torch.manual_seed(6)
    inputs = torch.randn(1, 3, 64, 64)
    expected = occlusion(resnet18, inputs, window=16, stride=16)
    resnet18.train()
    resnet18.layer1[0].conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    try:
        result = occlusion(resnet18, inputs, window=16, stride=16)
        assert all(m.training for m in resnet18.modules())
        assert not resnet18.layer1[0].conv1.weight.requires_grad and resnet18.fc.weight.requires_grad
        assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet18.modules())
        torch.testing.assert_close(result.target_score, expected.target_score, atol=0, rtol=0)
    finally:
        resnet18.eval()
        resnet18.layer1[0].conv1.weight.requires_grad_(True)


def test_bad_arguments_are_one_line_errors(resnet18):
    inputs = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConvlensError, match="--size 40"):
        occlusion(resnet18, inputs, window=40)
    with pytest.raises(ConvlensError, match="grey level"):
        occlusion(resnet18, inputs, window=8, fill="grey")
    with pytest.raises(ConvlensError, match="nearest"):
        occlusion(resnet18, inputs, window=8, layer="layer9")
    with pytest.raises(ConvlensError, match="class index"):
        occlusion(resnet18, inputs, window=8, target=10)
    with pytest.raises(ConvlensError, match="--edges 'cropped'"):
        occlusion(resnet18, inputs, window=8, edges="cropped")
    with pytest.raises(ConvlensError, match="one image"):
        occlusion(resnet18, torch.randn(2, 3, 32, 32), window=8)


def test_occluding_the_face_lowers_golden_retriever_far_more_than_background(default_model, shared_data):
    photo = shared_data / "photos" / "golden_retriever.jpeg"
    result = occlusion(default_model, photo, target="golden retriever", window=64, stride=32, rule=None)
    assert result.target == default_model.class_index("golden retriever")
    clean = result.clean_probability
    assert clean > 0.8
    rows, cols = list(result.row_origins), list(result.col_origins)
    # In the 224 px crop the eyes and the nose lie in rows 0-64, columns 64-128; the top right is white cloth.
    face = float(result.target_score[rows.index(0), cols.index(64)])
    background = float(result.target_score[rows.index(0), cols.index(160)])
    assert clean - face > 0.4
    assert abs(clean - background) < 0.05
    assert clean - face > 10 * abs(clean - background)
    # And the face is where the attribution peaks.
    peak = np.unravel_index(int(result.attribution.argmax()), result.attribution.shape)
    assert 0 <= peak[0] < 64 and 64 <= peak[1] < 128


def baseline_checkpoint(folder, size: int = 48):
    """A seeded baseline CNN saved as a convlens checkpoint, so that the CLI and the API load the same weights."""
    from convlens.models import save_checkpoint

    torch.manual_seed(0)
    model = convlens.load_model(f"baseline:{size}", device="cpu")
    save_checkpoint(folder / "best", model.module, {"architecture": "baseline", "img_size": size,
                                                    "class_names": model.class_names,
                                                    "preprocessing": model.preprocessing.to_dict()})
    return folder


def test_cli_writes_the_apis_maps_figures_and_summary(tmp_path, sample_photos):
    from convlens.cli import main

    run = baseline_checkpoint(tmp_path / "run")
    out = tmp_path / "occ"
    with pytest.raises(SystemExit) as exit_info:
        main(["occlusion", str(run), str(sample_photos[0]), "--size", "12", "--stride", "6", "--fill", "zero",
              "--layer", "conv2", "--target", "2", "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    arrays = np.load(out / "arrays.npz")
    assert summary["parameters"] == {"window": 12, "stride": 6, "fill": "zero", "edges": "whole",
                                     "batch_size": summary["parameters"]["batch_size"], "rows": 7, "cols": 7}
    assert summary["layer"] == "conv2" and summary["targets"][0]["index"] == 2 and summary["score"] == "probability"
    assert arrays["target_score"].shape == (7, 7) and arrays["attribution"].shape == (48, 48)
    assert arrays["input"].shape == (1, 3, 48, 48) and arrays["deconv_projection"].shape == (3, 48, 48)
    assert 0 <= summary["feature_channel"] < 64
    assert {"occlusion.png", "attribution.png"} <= set(summary["figures"])
    assert summary["compute_seconds"] > 0 and summary["projection_rule"] == "deconvnet"
    # The numbers are the Python API's on the same inputs.
    model = convlens.load_model(run, device="cpu")
    expected = convlens.occlusion(model, sample_photos[0], window=12, stride=6, fill="zero", layer="conv2",
                                  target=2).arrays()
    assert set(arrays.files) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(arrays[name], values, atol=1e-6, err_msg=name)
    assert float(np.ptp(arrays["target_score"])) > 0 and float(np.abs(arrays["attribution"]).max()) > 0


def test_cli_bad_fill_is_a_one_line_error(tmp_path, sample_photos, capsys):
    from convlens.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["occlusion", "baseline:32", str(sample_photos[0]), "--fill", "purple", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the random-weights warning
    assert last == "error: --fill 'purple': use mean, zero, blur, or a grey level in [0, 1]"
    assert not (tmp_path / "o").exists()
