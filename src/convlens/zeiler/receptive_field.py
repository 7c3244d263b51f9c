"""Receptive fields of any layer of any model, traced by gradients rather than derived from a layer list.

The input pixels a layer position depends on are those where the gradient of that position is non-zero. On a
real network a gradient can vanish by chance (a dead ReLU, cancelling weights, a max-pool switch), so the trace
runs the model functionally (``torch.func.functional_call``, the model itself is untouched) with stand-in
parameters under which nothing cancels: every weight positive (``1 / fan_in``, slightly different per output
channel so normalisations over channels do not flatten), biases zero, BatchNorm statistics neutral, an input of
ones, and every max-pool replaced by an average pool over the same window (a max-pool's field is its whole
window, but its gradient picks one input), and elementwise activations the identity (ReLU6 or hardswish would
saturate). The trace runs in float32 and again in float64 when the gradients span so many orders of magnitude
that the tiny ones at the corners of a deep field may have underflowed.

Global context is left out: squeeze-excitation gates and other global pools (``adaptive_*_pool2d`` to 1x1, a
mean over both spatial dims) would make every position depend on every pixel; their outputs are detached, so
the field is what the local (conv / pool) path sees. Channels of one layer share one field (the union over the
channels, as in the usual definition).

Fields are separable: a position's box is (rows its row depends on) x (columns its column depends on). Rows are
traced with a narrow strip of the input width and columns with a narrow strip of its height, one sample per
traced row or column, batched; only the rows and columns asked for are traced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens.errors import ConvlensError
from convlens.hooks import preserved_state
from convlens.models.classifier import ImageClassifier, as_module
from convlens.zeiler.deconv import _StopForward, layer_outputs, probe_layer


@dataclass
class ReceptiveField:
    """Where each traced output row and column of ``layer`` looks in an input of ``input_size``.

    ``rows[i] = (start, stop)`` are the input rows (``stop`` exclusive) output row ``i`` depends on, clipped to
    the image; the same for ``cols``. ``size`` is the largest traced extent (the unclipped field when some traced
    position lies far enough from the borders, which the centre position always does unless the field is larger
    than the image).
    """

    layer: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    rows: dict[int, tuple[int, int]] = field(default_factory=dict)
    cols: dict[int, tuple[int, int]] = field(default_factory=dict)
    # the layer also sees the whole image through global pooling on the way (squeeze-excitation gates), which
    # the field leaves out
    global_context: bool = False

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` in input pixels (bottom/right exclusive) of output position (row, col)."""
        if row not in self.rows or col not in self.cols:
            raise KeyError(f"position ({row}, {col}) was not traced")
        (top, bottom), (left, right) = self.rows[row], self.cols[col]
        return top, left, bottom, right

    @property
    def size(self) -> tuple[int, int]:
        return (max(b - a for a, b in self.rows.values()), max(b - a for a, b in self.cols.values()))

    @property
    def stride(self) -> tuple[float, float]:
        """Input pixels per output position (the product of the strides on the way)."""
        return (self.input_size[0] / self.output_size[0], self.input_size[1] / self.output_size[1])

    def to_dict(self) -> dict:
        return {"layer": self.layer, "input_size": list(self.input_size), "output_size": list(self.output_size),
                "size": list(self.size), "stride": list(self.stride), "global_context": self.global_context}


def receptive_field(model: ImageClassifier | nn.Module, layer: str, input_size: tuple[int, int] | None = None,
                    rows: Iterable[int] | None = None, cols: Iterable[int] | None = None,
                    chunk: int = 32, probe: tuple[int, tuple[int, ...]] | None = None) -> ReceptiveField:
    """Trace the receptive field of ``layer`` at ``input_size`` (default: the model's) for the given output
    ``rows`` and ``cols`` (default: all of them), plus the centre row and column. ``probe`` =
    ``(calls per forward, output shape)`` of the layer at that size, when already known, saves a forward pass."""
    module = as_module(model)
    if input_size is None:
        if not isinstance(model, ImageClassifier):
            raise ConvlensError("receptive_field of a bare nn.Module needs input_size=(height, width)")
        input_size = model.input_size
    height, width = int(input_size[0]), int(input_size[1])
    if probe is None:
        calls, output = probe_layer(module, torch.zeros(1, 3, height, width), layer, beyond_layer_may_fail=True)
        probe = calls, tuple(output.shape)
    calls, shape = probe[0], tuple(probe[1])
    if len(shape) != 4 or shape[2] * shape[3] == 0:
        raise ConvlensError(f"layer {layer!r} has output shape {shape}: no spatial positions to trace")
    out_h, out_w = shape[2], shape[3]
    wanted_rows = _wanted(rows, out_h, "row")
    wanted_cols = _wanted(cols, out_w, "column")
    mode = _TracingMode()
    with preserved_state(module) as net:
        row_spans = _trace_axis(net, mode, layer, calls, 2, wanted_rows, (height, width), out_h, chunk)
        col_spans = _trace_axis(net, mode, layer, calls, 3, wanted_cols, (height, width), out_w, chunk)
    return ReceptiveField(layer, (height, width), (out_h, out_w), row_spans, col_spans, mode.global_context)


def _wanted(indices: Iterable[int] | None, length: int, what: str) -> list[int]:
    chosen = set(range(length)) if indices is None else {int(i) for i in indices}
    bad = [i for i in chosen if not 0 <= i < length]
    if bad:
        raise ConvlensError(f"output {what} {bad[0]} out of range: the layer's map has {length}")
    return sorted(chosen | {length // 2})


def _channel_factors(count: int, dtype: torch.dtype) -> torch.Tensor:
    """Distinct positive factors per output channel, in [0.75, 1.25): symmetric channels would make a
    normalisation over channels output zeros."""
    golden = (math.sqrt(5) - 1) / 2
    return 0.75 + 0.5 * torch.remainder(torch.arange(count, dtype=torch.float64) * golden, 1.0).to(dtype)


def _stand_in_parameters(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Positive weights (1 / fan_in, expanded views: no memory), zero biases, neutral BatchNorm statistics."""
    stand_ins: dict[str, torch.Tensor] = {}
    for name, parameter in module.named_parameters():
        device = parameter.device
        if parameter.dim() >= 2:
            fan_in = parameter[0].numel()
            factors = (_channel_factors(parameter.shape[0], dtype) / fan_in).to(device)
            value = factors.view(-1, *([1] * (parameter.dim() - 1))).expand(parameter.shape)
        elif name.endswith("bias"):
            value = torch.zeros((), dtype=dtype, device=device).expand(parameter.shape)
        else:
            value = torch.ones((), dtype=dtype, device=device).expand(parameter.shape)
        stand_ins[name] = value
    for name, buffer in module.named_buffers():
        if not buffer.is_floating_point():
            continue
        if name.endswith("running_mean"):
            stand_ins[name] = torch.zeros_like(buffer, dtype=dtype)
        elif name.endswith("running_var"):
            stand_ins[name] = torch.ones_like(buffer, dtype=dtype)
        else:
            stand_ins[name] = buffer.to(dtype)
    return stand_ins


def _covers_spatial(dims, ndim: int) -> bool:
    if dims is None:
        return False
    dims = {d % ndim for d in ((dims,) if isinstance(dims, int) else dims)}
    return {ndim - 2, ndim - 1} <= dims


# Elementwise nonlinearities pass the signal unchanged while tracing: with every value positive ReLU is the
# identity anyway, but ReLU6, hardswish, hardsigmoid would saturate (zero gradient) on large positive values.
_ACTIVATIONS = {F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_, F.relu6, F.hardtanh,
                F.hardtanh_, torch._C._nn.hardtanh_, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.elu, F.selu,
                F.celu, F.leaky_relu, F.mish, F.softplus, torch.sigmoid, torch.Tensor.sigmoid, torch.tanh,
                torch.Tensor.tanh, F.sigmoid, F.tanh}
_REDUCTIONS = {torch.mean, torch.Tensor.mean, torch.sum, torch.Tensor.sum, torch.amax, torch.Tensor.amax}


class _TracingMode(TorchFunctionMode):
    """Max-pools become average pools over the same window, elementwise activations the identity, global
    spatial reductions are detached (and noted in ``global_context``)."""

    def __init__(self) -> None:
        super().__init__()
        self.global_context = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if func is F.max_pool2d and not kwargs.get("return_indices") and _dilation_one(args, kwargs):
            return _as_average_pool(*args, **kwargs)
        if func is F.adaptive_max_pool2d and not kwargs.get("return_indices"):
            func = F.adaptive_avg_pool2d
            kwargs = {}
            args = args[:2]
        result = func(*args, **kwargs)
        if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            if isinstance(result, torch.Tensor) and result.shape[-2:].numel() == 1:
                self.global_context = True
                return result.detach()
        elif func in _REDUCTIONS and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            if _covers_spatial(dims, 4) and isinstance(result, torch.Tensor):
                self.global_context = True
                return result.detach()
        return result


def _dilation_one(args, kwargs) -> bool:
    dilation = args[4] if len(args) > 4 else kwargs.get("dilation", 1)
    return all(d == 1 for d in ((dilation,) if isinstance(dilation, int) else dilation))


def _as_average_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    stride = kernel_size if stride is None or stride == [] else stride
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode, count_include_pad=False)


def _trace_axis(net: nn.Module, mode: _TracingMode, layer: str, calls: int, axis: int, indices: list[int],
                input_size: tuple[int, int], out_len: int, chunk: int) -> dict[int, tuple[int, int]]:
    """Spans along ``axis`` (2 rows, 3 columns) for output ``indices``; the other axis is a narrow strip."""
    full_other = input_size[1] if axis == 2 else input_size[0]
    stride = math.ceil(input_size[axis - 2] / out_len)
    narrow = min(full_other, max(8, stride))
    while True:
        try:
            return _trace_strip(net, mode, layer, calls, axis, indices, input_size, narrow, out_len, chunk)
        except (RuntimeError, ValueError, AssertionError, _StripTooNarrow):
            if narrow >= full_other:
                raise
            narrow = min(full_other, 2 * narrow)  # valid (unpadded) convolutions need a wider strip


class _StripTooNarrow(Exception):
    pass


# Gradients at the far corners of a deep field are products of many small weights: below this (relative to the
# largest) float32 may have lost some to underflow, and the chunk is traced again in float64.
_FLOAT32_SAFE = 1e-30


def _trace_strip(net, mode, layer, calls, axis, indices, input_size, narrow, out_len, chunk):
    shape = (3, input_size[0], narrow) if axis == 2 else (3, narrow, input_size[1])
    stand_ins = {dtype: _stand_in_parameters(net, dtype) for dtype in (torch.float32, torch.float64)}
    spans: dict[int, tuple[int, int]] = {}
    for start in range(0, len(indices), chunk):
        batch = indices[start:start + chunk]
        grad = _strip_gradient(net, mode, stand_ins[torch.float32], layer, calls, axis, batch, shape, out_len)
        positive = grad[grad > 0]
        if positive.numel() and float(positive.min()) < _FLOAT32_SAFE * float(positive.max()):
            grad = _strip_gradient(net, mode, stand_ins[torch.float64], layer, calls, axis, batch, shape, out_len)
        reach = grad.sum(dim=(1, 5 - axis)) > 0  # samples x length along the axis
        for sample, index in enumerate(batch):
            hits = torch.nonzero(reach[sample]).flatten()
            if hits.numel() == 0:
                raise ConvlensError(f"could not trace the receptive field of {layer!r}: no input reaches it")
            spans[index] = (int(hits[0]), int(hits[-1]) + 1)
    return spans


def _strip_gradient(net, mode, stand_ins, layer, calls, axis, batch, shape, out_len) -> torch.Tensor:
    """|d (sum of output row/col ``batch[s]``) / d input| for each sample ``s`` of a strip of ones."""
    from torch.func import functional_call

    device = next(iter(stand_ins.values()), torch.empty(0)).device
    dtype = next(iter(stand_ins.values()), torch.empty(0, dtype=torch.float64)).dtype
    x = torch.ones(len(batch), *shape, dtype=dtype, device=device, requires_grad=True)
    with layer_outputs(net, layer, calls=calls) as record, mode, torch.inference_mode(False), \
            torch.enable_grad():
        try:
            functional_call(net, stand_ins, (x,))
        except _StopForward:
            pass
    output = record.get("output")
    if output is None:
        raise ConvlensError(f"layer {layer!r} did not run in the forward pass; choose another layer")
    if output.dim() != 4 or output.shape[axis] != out_len or output.shape[5 - axis] == 0:
        raise _StripTooNarrow
    seed = torch.zeros_like(output)
    for sample, index in enumerate(batch):
        if axis == 2:
            seed[sample, :, index, :] = 1.0
        else:
            seed[sample, :, :, index] = 1.0
    (grad,) = torch.autograd.grad(output, x, seed)
    return grad.detach().abs().cpu()
