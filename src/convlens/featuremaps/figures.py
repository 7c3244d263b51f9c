"""Feature-map figures: one grid of channel maps per layer, and an overview of all layers for one image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from convlens.featuremaps.maps import Order, map_tiles

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def shown_channels_phrase(shown: int, total: int, order: Order) -> str:
    """``the 64 strongest of 1280 channels`` / ``all 32 channels`` / ``channels 0-15 of 64``."""
    if shown >= total:
        return f"all {total} channels" + (", strongest mean activation first" if order == "activation" else "")
    if order == "activation":
        return f"the {shown} strongest of {total} channels (highest mean activation first)"
    return f"channels 0-{shown - 1} of {total}"


def layer_figure(layer: str, activation: torch.Tensor, channels: torch.Tensor, order: Order = "index",
                 image: str | None = None) -> Figure:
    """A grid of the chosen channels' maps of a ``C x H x W`` activation, each titled with its channel index."""
    from convlens.render import mosaic_figure

    count, height, width = activation.shape
    where = f" ({image})" if image else ""
    title = (f"{layer}{where}: {shown_channels_phrase(len(channels), count, order)}, {height}x{width}; "
             "each map on its own scale")
    return mosaic_figure(map_tiles(activation, channels), titles=[f"#{c}" for c in channels.tolist()],
                         cmap="viridis", suptitle=title, tile_inches=1.1, max_inches=30.0)


def overview_figure(display: np.ndarray, predictions: Sequence, maps: dict[str, torch.Tensor],
                    channels: dict[str, torch.Tensor], per_row: int = 8, heading: str | None = None) -> Figure:
    """The image with its top predictions above it, then one row of feature maps per layer.

    ``maps``: ``{layer: C x H x W}``; ``channels``: ``{layer: the channels to draw, strongest first}``.
    """
    import matplotlib.pyplot as plt

    per_row = max(1, min(per_row, max(len(c) for c in channels.values())))
    figure = plt.figure(figsize=(1.35 * per_row + 1.2, 3.6 + 1.45 * len(maps)))
    grid = figure.add_gridspec(len(maps) + 1, per_row, height_ratios=[2.4] + [1.0] * len(maps), hspace=0.3,
                               wspace=0.06)
    top = figure.add_subplot(grid[0, :])
    top.imshow(np.clip(display, 0, 1))
    lines = [f"{rank}. {p.name}  {100 * p.probability:.2f}%" for rank, p in enumerate(predictions, 1)]
    top.set_title("\n".join(([heading] if heading else []) + lines), fontsize=10)
    top.axis("off")
    top.text(0.5, -0.03, f"each row: the {per_row} strongest channels (highest mean activation), each map on "
             "its own scale", transform=top.transAxes, ha="center", va="top", fontsize=8)
    for row, (layer, activation) in enumerate(maps.items(), start=1):
        shown = channels[layer][:per_row]
        for col, tile in enumerate(map_tiles(activation, shown)):
            axis = figure.add_subplot(grid[row, col])
            axis.imshow(tile, cmap="viridis", vmin=0, vmax=1)
            axis.set_title(f"#{int(shown[col])}", fontsize=7, pad=2)
            axis.axis("off")
            if col == 0:
                axis.text(-0.08, 0.5, f"{layer}\n{'x'.join(map(str, activation.shape))}", fontsize=8,
                          transform=axis.transAxes, ha="right", va="center")
    return figure
