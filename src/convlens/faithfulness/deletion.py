"""Deletion and insertion (Petsiuk et al. 2018), as RISE's reference code (``evaluation.py``) computes them.

Pixels are ranked by the map, most salient first (``np.flip(np.argsort(map))``: on ties the later pixel comes
first; a stable sort makes that reproducible). Deletion starts from the image and sets ``step`` pixels at a time
to zero in the model's normalised input space; insertion starts from a blurred copy (RISE's ``gkern(11, 5)``:
``scipy.ndimage.gaussian_filter`` of a 11 x 11 delta, sigma 5, applied per channel with zero padding) and puts
the original pixels back. The score after ``k`` steps is the softmax probability of the explained class; the
curve has ``ceil(HW / step) + 1`` points and its area is the trapezoid rule on [0, 1]. ``step`` is 224 pixels at
224 x 224, scaled with the area otherwise. Every (image, step) input is built from the pixel ranks in one
vectorised ``torch.where``. By default consecutive steps run on the step engine (``convlens.engine.stepwise``):
each image's game is cut into segments, every segment's first input runs in full and the steps after it
recompute only the positions the step's pixels can change, where that is a small share of the network (else,
and with ``engine="batched"``, every input runs in full).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.faithfulness.perturb import class_probabilities
from convlens.faithfulness.stepwise import MAX_WORK, stepwise_scores
from convlens.progress import ProgressLike

BLUR_SIZE, BLUR_SIGMA = 11, 5.0
REFERENCE_AREA, REFERENCE_STEP = 224 * 224, 224
MODES = ("deletion", "insertion")
ENGINES = ("auto", "stepwise", "batched")
# Below this many game points in all, the step engine's set-up (tracing, planning, a probe step: tens of
# milliseconds) weighs more than it could save: "auto" runs the plain loop.
MIN_STEPWISE_POINTS = 1000


def pixels_per_step(height: int, width: int) -> int:
    """224 pixels per step at 224 x 224, in proportion to the area otherwise (at least one)."""
    return max(1, round(REFERENCE_STEP * height * width / REFERENCE_AREA))


def rise_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """RISE's ``gkern``: a delta smoothed by ``scipy.ndimage.gaussian_filter`` (its reflecting border included)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1
    return torch.from_numpy(gaussian_filter(delta, sigma).astype("float32"))


def blurred(inputs: torch.Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Each channel convolved with the RISE kernel, zero padding (the insertion game's starting image)."""
    channels = inputs.shape[1]
    kernel = rise_kernel(size, sigma).to(inputs.device, inputs.dtype).expand(channels, 1, size, size)
    return F.conv2d(inputs, kernel, padding=size // 2, groups=channels)


def salience_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``N x HW``: each pixel's position in the order of decreasing salience (RISE's tie order)."""
    flat = maps.flatten(1).float()
    count = flat.shape[1]
    # np.flip(np.argsort(x, kind="stable")) == reversed index of a stable descending sort of the reversed array
    order = (count - 1) - torch.argsort(flat.flip(1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(count, device=order.device).expand_as(order))
    return ranks


def causal_curves(module: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                  mode: str, step: int | None = None, batch_size: int = 64,
                  progress: ProgressLike = False, engine: str = "auto") -> torch.Tensor:
    """``N x (steps + 1)`` class probabilities along the deletion or insertion game.

    ``engine``: ``"stepwise"`` recomputes, from each step to the next, only what the changed pixels can change
    (``convlens.engine.stepwise``; where the model's graph cannot be used, the batched loop runs instead);
    ``"batched"`` runs every step's input in full, ``batch_size`` at a time; ``"auto"`` is ``"stepwise"`` unless
    its first step recomputes more than ``MAX_WORK`` of a full pass or the games have fewer than
    ``MIN_STEPWISE_POINTS`` points in all (then ``"batched"``).
    """
    if mode not in MODES:
        raise ConvlensError(f"unknown mode {mode!r}; use deletion or insertion")
    if engine not in ENGINES:
        raise ConvlensError(f"unknown engine {engine!r}; use {', '.join(ENGINES)}")
    count, _, height, width = inputs.shape
    area = height * width
    step = pixels_per_step(height, width) if step is None else int(step)
    if step < 1:
        raise ConvlensError(f"step must be at least one pixel, got {step}")
    steps = math.ceil(area / step)
    substrate = torch.zeros_like(inputs) if mode == "deletion" else blurred(inputs)
    start, finish = (inputs, substrate) if mode == "deletion" else (substrate, inputs)
    ranks = salience_ranks(maps).to(inputs.device)
    classes = classes.to(inputs.device)
    if engine == "stepwise" or (engine == "auto" and count * (steps + 1) >= MIN_STEPWISE_POINTS):
        scores = stepwise_scores(module, start, finish, ranks, classes, step, progress, f"{mode}: steps",
                                 max_work=MAX_WORK if engine == "auto" else None)
        if scores is not None:
            return scores
    per_image = steps + 1

    def build(first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(first, stop, device=inputs.device)
        owners, done = index // per_image, (index % per_image) * step
        replaced = (ranks[owners] < done[:, None]).view(-1, 1, height, width)
        return torch.where(replaced, finish[owners], start[owners]), owners

    scores = class_probabilities(module, count * per_image, build, classes, batch_size,
                                 progress, f"{mode}: perturbed inputs")
    return scores.view(count, per_image)


def area_under_curve(curves: torch.Tensor) -> torch.Tensor:
    """RISE's ``auc``: the trapezoid rule on [0, 1] for each row."""
    points = curves.shape[-1]
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (points - 1)
