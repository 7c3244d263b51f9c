"""The kernels of convolution layers as image grids.

A layer that reads the RGB image (3 input channels, no groups) is drawn in colour, one tile per filter. Deeper
layers are drawn as a filters x input-channels matrix of grayscale tiles (the leaf study's figure), or with
``reduce="mean"`` one tile per filter (the mean over its input channels). Depthwise layers (one input
channel per filter) get one tile per filter; grouped layers label each row with the input channels it reads.
Each filter is min-max scaled on its own (over all its channels), or with ``shared_scale`` on one scale for
the whole layer, so that magnitudes compare across filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from convlens.errors import ConvlensError, nearest_names
from convlens.models.classifier import ImageClassifier, as_module

Reduce = Literal["none", "mean"]
REDUCTIONS = ("none", "mean")
MAX_TILES = 64  # default number of filters drawn as single tiles
MATRIX_ROWS = 16  # default number of filters drawn as rows of a filters x channels matrix


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


def default_filter_layer(model: ImageClassifier | nn.Module) -> str:
    """The first convolution: the one that looks at pixels."""
    convs = conv_layer_names(model)
    if not convs:
        raise ConvlensError(f"{type(as_module(model)).__name__} has no Conv2d layer")
    return convs[0]


def kernels(model: ImageClassifier | nn.Module, layer: str) -> torch.Tensor:
    """The weight of conv ``layer`` (``out x in/groups x kh x kw``), a detached float copy on the CPU."""
    return conv_layer(model, layer).weight.detach().to("cpu", torch.float32, copy=True)


@dataclass
class FilterTiles:
    """What one layer's figure shows: tiles in [0, 1] and how they are laid out and labelled."""

    tiles: np.ndarray  # n x kh x kw, or n x kh x kw x 3 for colour
    ncols: int | None
    titles: list[str] | None = None
    row_labels: list[str] | None = None
    col_labels: list[str] | None = None
    layout: str = "grid"  # colour | matrix | mean | depthwise
    filters: int = 0  # how many filters are shown
    channels: int = 0  # how many input channels per filter are shown (matrix layout)


def scaled(values: np.ndarray, reference: np.ndarray, shared: bool) -> np.ndarray:
    """``values[i]`` to [0, 1] by the min and max of ``reference[i]``, or of all of it when ``shared``."""
    axes = None if shared else tuple(range(1, reference.ndim))
    low = reference.min(axis=axes, keepdims=True)
    high = reference.max(axis=axes, keepdims=True)
    span = np.where(high - low > 1e-12, high - low, 1.0)  # a constant kernel is drawn as zeros
    return np.clip((values - low) / span, 0.0, 1.0)


def is_colour(weight: torch.Tensor, groups: int = 1) -> bool:
    """A layer that reads RGB pixels: three input channels per filter and no groups."""
    return weight.shape[1] == 3 and groups == 1


def check_options(max_filters: int | None, reduce: str, max_channels: int) -> None:
    if reduce not in REDUCTIONS:
        raise ConvlensError(f"--reduce {reduce!r}: choose one of {', '.join(REDUCTIONS)}")
    if (max_filters is not None and max_filters < 1) or max_channels < 1:
        raise ConvlensError("--max and --max-channels must be at least 1")


def filter_tiles(weight: torch.Tensor, groups: int = 1, max_filters: int | None = None,
                 reduce: Reduce = "none", shared_scale: bool = False, max_channels: int = 16) -> FilterTiles:
    """Tiles for the first ``max_filters`` filters of ``weight`` (``out x in/groups x kh x kw``).

    ``max_filters=None`` shows up to 64 tiles, or 16 rows for a filters x channels matrix.
    """
    check_options(max_filters, reduce, max_channels)
    w = weight.detach().cpu().double().numpy()
    matrix = not is_colour(weight, groups) and reduce == "none" and w.shape[1] > 1
    count = min(max_filters or (MATRIX_ROWS if matrix else MAX_TILES), w.shape[0])
    titles = [f"#{i}" for i in range(count)]
    if is_colour(weight, groups):
        tiles = scaled(w[:count], w if shared_scale else w[:count], shared_scale).transpose(0, 2, 3, 1)
        return FilterTiles(tiles, None, titles, layout="colour", filters=count, channels=3)
    if not matrix:
        means = w.mean(axis=1)
        tiles = scaled(means[:count], means if shared_scale else means[:count], shared_scale)
        return FilterTiles(tiles, None, titles, layout="depthwise" if w.shape[1] == 1 else "mean",
                           filters=count, channels=1)
    channels = min(max_channels, w.shape[1])
    per_filter = scaled(w[:count], w if shared_scale else w[:count], shared_scale)
    tiles = per_filter[:, :channels].reshape(count * channels, *w.shape[2:])
    per_group = w.shape[0] // groups
    first = [(i // per_group) * w.shape[1] for i in range(count)]  # a grouped filter's first input channel
    rows = [f"#{i}" if groups == 1 else f"#{i} (in {f}-{f + w.shape[1] - 1})" for i, f in enumerate(first)]
    columns = [str(c) for c in range(channels)]
    return FilterTiles(tiles, channels, None, rows, columns, "matrix", count, channels)


def filters_figure(layer: str, conv: nn.Conv2d, max_filters: int | None = None, reduce: Reduce = "none",
                   shared_scale: bool = False, max_channels: int = 16) -> Figure:
    """The figure of one conv layer's kernels."""
    from convlens.render import mosaic_figure

    weight = conv.weight.detach()
    shown = filter_tiles(weight, conv.groups, max_filters, reduce, shared_scale, max_channels)
    out_ch, in_ch, kh, kw = weight.shape
    shape = f"{out_ch}x{in_ch}x{kh}x{kw}" + (f", groups={conv.groups}" if conv.groups > 1 else "")
    scale = "one scale for the layer" if shared_scale else "each filter on its own scale"
    what = {
        "colour": "RGB kernels",
        "matrix": f"rows: filters, columns: their first {shown.channels} of {in_ch} input channels"
                  + (" (within the filter's group)" if conv.groups > 1 else ""),
        "mean": "mean over each filter's input channels",
        "depthwise": "depthwise: filter #i reads input channel "
                     + ("i" if out_ch == conv.groups else f"i // {out_ch // conv.groups}"),
    }[shown.layout]
    title = (f"{layer} ({type(conv).__name__} {shape}): {shown.filters} of {out_ch} filters\n{what}; {scale}")
    tile_inches = 0.5 if shown.layout == "matrix" else 0.7
    return mosaic_figure(shown.tiles, shown.ncols, shown.titles, shown.row_labels, shown.col_labels,
                         cmap="gray", suptitle=title, tile_inches=tile_inches, max_inches=24.0,
                         xlabel="input channel" if shown.layout == "matrix" else None,
                         ylabel="filter" if shown.layout == "matrix" else None)


def describe_model(model: ImageClassifier | nn.Module) -> dict:
    """``model.describe()``, or the class name of a bare module."""
    if isinstance(model, ImageClassifier):
        return model.describe()
    return {"spec": "custom", "architecture": type(model).__name__}


def run_filters(model: ImageClassifier | nn.Module, layers: Sequence[str] | None = None,
                out: str | Path = "filters", max_filters: int | None = None, reduce: Reduce = "none",
                shared_scale: bool = False, max_channels: int = 16, progress: bool = False) -> Path:
    """Write one kernel figure per layer (default: the first conv) to ``out``, with the raw kernels.

    ``arrays.npz`` holds ``kernel/LAYER`` (and ``bias/LAYER``) exactly as stored in the model, all filters;
    ``input`` is an empty ``0 x 3 x H x W`` array, as filters need no image.
    """
    from convlens.output import output_dir

    names = list(layers) if layers else [default_filter_layer(model)]
    convs = {name: conv_layer(model, name) for name in names}
    check_options(max_filters, reduce, max_channels)
    size = model.input_size if isinstance(model, ImageClassifier) else (224, 224)
    with output_dir(out, "filters") as folder:
        with folder.timed():
            weights = {name: kernels(model, name) for name in names}
        for name in _track(names, progress):
            figure = filters_figure(name, convs[name], max_filters, reduce, shared_scale, max_channels)
            folder.save_figure(figure, f"filters-{name}")
        biases = {f"bias/{name}": conv.bias.detach() for name, conv in convs.items() if conv.bias is not None}
        folder.add_arrays(input=np.zeros((0, 3, *size), np.float32),
                          **{f"kernel/{name}": weight for name, weight in weights.items()}, **biases)
        folder.update(model=describe_model(model), layers=names,
                      parameters={"max_filters": max_filters, "reduce": reduce, "shared_scale": shared_scale,
                                  "max_channels": max_channels},
                      kernels={name: {"type": type(conv).__name__, "shape": list(conv.weight.shape),
                                      "groups": conv.groups, "stride": list(conv.stride),
                                      "colour": is_colour(conv.weight, conv.groups)}
                               for name, conv in convs.items()})
    return Path(out)


def _track(items: list[str], progress: bool):
    if not progress:
        return items
    from convlens.cli.common import track

    return track(items, len(items), "drawing filters")
