"""The demo's report of the default model carries feature visualizations for a handful of units."""

from __future__ import annotations

import json

import numpy as np
import torch

import convlens
import convlens.demo as demo


def test_the_default_models_plan_is_a_handful_of_blocks_4_units(default_model):
    plan = demo.demo_feature_viz(default_model)
    assert (plan.layers, plan.units, plan.steps, plan.size) == (("blocks.4",), 4, 256, 128)


def test_the_demo_report_shows_feature_visualizations(tmp_path, monkeypatch):
    """The demo's own code path on a small model (the default model's 256 steps are for `make demo`)."""
    monkeypatch.setattr(demo, "shared_data", lambda: None)  # the photos report only
    monkeypatch.setattr(demo, "FEATURE_VIZ_STEPS", 8)
    torch.manual_seed(0)
    reports = demo.build_reports(tmp_path, "baseline:32", False, lambda _: None)
    assert [r.folder for r in reports if r.folder] == ["photos-report"]
    summary = json.loads((tmp_path / "photos-report" / "summary.json").read_text())
    layer = demo.demo_feature_viz(convlens.load_model("baseline:32", device="cpu")).layers[0]
    assert list(summary["feature_viz"]) == [layer]
    units = summary["feature_viz"][layer]["units"]
    assert len(units) == demo.FEATURE_VIZ_UNITS and set(units) <= set(summary["pages"]["units"][layer])
    assert summary["parameters"]["feature_viz"]["steps"] == 8
    for unit in summary["pages"]["units"][layer]:
        page = (tmp_path / "photos-report" / "layers" / layer / "units" / f"{unit}.html").read_text()
        image = tmp_path / "photos-report" / "layers" / layer / "units" / str(unit) / "feature-viz.png"
        assert image.is_file() == (unit in units) and ("feature-viz.png" in page) == (unit in units)
        if unit in units:
            from PIL import Image

            assert np.asarray(Image.open(image)).std() > 0  # an optimised image, not a blank
