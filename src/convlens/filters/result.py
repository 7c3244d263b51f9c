"""``convlens.filters(model, layers)``: the kernels of conv layers, as a ``FiltersResult``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from convlens.filters.kernels import (
    Reduce,
    check_options,
    conv_layer,
    describe_model,
    first_conv_layer,
    is_colour,
    kernel_layout,
)
from convlens.models.classifier import ImageClassifier
from convlens.output import to_numpy
from convlens.progress import ProgressLike, track
from convlens.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NO_IMAGE_SIZE = (224, 224)  # the empty ``input`` of a bare module that does not say its input size


@dataclass(frozen=True)
class LayerKernels:
    """One conv layer's parameters, copied off the model (float32, CPU) with what the figure needs."""

    name: str
    type: str
    weight: torch.Tensor  # out x in/groups x kh x kw
    bias: torch.Tensor | None
    groups: int
    stride: tuple[int, ...]

    @classmethod
    def of(cls, model: ImageClassifier | nn.Module, name: str) -> LayerKernels:
        conv = conv_layer(model, name)
        bias = None if conv.bias is None else conv.bias.detach().to("cpu", torch.float32, copy=True)
        return cls(name, type(conv).__name__, conv.weight.detach().to("cpu", torch.float32, copy=True), bias,
                   conv.groups, tuple(conv.stride))


@dataclass(frozen=True)
class FiltersResult(Result):
    """The kernels of ``layers`` and how to draw them (``figures()``: one ``filters-LAYER`` figure each)."""

    command: ClassVar[str] = "filters"

    model: dict
    layers: tuple[LayerKernels, ...]
    input_size: tuple[int, int]
    max_filters: int | None = None
    reduce: Reduce = "none"
    shared_scale: bool = False
    max_channels: int | None = None
    compute_seconds: float = 0.0

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> torch.Tensor:
        """The kernel of layer ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer.weight
        raise KeyError(f"{name!r} is not among this result's layers: {', '.join(self.names)}")

    def arrays(self) -> dict[str, np.ndarray]:
        """``kernel/LAYER`` and ``bias/LAYER``, all filters, as stored in the model; ``input`` is an empty
        ``0 x 3 x H x W`` array at the model's input size, as filters need no image."""
        arrays = {"input": np.zeros((0, 3, *self.input_size), np.float32)}
        arrays |= {f"kernel/{layer.name}": to_numpy(layer.weight) for layer in self.layers}
        arrays |= {f"bias/{layer.name}": to_numpy(layer.bias) for layer in self.layers if layer.bias is not None}
        return arrays

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layers": self.names,
            "parameters": {"max_filters": self.max_filters, "reduce": self.reduce,
                           "shared_scale": self.shared_scale, "max_channels": self.max_channels},
            "kernels": {layer.name: {"type": layer.type, "shape": list(layer.weight.shape), "groups": layer.groups,
                                     "stride": list(layer.stride), "colour": is_colour(layer.weight, layer.groups),
                                     "layout": kernel_layout(layer.weight, layer.groups, self.reduce)}
                        for layer in self.layers},
            "compute_seconds": self.compute_seconds,
        }

    def figures(self) -> dict[str, Figure]:
        return dict(self.iter_figures())

    def iter_figures(self) -> Iterator[tuple[str, Figure]]:
        from convlens.filters.figures import filters_figure

        for layer in self.layers:
            yield f"filters-{layer.name}", filters_figure(layer, self.max_filters, self.reduce, self.shared_scale,
                                                          self.max_channels)


def filters(model: ImageClassifier | nn.Module, layers: str | Sequence[str] | None = None, *,
            max_filters: int | None = None, reduce: Reduce = "none", shared_scale: bool = False,
            max_channels: int | None = None, progress: ProgressLike = False) -> FiltersResult:
    """The kernels of conv ``layers`` (default: the first convolution, the one that looks at pixels).

    Figures: an RGB layer in colour, one tile per filter; deeper layers as ``max_filters`` (default 16) filters x
    their first ``max_channels`` (default 16) input channels, or with ``reduce="mean"`` up to 64 tiles of the
    mean over input channels; depthwise layers one tile per filter; 1x1 layers as one filters x input-channels
    matrix of weights (default all) on one colour scale. Tiles are min-max scaled per filter, or with
    ``shared_scale`` over the layer. Reading the weights changes nothing in the model.
    """
    names = [layers] if isinstance(layers, str) else list(layers) if layers else [first_conv_layer(model)]
    check_options(max_filters, reduce, max_channels)
    for name in names:  # every name is checked before any work
        conv_layer(model, name)
    start = time.perf_counter()
    read = tuple(LayerKernels.of(model, name) for name in track(names, len(names), "reading kernels", progress))
    size = model.input_size if isinstance(model, ImageClassifier) else NO_IMAGE_SIZE
    return FiltersResult(describe_model(model), read, tuple(size), max_filters, reduce, shared_scale, max_channels,
                         time.perf_counter() - start)
