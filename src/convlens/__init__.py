"""convlens: see inside image CNNs.

One function per capability, one call shape: ``convlens.NAME(model, images, ...)`` returns a frozen result
with ``arrays()``, ``summary()``, ``figures()`` and ``save(out)`` (``docs/api.md``). The capability functions
load on first use, so ``import convlens`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from convlens.errors import ConvlensError

if TYPE_CHECKING:
    from convlens.data import load_image
    from convlens.hooks import capture, preserved_state, resolve_layer
    from convlens.layers import layer_table
    from convlens.models import DEFAULT_SPEC, ImageClassifier, load_model
    from convlens.predict import Prediction, predict
    from convlens.result import Result

__version__ = "0.1.0"

# The core names load on first use too: ``import convlens`` (and the CLI's entry point) must not import torch,
# so that Ctrl-C in the first seconds is handled by ``convlens.cli.main``.
CORE = {
    "load_image": ("convlens.data", "load_image"),
    "capture": ("convlens.hooks", "capture"),
    "preserved_state": ("convlens.hooks", "preserved_state"),
    "resolve_layer": ("convlens.hooks", "resolve_layer"),
    "layer_table": ("convlens.layers", "layer_table"),
    "DEFAULT_SPEC": ("convlens.models", "DEFAULT_SPEC"),
    "ImageClassifier": ("convlens.models", "ImageClassifier"),
    "load_model": ("convlens.models", "load_model"),
    "Prediction": ("convlens.predict", "Prediction"),
    "predict": ("convlens.predict", "predict"),
    "Result": ("convlens.result", "Result"),
}

# name -> (module, attribute). Where the module is a package of the same name (``convlens.cam``), the package
# is itself callable (``convlens._callable``), so the name stays the function after the package is imported.
CAPABILITIES = {
    "filters": ("convlens.filters", None),
    "feature_maps": ("convlens.featuremaps", "feature_maps"),
    "deconv": ("convlens.zeiler", "deconv"),
    "top_activations": ("convlens.zeiler", "top_activations"),
    "evolution": ("convlens.zeiler", "evolution"),
    "occlusion": ("convlens.occlusion", None),
    "invariance": ("convlens.invariance", None),
    "cam": ("convlens.cam", None),
    "attribution": ("convlens.attribution", None),
    "faithfulness": ("convlens.faithfulness", None),
    "feature_viz": ("convlens.featureviz", "feature_viz"),
    "report": ("convlens.report", None),
    "convert": ("convlens.models.convert", "convert"),
}


def __getattr__(name: str):
    if name not in CAPABILITIES and name not in CORE:
        raise AttributeError(f"module 'convlens' has no attribute {name!r}")
    module_name, attribute = CAPABILITIES.get(name) or CORE[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(CAPABILITIES) | set(CORE))


__all__ = [
    "DEFAULT_SPEC",
    "ConvlensError",
    "ImageClassifier",
    "Prediction",
    "Result",
    "capture",
    "layer_table",
    "load_image",
    "load_model",
    "predict",
    "preserved_state",
    "resolve_layer",
    *CAPABILITIES,
]
