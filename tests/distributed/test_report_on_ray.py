"""The report's shared pass on a real local Ray gives the in-process scan exactly (top-k tables, probabilities,
mean activations, histograms, tiles), and ``convlens.report(..., ray=...)`` the same report."""

from __future__ import annotations

import numpy as np
import torch

from convlens.distributed import RayOptions
from convlens.report.on_ray import scan_on_ray
from convlens.report.scan import shared_pass

LAYERS = ["relu1", "relu3"]
FIELDS = ("means", "maxima", "histogram_edges", "histogram_counts", "image_channels", "image_tiles", "tile_ranges")


def images(folder):
    from convlens.data.images import list_images

    return list_images(folder)


def test_scan_on_two_workers_equals_the_shared_pass(ray_instance, checkpoint_model, image_folder):
    paths = images(image_folder)
    local = shared_pass(checkpoint_model, paths, LAYERS, k=5, batch_size=4)
    ours = scan_on_ray(checkpoint_model, paths, LAYERS, 5, 4, RayOptions("local", workers=2))
    torch.testing.assert_close(ours.probabilities, local.probabilities, rtol=0, atol=0)
    torch.testing.assert_close(ours.inputs, local.inputs, rtol=0, atol=0)
    for name in LAYERS:
        theirs, mine = local.layers[name], ours.layers[name]
        assert (mine.channels, mine.map_size, mine.calls) == (theirs.channels, theirs.map_size, theirs.calls)
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(mine, field), getattr(theirs, field), err_msg=f"{name} {field}")
            assert getattr(mine, field).dtype == getattr(theirs, field).dtype, field
        for field in ("values", "images", "flat_positions"):
            torch.testing.assert_close(getattr(mine.top, field), getattr(theirs.top, field), rtol=0, atol=0)
        assert sorted(mine.top.inputs) == sorted(theirs.top.inputs) == list(range(len(paths)))
        assert len(set(theirs.top.images[:, 0].tolist())) > 2  # a real contest between images
    assert int(local.layers["relu3"].histogram_counts.sum()) == 22 * np.prod(local.layers["relu3"].map_size) * \
        local.layers["relu3"].channels


def test_report_on_ray_is_the_same_report(ray_instance, checkpoint_model, image_folder, tmp_path):
    from convlens.report import report

    paths = images(image_folder)[:8]
    options = {"layers": ["relu2"], "units": 2, "k": 3, "methods": ["gradcam"], "details": 0, "batch_size": 4}
    local = report(checkpoint_model, paths, **options)
    ours = report(checkpoint_model, paths, ray="local", workers=1, **options)
    mine, theirs = ours.arrays(), local.arrays()
    assert sorted(mine) == sorted(theirs) and "top_values/relu2" in theirs
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    assert ours.collected.unit_pages == local.collected.unit_pages
    strip = lambda s: {k: v for k, v in s.items() if k not in ("seconds", "compute_seconds")}  # noqa: E731
    assert strip(ours.summary()) == strip(local.summary())
