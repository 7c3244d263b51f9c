"""Figures of a faithfulness run: the ranking per score, the mean curves, the maps side by side."""

from __future__ import annotations

import numpy as np

from convlens.faithfulness.candidates import BASELINES
from convlens.faithfulness.table import higher_is_better
from convlens.render import overlay, plt

MAX_IMAGES = 6


def _colours(methods):
    cmap = plt.get_cmap("tab20")
    return {m: ({"random": "0.6", "center": "black"}.get(m) or cmap(i % 20)) for i, m in enumerate(methods)}


def ranking_figure(result):
    """One panel per score: methods best first, the mean with its 95 % bootstrap interval."""
    scores = result.scores
    rows = [r for r in result.table if r["scores"]]
    columns = min(3, max(1, len(scores)))
    lines = -(-len(scores) // columns)
    height = 0.9 + 0.22 * max(1, len(rows))
    figure, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, height * lines), squeeze=False)
    for axis, score in zip(axes.flat, scores, strict=False):
        entries = [(r["method"], *r["scores"][score]) for r in rows if score in r["scores"]]
        entries = [e for e in entries if np.isfinite(e[1])]
        entries.sort(key=lambda e: e[1], reverse=higher_is_better(score))  # best first, at the top
        positions = np.arange(len(entries))[::-1]
        means = np.array([e[1] for e in entries])
        errors = np.array([[e[1] - e[2], e[3] - e[1]] for e in entries]).T if entries else None
        axis.barh(positions, means, xerr=errors, color=["0.6" if e[0] in BASELINES else "#3b75af" for e in entries],
                  error_kw={"elinewidth": 0.8, "capsize": 2})
        axis.set_yticks(positions, [e[0] for e in entries], fontsize=7)
        axis.set_title(f"{score} ({'higher' if higher_is_better(score) else 'lower'} is better)", fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
    for axis in list(axes.flat)[len(scores):]:
        axis.axis("off")
    missing = [r["method"] for r in result.table if not r["scores"]]
    title = f"Faithfulness of every method ({len(result.classes)} images; bars: 95 % bootstrap interval)"
    if missing:
        title += f"\nnot applicable: {', '.join(missing)}"
    figure.suptitle(title, fontsize=10)
    # keep the title's lines clear of the first row's panel titles (tight_layout alone lets them overlap)
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.25 + 0.18 * title.count("\n")) / (height * lines)))
    return figure


def curves_figure(result):
    """Mean deletion and insertion curves, ROAD by removed fraction, and the randomisation cascade."""
    methods = [m for m in result.methods if m in result.maps]
    colours = _colours(methods)
    panels = [("deletion_curve", "deletion: probability vs pixels removed"),
              ("insertion_curve", "insertion: probability vs pixels restored"),
              ("road_morf", "ROAD: probability vs fraction removed (solid MoRF, dashed LeRF)"),
              ("sanity_spearman_curve", "sanity: Spearman to the original map vs layers randomised")]
    panels = [p for p in panels if any(k.startswith(p[0] + ".") for k in result.curves)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    for axis, (kind, title) in zip(axes[0], panels, strict=True):
        for method in methods:
            values = result.curves.get(f"{kind}.{method}")
            if values is None:
                continue
            style = {"color": colours[method], "lw": 1.0, "label": method}
            if kind == "sanity_spearman_curve":
                axis.plot(np.arange(1, len(values) + 1), np.nanmean(values, axis=1), **style)
            elif kind == "road_morf":
                fractions = 1 - np.array(result.parameters["percentiles"]) / 100
                # markers: with one removal fraction each curve is a single point
                axis.plot(fractions, values.mean(0), marker="o", ms=3, **style)
                axis.plot(fractions, result.curves[f"road_lerf.{method}"].mean(0), ls="--", color=colours[method],
                          lw=1.0, marker="^", ms=3)
            else:
                axis.plot(np.linspace(0, 1, values.shape[1]), values.mean(0), **style)
        axis.set_title(title, fontsize=8)
        axis.tick_params(labelsize=7)
        if kind == "sanity_spearman_curve" and result.sanity_layers:
            axis.set_xlabel(f"checkpoint (last: {result.sanity_layers[-1]})", fontsize=7)
    axes[0, -1].legend(fontsize=6, ncol=1 + len(methods) // 14, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    return figure


def maps_figure(result):
    """The first images (rows) with every applicable method's map overlaid (columns)."""
    from convlens.render import mosaic_figure

    methods = [m for m in result.methods if m in result.maps]
    count = min(MAX_IMAGES, len(result.classes))
    tiles, titles = [], []
    for index in range(count):
        image = result.display[index] if result.display is not None else _grey(result.inputs[index].numpy())
        tiles.append(image)
        titles.append(result._name(result.classes[index])[:18])
        for method in methods:
            tiles.append(overlay(image, np.nan_to_num(result.maps[method][index].numpy())))
            titles.append(method)
    return mosaic_figure(tiles, ncols=len(methods) + 1, titles=titles, tile_inches=1.3,
                         suptitle="maps of each method (class explained above each image)")


def _grey(chw: np.ndarray) -> np.ndarray:
    array = chw.transpose(1, 2, 0)
    low, high = array.min(), array.max()
    return (array - low) / (high - low) if high > low else np.zeros_like(array)
