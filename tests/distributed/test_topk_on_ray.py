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
                         batch_size=4, workers=2, shard_size=8, projections_on_ray=True)
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
    # the 12 x 4 projections ran on Ray actors, not on the driver
    assert summary["ray"]["projections"]["on"] == "ray" and summary["ray"]["projections"]["projections"] == 48
    assert summary["ray"]["projections"]["actors"] >= 1
    table = read_shards(tmp_path / "ray")
    assert len(table) == 22
    maxima = np.stack(table.column("values").to_numpy(zero_copy_only=False))
    # each unit's best value over all images is the table's first entry
    np.testing.assert_array_equal(maxima.max(axis=0), theirs["values"][:, 0])


def test_projections_split_over_two_actors_equal_the_local_ones(ray_instance, checkpoint_model, image_folder,
                                                               tmp_path):
    # projection_batch_size=1: the 8 x 3 cut projections of relu3 form several chunks, shared by two actors
    local = top_activations(checkpoint_model, image_folder, "relu3", units="0:8", k=3, batch_size=4,
                            projection_batch_size=1)
    result = topk_on_ray(checkpoint_model, image_folder, "relu3", tmp_path / "ray", units="0:8", k=3,
                         batch_size=4, projection_batch_size=1, workers=2, shard_size=8, projections_on_ray=True)
    ran = result.summary()["ray"]["projections"]
    assert ran["actors"] == 2 and ran["chunks"] >= 4 and ran["projections"] == 24
    ours, theirs = result.arrays(), local.arrays()
    for name in EXACT:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert np.abs(theirs["projections"]).max() > 0 and (theirs["projections"] != 0).any(axis=(2, 3, 4)).all()


def test_whole_image_projections_on_ray_equal_the_local_ones(ray_instance, image_folder, tmp_path):
    """A stride-3 convolution on 32 px: the cuts of layer "3" do not reproduce the scanned activations, so the
    actors send every job back as missed and the whole-image chunks follow (on the actors too); the custom
    module travels pickled."""
    import torch
    from torch import nn

    from convlens.models.classifier import ImageClassifier
    from convlens.models.loading import baseline_preprocessing

    torch.manual_seed(5)
    module = nn.Sequential(nn.Conv2d(3, 6, 5, stride=3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    model = ImageClassifier(module, baseline_preprocessing(32), ["cats", "dogs"])
    local = top_activations(model, image_folder, "3", units="0:4", k=3, batch_size=4, projection_batch_size=2)
    result = topk_on_ray(model, image_folder, "3", tmp_path / "ray", units="0:4", k=3, batch_size=4,
                         projection_batch_size=2, workers=2, shard_size=8, projections_on_ray=True)
    ran = result.summary()["ray"]["projections"]
    assert ran["chunks"] == 2 + 6 and ran["projections"] == 12  # 2 cut chunks (all missed), 6 of 2 whole images
    ours, theirs = result.arrays(), local.arrays()
    for name in EXACT:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    # a real projection wherever the activation is positive (units that never fire project nothing)
    fired = theirs["values"] > 0
    assert fired.sum() >= 6
    np.testing.assert_array_equal((theirs["projections"] != 0).any(axis=(2, 3, 4)), fired)


def test_projection_actors_killed_mid_way_are_restarted_and_the_projections_unchanged(
        ray_instance, checkpoint_model, image_folder):
    from convlens.distributed.cluster import RayOptions
    from convlens.distributed.projections import RayProjections
    from convlens.zeiler import scan_top, topk_result
    from convlens.zeiler.topk import image_paths

    paths = image_paths(image_folder)
    table = scan_top(checkpoint_model, paths, "relu3", units="0:6", k=3, batch_size=4)
    local = topk_result(checkpoint_model, paths, table, batch_size=1)
    projector = RayProjections(checkpoint_model, RayOptions(workers=2))
    killed = []

    def kill_after_the_first_chunk(inputs, chunks, layer, rule):
        for outcome in projector(inputs, chunks, layer, rule):
            if not killed:  # the other chunks are queued or running on the actors now
                for actor in projector.actors:
                    ray_instance.kill(actor, no_restart=False)
                killed.append(len(projector.actors))
            yield outcome

    try:
        result = topk_result(checkpoint_model, paths, table, batch_size=1, runner=kill_after_the_first_chunk)
    finally:
        projector.close()
    assert killed == [2] and projector.describe()["chunks"] >= 3
    np.testing.assert_array_equal(result.projections, local.projections)
    assert np.abs(local.projections).max() > 0


def test_few_projections_stay_on_the_driver_by_default(ray_instance, checkpoint_model, image_folder, tmp_path):
    """16 x 2 projections: starting actors would cost more than projecting them (RAY_PROJECTIONS_FROM)."""
    local = top_activations(checkpoint_model, image_folder, "relu2", units="0:16", k=2, batch_size=4)
    result = topk_on_ray(checkpoint_model, image_folder, "relu2", tmp_path / "ray", units="0:16", k=2,
                         batch_size=4, workers=1, shard_size=8)
    assert result.summary()["ray"]["projections"] == {"on": "driver", "projections": 32}
    ours, theirs = result.arrays(), local.arrays()
    for name in EXACT:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_one_local_worker_gets_every_core_unless_told(ray_instance, checkpoint_model, image_folder, tmp_path):
    """On a local Ray one worker takes the machine's cores (2 here) and as many torch threads, as the in-process
    run does; the projection actors, started once the scan's actor is done, fit too. ``cpus_per_worker`` wins."""
    local = top_activations(checkpoint_model, image_folder, "relu2", units="0:6", k=3, batch_size=4)
    whole = topk_on_ray(checkpoint_model, image_folder, "relu2", tmp_path / "whole", units="0:6", k=3,
                        batch_size=4, workers=1, shard_size=8, projections_on_ray=True)
    told = topk_on_ray(checkpoint_model, image_folder, "relu2", tmp_path / "told", units="0:6", k=3,
                       batch_size=4, workers=1, shard_size=8, cpus_per_worker=1)
    assert whole.summary()["ray"]["cpus_per_worker"] == 2 and told.summary()["ray"]["cpus_per_worker"] == 1
    assert whole.summary()["ray"]["projections"]["on"] == "ray"
    for result in (whole, told):
        for name in EXACT:
            np.testing.assert_array_equal(result.arrays()[name], local.arrays()[name], err_msg=name)


def test_cli_topk_on_ray_places_projections_and_cores(ray_instance, checkpoint_model, image_folder, tmp_path,
                                                      capsys):
    """``convlens topk --ray local --projections-on ray --cpus-per-worker 1``: the options reach the job (the
    summary says where the projections ran and with how many cores a worker); a bad placement is one line, exit
    2, before any work."""
    import pytest

    from convlens.cli import main

    def arguments(out, *extra):
        return ["topk", checkpoint_model.spec, str(image_folder), "--layer", "relu2", "--units", "0:4", "--k", "3",
                "--batch-size", "4", "--out", str(out), "--ray", "local", "--device", "cpu", *extra]

    out = tmp_path / "topk"
    with pytest.raises(SystemExit) as exit_code:
        main(arguments(out, "--projections-on", "ray", "--cpus-per-worker", "1"))
    assert exit_code.value.code == 0
    summary = json.loads((out / "summary.json").read_text())["ray"]
    assert summary["projections"]["on"] == "ray" and summary["cpus_per_worker"] == 1
    local = top_activations(checkpoint_model, image_folder, "relu2", units="0:4", k=3, batch_size=4)
    np.testing.assert_array_equal(np.load(out / "arrays.npz")["values"], local.arrays()["values"])

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        main(arguments(tmp_path / "bad", "--projections-on", "gpu"))
    assert exit_code.value.code == 2
    assert "'gpu' is not one of auto, ray, driver" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
