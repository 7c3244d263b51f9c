"""The recipe of docs/DEVELOPING.md: a CAM method is one subclass, registered once, and it appears in
``convlens.cam``, the CLI and the docs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cam_helpers import run_cli, write_checkpoint

import convlens
from convlens.cam import METHODS, GradCAM, LayerData, cam_method, min_max_per_image, register
from convlens.cam.base import method_table
from convlens.errors import ConvlensError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cam.md"


def cli_method_help() -> str:
    import typer

    from convlens.cli import app

    command = typer.main.get_command(app).commands["cam"]
    return next(p.help for p in command.params if "--method" in getattr(p, "opts", []))


def test_every_registered_method_is_in_the_cli_and_the_docs():
    listed = cli_method_help()
    table = method_table()
    for name, method in METHODS.items():
        assert cam_method(name) is method
        assert name in listed.split(": ", 1)[1].rstrip(".").split(", ")
        assert f"| `{name}` | `{method.__name__}` |" in table
    assert table in DOCS.read_text(), "docs/cam.md's table is stale: paste convlens.cam.base.method_table()"
    assert len(METHODS) == 18


def test_a_new_subclass_registered_once_works_everywhere(tmp_path):
    @register
    class PositiveGradCAM(GradCAM):
        """Positive Grad-CAM (a recipe example): ``w_c = mean_ij relu(G_cij)``."""

        name = "positivegradcam"
        title = "Positive Grad-CAM"

        def _weights(self, data: LayerData) -> torch.Tensor:
            return data.gradients.clamp_min(0).mean(dim=(2, 3))

    try:
        with pytest.raises(ValueError, match="unique name"):
            register(PositiveGradCAM)  # registered once
        assert "| `positivegradcam` | `PositiveGradCAM` | Positive Grad-CAM" in method_table()
        assert cam_method("positive-grad-cam") is PositiveGradCAM
        run_dir = write_checkpoint(tmp_path / "run", ["a", "b", "c"])
        model = convlens.load_model(run_dir, device="cpu")
        inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(20))
        result = convlens.cam(model, inputs, method="positivegradcam", layer="layer3", target=1)
        # by hand: the positive part of the gradient, averaged, weights the channels
        from convlens.hooks import capture

        with capture(model, "layer3", detach=False) as captured, torch.enable_grad():
            for parameter in model.module.parameters():
                parameter.requires_grad_(False)
            logits = model.module(inputs.clone().requires_grad_())
            (gradients,) = torch.autograd.grad(logits[:, 1].sum(), captured["layer3"])
        activations = captured["layer3"].detach()
        by_hand = torch.relu((gradients.clamp_min(0).mean((2, 3), keepdim=True) * activations).sum(1))
        torch.testing.assert_close(result.cam_raw, by_hand, atol=1e-5, rtol=1e-4)
        out = tmp_path / "out"
        from testkit import make_image

        image = make_image(tmp_path / "x.png", size=(64, 64))
        run_cli("cam", str(run_dir), str(image), "--method", "positivegradcam", "--layer", "layer3", "--out",
                str(out))
        arrays = np.load(out / "arrays.npz")
        expected = convlens.cam(model, [image], method="positivegradcam", layer="layer3").arrays()
        np.testing.assert_allclose(arrays["cam"], expected["cam"], atol=1e-6)
        assert np.isfinite(min_max_per_image(torch.from_numpy(arrays["cam_raw"])).numpy()).all()
    finally:
        METHODS.pop("positivegradcam", None)
    with pytest.raises(ConvlensError, match="unknown CAM method"):
        cam_method("positivegradcam")
