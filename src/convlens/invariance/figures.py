"""Invariance's figure: Zeiler & Fergus Fig. 5, one row per transformation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convlens.invariance.transforms import UNITS
from convlens.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The figure reads an ``InvarianceResult``; typed as ``Result`` so that this module does not import result.py back.
InvarianceResult = Result


def _score_label(result: InvarianceResult) -> str:
    """What panel 4 shows: p(true class) for the paper's probability, else the score's name."""
    return {"probability": "p(true class)", "logit": "logit of the true class"}.get(result.score, "target score")


def invariance_figure(result: InvarianceResult, title: str | None = None) -> Figure:
    """Zeiler & Fergus Fig. 5: one row per transformation; example images, the distance at the early and the late
    layer, and the probability of the true class against the amount; one curve per image."""
    import matplotlib.pyplot as plt

    transforms = list(result.curves)
    figure, axes = plt.subplots(len(transforms), 4, figsize=(17, 3.4 * len(transforms)), squeeze=False,
                                gridspec_kw={"width_ratios": [1.5, 1, 1, 1]})
    labels = [_image_label(name, result.class_name(t)) for name, t in zip(result.images, result.targets, strict=True)]
    colours = plt.get_cmap("tab10").colors
    for row, transform in enumerate(transforms):
        curves = result.curves[transform]
        _examples_panel(axes[row, 0], curves)
        columns = ((curves.early_distance, f"distance at {result.layers[0]}"),
                   (curves.late_distance, f"distance at {result.layers[1]}"),
                   (curves.score, _score_label(result)))
        for column, (values, name) in enumerate(columns, start=1):
            axis = axes[row, column]
            for index in range(values.shape[0]):
                axis.plot(curves.amounts, values[index].numpy(), marker="o", markersize=2.5, linewidth=1.2,
                          color=colours[index % len(colours)], label=labels[index])
            axis.set_xlabel(UNITS[transform], fontsize=8)
            axis.set_title(f"{transform}: {name}", fontsize=9)
            axis.tick_params(labelsize=7)
            axis.grid(alpha=0.3)
            if column == 3 and result.score == "probability" and None not in result.targets:
                axis.set_ylim(-0.02, 1.02)
    axes[0, 3].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def _examples_panel(axis, curves) -> None:
    """The example transformed images side by side, with a thin white gap between them."""
    if not curves.examples:
        axis.axis("off")
        return
    height = curves.examples[0][1].shape[0]
    gap = np.ones((height, max(2, height // 40), 3))
    tiles = []
    for _, image in curves.examples:
        tiles += [image, gap]
    axis.imshow(np.concatenate(tiles[:-1], axis=1))
    axis.set_xticks([(i + 0.5) * (height + gap.shape[1]) - gap.shape[1] / 2 for i in range(len(curves.examples))])
    axis.set_xticklabels([f"{amount:g}" for amount, _ in curves.examples], fontsize=8)
    axis.set_yticks([])
    axis.set_title(f"{curves.transform}: examples ({UNITS[curves.transform]})", fontsize=9)


def _image_label(name: str, class_name: str) -> str:
    return f"{Path(name).stem} ({class_name})"
