"""``InvarianceResult``: per transformation, the feature distances and target scores over the sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from convlens.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class InvarianceCurves:
    """One transformation's sweep: ``images x amounts`` arrays."""

    transform: str
    amounts: np.ndarray
    early_distance: torch.Tensor
    late_distance: torch.Tensor
    score: torch.Tensor  # the target's score (probability or logit, as the result's ``score`` says)
    examples: list[tuple[float, np.ndarray]]  # a few transformed versions of the first image (H x W x 3 in [0, 1])


@dataclass(frozen=True)
class InvarianceResult(Result):
    command: ClassVar[str] = "invariance"

    curves: dict[str, InvarianceCurves]
    layers: tuple[str, str]  # early, late (``NAME:input`` means the input of module NAME)
    targets: list[int | None]  # class per image; None for a callable target
    images: list[str]
    inputs: torch.Tensor  # images x 3 x H x W: the untransformed preprocessed inputs
    clean_score: torch.Tensor  # images: the target's score on the untransformed image
    score: str = "probability"
    class_names: tuple[str, ...] | None = field(default=None, repr=False)
    model: dict = field(default_factory=dict)
    spec: str = "custom"
    parameters: dict = field(default_factory=dict)  # points, batch_size
    compute_seconds: float = 0.0

    def __getitem__(self, transform: str) -> InvarianceCurves:
        return self.curves[transform]

    def class_name(self, index: int | None) -> str:
        if index is None:
            return "custom target"
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    def arrays(self) -> dict[str, np.ndarray]:
        """``input``, ``clean_score`` and per transformation ``<t>_amounts``, ``<t>_early_distance``,
        ``<t>_late_distance``, ``<t>_score`` (images x amounts)."""
        arrays = {"input": self.inputs.numpy(), "clean_score": self.clean_score.numpy()}
        for name, curves in self.curves.items():
            arrays.update({f"{name}_amounts": np.asarray(curves.amounts),
                           f"{name}_early_distance": curves.early_distance.numpy(),
                           f"{name}_late_distance": curves.late_distance.numpy(),
                           f"{name}_score": curves.score.numpy()})
        return arrays

    def summary(self) -> dict[str, Any]:
        return {
            "inputs": self.images, "model": self.model,
            "layers": {"early": self.layers[0], "late": self.layers[1]},
            "targets": [{"index": t, "name": self.class_name(t)} for t in self.targets], "score": self.score,
            "clean_score": self.clean_score.tolist(),
            "parameters": {"transforms": {name: c.amounts.tolist() for name, c in self.curves.items()},
                           **self.parameters},
            "compute_seconds": self.compute_seconds,
        }

    def figures(self) -> dict[str, Figure]:
        from convlens.invariance.figures import invariance_figure

        return {"invariance": invariance_figure(self, title=f"{self.spec}: invariance")}
