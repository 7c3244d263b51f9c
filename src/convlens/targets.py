"""Targets: what score a method explains. One model shared by every method and metric.

A target is a callable ``(output: N x C) -> N scores``. ``resolve_targets`` accepts, per image or for all:
a class index, a class name, ``"predicted"`` (the top class of each image), or such a callable (for
multi-output models or custom scores). ``score`` chooses what a class target reads: ``"logit"`` (the default
of gradient methods and CAMs) or ``"probability"`` (its softmax probability: occlusion, invariance and the
faithfulness metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from convlens.errors import ConvlensError

Target = Callable[[torch.Tensor], torch.Tensor]
TargetSpec = int | str | Target | None
Score = Literal["logit", "probability"]
SCORES = ("logit", "probability")


@dataclass(frozen=True)
class ClassTarget:
    """The logit of one class (``probability=True``: its softmax probability)."""

    index: int
    probability: bool = False

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        values = torch.softmax(output, dim=-1) if self.probability else output
        return values[..., self.index]


def check_score(score: str) -> bool:
    """Whether ``score`` asks for probabilities; an error naming the choices otherwise."""
    if score not in SCORES:
        raise ConvlensError(f"score {score!r}: choose one of {', '.join(SCORES)}")
    return score == "probability"


def per_image_specs(spec: TargetSpec | Sequence[TargetSpec], count: int) -> list[TargetSpec]:
    """``spec`` repeated for ``count`` images, or the list given, which must hold one spec per image."""
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec] * count
    if len(specs) != count:
        raise ConvlensError(f"{len(specs)} targets given for {count} images; give one, or one per image")
    return specs


def resolve_targets(model, spec: TargetSpec | Sequence[TargetSpec], logits: torch.Tensor,
                    score: Score = "logit") -> list[Target]:
    """One target per image of a batch whose ``logits`` are given (needed for ``"predicted"``).

    ``model`` is an ImageClassifier (for class names) or an ``nn.Module`` (indices and callables only).
    """
    probability = check_score(score)
    specs = per_image_specs(spec, logits.shape[0])
    return [_one_target(model, item, logits[i], probability) for i, item in enumerate(specs)]


def target_index(target: Target) -> int | None:
    """The class a target reads, or None for a callable score."""
    return target.index if isinstance(target, ClassTarget) else None


def _one_target(model, item: TargetSpec, logits: torch.Tensor, probability: bool) -> Target:
    if item is None or (isinstance(item, str) and item == "predicted"):
        return ClassTarget(int(logits.argmax()), probability)
    if callable(item) and not isinstance(item, (int, str)):
        return item
    if hasattr(model, "class_index"):
        return ClassTarget(model.class_index(item), probability)
    if isinstance(item, str) and item.isdigit():
        item = int(item)
    if not isinstance(item, int) or not 0 <= item < logits.shape[-1]:
        raise ConvlensError(f"target {item!r}: give a class index below {logits.shape[-1]} or a callable")
    return ClassTarget(item, probability)


# --- model outputs that are not one logits tensor ------------------------------------------------------------
def output_rows(output, index: int):
    """Image ``index`` of a (possibly nested) model output, keeping the batch dimension."""
    if isinstance(output, torch.Tensor):
        return output[index:index + 1]
    if isinstance(output, (tuple, list)):
        return type(output)(output_rows(item, index) for item in output)
    if isinstance(output, dict):
        return {key: output_rows(value, index) for key, value in output.items()}
    return output


def output_batch_size(output) -> int:
    if isinstance(output, torch.Tensor):
        return output.shape[0]
    if isinstance(output, (tuple, list)) and output:
        return output_batch_size(output[0])
    if isinstance(output, dict) and output:
        return output_batch_size(next(iter(output.values())))
    raise ConvlensError(f"cannot read a batch from a model output of type {type(output).__name__}")


def resolve_output_targets(model, specs, output, score: Score = "logit") -> list[Target]:
    """One target per image; a model whose output is not one logits tensor needs callable targets."""
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        return resolve_targets(model, specs, output.detach(), score)
    count = output_batch_size(output)
    items = per_image_specs(specs, count)
    if not all(callable(item) and not isinstance(item, (int, str)) for item in items):
        raise ConvlensError("the model output is not an N x classes tensor: give targets as callables on the "
                            "output (e.g. lambda out: out[1][:, 3])")
    return items


def target_scores(targets: Sequence[Target], output, owners: Sequence[int] | None = None) -> torch.Tensor:
    """Row ``i`` scored with ``targets[owners[i]]`` (default: ``targets[i]``), as a vector.

    Class targets on a logits tensor are read in one gather; callables run row by row.
    """
    owners = list(range(output_batch_size(output))) if owners is None else list(owners)
    if (isinstance(output, torch.Tensor) and output.ndim == 2 and owners
            and all(isinstance(t, ClassTarget) for t in targets)):
        chosen = [targets[owner] for owner in owners]
        columns = torch.tensor([t.index for t in chosen], device=output.device)
        rows = torch.arange(len(owners), device=output.device)
        logits = output[rows, columns]
        if not any(t.probability for t in chosen):
            return logits
        probabilities = torch.softmax(output, dim=-1)[rows, columns]
        wants = torch.tensor([t.probability for t in chosen], device=output.device)
        return torch.where(wants, probabilities, logits)
    values = []
    for row, owner in enumerate(owners):
        value = targets[owner](output_rows(output, row))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ConvlensError("a target must return one score per image (a 1-element tensor)")
        values.append(value.reshape(()))
    return torch.stack(values)
