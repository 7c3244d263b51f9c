"""The computation of feature maps: layers' activations in one forward pass, and which channels to show.

Activations are captured with ``convlens.hooks.capture`` during the forward pass that also gives the model's
output, so in-place ReLUs after a hooked layer cannot change what is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.filters.kernels import scaled
from convlens.hooks import capture
from convlens.models.classifier import ImageClassifier, as_module

Order = Literal["index", "activation"]
ORDERS = ("index", "activation")


def layer_activations(model: ImageClassifier | nn.Module, inputs: torch.Tensor,
                      layers: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass on a preprocessed batch: the activations of ``layers`` (``N x C x H x W``, as the model
    computed them) and the model's output."""
    with capture(model, list(layers)) as seen, torch.inference_mode():
        output = as_module(model)(inputs)
    maps = {name: seen[name] for name in layers}
    for name, tensor in maps.items():
        if tensor.dim() != 4:
            raise ConvlensError(f"layer {name!r} outputs {tuple(tensor.shape[1:])}, not feature maps "
                                "(C x H x W); choose a convolutional layer")
    return maps, output


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise ConvlensError(f"--order {order!r}: choose one of {', '.join(ORDERS)}")


def channel_order(activation: torch.Tensor, order: Order = "index", count: int | None = None) -> torch.Tensor:
    """Channel indices of a ``C x H x W`` map: ``index`` order, or by mean activation, strongest first (ties keep
    index order); the first ``count`` (all when None)."""
    check_order(order)
    if order == "index":
        channels = torch.arange(activation.shape[0])
    else:
        channels = torch.argsort(-activation.float().mean(dim=(1, 2)).cpu(), stable=True)
    return channels[:count]


def map_tiles(activation: torch.Tensor, channels: torch.Tensor) -> np.ndarray:
    """The chosen channels of a ``C x H x W`` map, each min-max scaled to [0, 1] on its own."""
    values = activation.detach().cpu().double().numpy()[channels.numpy()]
    return scaled(values, values, shared=False)
