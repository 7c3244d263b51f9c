"""Batched evaluation of perturbed inputs across images, on the perturbation base's loop.

A metric supplies, for a range of its perturbations, the perturbed inputs and the image each belongs to
(``build(start, stop) -> (inputs, owners)``); ``class_probabilities`` runs them ``batch_size`` at a time through
``convlens.perturbation.evaluate_in_batches`` under ``torch.inference_mode`` and reads the softmax probability
of each owner's class. Unlike ``convlens.perturbation.perturb`` (one image, its masks), a batch here mixes
images: the deletion game of small images fills a batch with the steps of several.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.loading import preferred_memory_format
from convlens.perturbation import evaluate_in_batches
from convlens.progress import ProgressLike

Builder = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def probabilities_of(output, classes: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``classes[i]`` in row ``i`` of a logits output."""
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise ConvlensError("the faithfulness metrics need a model whose output is one N x classes tensor of logits")
    rows = torch.arange(len(classes), device=output.device)
    return torch.softmax(output.float(), dim=-1)[rows, classes.to(output.device)]


def class_probabilities(module: nn.Module, count: int, build: Builder, classes: torch.Tensor, batch_size: int,
                        progress: ProgressLike = False, description: str = "perturbed inputs") -> torch.Tensor:
    """The probability of the owner's class for each of ``count`` perturbed inputs (float32, CPU)."""
    if batch_size < 1:
        raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")

    def evaluate(start: int, stop: int) -> torch.Tensor:
        inputs, owners = build(start, stop)
        output = module(inputs.contiguous(memory_format=preferred_memory_format(inputs.device)))
        return probabilities_of(output, classes[owners]).cpu()

    with torch.inference_mode():
        scores = evaluate_in_batches(count, batch_size, evaluate, progress, description)
    return torch.cat(scores) if scores else torch.zeros(0)
