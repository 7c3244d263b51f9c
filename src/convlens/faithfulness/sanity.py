"""Sanity checks (Adebayo et al. 2018): cascading randomisation of the model's parameters, top layer first.

The layers randomised are those with ``reset_parameters`` (convolutions, linear layers, normalisation layers),
from the output down, each re-initialised by its own ``reset_parameters`` after ``torch.manual_seed(seed + 1)``:
Quantus's ``MPRT`` (``layer_order="top_down"``) does exactly this, so the randomised models are the same. After
each randomised layer (or at ``steps`` checkpoints spread over the cascade) every method's maps are recomputed
for the same images and classes and compared with the original maps, each taken as ``|map| / max |map|``
(Quantus's ``abs`` and ``normalise_by_max``): Spearman rank correlation (Quantus's default similarity), SSIM
(skimage, the data range of the pair, as Quantus's ``ssim``) and the Pearson correlation of HOG features
(skimage's ``hog`` defaults). A map that stays similar while the model is destroyed does not explain the model.

The randomisation is in place, inside ``randomised``; every parameter and buffer is put back bit for bit in
``finally`` (the same tensor objects), and the global random state is not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

SIMILARITIES = ("spearman", "ssim", "hog")


def randomisable_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named modules with ``reset_parameters``, output side first (Quantus's ``top_down`` order)."""
    return [(name, m) for name, m in module.named_modules() if hasattr(m, "reset_parameters")][::-1]


def checkpoints(layers: int, steps: int | None) -> list[int]:
    """Indices into the cascade after which maps are compared: every layer, or ``steps`` spread evenly
    (the last, fully randomised, always included)."""
    if steps is None or steps >= layers:
        return list(range(layers))
    return sorted({int(round(i)) for i in np.linspace(0, layers - 1, max(1, steps))})


@contextmanager
def restored(module: nn.Module) -> Iterator[None]:
    """Put every parameter and buffer back (in place, bit for bit) when the block ends, also on error."""
    saved = [(tensor, tensor.detach().clone()) for tensor in [*module.parameters(), *module.buffers()]]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, copy in saved:
                tensor.copy_(copy)


def cascade(module: nn.Module, steps: int | None, seed: int = 42) -> Iterator[tuple[int, str]]:
    """Randomise the layers top down in place; yield ``(index, name)`` at each checkpoint. Use inside
    ``restored(module)``."""
    layers = randomisable_layers(module)
    wanted = set(checkpoints(len(layers), steps))
    for index, (name, layer) in enumerate(layers):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed + 1)
            layer.reset_parameters()
        if index in wanted:
            yield index, name


def normalised(maps: np.ndarray) -> np.ndarray:
    """``|map| / max |map|`` per map (all-zero maps stay zero), as Quantus's ``abs`` + ``normalise_by_max``."""
    values = np.abs(maps.astype(np.float64))
    peak = values.reshape(len(values), -1).max(axis=1).reshape(-1, *[1] * (values.ndim - 1))
    return np.divide(values, peak, out=np.zeros_like(values), where=peak > 0)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman rank correlation of two ``N x ...`` stacks (average ranks on ties; NaN for a constant)."""
    from scipy.stats import rankdata

    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from skimage.metrics import structural_similarity

    out = []
    for x, y in zip(a, b, strict=True):
        data_range = float(abs(max(x.max(), y.max()) - min(x.min(), y.min())))
        out.append(structural_similarity(x, y, data_range=data_range) if data_range > 0 else 1.0)
    return np.array(out)


def hog_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    out = []
    for x, y in zip(a, b, strict=True):
        fx, fy = hog(x), hog(y)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(float(np.corrcoef(fx, fy)[0, 1]) if fx.std() > 0 and fy.std() > 0 else float("nan"))
    return np.array(out)


def similarities(original: np.ndarray, randomised: np.ndarray) -> dict[str, np.ndarray]:
    """Each similarity of ``N x H x W`` maps, per image."""
    a, b = normalised(original), normalised(randomised)
    return {"spearman": spearman(a, b), "ssim": ssim(a, b), "hog": hog_pearson(a, b)}


def randomisation_curves(module: nn.Module, original: dict[str, torch.Tensor],
                         compute: Callable[[str], torch.Tensor], steps: int | None = None, seed: int = 42,
                         progress=False) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """For each method of ``original`` (its maps on the intact model): ``{similarity: steps x N}`` along the
    cascade, ``compute(method)`` giving the method's maps on the model as it is at that point."""
    from convlens.progress import track

    names: list[str] = []
    curves: dict[str, dict[str, list]] = {m: {s: [] for s in SIMILARITIES} for m in original}
    layers = randomisable_layers(module)
    total = len(checkpoints(len(layers), steps))
    with restored(module):
        for _, name in track(cascade(module, steps, seed), total, "sanity: randomised layers", progress):
            names.append(name)
            for method, maps in original.items():
                scores = similarities(maps.numpy(), compute(method).numpy())
                for key in SIMILARITIES:
                    curves[method][key].append(scores[key])
    return names, {m: {s: np.array(v).reshape(len(names), -1) for s, v in c.items()} for m, c in curves.items()}


def layer_names(module: nn.Module, steps: int | None) -> Sequence[str]:
    layers = randomisable_layers(module)
    return [layers[i][0] for i in checkpoints(len(layers), steps)]
