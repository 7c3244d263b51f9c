"""Helpers shared by the Keras tests: seeded weights, images, the converted model's outputs."""

from __future__ import annotations

import numpy as np
import torch


def randomize(model, seed: int = 0) -> None:
    """Seeded weights everywhere, BatchNorm statistics and biases included (Keras initialises those to 0/1,
    which would let a converter that drops them pass)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        path, shape = weight.path, tuple(weight.shape)
        if path.endswith("variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif path.endswith(("mean", "beta", "bias")):
            value = rng.normal(0.0, 0.1, shape)
        elif path.endswith("gamma"):
            value = rng.uniform(0.8, 1.2, shape)
        elif path.endswith("count"):
            continue
        else:
            continue  # kernels keep Keras's seeded Glorot initialisation
        weight.assign(value.astype("float32"))


def nhwc_images(size: tuple[int, int], count: int = 2, seed: int = 1, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, *size, channels)).astype("float32")


def converted_probabilities(classifier, images_nhwc: np.ndarray) -> np.ndarray:
    """The converted module's softmax on the same pixels (NHWC -> NCHW)."""
    with torch.inference_mode():
        logits = classifier.module(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
    return torch.softmax(logits, dim=1).numpy()


def converted_activation(classifier, layer: str, images_nhwc: np.ndarray) -> np.ndarray:
    """A layer's output through convlens's own capture, back in Keras's NHWC layout."""
    from convlens.hooks import capture

    with capture(classifier.module, [layer]) as captured, torch.inference_mode():
        classifier.module(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
    value = captured.activations[layer]
    return (value.permute(0, 2, 3, 1) if value.ndim == 4 else value).numpy()
