"""The Zeiler & Fergus figures: projections beside their input, the top-k grid (the paper's Fig. 2) and unit
evolution (Fig. 4). They draw from results only: no model, no computation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure

from convlens.models.classifier import ImageClassifier
from convlens.render import image_grid, min_max

if TYPE_CHECKING:
    from convlens.zeiler.results import DeconvResult, EvolutionResult, TopKResult

RULE_NAMES = {"deconvnet": "deconvnet", "guided": "guided backprop", "gradient": "gradient"}


def rule_title(rule: str, requested: str) -> str:
    """What a figure says about the rule that drew it."""
    name = RULE_NAMES.get(rule, rule)
    return f"rule: {name} (default for this model)" if requested == "auto" else f"rule: {name}"


def projection_image(projection: torch.Tensor | np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """A ``C x H x W`` projection as an ``H x W x 3`` display image: zero is mid-grey and the ``percentile``
    of ``|value|`` reaches full black or full colour (a few extreme pixels would otherwise wash it out)."""
    array = projection.detach().cpu().float().numpy() if isinstance(projection, torch.Tensor) else projection
    array = np.asarray(array, dtype=np.float64)
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    scale = np.percentile(np.abs(array), percentile) if array.size else 0.0
    if scale <= 0:
        scale = np.abs(array).max() if array.size else 0.0
    shown = 0.5 + 0.5 * array / scale if scale > 0 else np.full_like(array, 0.5)
    return np.clip(shown.transpose(1, 2, 0), 0.0, 1.0)


def display_image(model, chw: torch.Tensor) -> np.ndarray:
    """A preprocessed image as ``H x W x 3`` in [0, 1]: undone preprocessing for a loaded model, min-max
    scaled for a bare module (whose normalisation convlens does not know)."""
    if isinstance(model, ImageClassifier):
        return np.asarray(model.preprocessing.to_display(chw), dtype=np.float32)
    array = chw.detach().float().cpu().numpy()
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array[:3]
    return min_max(array.transpose(1, 2, 0)).astype(np.float32)


def projections_figure(result: DeconvResult) -> Figure:
    """Each image beside its units' projections (one row per image when there are several)."""
    tiles, titles = [], []
    images = sorted(set(result.image.tolist()))
    per_image = max(int((result.image == b).sum()) for b in images)
    for b in images:
        rows = np.flatnonzero(result.image == b)
        tiles.append(result.displays[b])
        titles.append(result.sources[b] if len(result.sources) == len(result.displays) and len(images) > 1
                      else "input")
        for row in rows:
            tiles.append(projection_image(result.projections[row]))
            titles.append(f"unit {int(result.units[row])}  max {float(result.peaks[row]):.3g}\n"
                          f"at {tuple(int(i) for i in result.peak_positions[row])}")
        padding = per_image - len(rows) if len(images) > 1 else 0
        tiles += [np.ones_like(result.displays[b])] * padding
        titles += [""] * padding
    columns = min(len(tiles), 5) if len(images) == 1 else per_image + 1
    what = "whole map" if result.position == "map" else "strongest activation"
    return image_grid(tiles, titles, ncols=columns, tile_inches=2.0,
                      suptitle=f"{result.layer}: projections ({what} fed down), "
                               f"{rule_title(result.rule, result.rule_requested)}")


def unit_projection_figure(result: DeconvResult, row: int) -> Figure:
    """One projection alone, titled with its unit and the rule."""
    figure = image_grid([projection_image(result.projections[row])], ncols=1, tile_inches=3.0)
    figure.axes[0].set_title(f"{result.layer} unit {int(result.units[row])}\n"
                             f"{rule_title(result.rule, result.rule_requested)}", fontsize=8)
    return figure


def top_examples_figure(result: TopKResult, title: str | None = None, units_per_row: int = 4,
                        tile_inches: float = 0.6) -> Figure:
    """The paper's Fig. 2 layout: for each unit, its projections in a grid beside the matching patches."""
    import matplotlib.pyplot as plt

    side = math.ceil(math.sqrt(result.k))
    count = len(result.units)
    columns = min(units_per_row, count)
    rows = math.ceil(count / columns)
    figure = plt.figure(figsize=(columns * (2 * side + 1.2) * tile_inches, rows * (side + 0.9) * tile_inches + 0.7))
    outer = figure.add_gridspec(rows, columns, wspace=0.12, hspace=0.35)
    for u, unit in enumerate(result.units):
        panel = outer[u // columns, u % columns].subgridspec(side, 2 * side + 1, wspace=0.04, hspace=0.04,
                                                           width_ratios=[1] * side + [0.25] + [1] * side)
        for r in range(side * side):
            for offset, tile in ((0, "projection"), (side + 1, "patch")):
                axis = figure.add_subplot(panel[r // side, offset + r % side])
                _frame(axis)
                if r >= result.k or int(result.images[u, r]) < 0:
                    axis.set_axis_off()
                    continue
                if tile == "projection":
                    axis.imshow(projection_image(result.projections[u, r]), interpolation="nearest")
                else:
                    axis.imshow(result.patches[u, r], interpolation="nearest")
                if r == 0 and offset == 0:
                    axis.set_title(f"unit {unit}  (max {float(result.values[u, 0]):.3g})", fontsize=8, loc="left",
                                   pad=3)
    height, width = result.field.size
    figure.suptitle(title or f"{result.layer}: top-{result.k} activations per unit over {len(result.paths)} "
                             f"images\nprojections | image patches (field {height}x{width} px), "
                             f"{rule_title(result.rule, result.rule_requested)}", fontsize=10)
    return figure


def _frame(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_color("#bbbbbb")
        spine.set_linewidth(0.5)


def evolution_figure(result: EvolutionResult, tile_inches: float = 0.9, with_patches: bool = True) -> Figure:
    """Rows: units; columns: snapshot epochs; each tile the strongest projection (and its patch beneath)."""
    import matplotlib.pyplot as plt

    per_unit = 2 if with_patches else 1
    rows, columns = len(result.units) * per_unit, len(result.epochs)
    figure, axes = plt.subplots(rows, columns, squeeze=False,
                                figsize=(columns * tile_inches + 0.6, rows * tile_inches * 0.92 + 0.9))
    for u, unit in enumerate(result.units):
        for e, epoch in enumerate(result.epochs):
            axis = axes[u * per_unit, e]
            axis.imshow(projection_image(result.projections[u, e]), interpolation="nearest")
            if u == 0:
                axis.set_title(f"epoch {epoch}", fontsize=8)
            if with_patches:
                axes[u * per_unit + 1, e].imshow(result.patches[u, e], interpolation="nearest")
        axes[u * per_unit, 0].set_ylabel(f"unit {unit}", fontsize=8)
        if with_patches:
            axes[u * per_unit + 1, 0].set_ylabel("patch", fontsize=7, color="#666666")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    count = len(result.paths)
    figure.suptitle(f"{result.layer}: strongest projection per unit at each snapshot (over {count} "
                    f"image{'s' if count != 1 else ''})\n{rule_title(result.rule, result.rule_requested)}",
                    fontsize=10)
    figure.tight_layout()
    return figure
