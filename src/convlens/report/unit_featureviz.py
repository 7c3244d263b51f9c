"""The feature visualization on a unit page: the optimised image (and the diversity set when asked for), how far
it drives the unit against the best of the report's images, and a flag where it does not beat that image."""

from __future__ import annotations

import numpy as np

from convlens.report import pngs
from convlens.report.collect import Collected
from convlens.report.pages import Writer, e, note

SHOWN_SIDE = 196  # CSS width of a card image; smaller images are written larger (nearest neighbour)


def computed_for(collected: Collected, layer: str) -> bool:
    """Whether feature visualization was asked for on this layer (then the page shows it before the top-k)."""
    return layer in collected.feature_viz


def feature_viz_section(collected: Collected, layer: str, unit: int, folder: str, write: Writer) -> str:
    head = ("<h2>Feature visualization</h2><p class='lead'>An input optimised to excite this unit (mean over "
            "positions; Lucid's recipe), to read beside the image patches that excite it most; and how far it "
            "drives the unit compared with the best of the report's images.</p>")
    result = collected.feature_viz.get(layer)
    if result is None:
        asked = collected.options.feature_viz
        if asked is None:
            return head + note("Feature visualization: long to compute, not asked for (`convlens report ... "
                               "--feature-viz`).")
        return head + note("Feature visualization: not asked for on this layer (it was on "
                           f"{', '.join(asked.layers or ())}).")
    if isinstance(result, str):
        return head + note(f"Feature visualization: {result}")
    if unit not in result.units:
        return head + note(f"Feature visualization: computed for the {len(result.units)} strongest units of this "
                           "layer only (`--feature-viz-units`).")
    row = result.units.index(unit)
    facts = result.summary()["units"][row]
    steps = result.parameters["steps"]
    cards = []
    for index, reached in enumerate(facts["reached"]):
        name = "feature-viz.png" if index == 0 else f"feature-viz-{index}.png"
        image = np.transpose(result.images[row, index].float().numpy(), (1, 2, 0))
        pngs.write_rgb(image, write(f"{folder}/{name}"), min_side=SHOWN_SIDE)
        label = "optimised image" if index == 0 else f"diverse image {index + 1}"
        cards.append(f"<div class='card'><a class='zoom' href='{unit}/{name}'><img src='{unit}/{name}' "
                     f"alt='feature visualization {index + 1}'></a><div class='caption'>{label}: reaches "
                     f"{reached:.3g}</div></div>")
    count = len(facts["reached"])
    what = (f"<p class='lead'>{steps} steps at {result.parameters['size'][0]} px"
            + (f"; a diversity set of {count} images, pushed apart by Lucid's diversity penalty (similar Gram "
               "matrices at this layer are penalised), each a different thing the unit responds to" if count > 1
               else "") + ".</p>")
    return head + what + _verdict(collected, facts) + f"<div class='cards'>{''.join(cards)}</div>"


def _verdict(collected: Collected, facts: dict) -> str:
    """One line comparing the best visualization with the best natural image; flagged when it does not beat it."""
    if "natural_top1" not in facts:
        return ""
    reached, best = max(facts["reached"]), facts["natural_top1"]
    source = _image_link(collected, facts["natural_best_image"])
    if facts["beats_natural"]:
        ratio = f", {reached / best:.3g} times as much" if best > 0 else ""
        return (f"<p class='verdict'>The visualization drives the unit to {reached:.3g}, above the best of the "
                f"report's {len(collected.images)} images ({best:.3g}, {source}){ratio}.</p>")
    return (f"<p class='note flagged' data-flag='not-beaten'><strong>Not to be trusted:</strong> the visualization "
            f"reaches only {reached:.3g}, not above the best of the report's images ({best:.3g}, {source}). The "
            "optimisation has not found what this unit responds to; more steps may.</p>")


def _image_link(collected: Collected, path) -> str:
    for entry in collected.images:
        if str(entry.path) == str(path):
            return f"<a href='../../../images/{e(entry.slug)}.html'>{e(entry.path.name)}</a>"
    return e(str(path))
