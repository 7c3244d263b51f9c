"""What ``feature_viz`` returns: the images, the activation each reached, and how that compares with the
best natural images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from convlens.result import Result


@dataclass(frozen=True)
class NaturalReference:
    """Per unit, the same statistic on natural images: the best value, the mean of the best nine, and which
    image gave the best (an index into ``paths`` when the reference was files)."""

    top1: torch.Tensor
    top9_mean: torch.Tensor
    best_image: torch.Tensor
    count: int
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureVizResult(Result):
    """``images``: ``units x diversity x 3 x H x W`` in [0, 1] (before preprocessing). ``reached``: the objective
    on each final image as it is (``units x diversity``). ``curves``: the objective at every step, on the
    transformed image the step optimised (``steps x units x diversity``)."""

    command = "featureviz"

    model: dict
    layer: str
    units: tuple[int, ...]
    objective: str
    images: torch.Tensor
    inputs: torch.Tensor  # the first image of each unit, preprocessed for the model
    reached: torch.Tensor
    curves: torch.Tensor
    natural: NaturalReference | None
    parameters: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def beats_natural(self) -> np.ndarray | None:
        """Per unit, whether its best visualization exceeds the best natural image (None without reference)."""
        if self.natural is None:
            return None
        return (self.reached.amax(dim=1) > self.natural.top1).numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "input": self.inputs.float().numpy(),
            "images": self.images[:, 0].float().numpy(),
            "units": np.asarray(self.units, dtype=np.int64),
            "reached": self.reached[:, 0].float().numpy(),
            "curves": self.curves.float().numpy(),
        }
        if self.images.shape[1] > 1:
            arrays["diversity_images"] = self.images.float().numpy()
            arrays["diversity_reached"] = self.reached.float().numpy()
        if self.natural is not None:
            arrays["natural_top1"] = self.natural.top1.numpy()
            arrays["natural_top9_mean"] = self.natural.top9_mean.numpy()
            arrays["beats_natural"] = self.beats_natural
        return arrays

    def summary(self) -> dict[str, Any]:
        units = []
        beats = self.beats_natural
        for index, unit in enumerate(self.units):
            entry: dict[str, Any] = {"unit": unit, "reached": [float(v) for v in self.reached[index]]}
            if self.natural is not None:
                best = int(self.natural.best_image[index])
                entry.update(natural_top1=float(self.natural.top1[index]),
                             natural_top9_mean=float(self.natural.top9_mean[index]),
                             natural_best_image=self.natural.paths[best] if self.natural.paths else best,
                             beats_natural=bool(beats[index]))
            units.append(entry)
        flagged = [u["unit"] for u in units if u.get("beats_natural") is False]
        return {
            "command": self.command,
            "model": self.model,
            "layer": self.layer,
            "objective": self.objective,
            "units": units,
            "flagged_units": flagged,
            "natural_reference": None if self.natural is None else {"images": self.natural.count,
                                                                    "statistic": self._statistic()},
            "parameters": self.parameters,
            "compute_seconds": self.seconds,
        }

    def _statistic(self) -> str:
        return {"channel": "mean over positions", "neuron": "value at the position",
                "direction": "mean dot product with the direction", "class": "logit"}[self.objective]

    def figures(self) -> dict:
        from convlens.featureviz.figures import curves_figure, diversity_figure, units_figure

        figures = {"units": units_figure(self), "curves": curves_figure(self)}
        if self.images.shape[1] > 1:
            figures["diversity"] = diversity_figure(self)
        return figures
