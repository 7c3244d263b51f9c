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
                  max_inches: float = 30.0, xlabel: str | None = None, ylabel: str | None = None,
                  dpi: int = 110) -> Figure:
    """Equal-sized tiles in [0, 1] (``H x W`` maps drawn with ``cmap`` or ``H x W x 3`` colour) on one raster.

    The grid is composed as one RGB image at the figure's resolution, tiles enlarged by whole-pixel nearest
    neighbour and ``titles`` drawn into it with PIL, so thousands of tiles (a 2048-channel layer) cost one
    ``imshow``. Tiles aim at ``tile_inches`` a side, shrinking so that the grid stays within ``max_inches``.
    ``row_labels``/``col_labels`` label a filters x channels matrix (one label per row / column).
    """
    stack = np.stack([np.asarray(tile, dtype=np.float64) for tile in tiles])
    rows, cols = grid_shape(len(stack), ncols)
    height, width = stack.shape[1:3]
    target = max(0.25, min(tile_inches, max_inches / max(rows, cols))) * dpi  # pixels per tile side
    zoom = max(1, round(target / max(height, width)))
    pixels = _rgb_tiles(stack, cmap).repeat(zoom, axis=1).repeat(zoom, axis=2)
    tile_h, tile_w = pixels.shape[1:3]
    font_px = int(np.clip(0.15 * max(tile_h, tile_w), 8, 14))
    gap = max(2, round(0.06 * max(tile_h, tile_w)))
    label_h = round(1.3 * font_px) if titles is not None else 0
    cell_h, cell_w = tile_h + gap + label_h, tile_w + gap
    canvas = np.full((rows * cell_h - gap, cols * cell_w - gap, 3), 255, np.uint8)
    for index, tile in enumerate(pixels):
        row, col = divmod(index, cols)
        top, left = row * cell_h + label_h, col * cell_w
        canvas[top:top + tile_h, left:left + tile_w] = tile
    if titles is not None:
        canvas = _draw_titles(canvas, titles, cols, cell_h, cell_w, tile_w, label_h, font_px)
    figure = plt.figure(figsize=(canvas.shape[1] / dpi, canvas.shape[0] / dpi), dpi=dpi)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.imshow(canvas, interpolation="none")
    label_size = float(np.clip(0.3 * tile_h * 72 / dpi, 6, 9))
    _label_matrix(axis, rows, cols, cell_h, cell_w, label_h, tile_h, tile_w, row_labels, col_labels, label_size)
    axis.set_xlabel(xlabel or "", fontsize=9)
    axis.set_ylabel(ylabel or "", fontsize=9)
    for spine in axis.spines.values():
        spine.set_visible(False)
    if suptitle:  # legible on a wall-sized grid too
        axis.set_title(suptitle, fontsize=float(np.clip(figure.get_figwidth() * 0.5, 10, 20)), pad=8)
    return figure


def _rgb_tiles(stack: np.ndarray, cmap: str) -> np.ndarray:
    """``N x H x W`` values in [0, 1] through ``cmap`` (or ``N x H x W x 3`` colour) as uint8 RGB."""
    values = np.clip(np.nan_to_num(stack, nan=0.0), 0, 1)
    colours = values if values.ndim == 4 else plt.get_cmap(cmap)(values)[..., :3]
    return np.round(colours * 255).astype(np.uint8)


def _draw_titles(canvas: np.ndarray, titles: Sequence[str], cols: int, cell_h: int, cell_w: int, tile_w: int,
                 label_h: int, font_px: int) -> np.ndarray:
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_manager.findfont(font_manager.FontProperties()), font_px)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for index, title in enumerate(titles):
        row, col = divmod(index, cols)
        draw.text((col * cell_w + tile_w / 2, row * cell_h + label_h - 2), str(title), fill=(0, 0, 0), font=font,
                  anchor="md")
    return np.asarray(image)


def _label_matrix(axis, rows, cols, cell_h, cell_w, label_h, height, width, row_labels, col_labels, fontsize):
    axis.set_xticks([c * cell_w + width / 2 for c in range(cols)] if col_labels is not None else [])
    axis.set_yticks([r * cell_h + label_h + height / 2 for r in range(rows)] if row_labels is not None else [])
    if col_labels is not None:
        axis.set_xticklabels(list(col_labels)[:cols], fontsize=fontsize)
        axis.xaxis.set_ticks_position("top")
        axis.xaxis.set_label_position("top")
    if row_labels is not None:
        axis.set_yticklabels(list(row_labels)[:rows], fontsize=fontsize)
    axis.tick_params(length=0, pad=2)
