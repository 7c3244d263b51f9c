"""What one ``/api/explain`` request computes, through the report's adapter (``convlens.report.compute``):
a result (``arrays()``, ``summary()``) and the PNG the page shows."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.report import compute

RULES = ("deconvnet", "guided", "gradient")
OTHER_METHODS = {"occlusion": "Occlusion (Zeiler & Fergus Fig. 7)", "feature_maps": "Feature maps",
                 **{rule: f"Projection of a unit ({rule})" for rule in RULES}}


def methods() -> dict[str, str]:
    return {**compute.cam_methods(), **OTHER_METHODS}


@dataclass(frozen=True)
class Explained:
    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]
    png: bytes
    caption: str
    kind: str  # cam, projection, occlusion or feature_maps: what the page draws around the figure


def explain(model: ImageClassifier, image_path, method: str, layer: str | None, unit: int | None, target,
            progress) -> Explained:
    if method not in methods():
        raise ConvlensError(f"unknown method {method!r}; use one of {', '.join(methods())}")
    inputs = model.prepare([image_path])
    display = model.preprocessing.to_display(inputs[0])
    if method in compute.cam_methods():
        result = compute.cam(model, inputs, method, layer, target if target is not None else "predicted",
                             progress=progress)
        png = _overlay_png(display, result.arrays()["cam"][0])
    elif method in RULES:
        if layer is None or unit is None:
            raise ConvlensError(f"{method} projects one unit: choose a layer and a unit")
        result = compute.unit_projection(model, inputs, layer, unit, method)
        png = _rgb_png(compute.projection_image(result.arrays()["projection"][0]))
    elif method == "occlusion":
        result = compute.occlusion(model, inputs, str(image_path), target=target, progress=progress)
        png = _figure_png(result.figures()["occlusion"])
    else:
        if layer is None:
            raise ConvlensError("feature maps are a layer's: choose a layer")
        result = compute.feature_maps(model, inputs, layer)
        png = _figure_png(_one_figure(result, f"featuremaps-{layer}"))
    kind = ("cam" if method in compute.cam_methods() else "projection" if method in RULES else method)
    return Explained(result.arrays(), result.summary(), png, caption(model, method, kind, result.summary()), kind)


def predictions(model: ImageClassifier, image_path, top: int = 3) -> list[dict]:
    from convlens.predict import predict

    return [p.to_dict() for p in predict(model, [image_path], top=top)[0]]


def caption(model: ImageClassifier, method: str, kind: str, summary: dict) -> str:
    """One line saying what the figure shows."""
    if kind == "cam":
        image = summary["images"][0]
        target, predicted = image.get("target") or {}, image.get("predicted") or {}
        which = " (the predicted class)" if target and target.get("index") == predicted.get("index") else ""
        layers = ", ".join(layer for m in summary.get("methods", []) for layer in m["layers"])
        return (f"{methods()[method]} at {layers}: evidence for {target.get('name', 'the target')}{which}, "
                "scaled 0 to 1")
    if kind == "projection":
        peak = summary["peaks"][0]
        return (f"{summary['rule']} projection of unit {peak['unit']} of {summary['layer']} at its strongest "
                f"position {tuple(peak['position'])} (activation {peak['value']:.3g}); grey is zero")
    if kind == "occlusion":
        target = summary.get("targets", [{}])[0]
        return f"occlusion: probability of {target.get('name')} as a grey square slides over the image"
    return f"feature maps of {', '.join(summary.get('layers', []))}: the strongest channels, each on its own scale"


def _one_figure(result, name: str):
    """The figure ``name`` of a result; the others it draws on the way are closed at once."""
    import matplotlib.pyplot as plt

    chosen = None
    for key, figure in result.iter_figures():
        if key == name:
            chosen = figure
        else:
            plt.close(figure)
    if chosen is None:
        raise ConvlensError(f"the result has no figure {name!r}")
    return chosen


def _rgb_png(array: np.ndarray) -> bytes:
    from PIL import Image

    from convlens.report.pngs import to_uint8

    image = Image.fromarray(to_uint8(array))
    factor = max(1, -(-224 // min(image.size)))
    image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _overlay_png(display: np.ndarray, heatmap: np.ndarray) -> bytes:
    from convlens.render import overlay

    return _rgb_png(overlay(display, heatmap, alpha=0.5, cmap="jet"))


def _figure_png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
