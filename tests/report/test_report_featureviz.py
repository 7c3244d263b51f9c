"""Feature visualization on the report's unit pages: the images (and the diversity set) above the top-k patches
and their projections, the numbers against a hooked forward pass, and the flag where the visualization does not
beat the best of the report's images; checked in a real browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convlens
from convlens.errors import ConvlensError
from convlens.report import FeatureVizOptions

LAYER = "conv3"
STEPS = 16  # on this random-init model: some of the four strongest units beat their best photo, some not
PLAN = FeatureVizOptions(layers=(LAYER,), units=4, steps=STEPS, diversity=2)


@pytest.fixture(scope="module")
def built(tiny_model, sample_photos, tmp_path_factory):
    result = convlens.report(tiny_model, sample_photos[:3], layers=["relu2", LAYER], units=6, details=0, k=4,
                             methods=["gradcam"], feature_viz=PLAN)
    return result, result.save(tmp_path_factory.mktemp("report") / "out")


def _channel_means(model, inputs: torch.Tensor) -> np.ndarray:
    """The layer's channel means for model inputs, hooked by hand."""
    with convlens.capture(model, [LAYER]) as seen, torch.inference_mode():
        model.module(inputs)
    return seen[LAYER].mean((2, 3)).numpy()


def test_the_strongest_unit_pages_get_the_library_numbers(built, tiny_model, sample_photos):
    result, _ = built
    visualized = result.collected.feature_viz[LAYER]
    scan = result.collected.scan.layers[LAYER]
    pages = result.collected.unit_pages[LAYER]
    strongest = [int(u) for u in scan.ranking if int(u) in pages][:4]
    assert list(visualized.units) == sorted(strongest) and "relu2" not in result.collected.feature_viz
    direct = convlens.feature_viz(tiny_model, LAYER, sorted(strongest), steps=STEPS, diversity=2,
                                  reference=sample_photos[:3])
    np.testing.assert_array_equal(visualized.images.numpy(), direct.images.numpy())
    units = list(visualized.units)
    for index in range(2):  # each image of the diversity set, forwarded again by hand
        means = _channel_means(tiny_model, tiny_model.preprocessing.normalize(visualized.images[:, index]))
        np.testing.assert_allclose(visualized.reached[:, index].numpy(), means[np.arange(4), units], rtol=1e-4,
                                   atol=1e-6)
    natural = _channel_means(tiny_model, tiny_model.prepare(sample_photos[:3]))[:, units].max(0)
    np.testing.assert_allclose(visualized.natural.top1.numpy(), natural, rtol=1e-4, atol=1e-6)
    flagged = {unit for unit, best, top in zip(units, visualized.reached.amax(1).numpy(), natural, strict=True)
               if best <= top}
    assert set(result.summary()["feature_viz"][LAYER]["flagged_units"]) == flagged
    assert 0 < len(flagged) < 4, "the test needs both a flagged and a trusted unit; change STEPS"


def test_unit_pages_show_the_visualization_above_the_top_k_and_flag_it(built, browser):
    result, out = built
    visualized = result.collected.feature_viz[LAYER]
    flagged = set(result.summary()["feature_viz"][LAYER]["flagged_units"])
    page = browser.new_page()
    for unit in result.collected.unit_pages[LAYER]:
        page.goto((out / "layers" / LAYER / "units" / f"{unit}.html").as_uri())
        headings = page.eval_on_selector_all("h2", "nodes => nodes.map(node => node.textContent)")
        if unit not in visualized.units:
            assert "computed for the 4 strongest units of this layer only" in page.inner_text("body")
            assert not page.query_selector("img[alt^='feature visualization']")
            continue
        assert headings.index("Feature visualization") < headings.index("Top-4 activations")
        widths = page.eval_on_selector_all("img[alt^='feature visualization']", """nodes => Promise.all(nodes.map(
            node => node.decode().then(() => node.naturalWidth, () => 0)))""")
        assert len(widths) == 2 and min(widths) >= 196  # the image and its diverse twin, enlarged to be seen
        captions = page.eval_on_selector_all(".card .caption", "nodes => nodes.map(node => node.textContent)")
        row = visualized.units.index(unit)
        assert [c.split("reaches ")[1] for c in captions] == [f"{v:.3g}" for v in visualized.reached[row].tolist()]
        pairs = page.eval_on_selector_all(".pair img", """nodes => Promise.all(nodes.map(
            node => { node.loading = 'eager'; return node.decode().then(() => node.alt, () => 'broken'); }))""")
        assert pairs == ["projection", "patch"] * 3  # 3 images, k=4: the top-3 patches beside their projections
        flag = page.query_selector("[data-flag='not-beaten']")
        assert (flag is not None) == (unit in flagged), unit
        if flag is not None:
            assert flag.is_visible() and f"{visualized.reached[row].max():.3g}" in flag.inner_text()
        else:
            assert "above the best of the report's 3 images" in page.inner_text(".verdict")
    page.goto((out / "layers" / "relu2" / "units" / f"{result.collected.unit_pages['relu2'][0]}.html").as_uri())
    assert "not asked for on this layer (it was on conv3)" in page.inner_text("body")
    page.close()


def test_feature_viz_options_are_checked_before_work(tiny_model, sample_photos):
    with pytest.raises(ConvlensError, match="'fc1' has no pages"):
        convlens.report(tiny_model, sample_photos[:1], layers=["relu2"], feature_viz=FeatureVizOptions(
            layers=("fc1",)))
    with pytest.raises(ConvlensError, match="at least 1"):
        convlens.report(tiny_model, sample_photos[:1], feature_viz=FeatureVizOptions(steps=0))


def _cli(arguments: list[str]) -> int:
    from convlens.cli import main

    try:
        main(arguments)
    except SystemExit as exit_info:
        return exit_info.code or 0
    return 0


def test_cli_options_reach_the_report(tiny_model, sample_photos, tmp_path, capsys):
    import json

    weights = tmp_path / "tiny.pt"
    torch.save(tiny_model.module.state_dict(), weights)
    common = ["report", "baseline:32", str(sample_photos[0]), "--weights", str(weights), "--units", "2",
              "--details", "0", "--method", "gradcam", "--device", "cpu", "--layer", "relu2", "--layer", LAYER]
    code = _cli(common + ["--out", str(tmp_path / "no"), "--feature-viz", "--feature-viz-layer", "fc1"])
    assert code == 2 and "'fc1' has no pages" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    code = _cli(common + ["--out", str(tmp_path / "r"), "--feature-viz", "--feature-viz-layer", LAYER,
                          "--feature-viz-units", "1", "--feature-viz-steps", "3", "--feature-viz-diversity", "2"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["parameters"]["feature_viz"] == {"layers": [LAYER], "units": 1, "steps": 3, "size": None,
                                                    "diversity": 2}
    assert len(summary["feature_viz"][LAYER]["units"]) == 1 and list(summary["feature_viz"]) == [LAYER]
