"""The figure of one conv layer's kernels: a mosaic of tiles, or for 1x1 kernels a matrix with a colour bar."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from convlens.filters.kernels import (
    POINTWISE_PERCENTILE,
    PointwiseMatrix,
    Reduce,
    filter_tiles,
    group_first_channels,
    kernel_layout,
    pointwise_matrix,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from convlens.filters.result import LayerKernels


def filters_figure(layer: LayerKernels, max_filters: int | None = None, reduce: Reduce = "none",
                   shared_scale: bool = False, max_channels: int | None = None) -> Figure:
    """The figure of one conv layer's kernels (``LayerKernels``: its weight, groups and type)."""
    if kernel_layout(layer.weight, layer.groups, reduce) == "pointwise":
        matrix = pointwise_matrix(layer.weight, max_filters, max_channels)
        return pointwise_figure(layer, matrix, reduce)
    return tiles_figure(layer, max_filters, reduce, shared_scale, max_channels)


def layer_heading(layer: LayerKernels) -> str:
    """``conv2 (Conv2d 64x32x3x3, groups=2)``."""
    out_ch, in_ch, kh, kw = layer.weight.shape
    shape = f"{out_ch}x{in_ch}x{kh}x{kw}" + (f", groups={layer.groups}" if layer.groups > 1 else "")
    return f"{layer.name} ({layer.type} {shape})"


def tiles_figure(layer: LayerKernels, max_filters: int | None, reduce: Reduce, shared_scale: bool,
                 max_channels: int | None) -> Figure:
    from convlens.render import mosaic_figure

    shown = filter_tiles(layer.weight, layer.groups, max_filters, reduce, shared_scale, max_channels)
    out_ch, in_ch = layer.weight.shape[:2]
    scale = "one scale for the layer" if shared_scale else "each filter on its own scale"
    what = {
        "colour": "RGB kernels",
        "matrix": f"rows: filters, columns: their first {shown.channels} of {in_ch} input channels"
                  + (" (within the filter's group)" if layer.groups > 1 else ""),
        "mean": "mean over each filter's input channels",
        "depthwise": "depthwise: filter #i reads input channel "
                     + ("i" if out_ch == layer.groups else f"i // {out_ch // layer.groups}"),
    }[shown.layout]
    title = f"{layer_heading(layer)}: {shown.filters} of {out_ch} filters\n{what}; {scale}"
    matrix = shown.layout == "matrix"
    return mosaic_figure(shown.tiles, shown.ncols, shown.titles, shown.row_labels, shown.col_labels,
                         cmap="gray", suptitle=title, tile_inches=0.5 if matrix else 0.7, max_inches=24.0,
                         xlabel="input channel" if matrix else None, ylabel="filter" if matrix else None)


def pointwise_figure(layer: LayerKernels, matrix: PointwiseMatrix, reduce: Reduce = "none") -> Figure:
    """A 1x1 layer as one filters x input-channels image of its weights, blue negative, red positive, on one
    colour scale for the whole layer (symmetric about 0), with a colour bar."""
    import matplotlib.pyplot as plt

    rows, cols = matrix.values.shape
    width = float(np.clip(0.14 * cols, 4.0, 16.0))
    height = float(np.clip(0.14 * rows, 3.0, 24.0))
    figure, axis = plt.subplots(figsize=(width + 1.6, height + 1.4))
    image = axis.imshow(matrix.values, cmap="RdBu_r", vmin=-matrix.limit, vmax=matrix.limit, aspect="auto",
                        interpolation="nearest" if max(rows, cols) <= 400 else "antialiased")
    axis.set_xlabel(f"input channel ({matrix.channels} of {layer.weight.shape[1]})"
                    + (" within the filter's group" if layer.groups > 1 else ""))
    axis.set_ylabel(f"filter ({matrix.filters} of {layer.weight.shape[0]})")
    if layer.groups > 1 and rows <= 64:
        firsts = group_first_channels(layer.weight.shape[0], layer.weight.shape[1], layer.groups, rows)
        axis.set_yticks(range(rows), [f"#{i} (in {f}-{f + cols - 1})" for i, f in enumerate(firsts)], fontsize=7)
    bar = figure.colorbar(image, ax=axis, extend="both" if matrix.limit < matrix.largest else "neither",
                          fraction=min(0.08, 0.4 / (width + 1.6)), pad=0.02, shrink=1.0 if height <= 10 else 0.5)
    bar.set_label(f"weight (one scale for the layer: ±{matrix.limit:.3g}, the {POINTWISE_PERCENTILE:g}th "
                  f"percentile of |w|; max |w| {matrix.largest:.3g})", fontsize=8)
    note = "; --reduce mean does not apply: a 1x1 kernel is already one weight per input channel" \
        if reduce == "mean" else ""
    axis.set_title(f"{layer_heading(layer)}: 1x1 kernels as a filters x input-channels matrix{note}",
                   fontsize=11, wrap=True)
    return figure

