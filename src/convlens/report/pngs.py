"""Pictures for the pages: arrays written as PNG with Pillow (fast, exact pixels), matplotlib figures saved at a
size that reads at 100 % in the page, colour scales as CSS gradients, histograms as inline SVG."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image

FIGURE_DPI = 90  # 9-pt figure text comes out at 11 px: readable when the page shows the PNG at its own size
MAX_FIGURE_WIDTH = 1420  # px: the page's column
MIN_SIDE = 160  # small inputs (a 32-px leaf) are enlarged with nearest-neighbour so their pixels stay visible


def to_uint8(array: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(array, dtype=np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)


def write_rgb(array: np.ndarray, path: Path, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """An ``H x W x 3`` image in [0, 1] as PNG, enlarged by a whole factor up to ``min_side``; (width, height)."""
    image = Image.fromarray(to_uint8(array))
    factor = max(1, -(-min_side // max(1, min(image.size))))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=False, compress_level=3)
    return image.size


def colormap(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """Values in [0, 1] through a matplotlib colour map, as ``H x W x 3``."""
    from matplotlib import colormaps

    return colormaps[cmap](np.clip(values, 0.0, 1.0))[..., :3]


def write_map(values: np.ndarray, path: Path, cmap: str = "viridis", min_side: int = 48) -> tuple[int, int]:
    """A 2-D map in [0, 1] (uint8 0..255 also accepted) through ``cmap``."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        values = values.astype(np.float64) / 255.0
    return write_rgb(colormap(values, cmap), path, min_side)


def write_overlay(image: np.ndarray, heatmap: np.ndarray, path: Path, cmap: str = "jet",
                  alpha: float = 0.5) -> tuple[int, int]:
    from convlens.render import overlay

    return write_rgb(overlay(image, heatmap, alpha=alpha, cmap=cmap), path)


def write_figure(figure, path: Path, dpi: int = FIGURE_DPI) -> tuple[int, int]:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    # Wide figures (occlusion's five panels) come down to the page's width, not below 70 dpi.
    dpi = max(70, min(dpi, MAX_FIGURE_WIDTH / figure.get_figwidth()))
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    with Image.open(path) as image:
        return image.size


def css_gradient(cmap: str, stops: int = 11) -> str:
    """``linear-gradient(...)`` of a matplotlib colour map, for a legend drawn by the browser."""
    colours = colormap(np.linspace(0, 1, stops)[None], cmap)[0]
    parts = [f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f}) {100 * i / (stops - 1):.0f}%"
             for i, (r, g, b) in enumerate(colours)]
    return f"linear-gradient(to right, {', '.join(parts)})"


def legend(cmap: str, low: str, high: str, caption: str) -> str:
    """A colour-scale legend: the gradient with its two ends labelled and a caption."""
    return (f"<div class='legend'><span>{html.escape(low)}</span><span class='bar' style='background:"
            f"{css_gradient(cmap)}'></span><span>{html.escape(high)}</span> <em>{html.escape(caption)}</em></div>")


def histogram_svg(counts: np.ndarray, edges: np.ndarray, width: int = 520, height: int = 170,
                  label: str = "activation") -> str:
    """An inline SVG histogram (log-scaled counts, so rare strong activations stay visible)."""
    counts = np.asarray(counts, dtype=np.float64)
    left, bottom, top = 46, 30, 8
    plot_w, plot_h = width - left - 10, height - bottom - top
    scaled = np.log10(counts + 1.0)
    peak = float(scaled.max()) or 1.0
    bar_w = plot_w / max(1, len(counts))
    bars = []
    for index, (value, count) in enumerate(zip(scaled, counts, strict=True)):
        h = plot_h * value / peak
        x = left + index * bar_w
        title = f"{edges[index]:.3g} to {edges[index + 1]:.3g}: {int(count)}"
        bars.append(f"<rect x='{x:.1f}' y='{top + plot_h - h:.1f}' width='{max(bar_w - 1, 1):.1f}' "
                    f"height='{h:.1f}' fill='#3b6ea5'><title>{title}</title></rect>")
    axis = (f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' stroke='#444'/>"
            f"<text x='{left}' y='{height - 12}' font-size='11'>{edges[0]:.3g}</text>"
            f"<text x='{left + plot_w}' y='{height - 12}' font-size='11' text-anchor='end'>{edges[-1]:.3g}</text>"
            f"<text x='{left + plot_w / 2}' y='{height - 2}' font-size='11' text-anchor='middle'>"
            f"{html.escape(label)}</text>"
            f"<text x='{left - 6}' y='{top + 10}' font-size='11' text-anchor='end'>{int(counts.max())}</text>"
            f"<text x='{left - 6}' y='{top + plot_h}' font-size='11' text-anchor='end'>0</text>"
            f"<text x='12' y='{top + plot_h / 2}' font-size='11' text-anchor='middle' "
            f"transform='rotate(-90 12 {top + plot_h / 2})'>count (log)</text>")
    return (f"<svg class='histogram' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
            f"role='img' aria-label='activation histogram'>{''.join(bars)}{axis}</svg>")
