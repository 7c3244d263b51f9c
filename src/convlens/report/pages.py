"""The index page (model card, images) and one page per image.

Pages read the methods' results through the result protocol: ``arrays()`` for the numbers they draw,
``summary()`` for what they say, ``figures()`` for the figures a method draws itself. A part that could not be
computed (or was not, being long) is a note, never a broken page.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convlens.errors import ConvlensError
from convlens.report import compute, pngs
from convlens.report.assets import page
from convlens.report.collect import Collected, ImageEntry

Writer = Callable[[str], Path]  # relative path in the report -> where to write it

e = html.escape


def note(text: str) -> str:
    """A yellow note; `backticks` become code, as a reader of the CLI's messages expects."""
    return f"<p class='note'>{inline_code(text)}</p>"


def guarded(title: str, build: Callable[..., str], *args) -> str:
    """A page section, or its title and a one-line note when drawing it fails: a section never breaks a page."""
    try:
        return build(*args)
    except (ConvlensError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"<h2>{e(title)}</h2>" + note(f"{title}: could not be drawn ({message})")


def inline_code(text: str) -> str:
    parts = e(text).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def predictions_list(entry: ImageEntry) -> str:
    items = "".join(f"<li><span class='name' title='{e(p.name)}'>{e(p.name)}</span><span class='p'>"
                    f"{100 * p.probability:.1f}%</span><span class='meter'><span style='width:"
                    f"{100 * p.probability:.1f}%'></span></span></li>" for p in entry.predictions)
    return f"<ul class='preds' aria-label='top-3 predictions'>{items}</ul>"


def zoom_figure(src: str, size: tuple[int, int], alt: str) -> str:
    """A figure shown at its own size (so its text reads at 100 %), opening full size on a click."""
    return (f"<div class='figure'><a class='zoom' href='{e(src)}'><img src='{e(src)}' width='{size[0]}' "
            f"height='{size[1]}' alt='{e(alt)}' loading='lazy'></a></div>")


def layer_href(layer: str, root: str = "") -> str:
    return f"{root}layers/{layer}/index.html"


def unit_href(layer: str, unit: int, root: str = "") -> str:
    return f"{root}layers/{layer}/units/{unit}.html"


def display(collected: Collected, index: int) -> np.ndarray:
    from convlens.report.collect import inputs_of

    return collected.model.preprocessing.to_display(inputs_of(collected, [index])[0])


# --- index ---------------------------------------------------------------------------------------------------
def write_index(collected: Collected, write: Writer, command: str) -> None:
    from convlens.layers import layer_table

    model = collected.model
    rows = layer_table(model)
    parameters = sum(p.numel() for p in model.module.parameters())
    shown = set(collected.layers)
    table = "".join(
        f"<tr data-layer='{e(r.name)}' class='{'shown' if r.name in shown else ''}'><td>"
        + (f"<a href='{e(layer_href(r.name))}'>{e(r.name)}</a>" if r.name in shown else e(r.name))
        + f"</td><td>{e(r.type)}</td><td>{e(' x '.join(map(str, r.output_shape or ())) or '-')}</td>"
          f"<td class='num'>{r.parameters:,}</td></tr>" for r in rows)
    prep = model.preprocessing.to_dict()
    facts = "".join(f"<dt>{e(str(k))}</dt><dd>{e(str(v))}</dd>" for k, v in prep.items())
    classes = model.class_names
    class_list = ", ".join(e(c) for c in classes[:12]) + (
        f" <details><summary>all {len(classes)}</summary>{', '.join(e(c) for c in classes)}</details>"
        if len(classes) > 12 else "")
    layer_links = "".join(f"<li data-layer='{e(name)}'><a href='{e(layer_href(name))}'>{e(name)}</a> "
                          f"({collected.scan.layers[name].channels} channels, "
                          f"{'x'.join(map(str, collected.scan.layers[name].map_size))})</li>"
                          for name in collected.layers)
    cards = []
    for entry in collected.images:
        src = f"images/{entry.slug}/input.png"
        size = pngs.write_rgb(display(collected, entry.index), write(src), min_side=196)
        cards.append(f"<div class='card'><a href='images/{e(entry.slug)}.html'><img src='{e(src)}' width='196' "
                     f"height='{round(196 * size[1] / size[0])}' alt='{e(entry.path.name)}' loading='lazy'></a>"
                     f"<div class='caption'><a href='images/{e(entry.slug)}.html'>{e(entry.path.name)}</a></div>"
                     f"{predictions_list(entry)}</div>")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in collected.seconds.items())
    body = (
        f"<h1>{e(model.spec)}</h1>"
        f"<p class='lead'>What this model looks at, image by image, layer by layer, unit by unit. Made with "
        f"<code>{e(command)}</code>.</p>"
        "<h2>Model card</h2><dl class='facts'>"
        f"<dt>architecture</dt><dd>{e(model.architecture)}</dd>"
        f"<dt>input size</dt><dd>{model.input_size[0]} x {model.input_size[1]} px</dd>"
        f"<dt>parameters</dt><dd>{parameters:,}</dd>"
        f"<dt>classes</dt><dd>{len(classes)}: {class_list}</dd></dl>"
        f"<details><summary>preprocessing</summary><dl class='facts'>{facts}</dl></details>"
        f"<h2>Images ({len(collected.images)})</h2><p class='lead'>Each image as the model sees it (after resizing "
        "and cropping) with its top-3 predictions; click one for its class activation maps, projections, "
        "occlusion and invariance.</p>"
        f"<div class='cards'>{''.join(cards)}</div>"
        "<h2>Layers</h2><p class='lead'>The report has a page for each of these layers (its filters, every image's "
        "feature maps, its units ranked) and for its strongest units. The table below lists every module.</p>"
        "<p><label>Find a layer: <input type='search' id='layer-search' placeholder='e.g. conv or blocks.2'>"
        f"</label></p><ul>{layer_links}</ul>"
        "<div class='scroll'><table><thead><tr><th>module</th><th>type</th><th>output shape</th>"
        f"<th class='num'>parameters</th></tr></thead><tbody>{table}</tbody></table></div>"
        f"<h2>How this was made</h2><p class='lead'>Computed in {timing}. One forward pass per batch of images fed "
        "the predictions, every layer's feature maps, each unit's top-k table and histogram.</p>"
    )
    write("index.html").write_text(page(model.spec, "", body))


# --- image pages ---------------------------------------------------------------------------------------------
OCCLUSION_TEXT = ("A grey square slides over the image (Zeiler & Fergus Fig. 7): how the strongest feature map of "
                  "the last convolution and the probability of the predicted class change with the square's "
                  "position, and the drop spread back onto the pixels.")
INVARIANCE_TEXT = ("The image translated, scaled and rotated (Zeiler & Fergus Fig. 5): how far the features of an "
                   "early and a late layer move, and how the class probability holds up.")

def write_image_page(collected: Collected, entry: ImageEntry, write: Writer) -> None:
    folder = f"images/{entry.slug}"
    image = display(collected, entry.index)
    sections = [
        "<div class='cards'><div class='card'>"
        f"<a class='zoom' href='{entry.slug}/input.png'><img src='{entry.slug}/input.png' alt='input'></a>"
        f"{predictions_list(entry)}</div></div>",
        guarded("Class activation maps", _cam_section, collected, entry, image, folder, write),
        guarded("Projections of the strongest units", _projection_section, collected, entry, image, folder, write),
        guarded("Occlusion", _figure_section, "Occlusion", OCCLUSION_TEXT, collected.occlusions.get(entry.index),
                folder, entry.slug, write),
        guarded("Invariance", _figure_section, "Invariance", INVARIANCE_TEXT,
                collected.invariances.get(entry.index), folder, entry.slug, write),
        guarded("Faithfulness", _faithfulness_section, collected, entry),
    ]
    position = collected.images.index(entry)
    neighbours = _neighbour_nav(
        collected.images[position - 1].slug + ".html" if position > 0 else None,
        collected.images[position + 1].slug + ".html" if position + 1 < len(collected.images) else None,
        "../index.html", "image", "model")
    body = f"<h1>{e(entry.path.name)}</h1>{neighbours}" + "".join(sections)
    write(f"{folder}.html").write_text(page(entry.path.name, "../", body, [(entry.path.name, "#")]))


def _neighbour_nav(previous: str | None, following: str | None, up: str, what: str, up_text: str) -> str:
    prev_link = (f"<a data-nav='prev' href='{e(previous)}'>&larr; previous {what}</a>" if previous else
                 f"<span class='off'>&larr; previous {what}</span>")
    next_link = (f"<a data-nav='next' href='{e(following)}'>next {what} &rarr;</a>" if following else
                 f"<span class='off'>next {what} &rarr;</span>")
    return (f"<nav class='units'>{prev_link}<a data-nav='up' href='{e(up)}'>&uarr; {e(up_text)}</a>{next_link}"
            "<span>keys: <kbd>&larr;</kbd> <kbd>&rarr;</kbd> <kbd>&uarr;</kbd></span></nav>")


def _cam_section(collected: Collected, entry: ImageEntry, image: np.ndarray, folder: str, write: Writer) -> str:
    cards, notes, target = [], [], None
    for method, result in collected.cams.items():
        if isinstance(result, str):
            notes.append(note(result))
            continue
        arrays, summary = result.arrays(), result.summary()
        src = f"{entry.slug}/cam-{method}.png"
        pngs.write_overlay(image, arrays["cam"][entry.index], write(f"images/{src}"))
        target = target if target is not None else int(arrays["target"][entry.index])
        layers = ", ".join(layer for m in summary.get("methods", []) for layer in m["layers"])
        title = compute.cam_methods().get(method, method)
        cards.append(f"<div class='card'><a class='zoom' href='{src}'><img src='{src}' alt='{e(method)}' "
                     f"loading='lazy'></a><div class='caption'><b>{e(title)}</b><br>layer {e(layers)}</div></div>")
    name = collected.model.class_name(target) if target is not None and target >= 0 else "the predicted class"
    return (f"<h2>Class activation maps</h2><p class='lead'>Where each method finds the evidence for "
            f"<b>{e(name)}</b> (the predicted class). Gradient methods need one forward and one backward pass, "
            "Score-CAM and Ablation-CAM one forward pass per channel; Eigen-CAM ignores the class. Each map is "
            "scaled to its own range.</p>"
            + pngs.legend("jet", "0", "1", "no evidence to strongest evidence, per map")
            + f"<div class='cards'>{''.join(cards)}</div>" + "".join(notes))


def _projection_section(collected: Collected, entry: ImageEntry, image: np.ndarray, folder: str,
                        write: Writer) -> str:
    result = collected.projections.get(entry.index)
    layer = collected.projection_layer
    head = (f"<h2>Projections of the strongest units</h2><p class='lead'>The four units of <a href='"
            f"{e(layer_href(layer, '../'))}'>{e(layer)}</a> that fire hardest on this image, each peak activation "
            "fed back down to the pixels (Zeiler &amp; Fergus): the deconvnet rule rectifies the signal coming down; "
            "guided backprop also keeps the forward pass's ReLU masks. Each projection is cropped to the pixels it "
            "reaches, beside the same crop of the image; grey is zero.</p>")
    if result is None or isinstance(result, str):
        return head + note(f"Projections: {result or 'not computed'}")
    rows = []
    for rule, deconv in result.items():
        arrays = deconv.arrays()
        tiles = []
        for n, unit in enumerate(int(u) for u in arrays["units"]):
            top, bottom, left, right = _support(arrays["projection"][n])
            src = f"{entry.slug}/projection-{rule}-{unit}.png"
            patch = f"{entry.slug}/patch-{rule}-{unit}.png"
            pngs.write_rgb(compute.projection_image(arrays["projection"][n])[top:bottom, left:right],
                           write(f"images/{src}"))
            pngs.write_rgb(image[top:bottom, left:right], write(f"images/{patch}"))
            label = (f"<a href='{e(unit_href(layer, unit, '../'))}'>unit {unit}</a>"
                     if unit in collected.unit_pages.get(layer, []) else f"unit {unit}")
            row, column = (int(v) for v in arrays["peak_position"][n])
            tiles.append(f"<div class='pair large'><div class='imgs'><a class='zoom' href='{src}'><img src='{src}' "
                         f"alt='{e(rule)} projection of unit {unit}' loading='lazy'></a><a class='zoom' "
                         f"href='{patch}'><img src='{patch}' alt='image patch' loading='lazy'></a></div>"
                         f"<div>{e(rule)}: {label}, peak {float(arrays['peak'][n]):.3g}<br>at row {row}, column "
                         f"{column} of its map; pixels {top}-{bottom - 1} down, {left}-{right - 1} across</div>"
                         "</div>")
        rows.append(f"<div>{''.join(tiles)}</div>")
    return head + "".join(rows)


def _support(projection: np.ndarray, smallest: int = 16) -> tuple[int, int, int, int]:
    """``top, bottom, left, right`` of the square around the pixels a projection (``3 x H x W``) reaches (at least
    ``smallest`` pixels a side): the crop that shows it large instead of a speck on a grey image."""
    strength = np.abs(np.asarray(projection, dtype=np.float64)).sum(axis=0)
    height, width = strength.shape
    rows, columns = np.nonzero(strength > 1e-3 * (strength.max() or 1.0))
    if not len(rows):
        return 0, height, 0, width
    side = min(max(rows.max() - rows.min() + 1, columns.max() - columns.min() + 1, smallest), height, width)
    top = int(np.clip((rows.min() + rows.max() + 1 - side) // 2, 0, height - side))
    left = int(np.clip((columns.min() + columns.max() + 1 - side) // 2, 0, width - side))
    return top, top + side, left, left + side


def _figure_section(title: str, text: str, result, folder: str, slug: str, write: Writer) -> str:
    head = f"<h2>{e(title)}</h2><p class='lead'>{e(text)}</p>"
    if result is None or isinstance(result, str):
        return head + note(f"{title}: {result or 'not computed'}")
    parts = []
    for name, figure in result.figures().items():
        src = f"{slug}/{name}.png"
        size = pngs.write_figure(figure, write(f"images/{src}"))
        parts.append(zoom_figure(src, size, f"{title}: {name}"))
    return head + "".join(parts)


FAITHFULNESS_ROWS = {  # array name prefix -> what the number means
    "drop": "average drop: the share of the class probability lost when the image is multiplied by the map "
            "(lower is better)",
    "increase": "increase in confidence: 1 when the masked image scores higher than the whole image",
}


def _faithfulness_section(collected: Collected, entry: ImageEntry) -> str:
    head = ("<h2>Faithfulness</h2><p class='lead'>Whether the Grad-CAM map above can be believed: keep only the "
            "pixels it points at and see whether the model still finds the class (Chattopadhay et al. 2018). "
            "Deletion, insertion and ROAD take hundreds of forward passes per image: "
            "<code>convlens faithfulness</code> computes them.</p>")
    result = collected.faithfulness
    if result is None or isinstance(result, str):
        return head + note(f"Faithfulness: {result or 'not computed'}")
    rows = []
    for name, values in result.arrays().items():
        values = np.asarray(values)
        metric, _, method = name.partition(".")
        if metric not in FAITHFULNESS_ROWS or values.ndim != 1 or values.shape[0] != len(collected.images):
            continue
        title = compute.cam_methods().get(method, method)
        rows.append(f"<tr><td>{e(title)}</td><td>{e(FAITHFULNESS_ROWS[metric])}</td>"
                    f"<td class='num'>{float(values[entry.index]):.3g}</td></tr>")
    return head + (f"<table><tbody>{''.join(rows)}</tbody></table>" if rows else
                   note("Faithfulness: no per-image score in its result"))
