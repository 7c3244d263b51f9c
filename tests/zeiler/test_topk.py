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

from convlens.errors import ConvlensError
from convlens.models import BaselineCNN, ImageClassifier, baseline_preprocessing
from convlens.zeiler import scan_top, top_activations, topk_result
from convlens.zeiler.deconv import deconv_projection, parse_units
from convlens.zeiler.figures import top_examples_figure
from convlens.zeiler.topk import image_paths

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
    top = top_activations(cross_detector, planted_folder, "conv1", units=[0], k=9, batch_size=8, rule="deconvnet",
                          projection_batch_size=4)
    examples = top
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
    top = top_activations(model, planted_folder, "relu3", units="2:5", k=3, batch_size=16, rule="guided",
                          projection_batch_size=5)
    examples = top
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
    import convlens.zeiler.field_cuts as topk_module

    model, layer = _small_model(name)
    paths = image_paths(planted_folder if name == "baseline" else sample_photos)
    top = scan_top(model, paths, layer, units="0:6", k=3, batch_size=4)
    whole = topk_result(model, paths, top, rule="guided", crop_to_field=False)
    cut_jobs, missed_jobs = [], []
    project_cut = topk_module._project_cut

    def counting(model, inputs, jobs, *args):
        missed = project_cut(model, inputs, jobs, *args)
        cut_jobs.extend(jobs)
        missed_jobs.extend(missed)
        return missed

    monkeypatch.setattr(topk_module, "_project_cut", counting)
    cut = topk_result(model, paths, top, rule="guided")
    scale = np.abs(whole.projections).max()
    assert scale > 0
    np.testing.assert_allclose(cut.projections, whole.projections, rtol=1e-4, atol=1e-5 * scale)
    if cut_everywhere:  # every projection ran on a cut, none fell back (TF "same" padding included)
        assert len(cut_jobs) == len(top.entries()) and not missed_jobs
    else:  # squeeze-excitation: the activation sees the whole image, never cut
        assert cut.field.global_context and not cut_jobs


def test_scan_keeps_the_inputs_of_the_table_only(planted_folder, cross_detector):
    paths = image_paths(planted_folder)
    top = scan_top(cross_detector, paths, "conv1", units=[0], k=9, batch_size=4)
    assert sorted(top.inputs) == sorted(PLANTED)
    for index, kept in top.inputs.items():
        torch.testing.assert_close(kept, cross_detector.preprocessing.to_tensor(
            Image.open(paths[index]).convert("RGB")))


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
    from convlens.zeiler import scan_top
    from convlens.zeiler.topk import image_paths
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()).eval()
    model = ImageClassifier(module, Preprocessing(crop=(112, 112), resize=None, squash=True), ["x"])
    scan_top(model, image_paths(sys.argv[1]), "1", units=[0, 1], k=9, batch_size=8)
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
    # the CLI saves exactly what the library returns for the same inputs
    api = top_activations(cross_detector, planted_folder, "conv1", units="0:3", k=4, batch_size=8).arrays()
    assert sorted(api) == sorted(arrays.files)
    for name, value in api.items():
        np.testing.assert_allclose(arrays[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    assert set(summary["figures"]) == {p.name for p in out.glob("*.png")}


def _same_table(a, b) -> None:
    assert torch.equal(a.values, b.values)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.flat_positions, b.flat_positions)
    assert torch.equal(a.positions, b.positions)
    assert sorted(a.inputs) == sorted(b.inputs)


def test_shards_merge_into_the_table_of_one_scan(cross_detector, planted_folder):
    """Issue 18's distributed scan: each shard scanned on its own (image indices into the whole list), then
    merged, equals one scan over the folder: values, image indices and positions, in either merge order."""
    paths = image_paths(planted_folder)
    one = scan_top(cross_detector, paths, "relu1", units="0:8", k=5, batch_size=5)
    first = scan_top(cross_detector, paths[:15], "relu1", units="0:8", k=5, batch_size=5)
    second = scan_top(cross_detector, paths[15:], "relu1", units="0:8", k=5, batch_size=5, first_index=15)
    assert (first.images < 15).all() and (second.images >= 15).all()
    merged = first.merge(second)
    _same_table(merged, one)
    _same_table(second.merge(first), one)
    assert one.images[0].tolist() == list(PLANTED)[:5]
    # three uneven shards, merged in a scrambled order
    thirds = [scan_top(cross_detector, paths[a:b], "relu1", units="0:8", k=5, batch_size=5, first_index=a)
              for a, b in ((0, 7), (7, 22), (22, 30))]
    _same_table(thirds[2].merge(thirds[0]).merge(thirds[1]), one)
    with pytest.raises(ConvlensError, match="cannot be merged"):
        one.merge(scan_top(cross_detector, paths[:5], "relu1", units="0:4", k=5))


def test_ties_keep_the_earlier_image_in_scans_and_merges(cross_detector, tmp_path):
    """Identical copies of one image tie on every unit: the earlier file wins, whether the copies meet in one
    batch, in consecutive batches or only when two shards are merged."""
    rng = np.random.default_rng(3)
    strong = (10 + rng.integers(0, 240, (32, 32, 3))).clip(0, 255).astype(np.uint8)
    for index in range(12):
        pixels = strong if index in (2, 7, 9) else (10 + rng.integers(-2, 3, (32, 32, 3))).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"img_{index:02d}.png")
    paths = image_paths(tmp_path)
    one = scan_top(cross_detector, paths, "conv1", units="0:6", k=4, batch_size=3)
    assert one.images[:, :3].tolist() == [[2, 7, 9]] * 6
    shards = [scan_top(cross_detector, paths[a:b], "conv1", units="0:6", k=4, batch_size=2, first_index=a)
              for a, b in ((0, 8), (8, 12))]
    _same_table(shards[1].merge(shards[0]), one)
    _same_table(shards[0].merge(shards[1]), one)


def test_fewer_images_than_k_keep_what_there_is(cross_detector, planted_folder, tmp_path):
    """Issue 14.7: a folder of 3 images with k 9 (an IndexError before) fills 3 slots per unit and leaves six
    empty (image -1, value NaN), in the arrays, the summary, the figure and the CLI."""
    folder = tmp_path / "three"
    folder.mkdir()
    for index in (3, 7, 11):
        (folder / f"img_{index:02d}.png").write_bytes((planted_folder / f"img_{index:02d}.png").read_bytes())
    result = top_activations(cross_detector, folder, "conv1", units=[0, 1], k=9, batch_size=2)
    assert result.images.shape == (2, 9) and result.projections.shape[:2] == (2, 9)
    assert result.images[0].tolist() == [0, 1, 2] + [-1] * 6  # files 3 and 7 carry crosses, 3 the stronger
    assert np.isfinite(result.values[:, :3]).all() and np.isnan(result.values[:, 3:]).all()
    assert (result.boxes[:, 3:] == -1).all() and (result.positions[:, 3:] == -1).all()
    assert all(len(row["top"]) == 3 for row in result.table())
    top_examples_figure(result)
    from convlens.cli import main

    checkpoint = _checkpoint(tmp_path, cross_detector)
    with pytest.raises(SystemExit) as exit_info:
        main(["topk", str(checkpoint), str(folder), "--layer", "conv1", "--units", "0,1", "--out", str(tmp_path / "o"),
              "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "arrays.npz")["images"], result.images)


def _checkpoint(tmp_path, model):
    from convlens.models import save_checkpoint

    return save_checkpoint(tmp_path / "model", model.module, {
        "architecture": "baseline", "img_size": 32, "class_names": ["a", "b", "c"],
        "preprocessing": baseline_preprocessing(32).to_dict()})


def test_progress_goes_to_a_callback(cross_detector, planted_folder):
    events = []
    top_activations(cross_detector, planted_folder, "conv1", units=[0], k=2, batch_size=10,
                    progress=lambda description, done, total: events.append((description, done, total)))
    scan = [event for event in events if event[0] == "scanning images"]
    assert scan[0] == ("scanning images", 0, 3) and scan[-1] == ("scanning images", 3, 3)
    assert events[-1][0] == "projecting" and events[-1][1] == events[-1][2]
