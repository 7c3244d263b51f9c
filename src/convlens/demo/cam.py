"""Demo section: cam."""

from __future__ import annotations

from convlens.cam.figures import Tile, grid_figure, tile_title
from convlens.demo.core import DemoContext, DemoSection
from convlens.render import plt

DEMO_LAYER = "blocks.6"  # EfficientNet-Lite0's last block (320 channels): Score-/Ablation-CAM stay quick


def section(context: DemoContext) -> DemoSection:
    """Demo: every method side by side on two sample photos, on the default model."""
    from convlens.cam.methods import CAM, METHODS

    model = context.model
    photos = context.photos[:2]
    inputs = model.prepare(photos)
    layer = DEMO_LAYER if DEMO_LAYER in dict(model.module.named_modules()) else None
    results = [method(model, None if method is CAM else layer, batch_size=16, progress=context.progress)(inputs)
               for method in METHODS.values()]
    probabilities = results[0].logits.softmax(1)
    tiles = []
    for index in range(len(photos)):
        predicted = results[0].predicted[index]
        title = tile_title(model.class_name(predicted), float(probabilities[index, predicted]), None)
        tiles.append(Tile(model.preprocessing.to_display(inputs[index]),
                          [result.maps[index].numpy() for result in results], title.split("\n")[0]))
    titles = [f"{METHODS[r.method].title}\n{'+'.join(r.layers)}" for r in results]
    figure = grid_figure(tiles, titles, f"Class activation maps of the predicted class, {model.spec}",
                         tile_inches=1.7)
    target = context.out / "cam.png"
    figure.savefig(target, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return DemoSection("Class activation maps",
                       "Where each CAM method finds the evidence for the predicted class (CAM at the layer global "
                       "average pooling reads, the others at the last block). Gradient methods need one forward "
                       "and one backward pass; Score-CAM and Ablation-CAM one forward pass per channel; Eigen-CAM "
                       "ignores the class. `convlens cam MODEL IMAGE --method NAME ...` makes these figures.",
                       [target.name])
