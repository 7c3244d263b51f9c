"""Demo section: zeiler."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from convlens.data.images import load_image
from convlens.demo.core import DemoContext, DemoSection
from convlens.zeiler import top_activations
from convlens.zeiler.figures import top_examples_figure

DEMO_LAYER = "blocks.2"


def section(context: DemoContext) -> DemoSection:
    """Deconvnet and guided projections of a sample photo's strongest units side by side (the deconvnet
    checkerboards on this strided network), and a top-9 figure over a small folder made of the sample photos and
    crops of them, drawn with the model's default rule."""
    from convlens.render import image_grid
    from convlens.zeiler.deconv import project_activations, strongest_position, strongest_units, unit_activations
    from convlens.zeiler.figures import projection_image

    model, folder = context.model, context.out / "deconvnet"
    images = _demo_folder(context.photos, folder / "images")
    photo = context.photos[1]
    inputs = model.prepare([photo])
    activations = unit_activations(model, inputs, DEMO_LAYER)[0]
    units = strongest_units(activations, 4)
    peaks = [strongest_position(activations[u]) for u in units]
    tiles, titles = [model.preprocessing.to_display(inputs[0])], [photo.stem]
    for rule in ("deconvnet", "guided"):
        projected = project_activations(model, inputs.expand(len(units), -1, -1, -1), DEMO_LAYER, units, peaks, rule)
        tiles += [projection_image(p) for p in projected]
        titles += [f"{rule}: unit {u} at {p}" for u, p in zip(units, peaks, strict=True)]
    tiles.insert(5, model.preprocessing.to_display(inputs[0]))
    titles.insert(5, photo.stem)
    figure = image_grid(tiles, titles, ncols=5, tile_inches=2.0,
                        suptitle=f"{DEMO_LAYER}: the 4 strongest units' peak activations projected to pixels")
    projections_png = folder / "projections.png"
    figure.savefig(projections_png, dpi=100, bbox_inches="tight")
    top = top_activations(model, images, DEMO_LAYER, units="0:4", k=9, batch_size=8)
    figure = top_examples_figure(top, units_per_row=2, tile_inches=0.8)
    topk_png = folder / "topk.png"
    figure.savefig(topk_png, dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close("all")
    text = (f"Zeiler & Fergus deconvnet. Top: the four channels of {DEMO_LAYER} that fire hardest on a sample photo, "
            "each peak activation fed back down to pixels (deconvnet: ReLUs rectify the signal coming down; "
            "guided backprop also keeps the forward masks). This network downsamples with strided convolutions "
            "and has no max-pool switches, so the deconvnet's way down ignores the image and draws the same "
            "checkerboard for every image; guided backprop, the default on such models, draws the image's edges. "
            f"Bottom: for units 0-3, the nine strongest activations over {len(top.paths)} images (the sample "
            f"photos and crops of them), {top.rule} projections beside the image patches under the unit's "
            "receptive field (`convlens deconv`, `convlens topk`).")
    return DemoSection("Deconvnet projections and top-9 patches", text,
                       [str(p.relative_to(context.out)) for p in (projections_png, topk_png)])


def _demo_folder(photos: Sequence[Path], folder: Path) -> Path:
    """The sample photos and their four quadrant and centre crops, as image files."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        image = load_image(photo)
        width, height = image.size
        boxes = {"full": (0, 0, width, height), "centre": (width // 4, height // 4, 3 * width // 4, 3 * height // 4)}
        for n, (x, y) in enumerate(((0, 0), (width // 2, 0), (0, height // 2), (width // 2, height // 2))):
            boxes[f"q{n}"] = (x, y, x + width // 2, y + height // 2)
        for name, box in boxes.items():
            image.crop(box).save(folder / f"{photo.stem}_{name}.png")
    return folder
