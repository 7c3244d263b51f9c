"""Demo section: occlusion and invariance."""

from __future__ import annotations

from convlens.demo.core import DemoContext, DemoSection


def section(context: DemoContext) -> DemoSection:
    """Demo: occlusion of a sample photo (window 48, stride 16) and invariance curves of two photos, coarse steps."""
    from convlens.invariance import invariance
    from convlens.occlusion import occlusion

    base = context.out / "occlusion-invariance"
    photo = next((p for p in context.photos if p.stem == "chelsea"), context.photos[0])
    # Plain deconvnet projections of EfficientNet's late layers come out as a uniform checkerboard; the guided
    # rule keeps the image-specific structure.
    occluded = occlusion(context.model, photo, rule="guided", window=48, stride=16, progress=context.progress)
    occluded_folder = occluded.save(base / "occlusion")
    pair = [photo] + [p for p in context.photos if p != photo][:1]
    invariant = invariance(context.model, pair, points={"translate": 7, "scale": 5, "rotate": 9},
                           progress=context.progress)
    invariant_folder = invariant.save(base / "invariance")
    summary = occluded.summary()
    text = (f"`convlens occlusion {context.model.spec} {photo.name} --size 48 --stride 16` slides a grey square "
            f"(the dataset mean) over the photo, {summary['parameters']['rows']}x{summary['parameters']['cols']} "
            f"positions: (b) how feature map {summary['feature_channel']} of {summary['layer']} responds, (c) its "
            f"projection to pixels (guided rule, `--rule guided`: the plain deconvnet rule gives a checkerboard "
            f"on this network), (d) the probability of '{summary['targets'][0]['name']}' (it falls to "
            f"{summary['min_score']:.2f} from {summary['clean_score']:.2f}), (e) the most probable "
            "class, as in Zeiler & Fergus Fig. 7; then the drop spread back onto the pixels. `convlens invariance` "
            "translates, scales and rotates two photos (Fig. 5): the early layer's features change at once, the "
            "late layer's less, and the class probability holds up best under translation.")
    figures = [f"{folder.relative_to(context.out)}/{name}" for folder, names in
               ((occluded_folder, ("occlusion.png", "attribution.png")), (invariant_folder, ("invariance.png",)))
               for name in names]
    return DemoSection("Occlusion and invariance", text, figures)
