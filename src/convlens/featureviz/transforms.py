"""Transformation robustness (Lucid's ``standard_transforms``), applied per image in one resampling.

Lucid pads by 12 (constant 0.5), jitters by up to 8 px, scales by 0.95..1.05, rotates within +-10 degrees
(0 five times as likely as any other angle), and jitters again by up to 4 px, each on the whole batch. Here each
image draws its own transformation, and scale, rotation and both jitters are composed into one affine map that
``grid_sample`` applies once (one interpolation instead of three, and every unit sees its own random views).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
ANGLES = tuple(range(-10, 11)) + (0,) * 5
LUCID_SIDE = 224  # the image side Lucid's pixel values were chosen for


@dataclass(frozen=True)
class Robustness:
    """The transformation distribution; ``Robustness.none()`` switches it off."""

    pad: int = 12
    jitter: int = 8
    scales: tuple[float, ...] = SCALES
    angles: tuple[float, ...] = ANGLES
    jitter_after: int = 4

    @classmethod
    def none(cls) -> Robustness:
        return cls(pad=0, jitter=1, scales=(1.0,), angles=(0.0,), jitter_after=1)

    @classmethod
    def scaled(cls, side: int, reference_side: int = LUCID_SIDE) -> Robustness:
        """Lucid's pad and jitters (chosen for 224 px images) scaled to an image of ``side`` pixels: the pad and
        each jitter's largest shift (Lucid: 12, 7 and 3 px) times ``side / 224``, rounded; scale and rotation are
        relative and stay. 32 px: pad 2, shifts up to 1 px then 0 px; 128 px: pad 7, up to 4 then 2 px."""
        ratio = side / reference_side
        # ``jitter=n`` draws shifts 0..n-1, so the largest shift is n - 1
        return cls(pad=round(12 * ratio), jitter=round(7 * ratio) + 1, jitter_after=round(3 * ratio) + 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``images`` (``N x 3 x H x W`` in [0, 1]) padded and randomly transformed; the size grows by 2 * pad."""
        if self.pad:
            images = F.pad(images, [self.pad] * 4, mode="constant", value=0.5)
        count, _, height, width = images.shape

        def draw(choices) -> torch.Tensor:
            index = torch.randint(len(choices), (count,), generator=generator)
            return torch.tensor(choices, dtype=torch.float32)[index]

        shift_x = draw(range(self.jitter)) + draw(range(self.jitter_after))
        shift_y = draw(range(self.jitter)) + draw(range(self.jitter_after))
        scale = draw(self.scales)
        angle = draw(self.angles) * (math.pi / 180)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # grid_sample maps output coordinates to input coordinates (normalised to [-1, 1]): the inverse of
        # "scale, rotate about the centre, then translate by the jitter".
        theta = torch.zeros(count, 2, 3)
        theta[:, 0, 0] = cos / scale
        theta[:, 0, 1] = -sin / scale * (height / width)
        theta[:, 1, 0] = sin / scale * (width / height)
        theta[:, 1, 1] = cos / scale
        theta[:, 0, 2] = -2 * shift_x / width
        theta[:, 1, 2] = -2 * shift_y / height
        theta = theta.to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


TRANSFORMS = ("lucid", "scaled", "none")


def named_robustness(name: str, side: int) -> Robustness:
    """``lucid`` (Lucid's pixel values), ``scaled`` (those scaled to images of ``side`` pixels) or ``none``."""
    makers = {"lucid": Robustness, "scaled": lambda: Robustness.scaled(side), "none": Robustness.none}
    if name not in makers:
        from convlens.errors import ConvlensError

        raise ConvlensError(f"transforms {name!r}: choose one of {', '.join(TRANSFORMS)}")
    return makers[name]()
