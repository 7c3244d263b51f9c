"""What one ``/api/explain`` request computes, through the report's adapter (``convlens.report.compute``):
a result (``arrays()``, ``summary()``) and the PNG the page shows."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
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
    draw: Callable[[], bytes]  # the figure as PNG bytes; drawn when first asked for (``png()``)
    caption: str
    kind: str  # cam, projection, occlusion or feature_maps: what the page draws around the figure
    _drawn: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def png(self) -> bytes:
        """The figure, drawn once: an API client that only wants the arrays never pays for it."""
        with self._lock:
            if "png" not in self._drawn:
                self._drawn["png"] = self.draw()
            return self._drawn["png"]


def default_layer(model: ImageClassifier, method: str, known: dict[str, str | list[str]]) -> str | list[str]:
    """The layer ``method`` explains when none is chosen, found once per app (``known``) instead of by a forward
    pass over a zero image on every request, as the library does for each call."""
    if method not in known:
        from convlens.cam import cam_method

        layers = cam_method(method)(model, None).layers
        known[method] = layers[0] if len(layers) == 1 else list(layers)
    return known[method]


def explain(model: ImageClassifier, image_path, method: str, layer: str | None, unit: int | None, target,
            progress, default_layers: dict | None = None, name: str | None = None) -> Explained:
    """The result of ``method`` on one image. Maps of the input are drawn (PIL) only when the figure is asked
    for; matplotlib figures (occlusion, feature maps) are drawn here, on the worker that owns this model."""
    if method not in methods():
        raise ConvlensError(f"unknown method {method!r}; use one of {', '.join(methods())}")
    inputs = model.prepare([image_path])
    if method in compute.cam_methods():
        if layer is None and default_layers is not None:
            layer = default_layer(model, method, default_layers)
        result = compute.cam(model, inputs, method, layer, target if target is not None else "predicted",
                             progress=progress)
        display, heatmap = model.preprocessing.to_display(inputs[0]), result.maps[0].numpy()
        draw = partial(_overlay_png, display, heatmap)
    elif method in RULES:
        if layer is None or unit is None:
            raise ConvlensError(f"{method} projects one unit: choose a layer and a unit")
        result = compute.unit_projection(model, inputs, layer, unit, method)
        draw = partial(_projection_png, result.arrays()["projection"][0])
    elif method == "occlusion":
        result = compute.occlusion(model, inputs, name or str(image_path), target=target, progress=progress)
        draw = _drawn(_figure_png(result.figures()["occlusion"]))
    else:
        if layer is None:
            raise ConvlensError("feature maps are a layer's: choose a layer")
        result = compute.feature_maps(model, inputs, layer)
        draw = _drawn(_figure_png(_one_figure(result, f"featuremaps-{layer}")))
    kind = ("cam" if method in compute.cam_methods() else "projection" if method in RULES else method)
    summary = result.summary()
    return Explained(result.arrays(), summary, draw, caption(model, method, kind, summary), kind)


def _drawn(png: bytes) -> Callable[[], bytes]:
    return lambda: png


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
    # zlib's fastest level: a 224 px overlay in 5 ms instead of 22 ms, 15% larger, on a local connection
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _projection_png(projection: np.ndarray) -> bytes:
    return _rgb_png(compute.projection_image(projection))


def _overlay_png(display: np.ndarray, heatmap: np.ndarray) -> bytes:
    from convlens.render import overlay

    return _rgb_png(overlay(display, heatmap, alpha=0.5, cmap="jet"))


def _figure_png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
