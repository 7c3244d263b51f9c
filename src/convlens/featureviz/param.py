"""Lucid's image parametrization: a Fourier spectrum with 1/f scaling and decorrelated colour, squashed to [0, 1].

Olah et al., "Feature Visualization" (Distill 2017), and Lucid's ``fft_image`` / ``to_valid_rgb``: the image is
the inverse real FFT of a learnable spectrum whose frequencies are scaled by ``1 / max(f, 1 / max(h, w)) ** decay``
(so gradient steps move low frequencies as much as high ones), divided by Lucid's constant 4, mapped from a
decorrelated colour space through the square root of ImageNet's colour correlation matrix, then a sigmoid.
"""

from __future__ import annotations

import numpy as np
import torch

# Square root of ImageNet's colour correlation matrix (Lucid's ``color_correlation_svd_sqrt``).
COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                         [0.27, 0.00, -0.05],
                                         [0.27, -0.09, 0.03]], dtype=np.float32)
MAX_NORM_SVD_SQRT = float(np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)))
COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / MAX_NORM_SVD_SQRT
LUCID_MAGIC = 4.0  # Lucid divides the spatial image by 4 ("reduces saturation")
INIT_SD = 0.01


def rfft2d_frequencies(height: int, width: int) -> np.ndarray:
    """The radial frequency of each coefficient of a real 2-D FFT of an ``height x width`` image."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """``1 / max(f, 1 / max(h, w)) ** decay_power`` per coefficient (``h x (w // 2 + 1)``)."""
    frequencies = rfft2d_frequencies(height, width)
    scale = 1.0 / np.maximum(frequencies, 1.0 / max(height, width)) ** decay_power
    return torch.from_numpy(scale.astype(np.float32))


class FourierImage(torch.nn.Module):
    """``count`` images of ``height x width``, parametrized as Lucid does; ``forward()`` gives them in [0, 1]."""

    def __init__(self, count: int, height: int, width: int, decay_power: float = 1.0,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.size = (height, width)
        frequencies = rfft2d_frequencies(height, width).shape
        initial = torch.randn((count, 3, *frequencies, 2), generator=generator) * INIT_SD
        self.spectrum = torch.nn.Parameter(initial.to(device))
        self.register_buffer("scale", spectrum_scale(height, width, decay_power).to(device)[None, None, ..., None])
        self.register_buffer("colors", torch.from_numpy(COLOR_CORRELATION_NORMALIZED.T.copy()).to(device))

    def spatial(self) -> torch.Tensor:
        """The decorrelated-colour image before the colour transform and sigmoid (``count x 3 x h x w``)."""
        scaled = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        return torch.fft.irfftn(scaled, s=self.size, norm="ortho") / LUCID_MAGIC

    def forward(self) -> torch.Tensor:
        return to_rgb(self.spatial(), self.colors)


def to_rgb(decorrelated: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Lucid's ``to_valid_rgb(decorrelate=True, sigmoid=True)``: colour transform, then sigmoid to [0, 1]."""
    rgb = torch.einsum("nchw,cd->ndhw", decorrelated, colors)
    return torch.sigmoid(rgb)
