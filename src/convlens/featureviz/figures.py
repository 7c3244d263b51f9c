"""Figures of a feature visualization: the units' images with the activation each reached, the diversity
sets, and the optimisation curves."""

from __future__ import annotations

import numpy as np

from convlens.render import grid_shape, plt

FLAG_COLOR = "#c0392b"


def _title(result, index: int) -> tuple[str, str]:
    unit = result.units[index]
    reached = float(result.reached[index].max())
    kind = "class" if result.objective == "class" else "unit"
    text = f"{kind} {unit}\nreached {reached:.3g}"
    if result.natural is None:
        return text, "black"
    top1 = float(result.natural.top1[index])
    beats = reached > top1
    text += f"\nbest photo {top1:.3g}" + ("" if beats else "  (not beaten)")
    return text, "black" if beats else FLAG_COLOR


def units_figure(result, tile_inches: float = 1.9):
    count = len(result.units)
    rows, cols = grid_shape(count, min(8, count))
    figure, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches, rows * (tile_inches + 0.8)),
                                squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(result.images[index, 0].permute(1, 2, 0).numpy())
        text, color = _title(result, index)
        axis.set_title(text, fontsize=8, color=color)
    statistic = result._statistic()
    figure.suptitle(f"{result.model.get('spec', 'model')}: {result.objective} objective at {result.layer} "
                    f"({statistic}; {result.parameters.get('steps')} steps)", fontsize=10)
    figure.tight_layout()
    return figure


def diversity_figure(result, tile_inches: float = 1.6):
    count, per_unit = result.images.shape[:2]
    figure, axes = plt.subplots(count, per_unit, figsize=(per_unit * tile_inches, count * (tile_inches + 0.3)),
                                squeeze=False)
    for row in range(count):
        for col in range(per_unit):
            axis = axes[row, col]
            axis.axis("off")
            axis.imshow(result.images[row, col].permute(1, 2, 0).numpy())
            axis.set_title(f"unit {result.units[row]}: {float(result.reached[row, col]):.3g}", fontsize=7)
    figure.suptitle(f"{result.layer}: {per_unit} diverse images per unit", fontsize=10)
    figure.tight_layout()
    return figure


def curves_figure(result):
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    steps = np.arange(1, result.curves.shape[0] + 1)
    for index, unit in enumerate(result.units):
        axis.plot(steps, result.curves[:, index].mean(dim=1).numpy(), linewidth=1, label=str(unit))
    axis.set_xlabel("step")
    axis.set_ylabel(f"objective ({result._statistic()})")
    axis.set_title(f"{result.layer}: objective on the transformed image at each step", fontsize=10)
    if len(result.units) <= 16:
        axis.legend(title="unit", fontsize=6, ncol=2, loc="lower right")
    figure.tight_layout()
    return figure


def examples_figure(result, top, per_row: int = 4, block_inches: float = 3.6, label: str | None = None):
    """Each unit's visualization beside its top-9 image patches (a ``convlens.top_activations`` result over the
    same units, in any order), as on OpenAI Microscope: a block per unit, the visualization on the left, the
    patches 3 x 3 on the right, strongest first (row by row)."""
    from matplotlib.gridspec import GridSpec

    row_of = {int(unit): row for row, unit in enumerate(top.units)}
    missing = [unit for unit in result.units if unit not in row_of]
    if missing:
        raise ValueError(f"units {missing} have no top-k patches")
    count = len(result.units)
    rows, cols = grid_shape(count, min(per_row, count))
    figure = plt.figure(figsize=(cols * block_inches, rows * (block_inches / 2 + 0.3) + 0.3))
    grid = GridSpec(rows, cols, figure=figure, wspace=0.12, hspace=0.3)
    for index, unit in enumerate(result.units):
        block = grid[index // cols, index % cols].subgridspec(3, 6, wspace=0.06, hspace=0.06)
        axis = figure.add_subplot(block[:, :3])
        axis.imshow(result.images[index, 0].permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        text, color = _title(result, index)
        axis.set_title(text.replace("\n", ", ", 1).replace("\n", "; "), fontsize=7, color=color, loc="left")
        row = row_of[int(unit)]
        for rank in range(9):
            patch_axis = figure.add_subplot(block[rank // 3, 3 + rank % 3])
            patch_axis.axis("off")
            if rank < top.k and top.images[row, rank] >= 0:
                patch_axis.imshow(top.patches[row, rank], interpolation="nearest")
    name = label or result.model.get("spec", "model")
    figure.suptitle(f"{name}, {result.layer}: feature visualization ({result.objective} objective, "
                    f"{result.parameters.get('steps')} steps, {result.parameters['size'][0]} px) beside the top-9 "
                    "image patches", fontsize=10)
    return figure
