"""CAM figures: maps overlaid on their images with a colour bar, one image per figure or a grid of many,
and the demo section (every method side by side on two sample photos)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from convlens.render import grid_shape, overlay, plt

CMAP = "jet"
CORRECT, WRONG = "#1a7f37", "#c62828"


@dataclass(frozen=True)
class Tile:
    """One image and its maps (one ``H x W`` map in [0, 1] per method, in the figure's method order)."""

    image: np.ndarray  # H x W x 3 in [0, 1]
    maps: Sequence[np.ndarray]
    title: str
    correct: bool | None = None  # colours the title when a true label is known


def _colour_bar(figure: Figure, axes) -> None:
    bar = figure.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=CMAP), ax=axes, fraction=0.025, pad=0.02,
                          shrink=0.9)
    bar.set_label("relevance (scaled to 0..1 per image)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The map over the image; an undefined (NaN) map shows the image alone (titled so by the caller)."""
    return overlay(image, heatmap, cmap=CMAP) if np.isfinite(heatmap).all() else np.clip(image, 0, 1)


def _method_label(method: str, heatmap: np.ndarray) -> str:
    return method if np.isfinite(heatmap).all() else f"{method}\n(undefined: NaN)"


def _title_colour(tile: Tile) -> str:
    return "black" if tile.correct is None else (CORRECT if tile.correct else WRONG)


def image_figure(tile: Tile, methods: Sequence[str], suptitle: str, tile_inches: float = 2.6) -> Figure:
    """The image, then its map overlaid for each method, side by side, with one colour bar."""
    columns = 1 + len(methods)
    figure, axes = plt.subplots(1, columns, figsize=(columns * tile_inches + 0.8, tile_inches + 0.8),
                                squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(np.clip(tile.image, 0, 1))
    axes[0].set_title("input", fontsize=9)
    for axis, method, heatmap in zip(axes[1:], methods, tile.maps, strict=True):
        axis.imshow(_overlay(tile.image, heatmap))
        axis.set_title(_method_label(method, heatmap), fontsize=9)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(f"{suptitle}\n{tile.title.replace(chr(10), '  ·  ')}", fontsize=10,
                    color=_title_colour(tile))
    _colour_bar(figure, list(axes))
    return figure


def grid_figure(tiles: Sequence[Tile], methods: Sequence[str], suptitle: str, tile_inches: float = 1.9,
                ncols: int | None = None) -> Figure:
    """Many images: with one method, a grid of overlays; with several, one row per image (input, then each
    method). Titles carry the labels, green when the prediction is right and red when wrong."""
    if len(methods) == 1:
        rows, cols = grid_shape(len(tiles), ncols or min(6, max(1, int(np.ceil(np.sqrt(len(tiles)))))))
        figure, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches + 0.9, rows * (tile_inches + 0.35)),
                                    squeeze=False, layout="constrained")
        for index, axis in enumerate(axes.flat):
            axis.axis("off")
            if index < len(tiles):
                tile = tiles[index]
                axis.imshow(_overlay(tile.image, tile.maps[0]))
                title = tile.title if np.isfinite(tile.maps[0]).all() else f"{tile.title}\nmap undefined (NaN)"
                axis.set_title(title, fontsize=7, color=_title_colour(tile))
    else:
        rows, cols = len(tiles), 1 + len(methods)
        figure, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches + 0.9, rows * tile_inches + 0.5),
                                    squeeze=False, layout="constrained")
        for row, tile in enumerate(tiles):
            axes[row, 0].imshow(np.clip(tile.image, 0, 1))
            axes[row, 0].set_title(tile.title, fontsize=7, color=_title_colour(tile))
            for column, (method, heatmap) in enumerate(zip(methods, tile.maps, strict=True), start=1):
                axes[row, column].imshow(_overlay(tile.image, heatmap))
                if not np.isfinite(heatmap).all():
                    axes[row, column].text(0.5, 0.5, "undefined\n(NaN)", transform=axes[row, column].transAxes,
                                           ha="center", va="center", fontsize=8, color="white")
                if row == 0:
                    axes[row, column].set_title(method, fontsize=9)
        for axis in axes.flat:
            axis.axis("off")
    figure.suptitle(suptitle, fontsize=10)
    _colour_bar(figure, list(axes.flat))
    return figure


def tile_title(predicted: str | None, probability: float | None, target: str | None,
               label: str | None = None, always_target: bool = False) -> str:
    """``true: A`` / ``pred: B 93%`` / ``target: C`` lines; the target line only when it is not the prediction,
    unless ``always_target``."""
    lines = [f"true: {label}"] if label is not None else []
    if predicted is not None:
        lines.append(f"pred: {predicted}" + (f" {100 * probability:.0f}%" if probability is not None else ""))
    if target is None:
        lines.append("target: custom score")
    elif always_target or target != predicted:
        lines.append(f"target: {target}")
    return "\n".join(lines)



