"""Every call the report and the web app make into the methods, in one place.

The pages consume the result protocol (``arrays()``, ``summary()``, ``figures()``) of what these functions
return: each calls a method's top-level function (``convlens.cam``, ``convlens.occlusion``, ``convlens.deconv``...),
so a change in a method's API is a change to one function here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.progress import ProgressLike

# --- CAM family ----------------------------------------------------------------------------------------------
# The report's default: the classic methods side by side (``--method`` adds any of ``convlens.cam.METHODS``).
REPORT_CAM_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "eigencam", "ablationcam")


def cam_methods() -> dict[str, str]:
    """CLI name -> title of every CAM method."""
    from convlens.cam import METHODS

    return {name: method.title for name, method in METHODS.items()}


def report_cam_methods() -> tuple[str, ...]:
    return tuple(name for name in REPORT_CAM_METHODS if name in cam_methods())


def cam_extra_passes(model: ImageClassifier, method: str, layer: str, images: int) -> int:
    """Forward passes a method adds per call: one per channel and image for Score-CAM and Ablation-CAM."""
    from convlens.cam import cam_method
    from convlens.layers import layer_table

    if not cam_method(method).extra_passes:
        return 0
    shapes = {row.name: row.output_shape for row in layer_table(model)}
    return images * (shapes.get(layer) or (0,))[0]


def cam(model: ImageClassifier, inputs: torch.Tensor, method: str = "gradcam", layer: str | None = None,
        target: Any = "predicted", batch_size: int = 16, progress: ProgressLike = False):
    """``convlens.cam`` with one method on a batch: ``arrays()`` holds ``input``, ``cam`` (N x H x W in 0..1),
    ``cam_raw``, ``target``, ``predicted``, ``score``."""
    from convlens.cam import cam as method_function

    return method_function(model, inputs, method=method, layer=layer, target=target, batch_size=batch_size,
                           progress=progress)


# --- occlusion and invariance --------------------------------------------------------------------------------
def occlusion(model: ImageClassifier, inputs: torch.Tensor, name: str, window: int | None = None,
              stride: int | None = None, target: Any = None, progress: ProgressLike = False):
    """``convlens.occlusion`` of one image (``1 x 3 x H x W``): ``figures()`` hold the Fig. 7 panels and the
    attribution overlay."""
    import dataclasses

    from convlens.occlusion import occlusion as method

    result = method(model, inputs, target="predicted" if target is None else target, window=window, stride=stride,
                    progress=progress)
    return dataclasses.replace(result, image=name)  # figures say "occlusion of NAME", not "of tensor"


def invariance(model: ImageClassifier, images: Sequence, points: dict[str, int] | None = None,
               progress: ProgressLike = False):
    """``convlens.invariance``: translation, scale and rotation curves (Zeiler & Fergus Fig. 5)."""
    from convlens.invariance import invariance as method

    return method(model, list(images), points=points, progress=progress)


# --- deconvnet -----------------------------------------------------------------------------------------------
def strongest_projections(model: ImageClassifier, inputs: torch.Tensor, layer: str, count: int = 4,
                          rules: Sequence[str] = ("deconvnet", "guided")) -> dict[str, Any]:
    """Per rule, ``convlens.deconv`` of the ``count`` strongest units of ``layer`` on one image, each from its
    peak activation alone."""
    from convlens.zeiler import deconv

    return {rule: deconv(model, inputs, layer, top=count, position="max", rule=rule) for rule in rules}


def unit_projection(model: ImageClassifier, inputs: torch.Tensor, layer: str, unit: int, rule: str = "guided"):
    """``convlens.deconv`` of one unit's strongest activation on one image (the web app's projection)."""
    from convlens.zeiler import deconv

    return deconv(model, inputs, layer, units=[unit], position="max", rule=rule)


def top_examples(model: ImageClassifier, scan_layer, units: Sequence[int], rule: str = "auto",
                 batch_size: int = 16, progress: ProgressLike = False):
    """``TopKResult`` (patches and projections of the top-k slots) of ``units``, from the shared pass's table."""
    from convlens.zeiler import TopKTable, topk_result

    table = scan_layer.top
    rows = [table.units.index(unit) for unit in units]
    picked = TopKTable(table.layer, tuple(units), table.k, table.map_size, table.channels, table.layer_calls,
                       table.values[rows], table.images[rows], table.flat_positions[rows], dict(table.inputs))
    return topk_result(model, scan_layer.paths, picked, rule=rule, batch_size=batch_size, progress=progress)


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
    """``auto`` or one of the deconv rules."""
    from convlens.zeiler.deconv import AUTO
    from convlens.zeiler.deconv import check_rule as check

    return rule if rule == AUTO else check(rule)


def projection_image(projection) -> np.ndarray:
    """A projection (``3 x H x W``) as a display image: zero is mid-grey."""
    from convlens.zeiler import projection_image as display

    return display(projection)


def filter_tile(weight: torch.Tensor, groups: int) -> tuple[str, np.ndarray]:
    """One filter (``1 x in x kh x kw``) as a tile in [0, 1]: RGB when it reads pixels, else the mean over its
    input channels; with what it is (``"rgb"`` or ``"mean"``)."""
    from convlens.filters import filter_tiles

    if weight.shape[-2:] == (1, 1):  # pointwise: one weight per input channel, laid out as a square, 0 at 0.5
        values = weight[0, :, 0, 0].double().numpy()
        side = int(np.ceil(np.sqrt(len(values))))
        grid = np.full(side * side, np.nan)
        grid[:len(values)] = values
        scale = float(np.nanmax(np.abs(grid))) or 1.0
        return "pointwise", np.nan_to_num(0.5 + 0.5 * grid.reshape(side, side) / scale, nan=0.5)
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
    """Average drop and increase in confidence (Chattopadhay et al. 2018) of a CAM method on the images: one more
    forward pass per image (deletion, insertion and ROAD take hundreds: ``convlens faithfulness``); or a ``str``
    saying why there are none."""
    import convlens

    try:
        function = convlens.faithfulness
    except (ImportError, AttributeError):
        return "faithfulness scores are not part of this convlens version yet (`convlens.faithfulness`)"
    if not callable(function):
        return "faithfulness scores are not part of this convlens version yet (`convlens.faithfulness`)"
    try:
        return function(model, inputs, methods=[method], metrics=["drop"])
    except (ConvlensError, TypeError, ValueError, RuntimeError) as exc:
        return f"faithfulness scores could not be computed: {exc}"


def feature_visualization(model: ImageClassifier, layer: str, units: Sequence[int], reference=None, **options):
    """Feature visualizations of ``units`` of ``layer`` (one batch), compared with the natural ``reference``
    images where given (``options``: ``feature_viz``'s steps, size, diversity); or a ``str`` saying why there are
    none."""
    import convlens

    try:
        function = convlens.feature_viz
    except (ImportError, AttributeError):
        return "feature visualization is not part of this convlens version yet (`convlens.feature_viz`)"
    try:
        return function(model, layer, list(units), reference=reference, **options)
    except (ConvlensError, TypeError, ValueError, RuntimeError) as exc:
        return f"feature visualization could not be computed: {exc}"


def feature_maps(model: ImageClassifier, inputs: torch.Tensor, layer: str, count: int = 16):
    """``convlens.feature_maps`` of one layer on one image (``count`` strongest channels drawn)."""
    from convlens.featuremaps import feature_maps as method

    return method(model, inputs, [layer], max_channels=count)
