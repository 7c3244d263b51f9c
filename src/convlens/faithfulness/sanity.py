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

from convlens.faithfulness.similarity import hog_pearson, normalised, similarities, spearman, ssim

SIMILARITIES = ("spearman", "ssim", "hog")
__all__ = ["SIMILARITIES", "cascade", "checkpoints", "hog_pearson", "layer_names", "normalised",
           "randomisable_layers", "randomisation_curves", "restored", "similarities", "spearman", "ssim"]


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
        _reset_seeded(layer, seed + 1)
        if index in wanted:
            yield index, name


def _reset_seeded(layer: nn.Module, seed: int) -> None:
    """``layer.reset_parameters()`` after seeding, the global random state put back afterwards.

    Quantus calls ``torch.manual_seed`` (every device's generator); the initialisers draw from the generator of
    the device the layer is on, so seeding that one gives the same parameters. On the CPU this skips
    ``manual_seed``'s lazy seeding of CUDA, which records a stack trace per call and cost more than the
    reset itself on small models.
    """
    devices = {t.device for t in [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]}
    accelerators = [d.index if d.index is not None else torch.cuda.current_device()
                    for d in devices if d.type == "cuda"]
    cpu_only = all(d.type == "cpu" for d in devices)
    with torch.random.fork_rng(devices=accelerators), torch.no_grad():
        if cpu_only:
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        layer.reset_parameters()


def randomisation_curves(module: nn.Module, original: dict[str, torch.Tensor],
                         compute: Callable[[str], torch.Tensor], steps: int | None = None, seed: int = 42,
                         progress=False) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """For each method of ``original`` (its maps on the intact model): ``{similarity: steps x N}`` along the
    cascade, ``compute(method)`` giving the method's maps on the model as it is at that point.

    The maps of every checkpoint are kept (as float32) and compared with the originals at the end, all
    checkpoints in one call per similarity rather than one per checkpoint.
    """
    from convlens.progress import track

    names: list[str] = []
    randomised: dict[str, list[np.ndarray]] = {method: [] for method in original}
    layers = randomisable_layers(module)
    total = len(checkpoints(len(layers), steps))
    with restored(module):
        for _, name in track(cascade(module, steps, seed), total, "sanity: randomised layers", progress):
            names.append(name)
            for method in original:
                randomised[method].append(compute(method).detach().float().cpu().numpy())
    curves = {method: _compare(maps.detach().float().cpu().numpy(), randomised[method])
              for method, maps in original.items()}
    return names, curves


COMPARED_PIXELS = 1 << 22  # pixels of the maps compared per call (bounds the float64 temporaries)


def _compare(original: np.ndarray, randomised: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``{similarity: checkpoints x N}`` of each checkpoint's maps against the original ones, many checkpoints
    per call."""
    if not randomised:
        return {key: np.zeros((0, len(original))) for key in SIMILARITIES}
    count, shape = len(original), original.shape[1:]
    per_call = max(1, COMPARED_PIXELS // max(1, original.size))  # whole checkpoints per call
    scores: dict[str, list[np.ndarray]] = {key: [] for key in SIMILARITIES}
    for start in range(0, len(randomised), per_call):
        group = np.stack(randomised[start:start + per_call])
        first = np.broadcast_to(original, group.shape).reshape(-1, *shape)
        for key, values in similarities(first, group.reshape(-1, *shape)).items():
            scores[key].append(values.reshape(len(group), count))
    return {key: np.concatenate(values) for key, values in scores.items()}


def layer_names(module: nn.Module, steps: int | None) -> Sequence[str]:
    layers = randomisable_layers(module)
    return [layers[i][0] for i in checkpoints(len(layers), steps)]
