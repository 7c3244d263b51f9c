"""The result of ``convlens.attribution``: attributions, their maps, and the figure of both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from convlens.result import Result

TITLES = {"saliency": "Saliency (gradient)", "guided": "Guided backprop", "deconvnet": "Deconvnet",
          "smoothgrad": "SmoothGrad", "integrated-gradients": "Integrated Gradients",
          "guided-gradcam": "Guided Grad-CAM"}


@dataclass(frozen=True)
class AttributionResult(Result):
    """``attributions``: ``N x 3 x H x W`` as the method defines them (Captum's numbers); ``maps``: ``N x H x W``
    in [0, 1], the channels reduced (max of ``|a|``, or the signed sum for Integrated Gradients) and scaled
    per image."""

    command: ClassVar[str] = "attribution"

    method: str
    attributions: torch.Tensor
    maps: torch.Tensor
    inputs: torch.Tensor
    targets: tuple[int, ...]
    scores: torch.Tensor  # each image's target score (logit) on the clean input
    parameters: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    display: np.ndarray | None = None  # N x H x W x 3 in [0, 1], for the figure
    compute_seconds: float = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {"input": self.inputs.numpy(), "attribution": self.attributions.numpy(), "map": self.maps.numpy(),
                "target": np.array(self.targets, dtype=np.int64), "score": self.scores.numpy()}

    def summary(self) -> dict[str, Any]:
        return {"command": self.command, "method": self.method, "model": self.model_info,
                "targets": [{"index": t, "name": self._name(t)} for t in self.targets],
                "parameters": self.parameters, "compute_seconds": self.compute_seconds}

    def _name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def figures(self) -> dict[str, Any]:
        from convlens.render import overlay, plt

        count = len(self.maps)
        figure, axes = plt.subplots(2, count, figsize=(2.4 * count, 5.0), squeeze=False)
        for i in range(count):
            image = self.display[i] if self.display is not None else _grey(self.inputs[i])
            axes[0, i].imshow(image)
            axes[0, i].set_title(self._name(self.targets[i])[:28], fontsize=8)
            axes[1, i].imshow(overlay(image, self.maps[i].numpy()))
            for axis in axes[:, i]:
                axis.axis("off")
        figure.suptitle(f"{TITLES.get(self.method, self.method)}", fontsize=10)
        return {"attribution": figure}


def _grey(chw: torch.Tensor) -> np.ndarray:
    array = chw.float().numpy().transpose(1, 2, 0)
    low, high = array.min(), array.max()
    return (array - low) / (high - low) if high > low else np.zeros_like(array)
