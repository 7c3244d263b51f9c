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
