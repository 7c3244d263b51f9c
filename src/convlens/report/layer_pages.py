"""A page per layer (filters, each image's feature maps, units ranked) and per unit, in the manner of OpenAI
Microscope (filter, top-k patches beside their projections, histogram, feature visualization), at stable
addresses ``layers/LAYER/index.html`` and ``layers/LAYER/units/N.html``."""

from __future__ import annotations

import numpy as np

from convlens.report import compute, pngs
from convlens.report.assets import page
from convlens.report.collect import Collected
from convlens.report.pages import Writer, e, guarded, note, zoom_figure
from convlens.report.unit_featureviz import computed_for, feature_viz_section


def write_layer_page(collected: Collected, layer: str, write: Writer) -> None:
    scan = collected.scan.layers[layer]
    root = "../../"
    conv = collected.convs.get(layer)
    module = collected.model.module.get_submodule(layer)
    position = collected.layers.index(layer)
    previous = collected.layers[position - 1] if position > 0 else None
    following = collected.layers[position + 1] if position + 1 < len(collected.layers) else None
    nav = ("<nav class='units'>"
           + (f"<a data-nav='prev' href='../{e(previous)}/index.html'>&larr; {e(previous)}</a>" if previous else "")
           + f"<a data-nav='up' href='{root}index.html'>&uarr; model</a>"
           + (f"<a data-nav='next' href='../{e(following)}/index.html'>{e(following)} &rarr;</a>" if following else "")
           + "</nav>")
    body = [f"<h1>Layer {e(layer)}</h1>{nav}<dl class='facts'><dt>module</dt><dd>{e(type(module).__name__)}</dd>"
            f"<dt>output</dt><dd>{scan.channels} channels x {scan.map_size[0]} x {scan.map_size[1]}</dd>"
            f"<dt>filters from</dt><dd>{e(conv or 'no convolution makes these channels')}</dd>"
            f"<dt>unit pages</dt><dd>{len(collected.unit_pages[layer])} of {scan.channels} units (the strongest "
            "by mean activation; <code>--units all</code> makes one for each)</dd></dl>"]
    body.append(guarded("Filters", _filters, collected, layer, conv, write))
    body.append(guarded("Units ranked by mean activation", _ranking, collected, layer))
    body.append(guarded("Feature maps of each image", _feature_maps, collected, layer, write))
    write(f"layers/{layer}/index.html").write_text(page(layer, root, "".join(body), [(layer, "index.html")]))


def _filters(collected: Collected, layer: str, conv: str | None, write: Writer) -> str:
    head = "<h2>Filters</h2>"
    if conv is None:
        return head + note("This layer has no convolution of its own whose filters make its channels.")
    result = compute.filters(collected.model, conv)
    size = pngs.write_figure(result.figures()[f"filters-{conv}"], write(f"layers/{layer}/filters.png"))
    return (head + f"<p class='lead'>The kernels of <code>{e(conv)}</code>, which make this layer's channels, as "
            "<code>convlens filters</code> draws them (the figure's title says which filters and on what scale)."
            "</p>" + zoom_figure("filters.png", size, f"filters of {conv}"))


def _ranking(collected: Collected, layer: str) -> str:
    scan = collected.scan.layers[layer]
    means = scan.means.mean(axis=0)
    maxima = scan.maxima.max(axis=0)
    top = float(np.abs(means).max()) or 1.0
    pages = set(collected.unit_pages[layer])
    rows = []
    for rank, unit in enumerate(scan.ranking, 1):
        unit = int(unit)
        name = f"<a href='units/{unit}.html'>unit {unit}</a>" if unit in pages else f"unit {unit}"
        rows.append(f"<tr><td class='num'>{rank}</td><td>{name}</td><td class='num'>{means[unit]:.4g}</td>"
                    f"<td class='bar-cell'><span style='width:{100 * max(means[unit], 0) / top:.1f}%'></span></td>"
                    f"<td class='num'>{maxima[unit]:.4g}</td></tr>")
    return ("<h2>Units ranked by mean activation</h2><p class='lead'>Mean over every position of every image, "
            f"and the strongest single activation; the {len(pages)} linked units have pages.</p>"
            "<div class='scroll'><table><thead><tr><th class='num'>rank</th><th>unit</th><th class='num'>mean</th>"
            f"<th></th><th class='num'>max</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _feature_maps(collected: Collected, layer: str, write: Writer) -> str:
    scan = collected.scan.layers[layer]
    pages = set(collected.unit_pages[layer])
    rows = []
    for entry in collected.images:
        tiles = []
        for slot, channel in enumerate(scan.image_channels[entry.index]):
            channel = int(channel)
            src = f"maps/{entry.slug}-{slot}.png"
            pngs.write_map(scan.image_tiles[entry.index, slot], write(f"layers/{layer}/{src}"))
            low, high = scan.tile_ranges[entry.index, slot]
            label = f"<a href='units/{channel}.html'>#{channel}</a>" if channel in pages else f"#{channel}"
            tiles.append(f"<div class='tile'><img src='{src}' alt='channel {channel}' loading='lazy' "
                         f"title='{low:.3g} to {high:.3g}'>{label}</div>")
        rows.append(f"<div class='maprow'><a href='../../images/{e(entry.slug)}.html'><img src='../../images/"
                    f"{e(entry.slug)}/input.png' alt='{e(entry.path.name)}' loading='lazy'></a><span class='label'>"
                    f"{e(entry.path.name)}</span><div class='tiles'>{''.join(tiles)}</div></div>")
    return ("<h2>Feature maps of each image</h2><p class='lead'>Each image's strongest channels here (highest mean "
            "activation on that image), strongest first.</p>"
            + pngs.legend("viridis", "low", "high", "each map scaled to its own range (hover for the values)")
            + "".join(rows))


def write_unit_page(collected: Collected, layer: str, unit: int, write: Writer) -> None:
    scan = collected.scan.layers[layer]
    units = collected.unit_pages[layer]
    position = units.index(unit)
    previous = units[position - 1] if position > 0 else None
    following = units[position + 1] if position + 1 < len(units) else None
    rank = int(np.where(scan.ranking == unit)[0][0]) + 1
    nav = ("<nav class='units'>"
           + (f"<a data-nav='prev' href='{previous}.html'>&larr; unit {previous}</a>" if previous is not None
              else "<span class='off'>&larr; first unit</span>")
           + f"<a data-nav='up' href='../index.html'>&uarr; layer {e(layer)}</a>"
           + (f"<a data-nav='next' href='{following}.html'>unit {following} &rarr;</a>" if following is not None
              else "<span class='off'>last unit &rarr;</span>")
           + "<span>keys: <kbd>&larr;</kbd> <kbd>&rarr;</kbd> <kbd>&uarr;</kbd></span></nav>")
    folder = f"layers/{layer}/units/{unit}"
    body = [f"<h1>{e(layer)}, unit {unit}</h1>{nav}<p class='lead'>Rank {rank} of {scan.channels} by mean "
            f"activation over the {len(collected.images)} images (mean {scan.means[:, unit].mean():.4g}, strongest "
            f"{scan.maxima[:, unit].max():.4g}).</p>",
            guarded("Filter", _unit_filter, collected, layer, unit, folder, write)]
    # computed, the visualization comes first, above the top-k patches it is read beside (as on Microscope)
    visualization = guarded("Feature visualization", feature_viz_section, collected, layer, unit, folder, write)
    first = computed_for(collected, layer)
    body += ([visualization] if first else []) + [
            guarded("Top activations", _unit_top, collected, layer, unit, folder, write),
            "<h2>Activation histogram</h2><p class='lead'>Every activation of this unit, at every position of "
            "every image (counts on a log scale; values outside the first batch's range are counted in the end "
            "bins).</p>" + pngs.histogram_svg(scan.histogram_counts[unit], scan.histogram_edges)] + (
            [] if first else [visualization])
    write(f"{folder}.html").write_text(page(f"{layer} unit {unit}", "../../../", "".join(body),
                                            [(layer, "../index.html"), (f"unit {unit}", f"{unit}.html")]))


def _unit_filter(collected: Collected, layer: str, unit: int, folder: str, write: Writer) -> str:
    conv = collected.convs.get(layer)
    head = "<h2>Filter</h2>"
    if conv is None:
        return head + note("No convolution of this layer makes its channels: no filter to show.")
    weight = compute.kernel(collected.model, conv)
    groups = collected.model.module.get_submodule(conv).groups
    if unit >= weight.shape[0]:
        return head + note(f"{conv} has {weight.shape[0]} filters.")
    single = weight[unit:unit + 1]
    tiles = [compute.filter_tile(single, groups)]
    parts = []
    labels = {"rgb": "RGB kernel", "mean": "mean over input channels",
              "pointwise": "1x1: one weight per input channel, row by row (blue negative, red positive)"}
    for name, tile in tiles:
        src = f"{unit}/filter-{name}.png"
        if tile.ndim == 3:
            pngs.write_rgb(tile, write(f"{folder}/filter-{name}.png"), min_side=96)
        else:
            pngs.write_map(tile, write(f"{folder}/filter-{name}.png"),
                           cmap="RdBu_r" if name == "pointwise" else "gray", min_side=96)
        parts.append(f"<div class='tile'><img src='{src}' alt='filter {unit}' style='width:96px;height:96px'>"
                     f"{labels[name]}</div>")
    shape = "x".join(map(str, single.shape[1:]))
    return (head + f"<p class='lead'>Filter {unit} of <code>{e(conv)}</code> ({shape}), scaled to its own "
            f"range.</p><div class='tiles'>{''.join(parts)}</div>")


def _unit_top(collected: Collected, layer: str, unit: int, folder: str, write: Writer) -> str:
    k = collected.options.k
    examples = collected.examples.get(layer)
    computed = examples is not None and not isinstance(examples, str)
    rule = examples.summary()["rule"] if computed else collected.options.rule
    head = (f"<h2>Top-{k} activations</h2><p class='lead'>The images where this unit fires hardest (each image "
            f"once, at its strongest position): the projection of that single activation ({rule} rule) beside the "
            "image patch under its receptive field.</p>")
    if examples is None or isinstance(examples, str):
        return head + note(f"Top-{k}: {examples or 'not computed'}")
    arrays = examples.arrays()
    row = [int(u) for u in arrays["units"]].index(unit)
    cells = []
    for rank in range(k):
        image = int(arrays["images"][row, rank])
        if image < 0:
            continue
        entry = collected.images[image]
        projection_src, patch_src = f"{unit}/top{rank}-projection.png", f"{unit}/top{rank}-patch.png"
        pngs.write_rgb(compute.projection_image(arrays["projections"][row, rank]),
                       write(f"{folder}/top{rank}-projection.png"), min_side=96)
        pngs.write_rgb(arrays["patches"][row, rank], write(f"{folder}/top{rank}-patch.png"), min_side=96)
        cells.append(f"<div class='pair'><div class='imgs'><img src='{projection_src}' alt='projection' "
                     f"loading='lazy'><img src='{patch_src}' alt='patch' loading='lazy'></div><span>{rank + 1}. "
                     f"<a href='../../../images/{e(entry.slug)}.html'>{e(entry.path.name)}</a>: "
                     f"{float(arrays['values'][row, rank]):.3g}</span></div>")
    shown = len(cells)
    extra = f" Only {shown} images were given, so {k - shown} slots stay empty." if shown < k else ""
    return head.replace("</p>", f"{extra}</p>") + "".join(cells)
