"""Demo section: feature visualizations of a handful of units of the default model, each compared with the
best of the bundled photos."""

from __future__ import annotations

from convlens.demo.core import DemoContext, DemoSection

DEMO_LAYER = "blocks.6"
DEMO_UNITS = (0, 1, 2, 3, 4, 5, 6, 7)
DEMO_STEPS = 128
DEMO_SIZE = 128


def section(context: DemoContext) -> DemoSection:
    from convlens.featureviz import feature_viz

    model = context.model
    layer = DEMO_LAYER if DEMO_LAYER in dict(model.module.named_modules()) else None
    if layer is None:
        return DemoSection("Feature visualization", f"skipped: the model has no layer {DEMO_LAYER}.", [])
    result = feature_viz(model, layer, list(DEMO_UNITS), steps=DEMO_STEPS, size=DEMO_SIZE,
                         reference=context.photos, progress=context.progress)
    folder = result.save(context.out / "featureviz", force=True)
    beaten = int(result.beats_natural.sum())
    text = (f"The image each of {len(DEMO_UNITS)} units of {layer} responds to most (Lucid's recipe: Fourier "
            f"parametrization with decorrelated colour, transformation robustness, Adam, {DEMO_STEPS} steps at "
            f"{DEMO_SIZE} px). Under each: the channel's mean activation it reached, and the best of the sample "
            f"photos; {beaten} of {len(DEMO_UNITS)} beat the best photo.")
    return DemoSection("Feature visualization", text, [f"{folder.name}/units.png"])
