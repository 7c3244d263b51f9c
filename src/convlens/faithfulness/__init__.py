"""Which explanation to trust: deletion/insertion, ROAD, average drop / increase in confidence, the pointing game
and sanity checks, on every map-producing method, in one table (``docs/faithfulness.md``).

``convlens.faithfulness(model, images, methods="all", metrics=None, boxes=None)`` returns a
``FaithfulnessResult``; its ``save(out)`` writes ``table.csv`` beside the standard output folder's files.
"""

from __future__ import annotations

from convlens.faithfulness.candidates import BASELINES, explanation_maps, method_names, resolve_methods
from convlens.faithfulness.confidence import confidence_scores
from convlens.faithfulness.deletion import area_under_curve, blurred, causal_curves, pixels_per_step, rise_kernel
from convlens.faithfulness.evaluate import faithfulness, resolve_metrics
from convlens.faithfulness.pointing import pointing_hits, pointing_trials, read_boxes
from convlens.faithfulness.result import FaithfulnessResult
from convlens.faithfulness.road import PERCENTILES, imputation_system, impute, road_scores
from convlens.faithfulness.sanity import randomisable_layers, randomisation_curves, similarities
from convlens.faithfulness.table import METRICS, SCORES, bootstrap_mean

__all__ = [
    "BASELINES",
    "METRICS",
    "PERCENTILES",
    "SCORES",
    "FaithfulnessResult",
    "area_under_curve",
    "blurred",
    "bootstrap_mean",
    "causal_curves",
    "confidence_scores",
    "explanation_maps",
    "faithfulness",
    "impute",
    "imputation_system",
    "method_names",
    "pixels_per_step",
    "pointing_hits",
    "pointing_trials",
    "randomisable_layers",
    "randomisation_curves",
    "read_boxes",
    "resolve_methods",
    "resolve_metrics",
    "rise_kernel",
    "road_scores",
    "similarities",
]

from convlens._callable import callable_package  # noqa: E402

callable_package(__name__, "faithfulness")
