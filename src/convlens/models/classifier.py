"""A loaded model: the module plus everything needed to feed it and read its output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from convlens.data.images import load_image
from convlens.errors import ConvlensError
from convlens.models.preprocessing import Preprocessing


@dataclass
class ImageClassifier:
    """``module`` (in eval mode) with its ``preprocessing``, ``class_names`` and the ``spec`` it was loaded from.

    Every method accepts either this or a bare ``nn.Module``; nothing about a model is hard-coded elsewhere.
    """

    module: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    spec: str = "custom"
    architecture: str = "custom"
    metadata: dict = field(default_factory=dict)
    # Where the weights came from: "random" (untrained: every command says so loudly), "file:PATH",
    # "checkpoint:PATH", "torchvision:NAME", "pretrained:..."; None when not known (a model built by hand).
    weights: str | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    @property
    def device(self) -> torch.device:
        return next(iter(self.module.parameters()), torch.empty(0)).device

    def to(self, device: str | torch.device) -> ImageClassifier:
        self.module.to(device)
        return self

    def prepare(self, images: Sequence[str | Path | Image.Image] | str | Path | Image.Image) -> torch.Tensor:
        """Paths or PIL images to one normalised batch on the model's device."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        pils = [image if isinstance(image, Image.Image) else load_image(image) for image in images]
        return self.preprocessing.batch(pils).to(self.device)

    def class_index(self, target: int | str) -> int:
        """A class given as an index, an index in a string, or a name (exact, then case-insensitive)."""
        count = len(self.class_names)
        if isinstance(target, str) and target.strip().lstrip("-").isdigit():
            target = int(target)
        if isinstance(target, int):
            if not 0 <= target < count:
                raise ConvlensError(f"class index {target} out of range: the model has {count} classes")
            return target
        if target in self.class_names:
            return self.class_names.index(target)
        lowered = [name.lower() for name in self.class_names]
        if target.lower() in lowered:
            return lowered.index(target.lower())
        from convlens.errors import nearest_names

        close = ", ".join(repr(name) for name in nearest_names(target, self.class_names))
        raise ConvlensError(f"unknown class {target!r}; nearest: {close}")

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def describe(self) -> dict:
        """What ``summary.json`` records about the model."""
        return {
            "spec": self.spec,
            "architecture": self.architecture,
            "num_classes": len(self.class_names),
            "input_size": list(self.input_size),
            "preprocessing": self.preprocessing.to_dict(),
            **({"weights": self.weights} if self.weights is not None else {}),
            **{key: self.metadata[key] for key in ("build_kwargs", "build_kwargs_origin") if key in self.metadata},
        }


def as_module(model: ImageClassifier | nn.Module) -> nn.Module:
    return model.module if isinstance(model, ImageClassifier) else model


ImagesLike = torch.Tensor | str | Path | Image.Image | Sequence[str | Path | Image.Image]


def as_batch(model: ImageClassifier | nn.Module, images: ImagesLike) -> torch.Tensor:
    """The one way every method turns its ``images`` argument into a model input batch.

    A preprocessed ``N x C x H x W`` tensor (or one ``C x H x W`` image) is used as it is; paths and PIL images
    (one, or a list) are loaded and preprocessed by an ImageClassifier. The batch is a normal tensor (not an
    inference tensor, so gradient methods can use it), detached, on the model's device.
    """
    module = as_module(model)
    device = next(iter(module.parameters()), None)
    device = device.device if device is not None else torch.device("cpu")
    if not isinstance(images, torch.Tensor):
        if isinstance(images, (list, tuple)) and images and all(isinstance(i, torch.Tensor) for i in images):
            images = torch.stack([i[0] if i.ndim == 4 else i for i in images])
        elif not isinstance(model, ImageClassifier):
            raise ConvlensError("paths and PIL images need an ImageClassifier (convlens.load_model); with a bare "
                                "nn.Module pass a preprocessed N x 3 x H x W tensor")
        else:
            if isinstance(images, (list, tuple)) and not images:
                raise ConvlensError("no images given")
            images = model.prepare(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise ConvlensError(f"images must be an N x C x H x W batch, got shape {tuple(images.shape)}")
    with torch.inference_mode(False):
        return images.detach().to(device).clone()
