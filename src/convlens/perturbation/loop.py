"""The batched evaluation loop every perturbation method shares, and ``perturb``: masks in, a reduction out.

A perturbation method supplies two things: its masks (a generator) and a reducer. ``perturb`` does the rest:
the clean pass, the target, the batch size (a share of the free memory), the perturbed inputs
``baseline + mask * (input - baseline)`` in batches under ``torch.inference_mode()``, the target's score on each,
progress, and the model's state (restored on exit, also on error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from convlens.engine import ACTIVATION_COPIES, forward_measured, model_output
from convlens.errors import ConvlensError
from convlens.hooks import preserved_state
from convlens.models.classifier import as_batch, as_module
from convlens.perturbation.batching import auto_batch_size
from convlens.progress import ProgressLike, track
from convlens.targets import Score, TargetSpec, resolve_targets, target_index, target_scores

T = TypeVar("T")


def evaluate_in_batches(count: int, batch_size: int, evaluate: Callable[[int, int], T],
                        progress: ProgressLike = False, description: str = "perturbation") -> list[T]:
    """``evaluate(start, stop)`` for consecutive slices of ``count`` items, ``batch_size`` at a time."""
    starts = range(0, count, batch_size)
    return [evaluate(start, min(start + batch_size, count))
            for start in track(starts, len(starts), description, progress)]


def batches(masks: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Masks (each ``H x W``, ``1|C x H x W`` or a stack ``K x 1|C x H x W``) regrouped into ``B x 1|C x H x W``
    batches of ``batch_size``."""
    pending: list[torch.Tensor] = []
    held = 0
    for mask in masks:
        mask = mask[None, None] if mask.ndim == 2 else mask[None] if mask.ndim == 3 else mask
        if mask.ndim != 4:
            raise ConvlensError(f"a mask must be H x W, C x H x W or K x C x H x W, got shape {tuple(mask.shape)}")
        pending.append(mask)
        held += mask.shape[0]
        while held >= batch_size:
            stacked = torch.cat(pending)
            yield stacked[:batch_size]
            pending, held = [stacked[batch_size:]], held - batch_size
    if held:
        yield torch.cat(pending)


class Reducer(Protocol):
    """What a perturbation method keeps of each batch: ``update`` sees the masks (``B x 1|C x H x W``), the
    target's scores (``B``) and the model outputs; ``result`` gives the method's answer."""

    def update(self, masks: torch.Tensor, scores: torch.Tensor, outputs: torch.Tensor) -> None: ...

    def result(self) -> Any: ...


class MaskWeightedSum:
    """``sum_i score_i * mask_i`` (float64, ``1|C x H x W``) and the number of masks: RISE's saliency before its
    normalisation, occlusion's attribution with the drop as the score and ``1 - mask`` as the weight."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def update(self, masks: torch.Tensor, scores: torch.Tensor, outputs: torch.Tensor) -> None:
        weighted = torch.einsum("b,bchw->chw", scores.double(), masks.double())
        self.total = weighted if self.total is None else self.total + weighted
        self.count += masks.shape[0]

    def result(self) -> torch.Tensor:
        if self.total is None:
            raise ConvlensError("the mask generator gave no masks")
        return self.total


class ScoreList:
    """Every score in mask order (deletion and insertion curves)."""

    def __init__(self) -> None:
        self.scores: list[torch.Tensor] = []

    def update(self, masks: torch.Tensor, scores: torch.Tensor, outputs: torch.Tensor) -> None:
        self.scores.append(scores.detach().double().cpu())

    def result(self) -> torch.Tensor:
        return torch.cat(self.scores) if self.scores else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class Perturbation:
    """What ``perturb`` returns: the reducer's result and what it was measured against."""

    value: Any  # reducer.result()
    clean_score: float  # the target's score on the unperturbed input
    target: int | None  # the class explained; None for a callable target
    clean_output: torch.Tensor  # 1 x classes, the model's output on the unperturbed input (CPU)
    batch_size: int
    evaluations: int  # perturbed inputs run


def perturb(model, image, masks: Iterable[torch.Tensor], reducer: Reducer, *, target: TargetSpec = "predicted",
            score: Score = "probability", baseline: float | torch.Tensor = 0.0, batch_size: int | None = None,
            total: int | None = None, progress: ProgressLike = False,
            description: str = "perturbation") -> Perturbation:
    """Run the model on ``image`` perturbed by each mask and hand every batch to ``reducer``.

    ``image``: one image (path, PIL image, or a ``[1 x] 3 x H x W`` tensor). ``masks``: a generator of masks in
    [0, 1] (1 keeps the image, 0 shows ``baseline``), each ``H x W``, ``1|C x H x W`` or a stack of them.
    ``baseline``: a value in model-input space (0: the dataset mean after normalisation) or a ``1 x C x H x W``
    tensor (``fill_image`` makes the usual ones). ``target``/``score``: as everywhere (``convlens.targets``).
    ``total``: how many masks there will be (for progress only). ``batch_size``: default sized to the memory.
    """
    inputs = as_batch(model, image)
    if inputs.shape[0] != 1:
        raise ConvlensError(f"perturb takes one image, got a batch of {inputs.shape[0]}")
    if batch_size is not None and batch_size < 1:
        raise ConvlensError(f"--batch-size {batch_size}: give a positive number")
    baseline = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    evaluations = 0
    with preserved_state(as_module(model)) as net, torch.inference_mode():
        clean_output, per_sample = forward_measured(net, inputs)
        (resolved,) = resolve_targets(model, target, clean_output, score)
        clean_score = float(target_scores([resolved], clean_output)[0])
        batch_size = batch_size or auto_batch_size(ACTIVATION_COPIES * per_sample, inputs.device)
        steps = None if total is None else math.ceil(total / batch_size)
        for batch in track(batches(masks, batch_size), steps, description, progress):
            batch = batch.to(device=inputs.device, dtype=inputs.dtype)
            outputs = model_output(net(baseline + batch * (inputs - baseline)))
            scores = target_scores([resolved], outputs, owners=[0] * batch.shape[0])
            reducer.update(batch, scores, outputs)
            evaluations += batch.shape[0]
    return Perturbation(reducer.result(), clean_score, target_index(resolved), clean_output.detach().cpu(),
                        batch_size, evaluations)
