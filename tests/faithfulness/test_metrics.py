"""Each metric against an independent computation: a RISE-style loop, pytorch-grad-cam's ROAD, torchcam's
ClassificationMetric, Quantus's MPRT; the pointing game on a constructed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faith_nets import distinct_maps

from convlens.errors import ConvlensError
from convlens.faithfulness import (
    area_under_curve,
    blurred,
    causal_curves,
    confidence_scores,
    explanation_maps,
    road_scores,
)


def rise_loop(model, image, explanation, mode, step, klen=11, ksig=5):
    """RISE's CausalMetric.single_run, written out: one forward pass per step, numpy pixel copies."""
    from scipy.ndimage import gaussian_filter

    height, width = image.shape[-2:]
    area = height * width
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    kern = np.zeros((3, 3, klen, klen), dtype="float32")
    for c in range(3):
        kern[c, c] = gaussian_filter(inp, ksig)
    substrate = (lambda x: torch.zeros_like(x)) if mode == "deletion" else (
        lambda x: torch.nn.functional.conv2d(x, torch.from_numpy(kern), padding=klen // 2))
    with torch.no_grad():
        c = int(model(image).argmax())
        start, finish = (image.clone(), substrate(image)) if mode == "deletion" else (substrate(image), image.clone())
        n_steps = (area + step - 1) // step
        scores = np.empty(n_steps + 1)
        salient_order = np.flip(np.argsort(explanation.reshape(-1, area), axis=1, kind="stable"), axis=-1)
        for i in range(n_steps + 1):
            scores[i] = torch.softmax(model(start), 1)[0, c]
            if i < n_steps:
                coords = salient_order[:, step * i:step * (i + 1)]
                start.numpy().reshape(1, 3, area)[0, :, coords] = finish.numpy().reshape(1, 3, area)[0, :, coords]
    return scores, (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)


@pytest.mark.parametrize("engine", ["stepwise", "batched", "auto"])
@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_deletion_insertion_equal_a_rise_loop(net, inputs, mode, engine):
    maps = explanation_maps(net, inputs, [0, 0, 0], "gradcam")  # has flat zero regions: ties matter
    classes = torch.softmax(net(inputs), 1).argmax(1)
    maps = torch.where(torch.rand(maps.shape, generator=torch.Generator().manual_seed(0)) < 0.3, 0.0, maps)
    curves = causal_curves(net, inputs, maps, classes, mode, step=7, batch_size=33, engine=engine)
    aucs = area_under_curve(curves)
    for i in range(len(inputs)):
        expected, auc = rise_loop(net, inputs[i:i + 1].clone(), maps[i].numpy(), mode, 7)
        np.testing.assert_allclose(curves[i].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert aucs[i].item() == pytest.approx(auc, rel=1e-5)
    assert curves.shape == (3, -(-24 * 24 // 7) + 1)


def test_the_step_engine_runs_where_a_step_changes_little(net, monkeypatch):
    """At 64 px, 7 pixels per step reach a small share of the net: "auto" takes the step engine (and its curves
    equal the plain loop's); a model that does not trace runs the plain loop."""
    import convlens.faithfulness.deletion as deletion

    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    maps = distinct_maps(explanation_maps(net, inputs, [0, 1], "gradcam"))
    classes = torch.tensor([0, 1])
    used = []
    real = deletion.stepwise_scores
    monkeypatch.setattr(deletion, "stepwise_scores", lambda *a, **k: used.append(r := real(*a, **k)) or r)
    curves = causal_curves(net, inputs, maps, classes, "deletion", step=7)
    assert used and used[0] is not None
    plain = causal_curves(net, inputs, maps, classes, "deletion", step=7, engine="batched")
    np.testing.assert_allclose(curves.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConvlensError, match="unknown engine"):
        causal_curves(net, inputs, maps, classes, "deletion", engine="fast")


def test_blur_is_rise_kernel_and_default_step():
    from convlens.faithfulness import pixels_per_step, rise_kernel

    kernel = rise_kernel()
    assert kernel.shape == (11, 11) and kernel.sum().item() == pytest.approx(1.0, abs=1e-3)
    image = torch.zeros(1, 3, 15, 15)
    image[0, 1, 7, 7] = 1.0
    out = blurred(image)
    torch.testing.assert_close(out[0, 1, 2:13, 2:13], kernel)
    assert out[0, 0].abs().max() == 0
    assert pixels_per_step(224, 224) == 224 and pixels_per_step(64, 64) == 18


def test_road_equals_pytorch_grad_cam(net, inputs):
    from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    classes = net(inputs).argmax(1)
    maps = distinct_maps(explanation_maps(net, inputs, classes.tolist(), "gradcam"))
    percentiles = (10, 40, 50, 90)
    ours = road_scores(net, inputs, maps, classes, percentiles, seed=5, batch_size=5)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    cams = maps.numpy()
    torch.manual_seed(5)
    combined = ROADCombined(percentiles=list(percentiles))(inputs, cams, targets, net)
    np.testing.assert_allclose(ours["combined"].numpy(), combined, rtol=1e-4, atol=1e-6)
    torch.manual_seed(5)  # the same draws again, metric by metric: the curves
    lerf = np.stack([ROADLeastRelevantFirst(p)(inputs, cams, targets, net) for p in percentiles], 1)
    morf = np.stack([ROADMostRelevantFirst(p)(inputs, cams, targets, net) for p in percentiles], 1)
    clean = ours["clean"].numpy()[:, None]
    np.testing.assert_allclose(ours["lerf"].numpy() - clean, lerf, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours["morf"].numpy() - clean, morf, rtol=1e-4, atol=1e-6)
    assert np.abs(morf).max() > 1e-3  # the imputation changes the scores


def test_imputation_solves_the_neighbour_equations():
    from convlens.faithfulness import impute

    image = torch.randn(3, 9, 11, generator=torch.Generator().manual_seed(0))
    removed = np.zeros((9, 11), dtype=bool)
    removed[2:6, 3:8] = True
    removed[0, 0] = True  # a corner: its outside neighbours drop out
    filled = impute(image, removed, noise=0.0).double()
    padded = torch.nn.functional.pad(filled, (1, 1, 1, 1))
    inside = torch.nn.functional.pad(torch.ones(1, 9, 11, dtype=torch.float64), (1, 1, 1, 1))
    weights = {(1, 1): 1 / 12, (0, 1): 1 / 6, (-1, 1): 1 / 12, (1, 0): 1 / 6}
    for y, x in zip(*np.nonzero(removed), strict=True):
        total = value = 0.0
        for (dy, dx), w in weights.items():
            for sy, sx in ((dy, dx), (-dy, -dx)):
                total += w * inside[0, y + 1 + sy, x + 1 + sx]
                value = value + w * padded[:, y + 1 + sy, x + 1 + sx]
        torch.testing.assert_close(filled[:, y, x], value / total, rtol=1e-5, atol=1e-6)
    assert torch.equal(filled[:, ~torch.from_numpy(removed)], image.double()[:, ~torch.from_numpy(removed)])


class _Extractor:
    """torchcam's extractor protocol, giving precomputed maps: torchcam's metric on the same maps."""

    def __init__(self, model, maps):
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        from contextlib import nullcontext

        return nullcontext()


def test_drop_and_increase_equal_torchcam(net, inputs):
    from functools import partial

    from torchcam.metrics import ClassificationMetric

    classes = net(inputs).argmax(1)
    maps = explanation_maps(net, inputs, classes.tolist(), "gradcam")
    maps[1] = 1.0  # the whole image kept: no drop; a map that lifts the score counts as an increase
    ours = confidence_scores(net, inputs, maps, classes, batch_size=2)
    metric = ClassificationMetric(_Extractor(net, maps), partial(torch.softmax, dim=-1))
    metric.update(inputs)
    summary = metric.summary()
    assert ours["drop"].mean().item() == pytest.approx(summary["avg_drop"], rel=1e-5)
    assert ours["increase"].mean().item() == pytest.approx(summary["conf_increase"])
    assert ours["drop"][1].item() == pytest.approx(0.0, abs=1e-6)
    assert ours["drop"].max() > 0.01


def test_sanity_curves_equal_quantus_mprt(net, inputs):
    import quantus

    from convlens.faithfulness import randomisable_layers, randomisation_curves

    classes = net(inputs).argmax(1).tolist()

    def explain(model, inputs, targets, **kwargs):
        batch = torch.as_tensor(inputs)
        return explanation_maps(model, batch, list(np.asarray(targets)), "gradcam").numpy()[:, None]

    original = explanation_maps(net, inputs, classes, "gradcam")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tensors = [t.data_ptr() for t in net.state_dict().values()]
    layers, curves = randomisation_curves(net, {"gradcam": original},
                                          lambda m: explanation_maps(net, inputs, classes, m), steps=None)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert tensors == [t.data_ptr() for t in net.state_dict().values()]
    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    scores = metric(model=net, x_batch=inputs.numpy(), y_batch=np.array(classes), a_batch=original.numpy()[:, None],
                    explain_func=explain, device="cpu")
    expected = np.array([scores[name] for name in layers])
    assert layers == [name for name, _ in randomisable_layers(net)]
    np.testing.assert_allclose(curves["gradcam"]["spearman"], expected, rtol=1e-5, atol=1e-6)
    assert np.nanmin(curves["gradcam"]["spearman"]) < 0.9


def test_similarities_of_a_map_with_itself_and_its_opposite():
    from convlens.faithfulness import similarities

    maps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    same = similarities(maps, maps)
    for key in ("spearman", "ssim", "hog"):
        np.testing.assert_allclose(same[key], 1.0, atol=1e-9)
    opposite = similarities(maps, 1 - maps)
    assert (opposite["spearman"] < -0.99).all() and (opposite["ssim"] < 0.5).all()


def test_bootstrap_intervals():
    from convlens.faithfulness.table import bootstrap_class_mean, bootstrap_mean

    values = np.random.default_rng(0).normal(0.5, 0.1, 400)
    mean, low, high = bootstrap_mean(values, resamples=4000)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))  # the normal interval, which the bootstrap approaches
    assert mean == pytest.approx(values.mean()) and low == pytest.approx(mean - half, abs=2e-3)
    assert high == pytest.approx(mean + half, abs=2e-3)
    assert bootstrap_mean(np.array([np.nan, 1.0, 3.0]))[0] == 2.0
    # per class first (a: 1/2, b: 1), then the mean over classes; the interval from resampled trials
    mean, low, high = bootstrap_class_mean(np.array([1.0, 0.0, 1.0]), ["a", "a", "b"], resamples=4000)
    assert mean == 0.75 and low < mean < high


def test_stacked_ssim_and_hog_equal_skimage_per_image():
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    from convlens.faithfulness.similarity import hog as stacked_hog
    from convlens.faithfulness.similarity import hog_pearson, ssim

    rng = np.random.default_rng(0)
    a, b = rng.random((4, 37, 50)), rng.random((4, 37, 50))
    a[:, :12] = 0  # flat regions and ties, as a CAM's zeros
    b[1] = a[1]
    ranges = [abs(max(x.max(), y.max()) - min(x.min(), y.min())) for x, y in zip(a, b, strict=True)]
    expected = [structural_similarity(x, y, data_range=r) for x, y, r in zip(a, b, ranges, strict=True)]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(stacked_hog(a), np.stack([hog(x) for x in a]), atol=1e-6)
    correlations = [np.corrcoef(hog(x), hog(y))[0, 1] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(hog_pearson(a, b), correlations, atol=1e-6)
    assert hog_pearson(a, b)[1] == pytest.approx(1.0) and abs(hog_pearson(a, b)[0]) < 0.5
