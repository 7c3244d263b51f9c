"""ROAD (Rong et al. 2022): remove pixels by noisy linear imputation, most relevant first and least relevant first.

Each removed pixel becomes the weighted mean of its eight neighbours (1/6 for the four direct ones, 1/12 for the
diagonals; weights of neighbours outside the image are dropped), removed neighbours being unknowns too: one
sparse linear system per removal mask, built in one vectorised pass (no per-pixel loop) and solved once for all
channels with SuperLU; Gaussian noise of standard deviation 0.01 is added to the imputed values. This is the
imputer of the ROAD authors' code that pytorch-grad-cam ships (``NoisyLinearImputer``), and the scores follow
pytorch-grad-cam: for each percentile ``p`` (10 ... 90) MoRF keeps the ``p`` % least relevant pixels and imputes
the rest, LeRF keeps the ``p`` % most relevant; the score is the class probability after imputation minus the
clean one, and the combined score is ``(mean LeRF - mean MoRF) / 2`` (higher: the map ranks pixels better).

pytorch-grad-cam keeps the pixels below the percentile threshold, which on tied values (flat regions of a map)
keeps fewer than ``p`` % (all pixels are removed when more than ``p`` % tie at the minimum, and the system is then
singular). Here exactly the number the threshold keeps on distinct values is kept, ties broken by position, so the
two agree on maps without ties and this one stays defined on any map. The noise is drawn from a generator seeded
per call in pytorch-grad-cam's order (LeRF then MoRF, percentiles ascending, images in order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from convlens.faithfulness.perturb import class_probabilities
from convlens.progress import ProgressLike

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ORDERINGS = ("lerf", "morf")  # pytorch-grad-cam's ROADCombined runs LeRF first
NOISE = 0.01
# (row offset, column offset), weight: the ROAD authors' neighbour weights, in their order
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def imputation_system(removed: np.ndarray):
    """The sparse system of one removal mask (``H x W`` bool): ``A x = b`` with one unknown per removed pixel.

    Returns ``A`` (CSC), the removed pixels' flat indices, and ``(rows, sources, weights)`` from which ``b`` is
    ``-sum weight * image[:, source]`` over the known neighbours of each unknown.
    """
    from scipy.sparse import coo_matrix

    height, width = removed.shape
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)
    variable = np.full(flat.shape[0], -1, dtype=np.int64)
    variable[unknown] = np.arange(len(unknown))
    rows0, cols0 = np.divmod(unknown, width)
    weight_sum = np.ones(len(unknown))
    a_rows, a_cols, a_vals, b_rows, b_sources, b_weights = [], [], [], [], [], []
    for (dy, dx), weight in NEIGHBOURS:
        r, c = rows0 + dy, cols0 + dx
        inside = (r >= 0) & (c >= 0) & (r < height) & (c < width)
        weight_sum[~inside] -= weight
        ids = np.flatnonzero(inside)
        neighbour = r[inside] * width + c[inside]
        missing = flat[neighbour]
        a_rows.append(ids[missing])
        a_cols.append(variable[neighbour[missing]])
        a_vals.append(np.full(int(missing.sum()), weight))
        b_rows.append(ids[~missing])
        b_sources.append(neighbour[~missing])
        b_weights.append(np.full(int((~missing).sum()), weight))
    count = len(unknown)
    diagonal = np.arange(count)
    matrix = coo_matrix((np.concatenate([*a_vals, -weight_sum]),
                         (np.concatenate([*a_rows, diagonal]), np.concatenate([*a_cols, diagonal]))),
                        shape=(count, count)).tocsc()
    return matrix, unknown, (np.concatenate(b_rows), np.concatenate(b_sources), np.concatenate(b_weights))


def impute(image: torch.Tensor, removed: np.ndarray, noise: float = NOISE,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """``image`` (``C x H x W``) with the ``removed`` pixels linearly imputed from their neighbours, plus noise."""
    from scipy.sparse.linalg import splu

    matrix, unknown, (rows, sources, weights) = imputation_system(removed)
    channels = image.shape[0]
    pixels = image.detach().float().cpu().reshape(channels, -1).numpy()
    rhs = np.zeros((len(unknown), channels))
    np.subtract.at(rhs, rows, weights[:, None] * pixels[:, sources].T)
    # the system is symmetric (a neighbour's weight is the same both ways) and diagonally dominant: SuperLU's
    # symmetric mode with a minimum-degree ordering on A^T + A factorises it 1.5-1.8x faster than spsolve's
    # default (COLAMD, partial pivoting); the solutions agree to 1e-9
    solution = splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                    options={"SymmetricMode": True}).solve(rhs)
    solution = torch.tensor(solution.reshape(len(unknown), channels), dtype=torch.float).t()
    filled = image.detach().float().cpu().reshape(channels, -1).clone()
    if noise:
        solution = solution + noise * torch.randn(solution.shape, generator=generator)
    filled[:, torch.from_numpy(unknown)] = solution
    return filled.reshape(image.shape).to(image.dtype)


def kept_count(pixels: int, percentile: float) -> int:
    """How many pixels pytorch-grad-cam's ``map < np.percentile(map, p)`` keeps when no values tie."""
    ranks = np.arange(pixels, dtype=np.float64)
    return int((ranks < np.percentile(ranks, percentile)).sum())


def removal_masks(maps: torch.Tensor, percentiles: Sequence[float] = PERCENTILES) -> Iterator[tuple[int, int, int,
                                                                                                    np.ndarray]]:
    """``(ordering index, percentile index, image, removed mask)`` in pytorch-grad-cam's order."""
    count, height, width = maps.shape
    ascending = torch.argsort(maps.flatten(1).float(), dim=1, stable=True)
    ranks = torch.empty_like(ascending)
    ranks.scatter_(1, ascending, torch.arange(height * width).expand_as(ascending))
    ranks = ranks.numpy()
    for o, ordering in enumerate(ORDERINGS):
        for p, percentile in enumerate(percentiles):
            kept = kept_count(height * width, percentile)
            for image in range(count):
                # MoRF keeps the ``kept`` least relevant pixels, LeRF the ``kept`` most relevant
                keep = ranks[image] < kept if ordering == "morf" else ranks[image] >= height * width - kept
                yield o, p, image, (~keep).reshape(height, width)


def road_scores(module: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                percentiles: Sequence[float] = PERCENTILES, noise: float = NOISE, seed: int = 0,
                batch_size: int = 64, progress: ProgressLike = False) -> dict[str, torch.Tensor]:
    """``lerf`` and ``morf``: ``N x len(percentiles)`` class probabilities after imputation; ``clean``: ``N``;
    ``combined``: ``N`` (pytorch-grad-cam's ``ROADCombined`` on probabilities)."""
    generator = torch.Generator().manual_seed(seed)
    count = len(inputs)
    imputed = torch.empty((len(ORDERINGS), len(percentiles), *inputs.shape), dtype=inputs.dtype)
    cpu_inputs = inputs.detach().cpu()
    for o, p, image, removed in removal_masks(maps.detach().cpu(), percentiles):
        imputed[o, p, image] = impute(cpu_inputs[image], removed, noise, generator)
    flat = imputed.flatten(0, 2)
    device = inputs.device
    per_image = torch.arange(count).repeat(len(ORDERINGS) * len(percentiles))

    def build(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return flat[start:stop].to(device), per_image[start:stop].to(device)

    scores = class_probabilities(module, len(flat), build, classes.to(device), batch_size, progress,
                                 "ROAD: imputed inputs").view(len(ORDERINGS), len(percentiles), count)
    clean = class_probabilities(module, count, lambda a, b: (inputs[a:b], torch.arange(a, b, device=device)),
                                classes.to(device), batch_size)
    lerf, morf = scores[0].T, scores[1].T
    combined = ((lerf - clean[:, None]).mean(1) - (morf - clean[:, None]).mean(1)) / 2
    return {"lerf": lerf, "morf": morf, "clean": clean, "combined": combined}
