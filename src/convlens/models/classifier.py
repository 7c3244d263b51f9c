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
        }


def as_module(model: ImageClassifier | nn.Module) -> nn.Module:
    return model.module if isinstance(model, ImageClassifier) else model
