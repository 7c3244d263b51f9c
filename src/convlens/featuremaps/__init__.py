"""Feature maps: each channel's activation map at chosen layers (``convlens.feature_maps(model, images)``).

``stages`` picks the default layers (the end of each stage); ``maps`` computes activations and which channels
to draw; ``figures`` draws the per-layer grids and the overview; ``result`` holds ``FeatureMapsResult`` and the
``feature_maps`` function. See docs/filters-featuremaps.md.
"""

from convlens.featuremaps.figures import layer_figure, overview_figure, shown_channels_phrase
from convlens.featuremaps.maps import ORDERS, channel_order, layer_activations, map_tiles
from convlens.featuremaps.result import DEFAULT_MAX_CHANNELS, FeatureMapsResult, feature_maps
from convlens.featuremaps.stages import stage_end_layers

__all__ = [
    "DEFAULT_MAX_CHANNELS",
    "ORDERS",
    "FeatureMapsResult",
    "channel_order",
    "feature_maps",
    "layer_activations",
    "layer_figure",
    "map_tiles",
    "overview_figure",
    "shown_channels_phrase",
    "stage_end_layers",
]
