"""What a perturbed pixel shows instead of the image: the dataset mean, black, a blur, or a grey level."""

from __future__ import annotations

import math

import torch

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier

FILLS = ("mean", "zero", "blur")


def fill_image(model, inputs: torch.Tensor, fill: str | float, size: int) -> tuple[str, torch.Tensor]:
    """The values a perturbation shows (``1 x 3 x H x W``, model input space) and the fill's name for the summary.

    ``mean``: the dataset mean (zero after normalisation); ``zero``: black pixels; ``blur``: the image blurred by
    a Gaussian of sigma ``size / 4`` (``size``: the perturbed patch's side); a number: a grey level in [0, 1].
    """
    preprocessing = model.preprocessing if isinstance(model, ImageClassifier) else None

    def normalize(pixels: torch.Tensor) -> torch.Tensor:
        return preprocessing.normalize(pixels) if preprocessing is not None else pixels

    text = str(fill).strip().lower()
    if text == "mean":
        return "mean", torch.zeros_like(inputs)
    if text == "zero":
        return "zero", normalize(torch.zeros_like(inputs))
    if text == "blur":
        from torchvision.transforms.functional import gaussian_blur

        # Blurring commutes with the per-channel affine normalisation, so blur the model input directly.
        sigma = max(size / 4.0, 0.5)
        kernel = min(2 * math.ceil(2 * sigma) + 1, _largest_odd(min(inputs.shape[-2:])))
        return "blur", gaussian_blur(inputs, [kernel, kernel], [sigma, sigma])
    try:
        level = float(text)
    except ValueError:
        raise ConvlensError(f"--fill {fill!r}: use mean, zero, blur, or a grey level in [0, 1]") from None
    if not 0.0 <= level <= 1.0:
        raise ConvlensError(f"--fill {fill!r}: a grey level must lie in [0, 1] (pixel space)")
    return f"{level:g}", normalize(torch.full_like(inputs, level))


def _largest_odd(limit: int) -> int:
    return limit if limit % 2 else limit - 1
