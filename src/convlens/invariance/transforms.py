"""The transformations of the invariance sweep, applied between the preprocessing's resize and its centre crop.

Amounts are in the pixels the model sees: vertical translation in px (whole pixels shift exactly), scale as a
zoom factor about the centre, rotation in degrees anticlockwise; uncovered pixels show the dataset mean.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from convlens.errors import ConvlensError
from convlens.models.preprocessing import Preprocessing, check_resized_size

TRANSFORMS = ("translate", "scale", "rotate")
# (first, last, step) as in the paper: vertical translation -60..60 px, scale 1.0..1.8, rotation 0..360 degrees.
DEFAULT_RANGES = {"translate": (-60.0, 60.0, 10.0), "scale": (1.0, 1.8, 0.1), "rotate": (0.0, 360.0, 10.0)}
UNITS = {"translate": "vertical translation (px)", "scale": "scale factor", "rotate": "rotation (degrees)"}
IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
INPUT_SUFFIX = ":input"


def default_amounts(transform: str, points: int | None = None) -> np.ndarray:
    """The paper's sweep for ``transform``, or ``points`` evenly spaced amounts over the same range."""
    first, last, step = DEFAULT_RANGES[check_transform(transform)]
    if points is None:
        return np.round(np.arange(first, last + step / 2, step), 6)
    if points < 2:
        raise ConvlensError(f"--points {points}: give at least 2 amounts per transformation")
    return np.round(np.linspace(first, last, points), 6)


def check_transform(name: str) -> str:
    if name not in TRANSFORMS:
        raise ConvlensError(f"unknown transformation {name!r}; use one of {', '.join(TRANSFORMS)}")
    return name


def transformed_pixels(preprocessing: Preprocessing, image: Image.Image, transform: str,
                       amount: float) -> torch.Tensor:
    """``image`` resized as the model's preprocessing does, transformed, centre-cropped: ``3 x H x W`` in [0, 1].

    At the identity amount this is exactly the preprocessing's own geometry.
    """
    return transform_and_crop(preprocessing, resized_pixels(preprocessing, image), transform, amount)


def resized_pixels(preprocessing: Preprocessing, image: Image.Image) -> torch.Tensor:
    """The preprocessing's resize alone (before its crop), as a ``3 x h x w`` tensor in [0, 1]."""
    mode = InterpolationMode(preprocessing.interpolation)
    size = list(preprocessing.crop) if _squash(preprocessing) else preprocessing.resize
    if not _squash(preprocessing):
        check_resized_size(image, preprocessing.resize)  # a very thin image would blow up here
    return TF.pil_to_tensor(TF.resize(image, size, interpolation=mode, antialias=True)).float().div_(255.0)


def _squash(preprocessing: Preprocessing) -> bool:
    return preprocessing.squash or preprocessing.resize is None


def transform_and_crop(preprocessing: Preprocessing, pixels: torch.Tensor, transform: str,
                        amount: float) -> torch.Tensor:
    check_transform(transform)
    if float(amount) != IDENTITY[transform]:
        pixels = _apply(pixels, transform, float(amount), list(preprocessing.mean))
    return pixels if _squash(preprocessing) else TF.center_crop(pixels, list(preprocessing.crop))


def _apply(pixels: torch.Tensor, transform: str, amount: float, fill: list[float]) -> torch.Tensor:
    if transform == "translate" and amount.is_integer():  # whole pixels: an exact shift, no interpolation
        shift = int(amount)
        out = torch.tensor(fill, dtype=pixels.dtype).view(3, 1, 1).expand_as(pixels).clone()
        height = pixels.shape[1]
        if abs(shift) < height:
            if shift >= 0:
                out[:, shift:] = pixels[:, :height - shift]
            else:
                out[:, :height + shift] = pixels[:, -shift:]
        return out
    bilinear = InterpolationMode.BILINEAR
    if transform == "translate":
        return TF.affine(pixels, angle=0.0, translate=[0, amount], scale=1.0, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=fill)
    if transform == "scale":
        if amount <= 0:
            raise ConvlensError(f"scale amount {amount}: give a positive zoom factor")
        return TF.affine(pixels, angle=0.0, translate=[0, 0], scale=amount, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=fill)
    return TF.rotate(pixels, amount, interpolation=bilinear, fill=fill)


