"""Occlusion's figures: the five panels of Zeiler & Fergus Fig. 7, and the per-pixel attribution overlay."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from convlens.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The figures read an ``OcclusionResult``; typed as ``Result`` so that this module does not import result.py back.
OcclusionResult = Result


def _map_extent(result: OcclusionResult) -> list[float]:
    """imshow extent putting each position's cell on its window centre, in input pixel coordinates."""
    half = result.window / 2
    rows, cols = result.row_origins + half, result.col_origins + half
    step = result.stride / 2
    return [cols[0] - step, cols[-1] + step, rows[-1] + step, rows[0] - step]


def _score_label(result: OcclusionResult) -> str:
    name = result.class_name(result.target)
    return {"probability": f"p({name})", "logit": f"logit({name})"}.get(result.score, name) \
        if result.target is not None else "target score"


def occlusion_figure(result: OcclusionResult, title: str | None = None) -> Figure:
    """The five panels of Zeiler & Fergus Fig. 7: (a) input, (b) feature map total, (c) its projection to pixels,
    (d) target score, (e) most probable class, each over the occluder positions."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    height, width = result.input.shape[-2:]
    image = result.display
    top = result.top_prediction
    figure, axes = plt.subplots(1, 5, figsize=(19, 4.6))
    extent = _map_extent(result)

    def frame(axis, text):
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(text, fontsize=9)

    axes[0].imshow(image)
    axes[0].add_patch(Rectangle((0, 0), result.window, result.window, fill=False, edgecolor="white",
                                linewidth=1.2, linestyle="--"))
    frame(axes[0], f"(a) input: {result.class_name(top)}\n"
                   f"p = {float(result.clean_probabilities[top]):.3f}; occluder {result.window} px (dashed), "
                   f"stride {result.stride}")
    shown = axes[1].imshow(result.feature_activation.numpy(), cmap="viridis", extent=extent, interpolation="nearest")
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03)
    frame(axes[1], f"(b) total activation, {result.layer}\nfeature map {result.feature_channel} "
                   f"(clean: {result.clean_feature_activation:.3g})")
    if result.projection is not None:
        from convlens.zeiler.figures import projection_image

        axes[2].imshow(projection_image(result.projection))
        frame(axes[2], f"(c) projection of feature map {result.feature_channel}\n(rule: {result.rule})")
    else:
        axes[2].imshow(image, alpha=0.25)
        axes[2].text(width / 2, height / 2, "no projection", ha="center", va="center", fontsize=10)
        frame(axes[2], "(c) deconv projection")
    scores = result.target_score.numpy()
    low = 0.0 if result.score == "probability" and result.target is not None else float(scores.min())
    shown = axes[3].imshow(scores, cmap="jet", vmin=low, extent=extent, interpolation="nearest",
                           vmax=max(float(scores.max()), result.clean_score))
    figure.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.03)
    frame(axes[3], f"(d) {_score_label(result)}\nclean: {result.clean_score:.3f}")
    _class_panel(axes[4], result, extent, plt, ListedColormap, Patch)
    frame(axes[4], "(e) most probable class")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def _class_panel(axis, result: OcclusionResult, extent, plt, ListedColormap, Patch) -> None:
    """Panel (e): the most probable class per position, the nine most frequent in colour, the rest grey."""
    classes, counts = torch.unique(result.top_class, return_counts=True)
    order = classes[counts.argsort(descending=True)].tolist()
    listed = order[:9]
    palette = plt.get_cmap("tab10").colors
    codes = torch.full_like(result.top_class, len(listed))
    for code, index in enumerate(listed):
        codes[result.top_class == index] = code
    colours = list(palette[:len(listed)]) + ([(0.6, 0.6, 0.6)] if len(order) > len(listed) else [])
    axis.imshow(codes.numpy(), cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5,
                extent=extent, interpolation="nearest")
    handles = [Patch(color=palette[code], label=_short(result.class_name(index)))
               for code, index in enumerate(listed)]
    if len(order) > len(listed):
        handles.append(Patch(color=(0.6, 0.6, 0.6), label=f"{len(order) - len(listed)} other classes"))
    axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def attribution_figure(result: OcclusionResult, title: str | None = None) -> Figure:
    """The input and the per-pixel attribution (mean score drop), red where occluding hurts the target."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from convlens.render import overlay

    image = result.display
    attribution = result.attribution.numpy()
    scale = float(np.abs(attribution).max()) or 1.0
    figure, axes = plt.subplots(1, 2, figsize=(8.6, 4.4))
    axes[0].imshow(image)
    axes[0].set_title(f"input ({result.class_name(result.target)})", fontsize=9)
    axes[1].imshow(overlay(image, 0.5 + 0.5 * attribution / scale, alpha=0.55, cmap="RdBu_r"))
    axes[1].set_title(f"occlusion attribution: mean drop of {_score_label(result)}\nover the windows covering "
                      "each pixel", fontsize=9)
    for axis in axes:
        axis.axis("off")
    bar = plt.cm.ScalarMappable(norm=Normalize(-scale, scale), cmap="RdBu_r")
    figure.colorbar(bar, ax=axes[1], fraction=0.046, pad=0.03, label=f"{result.score} drop")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure
