"""Faithfulness metrics against their peers on the same model, inputs and maps (numbers equal first).

- Deletion curve vs Quantus ``PixelFlipping`` (zero baseline, softmax, the same pixels per step, maps without
  ties so that both orders agree): target <= 0.1. Quantus copies the batch and runs one forward pass per step
  with numpy round trips; convlens runs the game on the step engine where a step reaches a small share of the
  net (at 96 px: 0.14 of a pass per step; at the quick run's 48 px: 0.68, so the plain batched loop runs, every
  step's input built from the pixel ranks and run in batches).
- Deletion and insertion curves on the step engine vs the plain batched loop (``engine="batched"``: every
  step's input in full, 64 at a time), the same curves: target <= 0.5 (issue 20). The step engine recomputes only
  the positions each step's pixels reach; it pays on nets whose receptive fields stay small against the image.
- Pointing game vs Quantus ``PointingGame`` (boxes as masks, tolerance 0): target <= 0.1.
- Sanity checks vs Quantus ``MPRT`` (cascading randomisation, Spearman, Grad-CAM maps): target <= 0.1. Both
  recompute Grad-CAM after each randomised layer; the difference is Quantus's model copy and its batched
  Spearman, which correlates every map with every other.
- ROAD vs pytorch-grad-cam's ``ROADCombined`` (same imputer, noise seed, percentiles): target <= 0.5. Both solve
  the same sparse systems with SuperLU; convlens builds each in one vectorised pass instead of ``lil_matrix``
  assignments and runs the imputed inputs in batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bench.harness import DEVICE, BenchCase
from convlens.faithfulness import causal_curves, explanation_maps, randomisation_curves, road_scores
from convlens.faithfulness.candidates import Explainer


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval().to(DEVICE)


def _distinct(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1).double() + torch.arange(maps[0].numel(), dtype=torch.float64) * 1e-9
    return (torch.argsort(torch.argsort(flat, dim=1), dim=1).float() / flat.shape[1]).view_as(maps)


def _setup(count: int, size: int):
    net = _net()
    inputs = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        classes = net(inputs).argmax(1)
    maps = _distinct(explanation_maps(net, inputs, classes.tolist(), "gradcam"))
    return net, inputs, classes, maps


def _deletion_case(quick: bool) -> BenchCase:
    import quantus

    count, size, step = (2, 48, 16) if quick else (16, 96, 16)  # Quantus: 3 * step must divide H * W
    net, inputs, classes, maps = _setup(count, size)
    metric = quantus.PixelFlipping(features_in_step=3 * step, perturb_baseline=0.0, abs=False, normalise=False,
                                   return_auc_per_sample=False, disable_warnings=True)
    x, y, a = inputs.cpu().numpy(), classes.cpu().numpy(), np.repeat(maps.numpy()[:, None], 3, axis=1)

    def peer():
        return np.array(metric(model=net, x_batch=x, y_batch=y, a_batch=a, softmax=True, device=str(DEVICE)))

    def ours():
        return causal_curves(net, inputs, maps, classes, "deletion", step=step, batch_size=64).numpy()[:, 1:]

    def check(mine, theirs):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)

    return BenchCase(f"deletion curve {size}px b{count}", ours, peer, "Quantus PixelFlipping", check,
                     max_ratio=0.1,
                     repetitions=3 if quick else None,
                     note=f"6-layer CNN, {size}x{size}, {step} px per step, Grad-CAM maps")


def _engine_case(quick: bool) -> BenchCase:
    count, size, step = (2, 96, 16) if quick else (4, 96, 16)
    net, inputs, classes, maps = _setup(count, size)

    def curves(engine: str):
        return lambda: torch.cat([causal_curves(net, inputs, maps, classes, mode, step=step, batch_size=64,
                                                engine=engine) for mode in ("deletion", "insertion")]).numpy()

    def check(mine, theirs):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)

    return BenchCase(f"deletion+insertion {size}px b{count} step engine", curves("auto"), curves("batched"),
                     "plain batched loop", check, max_ratio=0.5, repetitions=3,
                     note=f"6-layer CNN, {size}x{size}, {step} px per step, both games, Grad-CAM maps")


def _pointing_case(quick: bool) -> BenchCase:
    import quantus

    from convlens.faithfulness.pointing import Trial, pointing_hits

    count, size = (32, 32) if quick else (256, 64)
    net, inputs, classes, maps = _setup(count, size)
    rng = np.random.default_rng(0)
    corners = rng.integers(0, size // 2, (count, 2))
    boxes = [(int(x), int(y), int(x) + size // 2, int(y) + size // 2) for x, y in corners]
    trials = [Trial(i, "object", (int(c),), tuple(map(float, b)), (1.0, 1.0), (0.0, 0.0))
              for i, (c, b) in enumerate(zip(classes.tolist(), boxes, strict=True))]
    masks = np.zeros((count, 1, size, size), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, 0, y0:y1, x0:x1] = True
    metric = quantus.PointingGame(disable_warnings=True, abs=False, normalise=False)
    x, y, a = inputs.cpu().numpy(), classes.cpu().numpy(), maps.numpy()[:, None]

    def peer():
        return np.array(metric(model=net, x_batch=x, y_batch=y, a_batch=a, s_batch=masks, device=str(DEVICE)),
                        dtype=float)

    def check(mine, theirs):
        np.testing.assert_array_equal(mine, theirs)

    return BenchCase(f"pointing game {size}px n{count}", lambda: pointing_hits(trials, maps, tolerance=0), peer,
                     "Quantus PointingGame", check, max_ratio=0.1,
                     repetitions=3 if quick else None, note="the same maps, boxes as masks")


def _sanity_case(quick: bool) -> BenchCase:
    import quantus

    count, size = (2, 24) if quick else (16, 64)
    net, inputs, classes, _ = _setup(count, size)
    labels = classes.tolist()
    original = explanation_maps(net, inputs, labels, "gradcam")

    def explain(model, inputs, targets, **kwargs):
        batch = torch.as_tensor(inputs).to(DEVICE)
        return explanation_maps(model, batch, list(np.asarray(targets)), "gradcam").numpy()[:, None]

    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)

    def peer():
        scores = metric(model=net, x_batch=inputs.cpu().numpy(), y_batch=classes.cpu().numpy(),
                        a_batch=original.numpy()[:, None], explain_func=explain, device=str(DEVICE))
        return np.array([v for k, v in scores.items() if k != "original"])

    def ours():  # as convlens.faithfulness runs it: one explainer for the whole cascade
        explain = Explainer(net, "gradcam")
        return randomisation_curves(net, {"gradcam": original}, lambda m: explain(inputs, labels),
                                    steps=None)[1]["gradcam"]

    def check(mine, theirs):
        np.testing.assert_allclose(mine["spearman"], theirs, rtol=1e-5, atol=1e-6)

    return BenchCase(f"sanity (MPRT) {size}px b{count}", ours, peer, "Quantus MPRT", check, max_ratio=0.1,
                     repetitions=3 if quick else None,
                     note="Grad-CAM after each of the 5 randomised layers; convlens also computes SSIM and HOG")


def _road_case(quick: bool) -> BenchCase:
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    count, size = (2, 64) if quick else (4, 112)
    net, inputs, classes, maps = _setup(count, size)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    cams = maps.numpy()

    def peer():
        torch.manual_seed(0)
        return ROADCombined()(inputs, cams, targets, net)

    def ours():
        return road_scores(net, inputs, maps, classes, seed=0)["combined"].numpy()

    def check(mine, theirs):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)

    return BenchCase(f"ROAD combined {size}px b{count}", ours, peer, "pytorch-grad-cam ROADCombined", check,
                     max_ratio=0.5,
                     repetitions=3 if quick else None, note="percentiles 10..90, noise 0.01, the same seed")


def cases(quick: bool) -> list[BenchCase]:
    return [_deletion_case(quick), _engine_case(quick), _pointing_case(quick), _sanity_case(quick), _road_case(quick)]
