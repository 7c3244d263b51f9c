"""Which convolutions a model has, their kernels, and how one layer's kernels are laid out as tiles.

Layouts (``kernel_layout``):

- ``colour``: a layer that reads the RGB image (3 input channels, no groups), one RGB tile per filter;
- ``matrix``: deeper layers as a filters x input-channels matrix of grayscale tiles (the leaf study's figure);
- ``mean``: with ``reduce="mean"``, one tile per filter (the mean over its input channels);
- ``depthwise``: one input channel per filter, one tile per filter;
- ``pointwise``: 1x1 kernels, one number per filter and input channel, drawn as one output x input matrix of
  weights on one colour scale for the layer (per-filter min-max scaling would turn each into a black tile).

Tiles are min-max scaled per filter (over all its channels), or with ``shared_scale`` on one scale for the
layer, so that magnitudes compare across filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError, nearest_names
from convlens.models.classifier import ImageClassifier, as_module

Reduce = Literal["none", "mean"]
REDUCTIONS = ("none", "mean")
MAX_TILES = 64  # default number of filters drawn as single tiles
MATRIX_ROWS = 16  # default number of filters drawn as rows of a filters x channels matrix
MATRIX_CHANNELS = 16  # default number of input channels per row of that matrix
POINTWISE_PERCENTILE = 99.5  # a 1x1 layer's colour scale ends at this percentile of |w| (outliers saturate)


def conv_layer_names(model: ImageClassifier | nn.Module) -> list[str]:
    """Every ``nn.Conv2d`` (timm's ``Conv2dSame`` included), in registration order."""
    return [name for name, module in as_module(model).named_modules() if isinstance(module, nn.Conv2d)]


def conv_layer(model: ImageClassifier | nn.Module, name: str) -> nn.Conv2d:
    """The ``nn.Conv2d`` at ``name``, or a one-line error naming the convolutions to choose from."""
    module = as_module(model)
    convs = conv_layer_names(module)
    if name in convs:
        return module.get_submodule(name)
    modules = dict(module.named_modules())
    if name and name in modules:
        inside = [conv for conv in convs if conv.startswith(f"{name}.")]
        hint = f"its convolutions: {', '.join(inside[:5])}" if inside else \
            f"nearest convolutions: {', '.join(nearest_names(name, convs))}"
        raise ConvlensError(f"layer {name!r} ({type(modules[name]).__name__}) is not a Conv2d; {hint}")
    if not convs:
        raise ConvlensError(f"{type(module).__name__} has no Conv2d layer")
    raise ConvlensError(f"unknown conv layer {name!r}; nearest: {', '.join(nearest_names(name, convs))} "
                        "(`convlens layers MODEL` lists all)")


def first_conv_layer(model: ImageClassifier | nn.Module) -> str:
    """The first convolution, the one that looks at pixels: what ``convlens.filters`` draws by default."""
    convs = conv_layer_names(model)
    if not convs:
        raise ConvlensError(f"{type(as_module(model)).__name__} has no Conv2d layer")
    return convs[0]


def kernels(model: ImageClassifier | nn.Module, layer: str) -> torch.Tensor:
    """The weight of conv ``layer`` (``out x in/groups x kh x kw``), a detached float copy on the CPU."""
    return conv_layer(model, layer).weight.detach().to("cpu", torch.float32, copy=True)


def describe_model(model: ImageClassifier | nn.Module) -> dict:
    """``model.describe()``, or the class name of a bare module."""
    if isinstance(model, ImageClassifier):
        return model.describe()
    return {"spec": "custom", "architecture": type(model).__name__}


@dataclass
class FilterTiles:
    """What one layer's tile figure shows: tiles in [0, 1] and how they are laid out and labelled."""

    tiles: np.ndarray  # n x kh x kw, or n x kh x kw x 3 for colour
    ncols: int | None
    titles: list[str] | None = None
    row_labels: list[str] | None = None
    col_labels: list[str] | None = None
    layout: str = "grid"  # colour | matrix | mean | depthwise
    filters: int = 0  # how many filters are shown
    channels: int = 0  # how many input channels per filter are shown (matrix layout)


@dataclass
class PointwiseMatrix:
    """A 1x1 layer's weights as a filters x input-channels matrix, with its layer-wide symmetric colour limit."""

    values: np.ndarray  # filters shown x input channels shown, the raw weights
    limit: float  # the colour scale runs from -limit to +limit (POINTWISE_PERCENTILE of |w| over the layer)
    largest: float  # max |w| over the layer, for the colour bar's label
    filters: int
    channels: int
    layout: str = "pointwise"


def scaled(values: np.ndarray, reference: np.ndarray, shared: bool) -> np.ndarray:
    """``values[i]`` to [0, 1] by the min and max of ``reference[i]``, or of all of it when ``shared``."""
    axes = None if shared else tuple(range(1, reference.ndim))
    low = reference.min(axis=axes, keepdims=True)
    high = reference.max(axis=axes, keepdims=True)
    span = np.where(high - low > 1e-12, high - low, 1.0)  # a constant kernel is drawn as zeros
    return np.clip((values - low) / span, 0.0, 1.0)


def is_colour(weight: torch.Tensor, groups: int = 1) -> bool:
    """A layer that reads RGB pixels: three input channels per filter, no groups, kernels wider than 1x1."""
    return weight.shape[1] == 3 and groups == 1 and not is_pointwise(weight)


def is_pointwise(weight: torch.Tensor) -> bool:
    """1x1 kernels: each filter is one weight per input channel."""
    return tuple(weight.shape[2:]) == (1, 1)


def kernel_layout(weight: torch.Tensor, groups: int = 1, reduce: Reduce = "none") -> str:
    """How a layer's kernels are drawn: ``pointwise``, ``colour``, ``depthwise``, ``mean`` or ``matrix``."""
    if is_pointwise(weight):
        return "pointwise"
    if is_colour(weight, groups):
        return "colour"
    if weight.shape[1] == 1:
        return "depthwise"
    return "mean" if reduce == "mean" else "matrix"


def check_options(max_filters: int | None, reduce: str, max_channels: int | None) -> None:
    if reduce not in REDUCTIONS:
        raise ConvlensError(f"--reduce {reduce!r}: choose one of {', '.join(REDUCTIONS)}")
    if (max_filters is not None and max_filters < 1) or (max_channels is not None and max_channels < 1):
        raise ConvlensError("--max and --max-channels must be at least 1")


def filter_tiles(weight: torch.Tensor, groups: int = 1, max_filters: int | None = None,
                 reduce: Reduce = "none", shared_scale: bool = False,
                 max_channels: int | None = None) -> FilterTiles:
    """Tiles for the first ``max_filters`` filters of ``weight`` (``out x in/groups x kh x kw``).

    ``max_filters=None`` shows up to 64 tiles, or 16 rows for a filters x channels matrix;
    ``max_channels=None`` shows 16 input channels per row of that matrix. 1x1 kernels are not tiles
    (``pointwise_matrix``).
    """
    check_options(max_filters, reduce, max_channels)
    layout = kernel_layout(weight, groups, reduce)
    if layout == "pointwise":
        raise ConvlensError("1x1 kernels are drawn as one matrix of weights (pointwise_matrix), not as tiles")
    w = weight.detach().cpu().double().numpy()
    count = min(max_filters or (MATRIX_ROWS if layout == "matrix" else MAX_TILES), w.shape[0])
    titles = [f"#{i}" for i in range(count)]
    if layout == "colour":
        tiles = scaled(w[:count], w if shared_scale else w[:count], shared_scale).transpose(0, 2, 3, 1)
        return FilterTiles(tiles, None, titles, layout="colour", filters=count, channels=3)
    if layout in ("depthwise", "mean"):
        means = w.mean(axis=1)
        tiles = scaled(means[:count], means if shared_scale else means[:count], shared_scale)
        return FilterTiles(tiles, None, titles, layout=layout, filters=count, channels=1)
    channels = min(max_channels or MATRIX_CHANNELS, w.shape[1])
    per_filter = scaled(w[:count], w if shared_scale else w[:count], shared_scale)
    tiles = per_filter[:, :channels].reshape(count * channels, *w.shape[2:])
    rows = [f"#{i}" if groups == 1 else f"#{i} (in {first}-{first + w.shape[1] - 1})"
            for i, first in enumerate(group_first_channels(w.shape[0], w.shape[1], groups, count))]
    columns = [str(c) for c in range(channels)]
    return FilterTiles(tiles, channels, None, rows, columns, "matrix", count, channels)


def group_first_channels(out_channels: int, per_filter: int, groups: int, count: int) -> list[int]:
    """The first input channel each of the first ``count`` filters reads (its group's first channel)."""
    per_group = out_channels // groups
    return [(i // per_group) * per_filter for i in range(count)]


def pointwise_matrix(weight: torch.Tensor, max_filters: int | None = None,
                     max_channels: int | None = None) -> PointwiseMatrix:
    """The first ``max_filters`` x ``max_channels`` (default: all) weights of a 1x1 layer, with the colour limit
    of the whole layer: symmetric about 0 so that the sign reads as the colour."""
    check_options(max_filters, "none", max_channels)
    w = weight.detach().cpu().double().numpy()[:, :, 0, 0]
    filters = min(max_filters or w.shape[0], w.shape[0])
    channels = min(max_channels or w.shape[1], w.shape[1])
    magnitude = np.abs(w)
    largest = float(magnitude.max())
    limit = float(np.percentile(magnitude, POINTWISE_PERCENTILE)) or largest or 1.0
    return PointwiseMatrix(w[:filters, :channels], limit, largest, filters, channels)
