"""PyTorch modules that compute what Keras layers compute, on NCHW tensors.

Convolutions and pooling stay ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.AvgPool2d`` subclasses, so every method
that looks for them (filters, deconvnet switches, CAM's last convolution) finds them. TensorFlow's "same"
padding is asymmetric when the total padding is odd (the extra row and column go right and bottom); it depends
on the input size, so it is computed in ``forward`` and is exact for every size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "same" padding for one axis: ``(before, after)``, the odd pixel after."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, kernel, stride, dilation) -> tuple[int, int, int, int]:
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    return left, right, top, bottom


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding (built with ``padding=0``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _pads(x, self.kernel_size, self.stride, self.dilation))
        return super().forward(x)


class SameMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TensorFlow "same" padding: padded positions never win (-inf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, _pair(self.kernel_size), _pair(self.stride), (1, 1))
        return super().forward(F.pad(x, pads, value=float("-inf")))


class SameAvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` with TensorFlow "same" padding: averages over the real pixels only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, _pair(self.kernel_size), _pair(self.stride), (1, 1))
        if not any(pads):
            return super().forward(x)
        ones = torch.ones_like(x[:1, :1])
        total = super().forward(F.pad(x, pads))
        count = super().forward(F.pad(ones, pads))
        return total / count


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise convolution then a 1x1 pointwise one (which holds the bias)."""

    def __init__(self, depthwise: nn.Conv2d, pointwise: nn.Conv2d):
        super().__init__()
        self.depthwise = depthwise
        self.pointwise = pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class GlobalPool2d(nn.Module):
    """``GlobalAveragePooling2D`` / ``GlobalMaxPooling2D``: ``N x C`` (or ``N x C x 1 x 1`` with keepdims)."""

    def __init__(self, mode: str, keepdims: bool = False):
        super().__init__()
        self.mode = mode
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "max":
            pooled = x.amax(dim=(2, 3), keepdim=self.keepdims)
        else:
            pooled = x.mean(dim=(2, 3), keepdim=self.keepdims)
        return pooled

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, keepdims={self.keepdims}"


class Merge(nn.Module):
    """Keras's merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate)."""

    def __init__(self, mode: str, dim: int = 1):
        super().__init__()
        self.mode = mode
        self.dim = dim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.mode == "concatenate":
            return torch.cat(inputs, dim=self.dim)
        if self.mode == "subtract":
            return inputs[0] - inputs[1]
        result = inputs[0]
        for other in inputs[1:]:
            if self.mode in ("add", "average"):
                result = result + other
            elif self.mode == "multiply":
                result = result * other
            elif self.mode == "maximum":
                result = torch.maximum(result, other)
            else:
                result = torch.minimum(result, other)
        return result / len(inputs) if self.mode == "average" else result

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", dim={self.dim}" if self.mode == "concatenate" else "")


class Affine(nn.Module):
    """``x * scale + offset`` per channel (Keras ``Rescaling`` and ``Normalization``); buffers broadcast on NCHW."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class Reshape(nn.Module):
    """Keras ``Reshape``: reshape in Keras's (channels-last) element order, hand back NCHW when 4-D."""

    def __init__(self, target: tuple[int, ...], input_channels_last: bool, output_channels_last: bool):
        super().__init__()
        self.target = tuple(target)
        self.input_channels_last = input_channels_last
        self.output_channels_last = output_channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_channels_last:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.target)
        return x.permute(0, 3, 1, 2) if self.output_channels_last else x

    def extra_repr(self) -> str:
        return f"target={self.target}"


class ChannelsLastFlatten(nn.Module):
    """Keras ``Flatten`` in channels-last element order, for a flatten whose consumers cannot take permuted
    weights (a Dense right after a Flatten gets its weights permuted at conversion and a plain ``nn.Flatten``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1) if x.ndim == 4 else x.flatten(1)


class KerasHardSigmoid(nn.Module):
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` (Keras 3's is ``nn.Hardsigmoid``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.2 * x + 0.5).clamp(0.0, 1.0)


class ThresholdedReLU(nn.Module):
    """Keras ``ReLU(max_value, negative_slope, threshold)`` beyond what ``nn.ReLU``/``ReLU6``/``LeakyReLU`` cover."""

    def __init__(self, max_value: float | None, negative_slope: float, threshold: float):
        super().__init__()
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        return out.clamp(max=self.max_value) if self.max_value is not None else out


class BinaryLogits(nn.Module):
    """A one-unit sigmoid output as two logits ``[0, z]``: their softmax is ``[1 - sigmoid(z), sigmoid(z)]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)
