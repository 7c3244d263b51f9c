"""Feature visualization by activation maximization (Olah et al., Distill 2017; Lucid's recipe).

``convlens.feature_viz(model, layer, units)`` optimises one image per unit, all units in one batch: a Fourier
parametrization with 1/f scaling and decorrelated colour, transformation robustness, Adam; objectives channel,
neuron, direction, class and diversity. With ``reference=`` natural images, each unit's visualization is compared
with its best natural activation. See docs/featureviz.md.
"""

from convlens.featureviz.objectives import OBJECTIVES, Objective, diversity_penalty
from convlens.featureviz.optimize import feature_viz
from convlens.featureviz.param import FourierImage, spectrum_scale, to_rgb
from convlens.featureviz.result import FeatureVizResult, NaturalReference
from convlens.featureviz.transforms import TRANSFORMS, Robustness, named_robustness

__all__ = [
    "OBJECTIVES",
    "FeatureVizResult",
    "FourierImage",
    "NaturalReference",
    "Objective",
    "Robustness",
    "TRANSFORMS",
    "diversity_penalty",
    "feature_viz",
    "named_robustness",
    "spectrum_scale",
    "to_rgb",
]
