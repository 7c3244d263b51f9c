"""Keras models (``.h5``, ``.keras``, ``model.to_json()`` + weights) as native PyTorch modules, without Keras.

``load_keras(path, weights)`` reads the file (``reader``), converts each layer (``layers``) and wires them as
Keras's graph does (``graph``): an NCHW ``nn.Module`` whose submodules are the Keras layer names, fused
activations as modules of their own, the output softmax split off (methods get logits; the probabilities are
Keras's). ``docs/keras-onnx.md`` lists what is converted and how.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from convlens.models.classifier import ImageClassifier
from convlens.models.imported import preprocess_mode, read_sidecar, resolve_classes, resolve_preprocessing
from convlens.models.keras.graph import Builder, KerasGraph
from convlens.models.keras.reader import KerasFile, WeightNode, read_keras

ARCHITECTURE = "keras"
DEFAULT_SIZE = (224, 224)


def load_keras(path: str | Path, weights: str | Path | None = None, classes=None, preprocess=None,
               spec: str | None = None) -> ImageClassifier:
    """An ImageClassifier from a Keras model file (``weights``: the HDF5 weights of a JSON architecture)."""
    file = read_keras(path, weights)
    sidecar = read_sidecar(path)
    module, info = convert_file(file, tuple(sidecar.get("input_size", ())) or None)
    default_mode = "raw" if _starts_with_rescaling(file.config) else "unit"
    size = info["input_size"]
    preprocessing = resolve_preprocessing(preprocess, sidecar, size, default_mode)
    class_names = resolve_classes(classes, sidecar, info["num_outputs"])
    build_kwargs = {"keras_config": file.config, "keras_version": file.keras_version,
                    "input_size": list(preprocessing.input_size)}
    metadata = {"source": str(path), "keras_version": file.keras_version,
                "output_activation": info["output_activation"],
                "preprocess": preprocess_mode(preprocess, sidecar, default_mode), "build_kwargs": build_kwargs}
    return ImageClassifier(module, preprocessing, class_names, spec=spec or f"keras:{path}",
                           architecture=ARCHITECTURE, metadata=metadata)


def convert_file(file: KerasFile, input_size: tuple[int, int] | None = None) -> tuple[KerasGraph, dict]:
    builder = Builder(file, input_size or DEFAULT_SIZE)
    module = builder.build()
    height, width = _spatial(builder.input_shape, builder.layout)
    size = (height or (input_size or DEFAULT_SIZE)[0], width or (input_size or DEFAULT_SIZE)[1])
    return module, {"input_size": size, "num_outputs": builder.num_outputs,
                    "output_activation": builder.output_activation}


def build_from_config(keras_config: dict, keras_version: str = "3", input_size=None) -> nn.Module:
    """The module of a converted Keras model, its weights left to a checkpoint (no Keras, no h5py needed):
    every layer gets zero arrays of the shapes its config asks for, then ``load_state_dict`` fills them."""
    file = KerasFile(keras_config, _ZeroWeights(), str(keras_version), "checkpoint")
    builder = _ShapeOnlyBuilder(file, tuple(input_size) if input_size else DEFAULT_SIZE)
    return builder.build()


class _ZeroWeights(WeightNode):
    def child(self, name: str) -> WeightNode:
        return self


class _ShapeOnlyBuilder(Builder):
    def weights(self, layer, wanted):
        return [np.zeros(shape, dtype=np.float32) for _, shape in wanted]


def _spatial(shape, layout: str) -> tuple[int | None, int | None]:
    if not shape:
        return None, None
    return (shape[0], shape[1]) if layout == "cl" else (shape[1], shape[2])


def _starts_with_rescaling(config: dict) -> bool:
    layers = config.get("config", {})
    layers = layers.get("layers", []) if isinstance(layers, dict) else layers
    first = next((layer for layer in layers if layer.get("class_name") != "InputLayer"), None)
    return first is not None and first.get("class_name") == "Rescaling"


__all__ = ["ARCHITECTURE", "KerasGraph", "build_from_config", "convert_file", "load_keras", "read_keras"]
