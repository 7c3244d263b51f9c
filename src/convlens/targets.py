"""Targets: what score a method explains. Shared by every method and metric.

A target is a callable ``(logits: N x C) -> N scores``. ``resolve_targets`` accepts, per image or for all:
a class index, a class name, ``"predicted"`` (the top class of each image), or such a callable (for
multi-output models or custom scores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from convlens.errors import ConvlensError

Target = Callable[[torch.Tensor], torch.Tensor]
TargetSpec = int | str | Target | None


@dataclass(frozen=True)
class ClassTarget:
    """The logit of one class (``probability=True``: its softmax probability)."""

    index: int
    probability: bool = False

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        values = torch.softmax(output, dim=-1) if self.probability else output
        return values[..., self.index]


def resolve_targets(model, spec: TargetSpec | Sequence[TargetSpec], logits: torch.Tensor) -> list[Target]:
    """One target per image of a batch whose ``logits`` are given (needed for ``"predicted"``).

    ``model`` is an ImageClassifier (for class names) or an ``nn.Module`` (indices and callables only).
    """
    count = logits.shape[0]
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec] * count
    if len(specs) != count:
        raise ConvlensError(f"{len(specs)} targets given for {count} images; give one, or one per image")
    return [_one_target(model, item, logits[i]) for i, item in enumerate(specs)]


def _one_target(model, item: TargetSpec, logits: torch.Tensor) -> Target:
    if item is None or (isinstance(item, str) and item == "predicted"):
        return ClassTarget(int(logits.argmax()))
    if callable(item) and not isinstance(item, (int, str)):
        return item
    if hasattr(model, "class_index"):
        return ClassTarget(model.class_index(item))
    if isinstance(item, str) and item.isdigit():
        item = int(item)
    if not isinstance(item, int) or not 0 <= item < logits.shape[-1]:
        raise ConvlensError(f"target {item!r}: give a class index below {logits.shape[-1]} or a callable")
    return ClassTarget(item)


def target_indices(targets: Sequence[Target]) -> list[int | None]:
    """Class indices of the targets, where they are class targets (for titles and summaries)."""
    return [t.index if isinstance(t, ClassTarget) else None for t in targets]


def scores(targets: Sequence[Target], output: torch.Tensor) -> torch.Tensor:
    """Each image's own target score, as an ``N`` vector."""
    return torch.stack([target(output[i:i + 1]).reshape(()) for i, target in enumerate(targets)])
