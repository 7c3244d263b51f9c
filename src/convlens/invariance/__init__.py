"""Invariance to translation, scale and rotation (Zeiler & Fergus 2014, Fig. 5):
``convlens.invariance(model, images, ...)`` returns an ``InvarianceResult`` (per transformation, the feature
distances at an early and a late layer and the target's score over the sweep, and the Fig. 5 figure).

``transforms.py`` applies the transformations, ``compute.py`` runs the sweeps, ``result.py`` holds the result,
``figures.py`` draws it. See docs/occlusion-invariance.md.
"""

from convlens._callable import callable_package
from convlens.invariance.compute import INPUT_SUFFIX, early_and_late_layers, invariance, kept_features
from convlens.invariance.figures import invariance_figure
from convlens.invariance.result import InvarianceCurves, InvarianceResult
from convlens.invariance.transforms import (
    DEFAULT_RANGES,
    IDENTITY,
    TRANSFORMS,
    UNITS,
    default_amounts,
    resized_pixels,
    transformed_pixels,
)

__all__ = [
    "DEFAULT_RANGES",
    "IDENTITY",
    "INPUT_SUFFIX",
    "TRANSFORMS",
    "UNITS",
    "InvarianceCurves",
    "InvarianceResult",
    "default_amounts",
    "early_and_late_layers",
    "invariance",
    "invariance_figure",
    "kept_features",
    "resized_pixels",
    "transformed_pixels",
]

callable_package(__name__, "invariance")
