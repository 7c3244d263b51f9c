"""The table over methods: the pointing game on a constructed case, not-applicable methods, errors, the model
left as found, the saved folder, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torchvision
from faith_nets import flat_net, gap_net
from PIL import Image

import convlens
from convlens.errors import ConvlensError
from convlens.models import ImageClassifier, Preprocessing


def classifier(net=None) -> ImageClassifier:
    return ImageClassifier(net or gap_net(), Preprocessing(crop=(32, 32), resize=32), [f"c{i}" for i in range(5)])


@pytest.fixture
def photo(tmp_path):
    """A 128 x 64 image: resized to 64 x 32 (half scale), centre-cropped to 32 x 32 from x = 16."""
    path = tmp_path / "wide.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(path)
    return path


def boxes_for(name: str) -> dict:
    # The centre baseline's peak is input pixel (15, 15): (15.5 + 16, 15.5) / 0.5 = (63, 31) in the file.
    return {"images": {name: [
        {"object": "a", "classes": [1, 2], "box": [50, 20, 80, 40]},  # contains the peak: hit
        {"object": "a", "classes": "3-4", "box": [100, 0, 128, 16]},  # 37 px away: miss
        {"object": "b", "classes": [0], "box": [0, 0, 49, 31]},  # 14 px away, within 15: hit
    ]}}


def test_pointing_game_on_a_constructed_case(photo):
    model = classifier()
    result = convlens.faithfulness(model, [str(photo)], methods=["center", "random"], metrics=["pointing"],
                                   boxes=boxes_for(photo.name), resamples=200)
    np.testing.assert_array_equal(result.per_image["center"]["pointing"], [1, 0, 1])
    assert result.score("center", "pointing") == pytest.approx(0.75)  # per class (a: 1/2, b: 1), then the mean
    with torch.no_grad():
        logits = model.module(model.prepare([str(photo)]))[0]
    objects = result.summary()["objects"]
    assert objects[0]["class"] == int(torch.tensor([1, 2])[logits[[1, 2]].argmax()])
    assert objects[1]["class"] in (3, 4) and objects[2]["class"] == 0
    tight = convlens.faithfulness(model, [str(photo)], methods="center", metrics="pointing",
                                  boxes=boxes_for(photo.name), tolerance=10, resamples=200)
    np.testing.assert_array_equal(tight.per_image["center"]["pointing"], [1, 0, 0])


def test_bad_boxes_metrics_and_methods_are_one_line_errors(photo, tmp_path):
    model = classifier()
    other = {"images": {"missing.jpg": [{"object": "x", "classes": [0], "box": [0, 0, 5, 5]}]}}
    outside = {"images": {photo.name: [{"object": "x", "classes": [0], "box": [0, 0, 129, 10]}]}}
    cases = [({"boxes": other, "metrics": "pointing"}, "boxes name images that are not given: missing.jpg"),
             ({"boxes": outside, "metrics": "pointing"}, "outside the 128x64 image"),
             ({"metrics": "pointing"}, "the pointing game needs boxes"),
             ({"metrics": "delete"}, "valid: deletion, insertion, road, drop, pointing, sanity"),
             ({"methods": "gradcam,lime"}, "unknown method 'lime'")]
    for kwargs, message in cases:
        with pytest.raises(ConvlensError, match=message.replace("(", r"\(")) as error:
            convlens.faithfulness(model, [str(photo)], **kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(ConvlensError, match="valid: all, cam, gradcam"):
        convlens.faithfulness(model, [str(photo)], methods="nope")


def test_cam_without_a_gap_head_is_not_applicable_and_the_run_goes_on():
    net = flat_net()
    images = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    result = convlens.faithfulness(net, images, methods="cam,gradcam,center", metrics="drop", resamples=100)
    assert "CAM needs" in result.not_applicable["cam"]
    rows = list(csv.DictReader(result.csv().splitlines()))
    assert [r["method"] for r in rows] == ["cam", "gradcam", "center"]
    assert rows[0]["drop"] == "not applicable" and rows[0]["note"].startswith("not applicable: CAM needs")
    assert float(rows[1]["drop"]) == pytest.approx(result.per_image["gradcam"]["drop"].mean(), rel=1e-5)
    assert float(rows[1]["drop_low"]) <= float(rows[1]["drop"]) <= float(rows[1]["drop_high"])


def test_model_left_exactly_as_found_and_the_folder(tmp_path):
    net = gap_net()
    net[4].train()  # a BatchNorm in training mode must come back in training mode, its statistics untouched
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    result = convlens.faithfulness(net, images, methods="gradcam,saliency,random",
                                   metrics="deletion,insertion,road,drop,sanity", step=24, sanity_steps=3,
                                   resamples=100)
    assert net[4].training and not net[0].training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    assert len(result.sanity_layers) == 3 and result.sanity_layers[-1] == "0"
    # the random map does not depend on the model at all: it fails the sanity check completely
    assert result.score("random", "sanity_spearman") == pytest.approx(1.0)
    assert result.score("gradcam", "sanity_spearman") < 0.9
    out = result.save(tmp_path / "out")
    arrays = np.load(out / "arrays.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert {"input", "deletion.gradcam", "deletion_curve.gradcam", "road_morf.saliency", "map.random",
            "sanity_spearman.gradcam", "sanity_spearman_curve.gradcam", "increase.saliency"} <= set(arrays.files)
    assert arrays["deletion_curve.gradcam"].shape == (3, 24 + 1)
    assert sorted(summary["figures"]) == ["curves.png", "maps.png", "ranking.png"]
    rows = {r["method"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert float(rows["saliency"]["road"]) == pytest.approx(arrays["road.saliency"].mean(), rel=1e-5)
    again = convlens.faithfulness(net, images, methods="gradcam,saliency,random",
                                  metrics="deletion,insertion,road,drop,sanity", step=24, sanity_steps=3,
                                  resamples=100)
    assert again.csv() == result.csv()  # same inputs, same numbers


def test_every_method_is_a_candidate():
    from convlens.attribution import METHODS as ATTRIBUTION
    from convlens.cam import METHODS as CAMS
    from convlens.faithfulness import method_names, resolve_methods

    assert resolve_methods("all") == method_names()
    assert set(CAMS) | set(ATTRIBUTION) | {"occlusion", "random", "center"} == set(method_names())
    assert resolve_methods("GradCAM++, ig,guided_gradcam,centre") == ["gradcam++", "integrated-gradients",
                                                                        "guided-gradcam", "center"]


def test_docs_table_has_a_row_for_every_method_of_methods_all():
    """docs/faithfulness.md's table lists exactly what ``--methods all`` runs (measured or saying why not)."""
    from pathlib import Path

    from convlens.faithfulness import method_names, resolve_methods

    text = (Path(__file__).resolve().parents[2] / "docs" / "faithfulness.md").read_text()
    table = text[text.index("| method | deletion"):].split("\n\n")[0].splitlines()[2:]
    rows = [line.strip("|").split("|")[0].strip().rstrip(" *") for line in table]
    assert sorted(rows) == sorted(resolve_methods("all")) == sorted(method_names())


def test_cli_matches_the_api(tmp_path, capsys):
    from typer.testing import CliRunner

    from convlens.cli import app, main
    from convlens.models import save_checkpoint
    from convlens.models.zoo import replace_head

    torch.manual_seed(0)  # a resnet18 with a 3-class head at 64 px
    net = replace_head(torchvision.models.resnet18(), 3)
    save_checkpoint(tmp_path / "run" / "best", net, {
        "architecture": "torchvision:resnet18", "class_names": ["a", "b", "c"],
        "preprocessing": Preprocessing(crop=(64, 64), resize=None, squash=True).to_dict()})
    images = []
    for seed in range(2):
        path = tmp_path / f"img{seed}.png"
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["faithfulness", str(tmp_path / "run"), *images, "--methods",
                                      "gradcam,random", "--metrics", "drop,road", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = convlens.load_model(tmp_path / "run", device="cpu")
    expected = convlens.faithfulness(model, images, methods="gradcam,random", metrics="drop,road")
    arrays = np.load(out / "arrays.npz")
    np.testing.assert_allclose(arrays["road.gradcam"], expected.per_image["gradcam"]["road"], rtol=1e-6)
    assert (out / "table.csv").read_text() == expected.csv()
    with pytest.raises(SystemExit) as exit_info:
        main(["faithfulness", "baseline", images[0], "--metrics", "speed", "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "unknown metric 'speed'" in error and "\n" not in error
    assert not (tmp_path / "o").exists()


def test_every_candidate_runs_and_gives_maps_in_0_1():
    from convlens.faithfulness import method_names

    images = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    result = convlens.faithfulness(gap_net(), images, methods="all", metrics="drop", resamples=50, options={
        "smoothgrad": {"samples": 4}, "integrated-gradients": {"steps": 4}, "occlusion": {"window": 8, "stride": 4}})
    assert not result.not_applicable and list(result.maps) == method_names()
    for method, maps in result.maps.items():
        assert maps.shape == (2, 24, 24), method
        assert float(maps.min()) >= 0 and float(maps.amax(dim=(1, 2)).min()) == pytest.approx(1.0), method
