"""convlens: see inside image CNNs."""

from convlens.data import load_image
from convlens.errors import ConvlensError
from convlens.hooks import capture, preserved_state, resolve_layer
from convlens.layers import layer_table
from convlens.models import DEFAULT_SPEC, ImageClassifier, load_model
from convlens.predict import Prediction, predict

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SPEC",
    "ConvlensError",
    "ImageClassifier",
    "Prediction",
    "capture",
    "layer_table",
    "load_image",
    "load_model",
    "predict",
    "preserved_state",
    "resolve_layer",
]
