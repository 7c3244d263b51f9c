"""Figure helpers shared by the methods: grids of tiles, heatmap overlays, predictions as titles.

Matplotlib runs on the Agg backend: no screen is needed and nothing pops up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def min_max(array: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale to [0, 1]; a constant array becomes zeros."""
    array = np.asarray(array, dtype=np.float64)
    low, high = array.min(), array.max()
    return (array - low) / (high - low) if high - low > eps else np.zeros_like(array)


def grid_shape(count: int, ncols: int | None = None) -> tuple[int, int]:
    ncols = ncols or max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / ncols)), ncols


def image_grid(tiles: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int | None = None,
               cmap: str = "viridis", tile_inches: float = 1.4, suptitle: str | None = None,
               vmin: float | None = None, vmax: float | None = None) -> Figure:
    """Tiles (``H x W`` maps drawn with ``cmap`` or ``H x W x 3`` colour images) in a grid."""
    rows, cols = grid_shape(len(tiles), ncols)
    figure, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches, rows * tile_inches + 0.4),
                                squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(tiles):
            continue
        tile = np.asarray(tiles[index])
        if tile.ndim == 3:
            axis.imshow(np.clip(tile, 0, 1))
        else:
            axis.imshow(tile, cmap=cmap, vmin=vmin, vmax=vmax)
        if titles is not None:
            axis.set_title(titles[index], fontsize=7, pad=2)
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    figure.tight_layout()
    return figure


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``H x W x 3`` image in [0, 1] blended with a ``H x W`` heatmap in [0, 1] drawn with ``cmap``."""
    colours = plt.get_cmap(cmap)(np.clip(heatmap, 0, 1))[..., :3]
    return np.clip((1 - alpha) * np.asarray(image, dtype=np.float64) + alpha * colours, 0, 1)


def predictions_title(predictions) -> str:
    """``golden retriever 93.1% | Labrador 2.0% | ...`` from a list of Prediction."""
    return " | ".join(f"{p.name} {100 * p.probability:.1f}%" for p in predictions)


def mosaic_figure(tiles: Sequence[np.ndarray], ncols: int | None = None, titles: Sequence[str] | None = None,
                  row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                  cmap: str = "viridis", suptitle: str | None = None, tile_inches: float = 1.2,
                  max_inches: float = 30.0, interpolation: str = "nearest", xlabel: str | None = None,
                  ylabel: str | None = None) -> Figure:
    """Equal-sized tiles in [0, 1] (``H x W`` maps drawn with ``cmap`` or ``H x W x 3`` colour) on one canvas.

    One image in one axes instead of an axes per tile, so thousands of tiles (a 2048-channel layer) still
    render in seconds; the figure grows with the grid up to ``max_inches`` a side, then the tiles shrink.
    ``titles`` go above each tile; ``row_labels``/``col_labels`` label a filters x channels matrix instead.
    """
    stack = np.stack([np.asarray(tile, dtype=np.float64) for tile in tiles])
    rows, cols = grid_shape(len(stack), ncols)
    height, width = stack.shape[1:3]
    gap_x = max(1, round(0.08 * width))
    gap_y = max(1, round(0.3 * height)) if titles is not None else gap_x
    cell_h, cell_w = height + gap_y, width + gap_x
    canvas = np.full((rows * cell_h, cols * cell_w - gap_x, *stack.shape[3:]), np.nan)
    for index, tile in enumerate(stack):
        row, col = divmod(index, cols)
        top, left = row * cell_h + gap_y, col * cell_w
        canvas[top:top + height, left:left + width] = tile
    inches = max(0.25, min(tile_inches, max_inches / max(rows, cols)))  # per tile side
    per_pixel = inches / max(height, width)
    figure = plt.figure(figsize=(canvas.shape[1] * per_pixel, canvas.shape[0] * per_pixel))
    axis = figure.add_axes((0, 0, 1, 1))
    if canvas.ndim == 3:
        axis.imshow(np.nan_to_num(np.clip(canvas, 0, 1), nan=1.0), interpolation=interpolation)
    else:
        colours = plt.get_cmap(cmap).copy()
        colours.set_bad("white")
        axis.imshow(np.ma.masked_invalid(canvas), cmap=colours, vmin=0, vmax=1, interpolation=interpolation)
    fontsize = float(np.clip(inches * 72 * 0.16, 4, 9))
    if titles is not None:
        for index, title in enumerate(titles):
            row, col = divmod(index, cols)
            axis.text(col * cell_w + width / 2, row * cell_h + gap_y - 0.5, title, ha="center", va="bottom",
                      fontsize=fontsize)
    _label_matrix(axis, rows, cols, cell_h, cell_w, gap_y, height, width, row_labels, col_labels,
                  float(np.clip(inches * 72 * 0.22, 5, 9)))
    axis.set_xlabel(xlabel or "", fontsize=9)
    axis.set_ylabel(ylabel or "", fontsize=9)
    for spine in axis.spines.values():
        spine.set_visible(False)
    if suptitle:
        axis.set_title(suptitle, fontsize=10, pad=8)
    return figure


def _label_matrix(axis, rows, cols, cell_h, cell_w, gap_y, height, width, row_labels, col_labels, fontsize):
    axis.set_xticks([c * cell_w + width / 2 for c in range(cols)] if col_labels is not None else [])
    axis.set_yticks([r * cell_h + gap_y + height / 2 for r in range(rows)] if row_labels is not None else [])
    if col_labels is not None:
        axis.set_xticklabels(list(col_labels)[:cols], fontsize=fontsize)
        axis.xaxis.set_ticks_position("top")
        axis.xaxis.set_label_position("top")
    if row_labels is not None:
        axis.set_yticklabels(list(row_labels)[:rows], fontsize=fontsize)
    axis.tick_params(length=0, pad=2)
