"""Native PyTorch modules for the ONNX operators onnx2torch turns into modules of its own.

A converted ONNX model (``convlens convert onnx:PATH``) is rebuilt from its checkpoint with neither onnx nor
onnx2torch installed: every onnx2torch module becomes one of these (``translate`` reads its settings), each
computing what the onnx2torch module computes, the same torch operations in the same order, so the rebuilt
model's outputs are the converted model's bit for bit. Each class's constructor arguments are plain JSON
values (``config()`` returns them), and ``MODULES`` is the whitelist the checkpoint loader builds from.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from convlens.errors import ConvlensError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
          "uint8": torch.uint8, "bool": torch.bool}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# fx writes module and buffer names into the Python source of ``forward`` as ``getattr(self, "NAME")``: a name
# from the file must not be able to close that string.
_SAFE_NAME = re.compile(r"[^\"'\\.\x00-\x1f\x7f]{1,300}")


def check_name(name, what: str) -> str:
    """``name`` when it is safe as a module, buffer or argument name (see ``_SAFE_NAME``)."""
    if not isinstance(name, str) or _SAFE_NAME.fullmatch(name) is None:
        raise ConvlensError(f"{what} name {str(name)[:80]!r} is not one convlens writes or reads (quotes, "
                            "backslashes, dots and control characters are refused)")
    return name


def dtype_name(dtype: torch.dtype, where: str) -> str:
    if dtype not in DTYPE_NAMES:
        raise ConvlensError(f"{where}: tensor type {dtype} cannot be written to a convlens checkpoint")
    return DTYPE_NAMES[dtype]


def _onnx_div(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    if first.is_floating_point() or second.is_floating_point():
        return torch.div(first, second)
    return torch.div(first, second, rounding_mode="trunc")  # ONNX integer division truncates


BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": _onnx_div, "pow": torch.pow,
          "fmod": torch.fmod, "remainder": torch.remainder, "eq": torch.eq, "lt": torch.less,
          "le": torch.less_equal, "gt": torch.greater, "ge": torch.greater_equal}
UNARY = {"abs": torch.abs, "acos": torch.acos, "asin": torch.asin, "atan": torch.atan, "cos": torch.cos,
         "exp": torch.exp, "log": torch.log, "sign": torch.sign, "sin": torch.sin, "tan": torch.tan,
         "tanh": torch.tanh, "erf": torch.erf, "sqrt": torch.sqrt, "reciprocal": torch.reciprocal,
         "neg": torch.neg}
REDUCE = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax, "min": torch.amin}


class BinaryOp(nn.Module):
    """ONNX ``Add`` / ``Sub`` / ``Mul`` / ``Div`` / ``Pow`` / ``Mod`` and the comparisons (numpy broadcasting)."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.function = BINARY[op]

    def forward(self, first, second):
        return self.function(first, second)

    def config(self) -> dict:
        return {"op": self.op}


class UnaryOp(nn.Module):
    """ONNX element-wise functions (``Erf``, ``Exp``, ``Sqrt``, ``Neg``...)."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.function = UNARY[op]

    def forward(self, x):
        return self.function(x)

    def config(self) -> dict:
        return {"op": self.op}


class MatMul(nn.Module):
    def forward(self, x, y):
        return torch.matmul(x, y)


class Gemm(nn.Module):
    """ONNX ``Gemm`` where onnx2torch could not make it an ``nn.Linear`` (weights computed in the graph)."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, trans_a: bool = False, trans_b: bool = False):
        super().__init__()
        self.alpha, self.beta, self.trans_a, self.trans_b = alpha, beta, trans_a, trans_b

    def forward(self, a, b, c=None):
        if self.trans_a:
            a = torch.transpose(a, dim0=0, dim1=1)
        if self.trans_b:
            b = torch.transpose(b, dim0=0, dim1=1)
        output = a @ b * self.alpha
        if c is not None:
            output += c * self.beta
        return output

    def config(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "trans_a": self.trans_a, "trans_b": self.trans_b}


class GlobalAveragePool(nn.Module):
    """ONNX ``GlobalAveragePool``: the mean over every spatial axis, kept as 1 x 1."""

    def forward(self, x):
        return torch.mean(x, dim=list(range(2, x.dim())), keepdim=True)


class FlattenAt(nn.Module):
    """ONNX ``Flatten`` with ``axis`` other than 1: a 2-D result, axes before ``axis`` in the first dimension."""

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return torch.flatten(torch.flatten(x, end_dim=self.axis - 1), start_dim=1)

    def config(self) -> dict:
        return {"axis": self.axis}


class Reshape(nn.Module):
    """ONNX ``Reshape`` with the shape a tensor of the graph (0 keeps that input dimension)."""

    def forward(self, x, shape):
        if torch.any(shape == 0):
            shape = [x.shape[i] if size == 0 else size for i, size in enumerate(shape)]
        return torch.reshape(x, torch.Size(shape))


class Permute(nn.Module):
    """ONNX ``Transpose`` (no ``perm``: the axes reversed)."""

    def __init__(self, perm: list[int] | None = None):
        super().__init__()
        self.perm = None if perm is None else [int(p) for p in perm]

    def forward(self, x):
        return x.permute(self.perm if self.perm is not None else list(range(x.dim()))[::-1])

    def config(self) -> dict:
        return {"perm": self.perm}


class Shape(nn.Module):
    def __init__(self, start: int = 0, end: int | None = None):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x):
        return torch.tensor(x.shape[self.start:self.end], device=x.device)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end}


class Gather(nn.Module):
    """ONNX ``Gather`` (numpy's ``take`` along ``axis``)."""

    def __init__(self, axis: int = 0):
        super().__init__()
        self.axis = axis

    def forward(self, x, indices):
        axis = x.dim() + self.axis if self.axis < 0 else self.axis
        return x[tuple([slice(None)] * axis + [indices.type(dtype=torch.int64)])]

    def config(self) -> dict:
        return {"axis": self.axis}


class Cast(nn.Module):
    def __init__(self, dtype: str = "float32"):
        super().__init__()
        self.dtype = dtype
        self.torch_dtype = DTYPES[dtype]

    def forward(self, x):
        return x.to(self.torch_dtype)

    def config(self) -> dict:
        return {"dtype": self.dtype}


class Slice(nn.Module):
    """ONNX ``Slice`` (opset 10+: starts, ends, axes and steps are tensors of the graph)."""

    def forward(self, x, starts, ends, axes=None, steps=None):
        starts, ends = starts.tolist(), ends.tolist()
        axes = list(range(len(starts))) if axes is None else axes.tolist()
        steps = [1] * len(starts) if steps is None else steps.tolist()
        slices, flip_dims = {}, []
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            if step < 0:
                flip_dims.append(axis)
                start, end, step = -start - 1, -end - 1, -step
            slices[axis] = slice(start, end, step)
        if flip_dims:
            x = torch.flip(x, dims=flip_dims)
        positive = [slices.get(a, slice(None, None)) for a in range(max(axes) + 1)]
        negative = [slices.get(a, slice(None, None)) for a in range(min(axes), 0)]
        if positive:
            x = x[tuple(positive)]
        if negative:
            x = x[(Ellipsis, *negative)]
        return x


class Concat(nn.Module):
    def __init__(self, axis: int = 0):
        super().__init__()
        self.axis = axis

    def forward(self, *tensors):
        return torch.cat(tensors, self.axis)

    def config(self) -> dict:
        return {"axis": self.axis}


class Clamp(nn.Module):
    """ONNX ``Clip`` with constant bounds other than ReLU's and ReLU6's."""

    def __init__(self, min: float | None = None, max: float | None = None):  # noqa: A002 - ONNX's names
        super().__init__()
        self.min, self.max = min, max

    def forward(self, x):
        return torch.clamp(x, self.min, self.max)

    def config(self) -> dict:
        return {"min": self.min, "max": self.max}


class Pad(nn.Module):
    """ONNX ``Pad`` with constant pads (also what asymmetric convolution / pooling padding becomes)."""

    def __init__(self, pads: list[int], mode: str = "constant", value: float = 0.0):
        super().__init__()
        self.pads, self.mode, self.value = [int(p) for p in pads], mode, value

    def forward(self, x):
        return torch.nn.functional.pad(x, mode=self.mode, pad=self.pads, value=self.value)

    def config(self) -> dict:
        return {"pads": self.pads, "mode": self.mode, "value": self.value}


def _torch_pads(onnx_pads: list[int], mode: str) -> list[int]:
    """ONNX's ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]`` as ``F.pad``'s last-axis-first pairs."""
    middle = len(onnx_pads) // 2
    pads = []
    for begin, end in zip(onnx_pads[:middle][::-1], onnx_pads[middle:][::-1], strict=True):
        pads.extend([begin, end])
    if mode in ("replicate", "reflect"):
        if set(pads[-4:]) != {0}:
            raise RuntimeError(f"{mode} padding pads only the spatial axes")
        return pads[:-4]
    return pads


class PadDynamic(nn.Module):
    """ONNX ``Pad`` (opset 11+) with the pads a tensor of the graph (what ``F.pad`` exports to)."""

    def __init__(self, mode: str = "constant"):
        super().__init__()
        self.mode = mode

    def forward(self, x, pads, constant_value=0.0):
        return torch.nn.functional.pad(x, mode=self.mode, pad=_torch_pads(pads.tolist(), self.mode),
                                       value=constant_value)

    def config(self) -> dict:
        return {"mode": self.mode}


class Expand(nn.Module):
    """ONNX ``Expand``: broadcast to a shape given as a tensor of the graph."""

    def forward(self, x, shape):
        return x * torch.ones(torch.Size(shape), dtype=x.dtype, device=x.device)


class HardSigmoid(nn.Module):
    def __init__(self, alpha: float = 0.2, beta: float = 0.5):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x):
        return torch.clip(x * self.alpha + self.beta, min=0.0, max=1.0)

    def config(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta}


class FlatSoftmax(nn.Module):
    """ONNX ``Softmax`` / ``LogSoftmax`` before opset 13: over all axes from ``axis`` on, flattened."""

    def __init__(self, axis: int = 1, log: bool = False):
        super().__init__()
        self.axis, self.log = axis, log

    def forward(self, x):
        shape = x.shape
        flat = torch.flatten(x, start_dim=self.axis)
        flat = torch.log_softmax(flat, -1) if self.log else torch.softmax(flat, -1)
        return torch.reshape(flat, shape)

    def config(self) -> dict:
        return {"axis": self.axis, "log": self.log}


class Squeeze(nn.Module):
    def __init__(self, axes: list[int] | None = None):
        super().__init__()
        self.axes = None if axes is None else sorted((int(a) for a in axes), reverse=True)

    def forward(self, x):
        if not self.axes:
            return torch.squeeze(x)
        for axis in self.axes:
            x = torch.squeeze(x, dim=axis)
        return x

    def config(self) -> dict:
        return {"axes": self.axes}


class SqueezeDynamic(nn.Module):
    """ONNX ``Squeeze`` (opset 13+) with the axes a tensor of the graph."""

    def forward(self, x, axes=None):
        if axes is None or axes.nelement() == 0:
            return torch.squeeze(x)
        for axis in torch.sort(axes, descending=True).values:
            x = torch.squeeze(x, dim=axis)
        return x


class Where(nn.Module):
    def forward(self, condition, x, y):
        return torch.where(condition, x, y)


class Unsqueeze(nn.Module):
    def __init__(self, axes: list[int]):
        super().__init__()
        self.axes = sorted(int(a) for a in axes)

    def forward(self, x):
        for axis in self.axes:
            x = torch.unsqueeze(x, dim=axis)
        return x

    def config(self) -> dict:
        return {"axes": self.axes}


class Reduce(nn.Module):
    """ONNX ``ReduceMean`` / ``ReduceSum`` / ``ReduceMax`` / ``ReduceMin`` over constant axes."""

    def __init__(self, op: str, axes: list[int] | None = None, keepdims: bool = True):
        super().__init__()
        self.op, self.keepdims = op, keepdims
        self.axes = None if axes is None else sorted(int(a) for a in axes)
        self.function = REDUCE[op]

    def forward(self, x):
        axes = self.axes or list(range(x.dim()))
        return self.function(x, dim=axes, keepdim=self.keepdims)

    def config(self) -> dict:
        return {"op": self.op, "axes": self.axes, "keepdims": self.keepdims}


class PReLU(nn.Module):
    """ONNX ``PRelu`` with its slope a tensor of the graph."""

    def forward(self, x, slope):
        if slope.nelement() == 1 or (slope.shape[0] == x.shape[1] and all(s == 1 for s in slope.shape[1:])):
            return nn.functional.prelu(x, weight=slope.view(-1))
        output = x.clone() * slope
        mask = x >= 0
        output[mask] = x[mask]
        return output


class Copy(nn.Module):
    """ONNX ``Identity`` (a new tensor, as onnx2torch makes it)."""

    def forward(self, x):
        return x.clone()


class Tensors(nn.Module):
    """The graph's constant tensors (onnx2torch's ``initializers``, an ONNX ``Constant``'s ``value``) as
    buffers; the checkpoint's JSON holds their shapes and types, the safetensors file their values."""

    def __init__(self, buffers: dict[str, dict] | None = None):
        super().__init__()
        for name, spec in (buffers or {}).items():
            check_name(name, "checkpoint graph: tensor")
            dtype = DTYPES.get(spec.get("dtype")) if isinstance(spec, dict) else None
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise ConvlensError(f"checkpoint graph: tensor {name!r} has no known type or shape")
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))

    def config(self) -> dict:
        return {"buffers": {name: {"shape": list(value.shape), "dtype": dtype_name(value.dtype, name)}
                            for name, value in self._buffers.items() if value is not None}}


class Constant(Tensors):
    """ONNX ``Constant``: returns its tensor (a buffer, so it moves with the model)."""

    def forward(self):
        return self.value


class ConstantOfShape(Tensors):
    """ONNX ``ConstantOfShape``: a tensor of the shape given, filled with the scalar buffer ``value``."""

    def forward(self, shape):
        fill = self.value.item()
        return torch.full(size=torch.Size(shape), fill_value=int(fill) if isinstance(fill, bool) else fill,
                          dtype=self.value.dtype, device=self.value.device)


MODULES = {cls.__name__: cls for cls in (BinaryOp, UnaryOp, MatMul, Gemm, GlobalAveragePool, FlattenAt, Reshape,
                                         Permute, Shape, Gather, Cast, Slice, Concat, Clamp, Pad, HardSigmoid,
                                         FlatSoftmax, Squeeze, Unsqueeze, Reduce, PReLU, Copy, Tensors, Constant,
                                         PadDynamic, Expand, ConstantOfShape, SqueezeDynamic, Where)}
