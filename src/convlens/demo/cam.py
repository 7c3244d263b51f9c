"""Demo section: cam."""

from __future__ import annotations

from convlens.demo.core import DemoContext, DemoSection

DEMO_LAYER = "blocks.6"  # EfficientNet-Lite0's last block (320 channels): Score-/Ablation-CAM stay quick
DEMO_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "eigencam", "ablationcam")


def section(context: DemoContext) -> DemoSection:
    """Demo: the main methods side by side on two sample photos, on the default model."""
    from convlens.cam import CAMComparison, cam
    from convlens.cam.figures import grid_figure
    from convlens.cam.result import cam_tiles
    from convlens.render import plt

    model = context.model
    inputs = model.prepare(context.photos[:2])
    layer = DEMO_LAYER if DEMO_LAYER in dict(model.module.named_modules()) else None
    # CAM explains the layer global average pooling reads; the others the last block
    results = [cam(model, inputs, method="cam", progress=context.progress)]
    others = cam(model, inputs, method=[m for m in DEMO_METHODS if m != "cam"], layer=layer, batch_size=16,
                 progress=context.progress)
    results = CAMComparison((*results, *others.results)).results
    tiles = cam_tiles(results, range(len(inputs)), first_line=True)
    titles = [f"{r.title}\n{'+'.join(r.layers)}" for r in results]
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
