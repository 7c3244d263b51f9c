"""Top-k over a folder: a planted pattern must be found in the right images at the right places."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.deconv import deconv_projection
from convlens.errors import ConvlensError
from convlens.models import BaselineCNN, ImageClassifier, baseline_preprocessing
from convlens.topk import parse_units, top_activations, top_examples, top_examples_figure

CROSS = np.zeros((5, 5), dtype=np.float32)
CROSS[2, :] = CROSS[:, 2] = 1.0
PLANTED = {3: (6, 9), 7: (20, 5), 8: (15, 15), 12: (27, 27), 15: (4, 22), 20: (11, 2), 21: (24, 13), 26: (2, 2),
           29: (1, 1)}  # image index -> centre (row, col); strongest first in this order


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory):
    """30 dark noise images; nine carry a red cross of decreasing contrast at a known place. (Dark, because the
    conv's zero padding then looks like more background: no border responses.)"""
    folder = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    for index in range(30):
        pixels = 10 + rng.integers(-2, 3, (32, 32, 3))
        if index in PLANTED:
            rank = list(PLANTED).index(index)
            row, col = PLANTED[index]
            padded = np.pad(pixels[..., 0], 2)  # the cross may hang over the border
            padded[row:row + 5, col:col + 5] += ((200 - 12 * rank) * CROSS).astype(int)
            pixels[..., 0] = padded[2:-2, 2:-2]
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"img_{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def cross_detector():
    """The baseline CNN with conv1 filter 0 set to a zero-mean red cross (a matched filter)."""
    torch.manual_seed(0)
    module = BaselineCNN(3, 32).eval()
    with torch.no_grad():
        module.conv1.weight[0] = 0
        module.conv1.weight[0, 0] = torch.from_numpy(CROSS - CROSS.mean())
        module.conv1.bias[0] = 0
    return ImageClassifier(module, baseline_preprocessing(32), ["a", "b", "c"], spec="baseline",
                           architecture="baseline")


@pytest.mark.parametrize("batch_size", [4, 7, 64])
def test_planted_cross_found_in_the_right_images_and_places(cross_detector, planted_folder, batch_size):
    top = top_activations(cross_detector, planted_folder, "conv1", units=[0, 5], k=9, batch_size=batch_size)
    assert top.units == [0, 5] and len(top.paths) == 30
    assert top.images[0].tolist() == list(PLANTED)  # the crosses, strongest contrast first
    assert [tuple(p) for p in top.positions[0].tolist()] == list(PLANTED.values())
    assert (top.values[0, :-1] > top.values[0, 1:]).all()
    # the value is the filter response at the centre, computed here from the pixels directly
    for rank, index in enumerate(PLANTED):
        pixels = np.asarray(Image.open(top.paths[index]), dtype=np.float64) / 255
        row, col = PLANTED[index]
        window = np.pad(pixels[..., 0], 2)[row:row + 5, col:col + 5]
        assert float(top.values[0, rank]) == pytest.approx(float((window * (CROSS - CROSS.mean())).sum()), abs=1e-5)


def test_top_examples_crop_the_field_and_project_the_filter(cross_detector, planted_folder):
    top = top_activations(cross_detector, planted_folder, "conv1", units=[0], k=9, batch_size=8)
    examples = top_examples(cross_detector, top, rule="deconvnet", batch_size=4)
    assert examples.field.size == (5, 5)
    weight = cross_detector.module.conv1.weight[0].detach().numpy()
    for rank, index in enumerate(PLANTED):
        row, col = PLANTED[index]
        top_row, left, bottom, right = examples.boxes[0, rank]
        assert (top_row, left, bottom, right) == (max(row - 2, 0), max(col - 2, 0), row + 3, col + 3)
        # one activation of conv1 fed down through the transposed filter is the filter, scaled
        value = float(top.values[0, rank])
        clipped = slice(5 - (bottom - top_row), 5), slice(5 - (right - left), 5)  # padded on the clipped side
        np.testing.assert_allclose(examples.projections[0, rank][:, clipped[0], clipped[1]],
                                   value * weight[:, clipped[0], clipped[1]], rtol=1e-5, atol=1e-7)
        display = np.asarray(Image.open(top.paths[index]), dtype=np.float32) / 255
        np.testing.assert_allclose(examples.patches[0, rank][clipped[0], clipped[1]],
                                   display[top_row:bottom, left:right], atol=1e-6)
    assert examples.patches[0, list(PLANTED).index(29)][0, 0].tolist() == [1.0, 1.0, 1.0]  # clipped corner: white
    figure = top_examples_figure(examples)
    assert "conv1" in figure._suptitle.get_text()


def test_batched_projections_match_single_image_projection(planted_folder):
    torch.manual_seed(1)
    module = BaselineCNN(3, 32).eval()
    model = ImageClassifier(module, baseline_preprocessing(32), ["a", "b", "c"])
    top = top_activations(model, planted_folder, "relu3", units="2:5", k=3, batch_size=16)
    examples = top_examples(model, top, rule="guided", batch_size=5)
    for u, unit in enumerate(top.units):
        image = int(top.images[u, 1])
        single = deconv_projection(model, model.prepare(top.paths[image]), "relu3", unit, "max", "guided")
        t, left, b, r = examples.boxes[u, 1]
        crop = examples.projections[u, 1]
        rows, cols = b - t, r - left
        inner = crop[:, crop.shape[1] - rows if t == 0 else 0:][:, :rows, crop.shape[2] - cols if left == 0 else 0:]
        np.testing.assert_allclose(inner[:, :, :cols], single[:, t:b, left:r].numpy(), rtol=1e-5, atol=1e-8)
        outside = single.clone()
        outside[:, t:b, left:r] = 0
        assert outside.abs().max() == 0  # the field holds the whole projection


def _small_model(name: str) -> tuple[ImageClassifier, str]:
    """Random-init models at 64 px covering what the field cut must handle (model, layer)."""
    import timm
    import torchvision

    from convlens.models import Preprocessing

    torch.manual_seed(0)
    preprocessing = Preprocessing(crop=(64, 64), resize=None, squash=True)
    if name == "baseline":
        return ImageClassifier(BaselineCNN(3, 32).eval(), baseline_preprocessing(32), ["a", "b", "c"]), "relu3"
    if name == "resnet18":  # skip connections, padded stride-2 stem and max-pool
        return ImageClassifier(torchvision.models.resnet18(num_classes=3).eval(), preprocessing, list("abc")), \
            "layer1"
    # tf_efficientnet_lite0: TensorFlow "same" padding, computed from the input size; efficientnet_b0:
    # squeeze-excitation, every activation depends on the whole image
    module = timm.create_model(name, pretrained=False, num_classes=3).eval()
    return ImageClassifier(module, preprocessing, list("abc")), "blocks.1"


@pytest.mark.parametrize("name, cut_everywhere", [("baseline", True), ("resnet18", True),
                                                  ("tf_efficientnet_lite0", True), ("efficientnet_b0", False)])
def test_projections_cut_to_the_field_equal_whole_image_projections(name, cut_everywhere, sample_photos,
                                                                    planted_folder, monkeypatch):
    import convlens.topk as topk_module

    model, layer = _small_model(name)
    folder = planted_folder if name == "baseline" else sample_photos
    top = top_activations(model, folder, layer, units="0:6", k=3, batch_size=4)
    whole = top_examples(model, top, rule="guided", crop_to_field=False)
    cut_jobs, missed_jobs = [], []
    project_cut = topk_module._project_cut

    def counting(model, inputs, jobs, *args):
        missed = project_cut(model, inputs, jobs, *args)
        cut_jobs.extend(jobs)
        missed_jobs.extend(missed)
        return missed

    monkeypatch.setattr(topk_module, "_project_cut", counting)
    cut = top_examples(model, top, rule="guided")
    scale = np.abs(whole.projections).max()
    assert scale > 0
    np.testing.assert_allclose(cut.projections, whole.projections, rtol=1e-4, atol=1e-5 * scale)
    if cut_everywhere:  # every projection ran on a cut, none fell back (TF "same" padding included)
        assert len(cut_jobs) == len(top.entries()) and not missed_jobs
    else:  # squeeze-excitation: the activation sees the whole image, never cut
        assert cut.field.global_context and not cut_jobs


def test_scan_keeps_the_inputs_of_the_table_only(planted_folder, cross_detector):
    top = top_activations(cross_detector, planted_folder, "conv1", units=[0], k=9, batch_size=4)
    assert sorted(top.inputs) == sorted(PLANTED)
    for index, kept in top.inputs.items():
        torch.testing.assert_close(kept, cross_detector.preprocessing.to_tensor(
            Image.open(top.paths[index]).convert("RGB")))


def test_parse_units():
    assert parse_units("0:4", 10) == [0, 1, 2, 3]
    assert parse_units("0:64:20", 50) == [0, 20, 40]
    assert parse_units("3, 7,3", 10) == [3, 7]
    assert parse_units(None, 3) == [0, 1, 2]
    with pytest.raises(ConvlensError, match="out of range"):
        parse_units("12", 10)
    with pytest.raises(ConvlensError, match="START:STOP"):
        parse_units("a:b", 10)


def test_bad_image_is_a_one_line_error(cross_detector, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConvlensError, match="broken.png"):
        top_activations(cross_detector, tmp_path, "conv1", units=[0])


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from torch import nn
    from convlens.models import ImageClassifier, Preprocessing
    from convlens.topk import top_activations
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()).eval()
    model = ImageClassifier(module, Preprocessing(crop=(112, 112), resize=None, squash=True), ["x"])
    top_activations(model, sys.argv[1], "1", units=[0, 1], k=9, batch_size=8)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_peak_memory_does_not_grow_with_the_folder(tmp_path):
    """30 and 150 images, each 112x112 once preprocessed (150 kB as input, 100 kB as feature map): holding
    them all would add about 30 MB; streaming keeps the peak the same."""
    peaks = {}
    rng = np.random.default_rng(0)
    for count in (30, 150):
        folder = tmp_path / str(count)
        folder.mkdir()
        for index in range(count):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
        result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(folder)], capture_output=True, text=True,
                                check=True)
        peaks[count] = int(result.stdout.strip().splitlines()[-1]) / 1024  # MB
    assert peaks[150] - peaks[30] < 10, peaks


def test_cli_topk(tmp_path, planted_folder, cross_detector):
    from convlens.cli import main
    from convlens.models import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "model", cross_detector.module, {
        "architecture": "baseline", "img_size": 32, "class_names": ["a", "b", "c"],
        "preprocessing": baseline_preprocessing(32).to_dict()})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["topk", str(checkpoint), str(planted_folder), "--layer", "conv1", "--units", "0:3", "--k", "4",
              "--batch-size", "8", "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    arrays = np.load(out / "arrays.npz")
    assert arrays["values"].shape == (3, 4) and arrays["projections"].shape == (3, 4, 3, 5, 5)
    assert arrays["images"][0].tolist() == list(PLANTED)[:4]
    assert arrays["input"].shape[1:] == (3, 32, 32) and len(arrays["input"]) == len(arrays["input_images"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["receptive_field"]["size"] == [5, 5]
    assert summary["top"][0]["top"][0]["image"].endswith("img_03.png")
    assert (out / "topk.png").is_file()
