"""Average drop and increase in confidence (Chattopadhay et al. 2018), as torchcam's ``ClassificationMetric``.

The input (in the model's normalised space) is multiplied by the map (``N x H x W`` in [0, 1]); with ``s`` the
class probability on the image and ``s_m`` on the masked image, the drop is ``relu(s - s_m) / (s + 1e-7)`` and
the increase is ``s < s_m``. Averaged over images they are torchcam's ``avg_drop`` and ``conf_increase``.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.faithfulness.perturb import class_probabilities
from convlens.progress import ProgressLike

EPS = 1e-7


def confidence_scores(module: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                      batch_size: int = 64, progress: ProgressLike = False) -> dict[str, torch.Tensor]:
    """``drop`` (``N``, fractions) and ``increase`` (``N``, 0 or 1) of the masked inputs."""
    device = inputs.device
    classes = classes.to(device)
    weights = maps.to(device, inputs.dtype)[:, None]
    count = len(inputs)

    def clean(start: int, stop: int):
        return inputs[start:stop], torch.arange(start, stop, device=device)

    def masked(start: int, stop: int):
        return weights[start:stop] * inputs[start:stop], torch.arange(start, stop, device=device)

    original = class_probabilities(module, count, clean, classes, batch_size)
    after = class_probabilities(module, count, masked, classes, batch_size, progress, "confidence: masked inputs")
    drop = torch.relu(original - after) / (original + EPS)
    return {"drop": drop, "increase": (original < after).float(), "clean": original, "masked": after}
