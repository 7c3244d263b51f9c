"""Filters: the kernels of convolution layers as image grids (``convlens.filters(model, layers)``).

``kernels`` finds the convolutions and lays their kernels out as tiles (or, for 1x1 kernels, as one matrix);
``figures`` draws them; ``result`` holds ``FiltersResult`` and the ``filters`` function. The package itself is
callable: ``convlens.filters(model)`` is ``convlens.filters.filters(model)``. See docs/filters-featuremaps.md.
"""

from convlens._callable import callable_package
from convlens.filters.figures import filters_figure, pointwise_figure, tiles_figure
from convlens.filters.kernels import (
    REDUCTIONS,
    FilterTiles,
    PointwiseMatrix,
    conv_layer,
    conv_layer_names,
    describe_model,
    filter_tiles,
    first_conv_layer,
    is_colour,
    is_pointwise,
    kernel_layout,
    kernels,
    pointwise_matrix,
    scaled,
)
from convlens.filters.result import FiltersResult, LayerKernels, filters

__all__ = [
    "REDUCTIONS",
    "FilterTiles",
    "FiltersResult",
    "LayerKernels",
    "PointwiseMatrix",
    "conv_layer",
    "conv_layer_names",
    "describe_model",
    "filter_tiles",
    "filters",
    "filters_figure",
    "first_conv_layer",
    "is_colour",
    "is_pointwise",
    "kernel_layout",
    "kernels",
    "pointwise_figure",
    "pointwise_matrix",
    "scaled",
    "tiles_figure",
]

callable_package(__name__, "filters")
