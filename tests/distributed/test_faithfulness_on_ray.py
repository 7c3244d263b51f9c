"""Faithfulness on a real local Ray equals the in-process ``convlens.faithfulness``: every per-image score, the
curves, the maps and the table (mean and bootstrap interval), with the pointing game; an unreadable image is
reported and the rest is scored."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import convlens
from convlens.distributed import faithfulness_on_ray, read_shards

METHODS = "gradcam,saliency,center"
# every metric; ROAD without its imputation noise (the one stream drawn across all images in-process)
ARGS = {"metrics": "deletion,insertion,road,drop,pointing,sanity", "noise": 0.0, "sanity_steps": 2,
        "batch_size": 64, "resamples": 500, "seed": 3}


@pytest.fixture(scope="module")
def scored_folder(image_folder, tmp_path_factory):
    """Nine images of the session folder and, in the middle of the list, a file that is not an image; boxes for
    three of the images (one with two objects)."""
    root = tmp_path_factory.mktemp("faith") / "images"
    for path in sorted(image_folder.rglob("*.png"), key=lambda p: p.name)[:9]:  # im00 ... im08
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / path.parent.name / path.name)
    (root / "cats" / "im05-broken.png").write_bytes(b"not an image")
    boxes = {"images": {
        "im00.png": [{"object": "cat", "classes": [0], "box": [2, 2, 30, 20]},
                     {"object": "bird", "classes": [1, 2], "box": [20, 10, 40, 30]}],
        "im03.png": [{"object": "dog", "classes": [1], "box": [0, 0, 12, 12]}],
        "im08.png": [{"object": "cat", "classes": [0], "box": [10, 10, 40, 36]}]}}
    return root, boxes


def readable(root):
    from convlens.data.images import list_images

    return [p for p in list_images(root) if "broken" not in p.name]


def rounding_tolerance(name: str) -> float:
    """The absolute tolerance of a per-image array or score between Ray and in-process. A batch holds other
    images on Ray than in-process (here 2 against 9), so float32 sums run in another order: measured on an Intel
    Xeon up to 5e-7 on a map, 3e-8 on a curve point, 6e-8 on a sanity similarity. On an AMD EPYC oneDNN also
    rounds a convolution differently for another batch size (3.7e-6 on a Grad-CAM map scaled to [0, 1]), and
    the order of near-tied pixels then changes: which pixels a deletion or insertion step moves (7e-5 on a curve
    point) and how Spearman ranks the randomised model's nearly flat maps (1.2e-5). About 7x those here."""
    if name.startswith(("deletion_curve", "insertion_curve")):
        return 5e-4
    if name.startswith("sanity_spearman"):
        return 1e-4
    return 2e-5 if name.startswith("map.") else 2e-6


def test_faithfulness_on_two_workers_equals_in_process(ray_instance, checkpoint_model, scored_folder, tmp_path):
    root, boxes = scored_folder
    result = faithfulness_on_ray(checkpoint_model, root, tmp_path / "ray", methods=METHODS, boxes=boxes,
                                 images_per_task=2, shard_size=4, workers=2, **ARGS)
    local = convlens.faithfulness(checkpoint_model, [str(p) for p in readable(root)], methods=METHODS,
                                  boxes=boxes, **ARGS)
    ours, theirs = result.arrays(), local.arrays()
    assert sorted(ours) == sorted(theirs)
    assert "pointing.gradcam" in theirs and len(theirs["pointing.gradcam"]) == 4  # four objects
    assert len(theirs["deletion.gradcam"]) == 9 and "sanity_ssim.saliency" in theirs
    for name in ("target", "pointing.gradcam", "pointing.saliency", "pointing.center"):
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=rounding_tolerance(name), err_msg=name)
    assert result.trials == local.trials and result.sanity_layers == local.sanity_layers
    assert result.classes == local.classes and result.image_names == local.image_names
    for ray_row, local_row in zip(result.table, local.table, strict=True):
        assert ray_row["method"] == local_row["method"] and set(ray_row["scores"]) == set(local_row["scores"])
        for score, values in local_row["scores"].items():
            np.testing.assert_allclose(ray_row["scores"][score], values, rtol=1e-5, atol=rounding_tolerance(score),
                                       err_msg=score)
    assert result.csv().splitlines()[0] == local.csv().splitlines()[0]

    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert [e["path"] for e in summary["unreadable"]] == [str(root / "cats" / "im05-broken.png")]
    assert summary["images_scored"] == 9 and summary["inputs_total"] == 10
    assert summary["ray"]["shards"] == 3 and summary["ray"]["workers"] == 2
    assert (tmp_path / "ray" / "table.csv").read_text().startswith("method,deletion,")
    assert (tmp_path / "ray" / "ranking.png").is_file() and (tmp_path / "ray" / "maps.png").is_file()
    table = read_shards(tmp_path / "ray")
    assert table.column("index").to_pylist() == list(range(10)) and "map.gradcam" in table.column_names


def test_cli_on_ray_then_resumed(ray_instance, checkpoint_model, scored_folder, tmp_path, capsys):
    """``convlens faithfulness --ray local`` (joining the running Ray) writes the table; run again with --resume
    it computes nothing and writes the same table."""
    from convlens.cli import main

    root, _ = scored_folder
    out = tmp_path / "faith"
    arguments = ["faithfulness", checkpoint_model.spec, str(root), "--out", str(out), "--methods", "gradcam,center",
                 "--metrics", "deletion,drop", "--ray", "local", "--device", "cpu"]
    def run(extra=()):
        with pytest.raises(SystemExit) as exit_code:
            main([*arguments, *extra])
        assert exit_code.value.code == 0
        printed = capsys.readouterr()
        return printed.out + printed.err

    assert "skipped" in run()  # the unreadable file, in one line
    first = (out / "table.csv").read_text()
    local = convlens.faithfulness(checkpoint_model, [str(p) for p in readable(root)], methods="gradcam,center",
                                  metrics="deletion,drop")
    np.testing.assert_allclose(json.loads((out / "summary.json").read_text())["table"][0]["deletion"]["mean"],
                               local.score("gradcam", "deletion"), rtol=1e-6)

    assert "resumed: 1 of 1 shards were already done, 0 images computed now" in run(["--resume"])
    assert (out / "table.csv").read_text() == first
