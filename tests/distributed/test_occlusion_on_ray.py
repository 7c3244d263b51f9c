"""Folder occlusion on a real local Ray equals ``convlens.occlusion`` run image by image in this process."""

from __future__ import annotations

import json

import numpy as np
import pytest

import convlens
from convlens.distributed import occlusion_on_ray, read_shards
from convlens.errors import ConvlensError

SETTINGS = {"window": 8, "stride": 4, "fill": "mean"}  # 7 x 7 positions on the 32 px baseline


def images_of(folder):
    from convlens.data.images import list_images

    return list_images(folder)


def test_every_image_equals_in_process_occlusion(ray_instance, checkpoint_model, image_folder, tmp_path):
    paths = images_of(image_folder)[:6]
    result = occlusion_on_ray(checkpoint_model, paths, tmp_path / "ray", workers=2, shard_size=4, **SETTINGS)
    table = read_shards(tmp_path / "ray")
    assert table.column("index").to_pylist() == list(range(6))
    for row, path in zip(table.to_pylist(), paths, strict=True):
        local = convlens.occlusion(checkpoint_model, path, **SETTINGS)
        for name in ("target_score", "top_prob", "feature_activation", "attribution", "clean_probabilities"):
            expected = getattr(local, name).numpy()
            np.testing.assert_array_equal(np.asarray(row[name], dtype=np.float32).reshape(expected.shape),
                                          expected, err_msg=f"{path.name} {name}")
        np.testing.assert_array_equal(np.asarray(row["top_class"]).reshape(7, 7), local.top_class.numpy())
        assert (row["target"], row["predicted"], row["feature_channel"]) == (
            local.target, local.top_prediction, local.feature_channel)
        assert row["clean_score"] == pytest.approx(local.clean_score, abs=0)

    # the output folder is the in-process one of the first image, arrays, figures and summary alike
    local = convlens.occlusion(checkpoint_model, paths[0], **SETTINGS)
    local.save(tmp_path / "local")
    ours, theirs = np.load(tmp_path / "ray" / "arrays.npz"), np.load(tmp_path / "local" / "arrays.npz")
    assert sorted(ours.files) == sorted(theirs.files)
    for name in theirs.files:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["inputs"] == [str(paths[0])] and summary["images_explained"] == 6
    assert summary["ray"]["workers"] == 2 and summary["ray"]["shards"] == 2
    assert {p.name for p in (tmp_path / "ray").glob("*.png")} == {"occlusion.png", "attribution.png"}
    assert result.summary()["top_prediction"] == local.summary()["top_prediction"]


def test_bad_options_fail_in_one_line_before_ray_starts(checkpoint_model, image_folder, tmp_path):
    with pytest.raises(ConvlensError, match="--size 64: the occluder must fit"):
        occlusion_on_ray(checkpoint_model, [image_folder], tmp_path / "o", window=64)
    with pytest.raises(ConvlensError, match="zebra"):
        occlusion_on_ray(checkpoint_model, [image_folder], tmp_path / "o", target="zebra")
    assert not (tmp_path / "o").exists()


def test_cli_occlusion_of_a_folder_on_ray(ray_instance, checkpoint_model, image_folder, tmp_path, capsys):
    """``convlens occlusion MODEL FOLDER --ray local``: every image's maps in the shards; in-process a folder
    stays one line naming the fix."""
    from convlens.cli import main

    def run(arguments):
        with pytest.raises(SystemExit) as exit_code:
            main(["occlusion", checkpoint_model.spec, str(image_folder), "--size", "8", "--stride", "8",
                  "--device", "cpu", *arguments])
        return exit_code.value.code

    assert run(["--ray", "local", "--out", str(tmp_path / "out")]) == 0
    table = read_shards(tmp_path / "out")
    assert len(table) == len(images_of(image_folder)) == 22
    assert np.asarray(table.column("target_score")[0].as_py()).size == 16  # 4 x 4 positions
    capsys.readouterr()
    assert run(["--out", str(tmp_path / "local")]) == 2
    assert "add --ray local" in capsys.readouterr().err
    assert not (tmp_path / "local").exists()
