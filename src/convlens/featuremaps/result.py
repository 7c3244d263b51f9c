"""``convlens.feature_maps(model, images, layers)``: each channel's activation map, as a ``FeatureMapsResult``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.errors import ConvlensError
from convlens.featuremaps.maps import Order, channel_order, check_order, layer_activations
from convlens.featuremaps.stages import stage_end_layers
from convlens.filters.kernels import describe_model
from convlens.hooks import resolve_layer
from convlens.models.classifier import ImageClassifier, ImagesLike, as_batch
from convlens.output import to_numpy
from convlens.predict import Prediction
from convlens.progress import ProgressLike, track
from convlens.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_MAX_CHANNELS = 64  # drawn per layer by default: the strongest, not all 1280 of a late layer
CHUNK = 16  # images per forward pass


@dataclass(frozen=True)
class FeatureMapsResult(Result):
    """Activations of ``layers`` for a batch of images, the channels drawn and the model's predictions.

    ``figures()``: for each image an ``overview`` (the image, its top predictions, each layer's ``per_row``
    strongest maps) and one ``featuremaps-LAYER`` grid per layer; with several images each name ends with the
    image's label (``overview-dog``).
    """

    command: ClassVar[str] = "featuremaps"

    inputs: torch.Tensor  # N x 3 x H x W, preprocessed, CPU
    sources: tuple[str, ...]  # where each image came from (path, "PIL image", "tensor")
    model: dict
    activations: dict[str, torch.Tensor]  # layer -> N x C x H x W, as the model computed it
    channels: dict[str, torch.Tensor]  # layer -> N x k: the channels drawn in the layer's grid, in order
    overview_channels: dict[str, torch.Tensor]  # layer -> N x per_row: the strongest, for the overview
    probabilities: torch.Tensor | None  # N x classes (softmax of the output), None when it is not logits
    predictions: tuple[tuple[Prediction, ...], ...]  # the top classes of each image
    displays: tuple[np.ndarray, ...]  # each image as the model sees it, H x W x 3 in [0, 1]
    display_note: str | None = None  # how a bare module's input was made displayable
    max_channels: int | None = DEFAULT_MAX_CHANNELS
    order: Order = "activation"
    per_row: int = 8
    top: int = 3
    compute_seconds: float = 0.0

    @property
    def layers(self) -> list[str]:
        return list(self.activations)

    def __getitem__(self, layer: str) -> torch.Tensor:
        """The ``N x C x H x W`` activation of ``layer``."""
        return self.activations[layer]

    def labels(self) -> list[str]:
        """One short label per image for figure names: file stems when they are distinct, else ``image{i}``."""
        stems = [Path(source).stem if source not in ("PIL image", "tensor") else "" for source in self.sources]
        if all(stems) and len(set(stems)) == len(stems):
            return stems
        return [f"image{i}" for i in range(len(self.sources))]

    def arrays(self) -> dict[str, np.ndarray]:
        """``input``, ``activation/LAYER`` (all channels), ``channels/LAYER`` (``N x k``, the channels drawn in
        the grid, in order) and ``probabilities`` (when the model outputs logits)."""
        arrays = {"input": to_numpy(self.inputs)}
        if self.probabilities is not None:
            arrays["probabilities"] = to_numpy(self.probabilities)
        arrays |= {f"activation/{name}": to_numpy(tensor) for name, tensor in self.activations.items()}
        arrays |= {f"channels/{name}": to_numpy(index) for name, index in self.channels.items()}
        return arrays

    def summary(self) -> dict[str, Any]:
        def shown(name: str) -> dict:
            count = self.activations[name].shape[1]
            return {"channels": int(self.channels[name].shape[1]), "of": count,
                    "chosen_by": "strongest mean activation" if self.order == "activation" else "channel index"}

        return {
            "inputs": list(self.sources),
            "model": self.model,
            "layers": self.layers,
            "parameters": {"max_channels": self.max_channels, "order": self.order, "per_row": self.per_row,
                           "top": self.top},
            "predictions": [[p.to_dict() for p in image] for image in self.predictions],
            "shapes": {name: list(tensor.shape[1:]) for name, tensor in self.activations.items()},
            "shown": {name: shown(name) for name in self.layers},
            "channels": {name: index.tolist() for name, index in self.channels.items()},
            "overview_channels": {name: index.tolist() for name, index in self.overview_channels.items()},
            "compute_seconds": self.compute_seconds,
        }

    def figures(self) -> dict[str, Figure]:
        return dict(self.iter_figures())

    def iter_figures(self) -> Iterator[tuple[str, Figure]]:
        from convlens.featuremaps.figures import layer_figure, overview_figure

        several = len(self.sources) > 1
        for index, label in enumerate(self.labels()):
            suffix = f"-{label}" if several else ""
            maps = {name: tensor[index] for name, tensor in self.activations.items()}
            strongest = {name: channels[index] for name, channels in self.overview_channels.items()}
            heading = " / ".join(part for part in (label if several else None, self.display_note) if part)
            yield f"overview{suffix}", overview_figure(self.displays[index], self.predictions[index], maps,
                                                       strongest, self.per_row, heading or None)
            for name in self.layers:
                figure = layer_figure(name, maps[name], self.channels[name][index], self.order,
                                      label if several else None)
                yield f"featuremaps-{name}{suffix}", figure


def feature_maps(model: ImageClassifier | nn.Module, images: ImagesLike, layers: str | Sequence[str] | None = None,
                 *, max_channels: int | None = DEFAULT_MAX_CHANNELS, order: Order = "activation", per_row: int = 8,
                 top: int = 3, progress: ProgressLike = False) -> FeatureMapsResult:
    """Each channel's activation map at ``layers`` (default: the end of each stage) for ``images``.

    ``images``: a path, PIL image or list of them (with a model from ``convlens.load_model``), or a preprocessed
    ``N x 3 x H x W`` tensor. The layer grids show ``max_channels`` channels (default the 64 strongest; None for
    all) in ``order``: ``activation`` (highest mean activation first) or ``index``. The overview shows each
    layer's ``per_row`` strongest channels under the image and its ``top`` predictions.
    """
    if (max_channels is not None and max_channels < 1) or per_row < 1 or top < 1:
        raise ConvlensError("--max, --per-row and --top must be at least 1")
    check_order(order)
    inputs = as_batch(model, images)
    names = [layers] if isinstance(layers, str) else list(layers) if layers else \
        stage_end_layers(model, tuple(inputs.shape[2:]))
    for name in names:  # unknown names fail before any work
        resolve_layer(model, name)
    start = time.perf_counter()
    parts, outputs = [], []
    chunks = range(0, len(inputs), CHUNK)
    for first in track(chunks, len(chunks), "feature maps", progress):
        maps, output = layer_activations(model, inputs[first:first + CHUNK], names)
        parts.append({name: tensor.cpu() for name, tensor in maps.items()})
        outputs.append(output.detach().float().cpu())
    activations = {name: torch.cat([part[name] for part in parts]) for name in names}
    output = torch.cat(outputs)
    probabilities = torch.softmax(output, dim=1) if output.dim() == 2 else None
    channels = {name: torch.stack([channel_order(a, order, max_channels) for a in tensor])
                for name, tensor in activations.items()}
    strongest = {name: torch.stack([channel_order(a, "activation", per_row) for a in tensor])
                 for name, tensor in activations.items()}
    seconds = time.perf_counter() - start
    cpu_inputs = inputs.detach().cpu()
    displays, note = _displays(model, cpu_inputs)
    predictions = _predictions(model, probabilities, top, len(inputs))
    return FeatureMapsResult(cpu_inputs, _sources(images, len(inputs)), describe_model(model), activations, channels,
                             strongest, probabilities, predictions, displays, note, max_channels, order, per_row, top,
                             seconds)


def _sources(images: ImagesLike, count: int) -> tuple[str, ...]:
    if isinstance(images, torch.Tensor):
        return ("tensor",) * count
    items = images if isinstance(images, (list, tuple)) else [images]
    return tuple("PIL image" if isinstance(item, Image.Image) else "tensor" if isinstance(item, torch.Tensor)
                 else str(item) for item in items)


def _predictions(model: ImageClassifier | nn.Module, probabilities: torch.Tensor | None, top: int,
                 count: int) -> tuple[tuple[Prediction, ...], ...]:
    if probabilities is None:  # the output is not one row of logits per image
        return ((),) * count
    values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
    name = model.class_name if isinstance(model, ImageClassifier) else (lambda index: f"class {index}")
    return tuple(tuple(Prediction(int(i), name(int(i)), float(v)) for v, i in zip(row_v, row_i, strict=True))
                 for row_v, row_i in zip(values, indices, strict=True))


def _displays(model: ImageClassifier | nn.Module, inputs: torch.Tensor) -> tuple[tuple[np.ndarray, ...], str | None]:
    """Each input as an ``H x W x 3`` picture: the model's preprocessing undone, or for a bare module (whose
    preprocessing is unknown) the input min-max scaled."""
    if isinstance(model, ImageClassifier):
        return tuple(model.preprocessing.to_display(image) for image in inputs), None
    pictures = []
    for image in inputs.double().numpy():
        low, high = image.min(), image.max()
        pixels = (image - low) / (high - low) if high > low else np.zeros_like(image)
        pictures.append(np.repeat(pixels, 3, axis=0).transpose(1, 2, 0) if len(pixels) == 1 else
                        pixels[:3].transpose(1, 2, 0))
    return tuple(pictures), "input min-max scaled (a bare nn.Module: its preprocessing is unknown)"
