"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): ``convlens.occlusion(model, image, ...)`` returns an
``OcclusionResult`` (maps over occluder positions, the per-pixel attribution, the Fig. 7 figure).

``compute.py`` runs the windows (on ``convlens.engine``, batched by ``convlens.perturbation``), ``result.py``
holds the result, ``figures.py`` draws it. See docs/occlusion-invariance.md.
"""

from convlens._callable import callable_package
from convlens.occlusion.compute import EDGES, channel_totals, default_window, occlusion, window_origins
from convlens.occlusion.figures import attribution_figure, occlusion_figure
from convlens.occlusion.result import OcclusionResult, display_image
from convlens.perturbation.baselines import FILLS, fill_image

__all__ = [
    "EDGES",
    "FILLS",
    "OcclusionResult",
    "attribution_figure",
    "channel_totals",
    "default_window",
    "display_image",
    "fill_image",
    "occlusion",
    "occlusion_figure",
    "window_origins",
]

callable_package(__name__, "occlusion")
