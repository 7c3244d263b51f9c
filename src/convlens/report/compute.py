"""Every call the report and the web app make into the methods, in one place.

The pages consume the result protocol (``arrays()``, ``summary()``, ``figures()``). Where a method already has
its top-level function (``convlens.cam(...)``, ``convlens.occlusion(...)``...) returning a ``Result``, it is called;
where it does not yet, the method's own API is called and wrapped in ``Adapted``, which gives the same three
views. Switching a method to its top-level function is a change to one function here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike


@dataclass(frozen=True)
class Adapted:
    """A method's output seen through the result protocol (until the method returns a ``Result`` itself)."""

    command: str
    _arrays: dict[str, np.ndarray]
    _summary: dict[str, Any]
    _figures: Callable[[], dict] = field(default=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self._arrays)

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def figures(self) -> dict:
        return self._figures()


def legacy_progress(progress: ProgressLike) -> bool:
    """What the methods' own APIs take today: a rich bar or nothing (a callback is for the new functions)."""
    return progress is True


def _numpy(arrays: dict) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            for name, value in arrays.items()}


# --- CAM family ----------------------------------------------------------------------------------------------
def cam_methods() -> dict[str, str]:
    """CLI name -> title of every CAM method."""
    from convlens.cam.methods import METHODS

    return {name: method.title for name, method in METHODS.items()}


def cam_extra_passes(model: ImageClassifier, method: str, layer: str, images: int) -> int:
    """Forward passes a method adds per call: one per channel and image for Score-CAM and Ablation-CAM."""
    from convlens.cam.methods import cam_method
    from convlens.layers import layer_table

    if not cam_method(method).extra_passes:
        return 0
    shapes = {row.name: row.output_shape for row in layer_table(model)}
    return images * (shapes.get(layer) or (0,))[0]


def cam(model: ImageClassifier, inputs: torch.Tensor, method: str = "gradcam", layer: str | None = None,
        target: Any = "predicted", batch_size: int = 16, progress: ProgressLike = False):
    """One CAM method on a batch; ``arrays()`` holds ``input``, ``cam`` (N x H x W in 0..1), ``cam_raw``,
    ``target``, ``predicted``, ``score``."""
    import time

    from convlens.cam.methods import CAM, cam_method

    kind = cam_method(method)
    start = time.perf_counter()
    extractor = kind(model, None if kind is CAM and layer is None else layer, batch_size=batch_size,
                     progress=legacy_progress(progress))
    result = extractor(inputs, target)
    seconds = time.perf_counter() - start
    arrays = {"input": inputs.detach().cpu().numpy(), **result.arrays()}
    summary = {"command": "cam", "method": result.method, "title": kind.title, "layers": list(result.layers),
               "targets": [None if t is None else int(t) for t in result.targets],
               "predicted": [None if p is None else int(p) for p in result.predicted],
               "compute_seconds": seconds}
    return Adapted("cam", arrays, summary)


# --- occlusion and invariance --------------------------------------------------------------------------------
def occlusion(model: ImageClassifier, inputs: torch.Tensor, name: str, size: int | None = None,
              stride: int | None = None, rule: str = "guided", target: Any = None, progress: ProgressLike = False):
    """Occlusion maps of one image (``1 x 3 x H x W``) with its Fig. 7 figure and the attribution overlay."""
    import time

    from convlens import occlusion as method

    start = time.perf_counter()
    result = method.occlusion(model, inputs, target=target, size=size, stride=stride,
                              progress=legacy_progress(progress))
    projection = method.feature_projection(model, result, rule)
    seconds = time.perf_counter() - start
    summary = method.occlusion_summary(model, result, name)
    summary.update(command="occlusion", projection_rule=rule, compute_seconds=seconds)
    arrays = _numpy({**result.arrays(), "deconv_projection": projection})

    def figures() -> dict:
        return {"occlusion": method.occlusion_figure(model, result, projection, rule=rule),
                "attribution": method.attribution_figure(model, result)}

    return Adapted("occlusion", arrays, summary, figures)


def invariance(model: ImageClassifier, images: Sequence, points: dict[str, int] | None = None,
               progress: ProgressLike = False):
    """Translation, scale and rotation curves of a few images (Zeiler & Fergus Fig. 5)."""
    import time

    from convlens import invariance as method

    start = time.perf_counter()
    result = method.invariance(model, list(images), points=points, progress=legacy_progress(progress))
    seconds = time.perf_counter() - start
    arrays = {"input": result.inputs}
    for name, curves in result.curves.items():
        arrays.update({f"{name}_amounts": curves.amounts, f"{name}_early_distance": curves.early_distance,
                       f"{name}_late_distance": curves.late_distance, f"{name}_probability": curves.probability})
    summary = {"command": "invariance", "layers": {"early": result.layers[0], "late": result.layers[1]},
               "targets": [{"index": t, "name": model.class_name(t)} for t in result.targets],
               "compute_seconds": seconds}
    return Adapted("invariance", _numpy(arrays), summary,
                   lambda: {"invariance": method.invariance_figure(model, result)})


# --- deconvnet -----------------------------------------------------------------------------------------------
def strongest_projections(model: ImageClassifier, inputs: torch.Tensor, layer: str, count: int = 4,
                          rules: Sequence[str] = ("deconvnet", "guided")):
    """The ``count`` strongest units of ``layer`` on one image, each peak activation projected to pixels by each
    rule. ``arrays()``: ``input``, ``units``, ``positions`` (count x 2), ``projection.RULE`` (count x 3 x H x W)."""
    import time

    from convlens.deconv import probe_layer, project_activations, strongest_position, strongest_units

    start = time.perf_counter()
    calls, output = probe_layer(model, inputs, layer)
    activations = output[0]
    units = strongest_units(activations, count)
    peaks = [strongest_position(activations[u]) for u in units]
    batch = inputs.expand(len(units), -1, -1, -1)
    arrays = {"input": inputs.detach().cpu().numpy(), "units": np.array(units), "positions": np.array(peaks)}
    for rule in rules:
        arrays[f"projection.{rule}"] = project_activations(model, batch, layer, units, peaks, rule,
                                                           layer_calls=calls).numpy()
    summary = {"command": "deconv", "layer": layer, "units": units, "positions": [list(p) for p in peaks],
               "rules": list(rules), "peak_values": [float(activations[u][p]) for u, p in zip(units, peaks,
                                                                                              strict=True)],
               "compute_seconds": time.perf_counter() - start}
    return Adapted("deconv", arrays, summary)


def unit_projection(model: ImageClassifier, inputs: torch.Tensor, layer: str, unit: int, rule: str = "guided"):
    """One unit's strongest activation on one image, projected to pixels (the web app's deconv)."""
    import time

    from convlens.deconv import deconv_projection, probe_layer, strongest_position

    start = time.perf_counter()
    _, output = probe_layer(model, inputs, layer)
    if output.dim() != 4 or not 0 <= unit < output.shape[1]:
        raise ConvlensError(f"unit {unit} out of range: layer {layer!r} has output shape {tuple(output.shape[1:])}")
    projection = deconv_projection(model, inputs, layer, unit, position="max", rule=rule)
    peak = strongest_position(output[0, unit])
    summary = {"command": "deconv", "layer": layer, "unit": unit, "rule": rule, "position": list(peak),
               "value": float(output[0, unit][peak]), "compute_seconds": time.perf_counter() - start}
    return Adapted("deconv", {"input": inputs.detach().cpu().numpy(), "projection": projection[None].numpy(),
                              "activation": output[0, unit].numpy()}, summary)


def top_examples(model: ImageClassifier, scan_layer, units: Sequence[int], rule: str = "guided",
                 batch_size: int = 16, progress: ProgressLike = False):
    """Patches and projections of the top-k table's slots for ``units`` (``convlens.topk.top_examples``)."""
    from dataclasses import replace

    from convlens.topk import top_examples as examples

    top = scan_layer.top
    rows = list(units)
    picked = replace(top, units=rows, values=top.values[rows], images=top.images[rows],
                     positions=top.positions[rows])
    return examples(model, picked, rule, batch_size=batch_size, progress=legacy_progress(progress))


# --- filters and feature maps --------------------------------------------------------------------------------
def feeding_conv(model: ImageClassifier | nn.Module, layer: str, channels: int) -> str | None:
    """The convolution whose filters make ``layer``'s channels: the layer itself, or the last ``Conv2d`` at or
    before it (in registration order) with as many output channels; None when there is none."""
    module = model.module if isinstance(model, ImageClassifier) else model
    found = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d) and child.out_channels == channels:
            found = name
        if name == layer:
            if isinstance(child, nn.Conv2d):
                return name
            for inner, grandchild in child.named_modules(prefix=name):
                if isinstance(grandchild, nn.Conv2d) and grandchild.out_channels == channels:
                    found = inner
            return found
    return None


def filters(model: ImageClassifier, conv: str):
    """``convlens.filters`` of one convolution: its ``figures()`` hold ``filters-CONV``."""
    from convlens.filters import filters as method

    return method(model, [conv])


def check_rule(rule: str) -> str:
    from convlens.deconv import check_rule as check

    return check(rule)


def projection_image(projection) -> np.ndarray:
    """A projection (``3 x H x W``) as a display image: zero is mid-grey."""
    from convlens.deconv import projection_image as display

    return display(projection)


def filter_tile(weight: torch.Tensor, groups: int) -> tuple[str, np.ndarray]:
    """One filter (``1 x in x kh x kw``) as a tile in [0, 1]: RGB when it reads pixels, else the mean over its
    input channels; with what it is (``"rgb"`` or ``"mean"``)."""
    from convlens.filters import filter_tiles

    if weight.shape[1] == 3 and groups == 1:
        return "rgb", filter_tiles(weight).tiles[0]
    return "mean", filter_tiles(weight, reduce="mean").tiles[0]


def kernel(model: ImageClassifier, conv: str) -> torch.Tensor:
    from convlens.filters import kernels

    return kernels(model, conv)


def default_layers(model: ImageClassifier) -> list[str]:
    from convlens.featuremaps import stage_end_layers

    return stage_end_layers(model)


def default_cam_layer(model: ImageClassifier) -> str:
    from convlens.layers import last_spatial_conv

    return last_spatial_conv(model)


# --- capabilities built by other work: used where they exist -------------------------------------------------
def faithfulness(model: ImageClassifier, inputs: torch.Tensor, method: str = "gradcam"):
    """Faithfulness scores of a CAM method on the images, or a ``str`` saying why there are none."""
    import convlens

    try:
        function = convlens.faithfulness
    except (ImportError, AttributeError):
        return "faithfulness scores are not part of this convlens version yet (`convlens.faithfulness`)"
    if not callable(function):
        return "faithfulness scores are not part of this convlens version yet (`convlens.faithfulness`)"
    try:
        return function(model, inputs, method=method)
    except (ConvlensError, TypeError, ValueError, RuntimeError) as exc:
        return f"faithfulness scores could not be computed: {exc}"


def feature_visualization(model: ImageClassifier, layer: str, units: Sequence[int], reference=None):
    """Feature visualizations of ``units`` of ``layer`` (one batch), compared with the natural ``reference``
    images where given; or a ``str`` saying why there are none."""
    import convlens

    try:
        function = convlens.feature_viz
    except (ImportError, AttributeError):
        return "feature visualization is not part of this convlens version yet (`convlens.feature_viz`)"
    try:
        return function(model, layer, list(units), reference=reference)
    except (ConvlensError, TypeError, ValueError, RuntimeError) as exc:
        return f"feature visualization could not be computed: {exc}"


def feature_maps(model: ImageClassifier, inputs: torch.Tensor, layer: str, count: int = 16):
    """``convlens.feature_maps`` of one layer on one image (``count`` strongest channels drawn)."""
    from convlens.featuremaps import feature_maps as method

    return method(model, inputs, [layer], max_channels=count)
