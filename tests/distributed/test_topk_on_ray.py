"""Top-k mining on a real local Ray equals the in-process scan exactly: values, images, positions, and the
patches and projections of the winners."""

from __future__ import annotations

import json

import numpy as np

from convlens.distributed import read_shards, topk_on_ray
from convlens.zeiler import top_activations

EXACT = ("values", "images", "positions", "boxes", "patches", "projections", "input", "input_images", "units")


def test_topk_on_two_workers_equals_the_local_scan(ray_instance, checkpoint_model, image_folder, tmp_path):
    local = top_activations(checkpoint_model, image_folder, "relu2", units="0:12", k=4, batch_size=4)
    # three shards (8, 8, 6 images) over two workers, folded on the driver
    result = topk_on_ray(checkpoint_model, image_folder, "relu2", tmp_path / "ray", units="0:12", k=4,
                         batch_size=4, workers=2, shard_size=8)
    ours, theirs = result.arrays(), local.arrays()
    assert sorted(ours) == sorted(theirs)
    for name in EXACT:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert (theirs["images"] >= 0).all() and len(set(theirs["images"].ravel())) > 4  # a real contest

    # the saved folder is the in-process one, plus how it ran and every image's unit maxima in the shards
    saved = dict(np.load(tmp_path / "ray" / "arrays.npz"))
    np.testing.assert_array_equal(saved["values"], theirs["values"])
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["command"] == "topk" and summary["ray"]["workers"] == 2 and summary["unreadable"] == []
    table = read_shards(tmp_path / "ray")
    assert len(table) == 22
    maxima = np.stack(table.column("values").to_numpy(zero_copy_only=False))
    # each unit's best value over all images is the table's first entry
    np.testing.assert_array_equal(maxima.max(axis=0), theirs["values"][:, 0])
