"""The HTML report: its numbers against independent computations, and every page in a real browser."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch

import convlens
from convlens.errors import ConvlensError

LAYERS = ["relu1", "relu2", "relu3"]


@pytest.fixture(scope="module")
def built(tiny_model, sample_photos, tmp_path_factory):
    """A report of the tiny baseline on three photos: 3 unit pages per layer, details for two images."""
    result = convlens.report(tiny_model, sample_photos[:3], units=3, details=2, k=4)
    out = result.save(tmp_path_factory.mktemp("report") / "out")
    return result, out


def test_shared_pass_matches_separate_computations(built, tiny_model, sample_photos):
    from convlens.cam import GradCAM

    result, _ = built
    arrays = result.arrays()
    inputs = tiny_model.prepare(sample_photos[:3])
    with convlens.capture(tiny_model, LAYERS) as seen, torch.inference_mode():
        logits = tiny_model.module(inputs)
    np.testing.assert_allclose(arrays["probabilities"], torch.softmax(logits, 1).numpy(), atol=1e-6)
    for layer in LAYERS:
        np.testing.assert_allclose(arrays[f"mean_activation/{layer}"], seen[layer].mean((2, 3)).numpy(), atol=1e-6)
        peer = convlens.top_activations(tiny_model, sample_photos[:3], layer, units=None, k=4)  # its own scan
        np.testing.assert_allclose(arrays[f"top_values/{layer}"], peer.values, atol=1e-6)  # NaN where empty
        np.testing.assert_array_equal(arrays[f"top_images/{layer}"], peer.images)
        assert (arrays[f"top_images/{layer}"][:, 3] == -1).all()  # k=4 over 3 images: one empty slot
        scan = result.collected.scan.layers[layer]
        assert (scan.histogram_counts.sum(axis=1) == 3 * np.prod(scan.map_size)).all()
    expected = GradCAM(tiny_model, "conv3")(inputs).maps.numpy()
    np.testing.assert_allclose(arrays["cam/gradcam"], expected, atol=1e-5)


def test_faithfulness_is_the_average_drop_of_grad_cam(built, tiny_model, sample_photos):
    """Chattopadhay et al.'s average drop, computed here by hand: the input times its Grad-CAM map."""
    from convlens.cam import GradCAM

    result, out = built
    inputs = tiny_model.prepare(sample_photos[:3])
    cam = GradCAM(tiny_model, "conv3")(inputs)
    with torch.inference_mode():
        clean = torch.softmax(tiny_model.module(inputs), 1)
        masked = torch.softmax(tiny_model.module(inputs * cam.maps[:, None]), 1)
    rows = torch.arange(3)
    target = torch.tensor(cam.targets)
    drop = torch.relu(clean[rows, target] - masked[rows, target]) / (clean[rows, target] + 1e-7)
    np.testing.assert_allclose(result.collected.faithfulness.arrays()["drop.gradcam"], drop.numpy(), atol=1e-5)
    page = sorted((out / "images").glob("*.html"))[1].read_text()
    assert "average drop" in page and f"{float(drop[1]):.3g}</td>" in page


def test_unit_pages_are_the_strongest_units(built):
    result, out = built
    for layer in LAYERS:
        scan = result.collected.scan.layers[layer]
        strongest = sorted(int(u) for u in np.argsort(-scan.means.mean(0), kind="stable")[:3])
        assert result.collected.unit_pages[layer] == strongest
        assert sorted(int(p.stem) for p in (out / "layers" / layer / "units").glob("*.html")) == strongest


def test_long_parts_show_a_note_beyond_details(built):
    _, out = built
    third = sorted((out / "images").glob("*.html"))[2].read_text()
    assert "class='note'" in third and "first 2 images only" in third and "<code>--details" in third
    first = sorted((out / "images").glob("*.html"))[0].read_text()
    assert "occlusion.png" in first and "invariance.png" in first


def _local_target(url: str) -> Path | None:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def test_every_page_loads_cleanly_and_every_link_resolves(built, browser):
    _, out = built
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 1 + 3 + 3 + 9
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    for path in pages:
        page.goto(path.as_uri())
        urls = page.evaluate("""() => [...document.querySelectorAll('a[href], img[src], link[href], script[src]')]
                                 .map(node => node.href || node.src)""")
        for url in urls:
            target = _local_target(url)
            assert target is not None or url.startswith("data:"), f"{path.name}: {url} leaves the folder"
            if target is not None:
                assert target.is_file(), f"{path.relative_to(out)} links to missing {url}"
        widths = page.evaluate("""() => Promise.all([...document.images]
                                     .filter(image => image.getAttribute('src')).map(image => {
                                     image.loading = 'eager';
                                     return image.decode().then(() => image.naturalWidth, () => 0); }))""")
        assert all(width > 0 for width in widths), f"{path.relative_to(out)}: an image did not load"
    page.close()
    assert problems == []


def test_keyboard_moves_between_units(built, browser):
    result, out = built
    units = result.collected.unit_pages["relu2"]
    page = browser.new_page()
    page.goto((out / "layers" / "relu2" / "units" / f"{units[0]}.html").as_uri())
    page.keyboard.press("ArrowRight")
    page.wait_for_url(f"**/units/{units[1]}.html")
    page.keyboard.press("ArrowRight")
    page.wait_for_url(f"**/units/{units[2]}.html")
    page.keyboard.press("ArrowRight")  # the last unit: nowhere to go
    page.wait_for_timeout(200)
    assert page.url.endswith(f"/units/{units[2]}.html")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(f"**/units/{units[1]}.html")
    page.keyboard.press("ArrowUp")
    page.wait_for_url("**/relu2/index.html")
    page.close()


def test_layer_search_filters_the_tables(built, browser):
    _, out = built
    page = browser.new_page()
    page.goto((out / "index.html").as_uri())
    page.fill("#layer-search", "relu2")
    visible = page.evaluate("""() => [...document.querySelectorAll('tr[data-layer]')]
                              .filter(row => row.style.display !== 'none').map(row => row.dataset.layer)""")
    assert visible == ["relu2"]
    page.close()


def test_report_refuses_bad_input(tiny_model, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(ConvlensError, match="not an image"):
        convlens.report(tiny_model, [not_image])
    with pytest.raises(ConvlensError, match="no images"):
        convlens.report(tiny_model, [])
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "thesis.txt").write_text("precious")
    photo = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(photo)
    with pytest.raises(ConvlensError, match="not a convlens output"):
        convlens.report(tiny_model, [photo], units=1, details=0).save(user_folder)
    assert (user_folder / "thesis.txt").read_text() == "precious"


def test_cli_writes_the_report_and_prints_its_address(tiny_model, sample_photos, tmp_path, capsys):
    from typer.testing import CliRunner

    from convlens.cli import app

    weights = tmp_path / "tiny.pt"
    torch.save(tiny_model.module.state_dict(), weights)
    out = tmp_path / "report"
    outcome = CliRunner().invoke(app, ["report", "baseline:32", str(sample_photos[0]), "--weights", str(weights),
                                       "--out", str(out), "--units", "2", "--details", "0", "--method", "gradcam",
                                       "--device", "cpu"])
    assert outcome.exit_code == 0, outcome.output
    assert (out / "index.html").is_file() and (out / "summary.json").is_file()
    assert (out / "index.html").resolve().as_uri() in outcome.output.replace("\n", "")
    saved = np.load(out / "arrays.npz")
    expected = convlens.report(tiny_model, [sample_photos[0]], units=2, details=0, methods=["gradcam"]).arrays()
    np.testing.assert_allclose(saved["cam/gradcam"], expected["cam/gradcam"], atol=1e-6)
