"""Zeiler & Fergus's visualisations: deconvnet projections, each unit's top-k activations across a folder,
units evolving over training, and the receptive fields they are cropped to.

- ``deconv(model, images, layer, ...) -> DeconvResult`` (``convlens deconv``)
- ``top_activations(model, folder, layer, ...) -> TopKResult`` (``convlens topk``); ``scan_top`` and
  ``TopKTable.merge`` for scans split over shards (Ray), ``topk_result`` to finish a merged table
- ``evolution(run_dir, images, layer, ...) -> EvolutionResult`` (``convlens evolution``)
- ``receptive_field(model, layer, ...)``, ``project_activations``, ``deconv_projection``, ``default_rule``

The functions ``deconv`` and ``evolution`` share their names with the modules that define them: import the
modules' other contents with ``from convlens.zeiler.deconv import NAME``.
"""

# ``deconv`` and ``evolution`` are bound after their modules have loaded (a ``from`` import binds the function
# over the submodule attribute that loading set); nothing below loads either module for the first time.
from convlens.zeiler.deconv import (
    RULES,
    deconv,
    deconv_projection,
    default_rule,
    parse_units,
    project_activations,
    strongest_position,
    strongest_units,
    unit_activations,
)
from convlens.zeiler.evolution import evolution, find_snapshots
from convlens.zeiler.figures import projection_image
from convlens.zeiler.receptive_field import ReceptiveField, receptive_field
from convlens.zeiler.results import DeconvResult, EvolutionResult, TopKResult
from convlens.zeiler.topk import TopKTable, scan_top, top_activations, topk_result

__all__ = [
    "RULES",
    "DeconvResult",
    "EvolutionResult",
    "ReceptiveField",
    "TopKResult",
    "TopKTable",
    "deconv",
    "deconv_projection",
    "default_rule",
    "evolution",
    "find_snapshots",
    "parse_units",
    "project_activations",
    "projection_image",
    "receptive_field",
    "scan_top",
    "strongest_position",
    "strongest_units",
    "top_activations",
    "topk_result",
    "unit_activations",
]
