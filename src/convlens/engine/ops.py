"""What the regional engine knows about a traced graph's operations: which are local (a convolution, a pooling,
a pointwise op), how each output coordinate reads its input, and how to run the op on a region without padding.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from convlens.engine.fusion import FusedConv


@dataclass
class Geometry:
    """How one output coordinate reads its input along an axis: ``[o * stride - pad_lo, + dilation * (k - 1)]``."""

    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad_lo: int = 0
    pad_hi: int = 0

    @property
    def reach(self) -> int:
        return self.dilation * (self.kernel - 1)

    def output_size(self, size: int) -> int:
        return (size + self.pad_lo + self.pad_hi - self.reach - 1) // self.stride + 1

    def changed(self, lo: np.ndarray, hi: np.ndarray, out_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Output interval that an input interval ``[lo, hi]`` can change (empty where ``lo > hi``)."""
        out_lo = -((-(lo + self.pad_lo - self.reach)) // self.stride)
        out_hi = (hi + self.pad_lo) // self.stride
        return np.clip(out_lo, 0, out_size - 1), np.clip(out_hi, -1, out_size - 1)

    def reads(self, origin: np.ndarray, length: int) -> tuple[np.ndarray, int]:
        """Start (may be negative: padding) and length of the input read by outputs ``[origin, origin + length)``."""
        return origin * self.stride - self.pad_lo, (length - 1) * self.stride + self.reach + 1


@dataclass
class LocalOp:
    sources: list[fx.Node]  # the input-dependent arguments, all regional
    geometry: tuple[Geometry, Geometry]  # rows, columns
    pad_value: float
    apply: Callable[[list[torch.Tensor]], torch.Tensor]  # on the gathered source regions (padding included)
    pointwise_sources: tuple = ()  # sources read one pixel per output pixel whatever ``geometry`` says

    def geometry_of(self, source: fx.Node) -> tuple[Geometry, Geometry]:
        return (Geometry(), Geometry()) if source in self.pointwise_sources else self.geometry


@dataclass
class Box:
    """Per axis: origin of the box for each window origin along that axis, and the box length."""

    row_origin: np.ndarray
    row_length: int
    col_origin: np.ndarray
    col_length: int


_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU,
                      nn.Identity, nn.Dropout, nn.Dropout2d)
POINTWISE_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
                        F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid,
                        torch.tanh, F.tanh, F.sigmoid, torch.clamp, torch.clip, F.dropout, F.batch_norm}
BINARY_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                      "clamp_max", "contiguous", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}


def is_pointwise_module(module: nn.Module) -> bool:
    kind = type(module)
    if kind in _POINTWISE_MODULES or kind.__module__.startswith("timm.layers.activations"):
        return True
    # Stochastic depth is the identity in eval mode (the only mode occlusion runs in).
    if (kind.__name__, kind.__module__) in (("DropPath", "timm.layers.drop"),
                                            ("StochasticDepth", "torchvision.ops.stochastic_depth")):
        return True
    if kind is nn.BatchNorm2d:
        return module.running_mean is not None
    if kind.__module__ == "timm.layers.norm_act" and kind.__name__ == "BatchNormAct2d":
        return module.running_mean is not None and all(is_pointwise_module(c) for c in module.children())
    return False


def window_op(module: nn.Module, in_shape: torch.Size, out_shape: torch.Size) -> LocalOp | None:
    """Convolutions and poolings as (geometry, valid-mode computation), or None."""
    kind = type(module)
    same = kind.__name__ in ("Conv2dSame", "MaxPool2dSame") and kind.__module__.startswith("timm.layers")
    if kind is nn.Conv2d or (same and isinstance(module, nn.Conv2d)):
        if module.padding_mode != "zeros":
            return None
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        pads = _paddings(module.padding, kernel, stride, dilation, in_shape, same)
        pad_value = 0.0

        def apply(xs):
            return F.conv2d(xs[0], module.weight, module.bias, module.stride, 0, module.dilation, module.groups)
    elif kind is nn.MaxPool2d or (same and isinstance(module, nn.MaxPool2d)):
        if module.return_indices:
            return None
        kernel, stride, dilation = (_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                                    _pair(module.dilation))
        pads = _paddings(_pair(module.padding), kernel, stride, dilation, in_shape, same)
        pad_value = -math.inf

        def apply(xs):
            return F.max_pool2d(xs[0], kernel, stride, 0, dilation)
    elif kind is nn.AvgPool2d:
        padding = _pair(module.padding)
        if module.divisor_override is not None or (not module.count_include_pad and any(padding)):
            return None
        kernel, stride, dilation = _pair(module.kernel_size), _pair(module.stride or module.kernel_size), (1, 1)
        pads = [(p, p) for p in padding]
        pad_value = 0.0

        def apply(xs):
            return F.avg_pool2d(xs[0], kernel, stride, 0)
    else:
        return None
    geometry = tuple(Geometry(kernel[i], stride[i], dilation[i], *pads[i]) for i in range(2))
    if any(g.output_size(in_shape[2 + i]) != out_shape[2 + i] for i, g in enumerate(geometry)):
        return None  # ceil_mode or an unusual padding: the plain computation handles it
    return LocalOp([], geometry, pad_value, apply)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _paddings(padding, kernel, stride, dilation, in_shape, same: bool) -> list[tuple[int, int]]:
    """(low, high) padding per axis, for fixed, ``"same"``/``"valid"`` and timm's dynamic TF-style same padding."""
    pads = []
    for i in range(2):
        size, reach = in_shape[2 + i], dilation[i] * (kernel[i] - 1)
        if same:  # timm pad_same: total = max((ceil(n / s) - 1) * s + reach + 1 - n, 0), the extra pixel at the end
            total = max((math.ceil(size / stride[i]) - 1) * stride[i] + reach + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "same":
            pads.append((reach // 2, reach - reach // 2))
        elif padding == "valid":
            pads.append((0, 0))
        else:
            pads.append((padding[i], padding[i]))
    return pads


def _constant_broadcasts(value) -> bool:
    """A non-input argument of a pointwise op that does not vary over space (so any region may use it as is)."""
    if not isinstance(value, torch.Tensor):
        return True
    return value.numel() == 1 or (value.ndim == 4 and value.shape[-2:] == (1, 1))


def pointwise_op(node: fx.Node, sources: list[fx.Node], values: dict, run: Callable) -> LocalOp | None:
    """Pointwise functions, methods and arithmetic: the same op on a region, other arguments unchanged."""
    out = values[node]
    if any(values[s].shape != out.shape for s in sources):
        return None  # broadcasting an input-dependent tensor over space (e.g. squeeze-excite): not local
    if node.target is F.batch_norm:
        training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
        if training or node.args[0] not in sources or len(sources) != 1:
            return None
    elif node.target is F.dropout:
        if node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True):
            return None
    else:
        others = [values[n] for n in node.all_input_nodes if n not in sources]
        if not all(_constant_broadcasts(v) for v in others):
            return None

    constants = {n: values[n] for n in node.all_input_nodes if n not in sources}

    def apply(xs):
        lookup = {**constants, **dict(zip(sources, xs, strict=True))}
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: lookup[n])
        return run(node, args, kwargs)

    return LocalOp(list(sources), (Geometry(), Geometry()), 0.0, apply)


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def mutates(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a node may write into its input (in-place activations, ``+=``, ``x.relu_()``)."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_")
    if node.op == "call_function":
        return (bool(node.kwargs.get("inplace")) or node.target in _INPLACE_OPERATORS
                or getattr(node.target, "__name__", "").endswith("_"))
    return False


def run_node(net: nn.Module, modules: dict[str, nn.Module], node: fx.Node, args, kwargs):
    """One traced node on the given arguments, as the model computes it."""
    if node.op == "call_module":
        return modules[node.target](*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "get_attr":
        value = net
        for part in node.target.split("."):
            value = getattr(value, part)
        return value
    raise NotTraceable(f"the traced graph has a node the engine cannot run ({node.op})")


def fused_op(node: fx.Node, module: FusedConv, sources: list[fx.Node], values: dict) -> LocalOp | None:
    """A convolution fused with its ReLU (and a residual addition): the convolution's geometry for its input; the
    addition's other operand, the same size as the output, is read pointwise."""
    x = node.args[0]
    other = node.args[1] if module.add else None
    if x not in sources or (module.add and (other not in sources or len(sources) != 2)) or node.kwargs:
        return None
    op = window_op(module.conv, values[x].shape, values[node].shape)
    if op is None:
        return None
    if module.add and values[other].shape != values[node].shape:
        return None
    op.sources = [x] if other is None else [x, other]
    op.pointwise_sources = () if other is None else (other,)
    op.apply = lambda xs: module.run(xs[0], xs[1] if module.add else None, (0, 0))
    return op


def local_op(node: fx.Node, values: dict, dependent: dict, modules: dict[str, nn.Module],
             run: Callable) -> LocalOp | None:
    """The node as a local operation on its input-dependent sources (a window op or a pointwise one), or None."""
    out = values.get(node)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 1:
        return None
    sources = [a for a in node.all_input_nodes if dependent[a]]
    if not sources or any(not isinstance(values[s], torch.Tensor) or values[s].ndim != 4 for s in sources):
        return None
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, FusedConv):
            return fused_op(node, module, sources, values)
        if len(sources) != 1 or len(node.args) != 1 or node.kwargs:
            return None
        op = window_op(module, values[sources[0]].shape, out.shape)
        if op is not None:
            op.sources = sources
            return op
        return pointwise_op(node, sources, values, run) if is_pointwise_module(module) else None
    pointwise = (node.op == "call_function" and node.target in POINTWISE_FUNCTIONS | BINARY_FUNCTIONS) or \
        (node.op == "call_method" and node.target in POINTWISE_METHODS)
    return pointwise_op(node, sources, values, run) if pointwise else None


class NotTraceable(Exception):
    """The traced graph cannot be used (the message says why); the plain batched engine takes over."""


def trace(net: nn.Module, layer: str | None = None) -> fx.Graph:
    """The model's fx graph with ``layer`` kept as one node (and timm's untraceable layers as leaves);
    ``NotTraceable`` with the reason when torch.fx cannot trace it (data-dependent control flow, ...)."""
    leaf_types: tuple = ()
    wrapped: tuple = ()
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules

        leaf_types, wrapped = tuple(get_notrace_modules()), tuple(get_notrace_functions())
    except ImportError:
        pass

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
            return qualname == layer or isinstance(module, leaf_types) or super().is_leaf_module(module, qualname)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Tracer(autowrap_functions=wrapped).trace(net)
    except Exception as error:  # noqa: BLE001 - any model that does not trace runs the plain batched way
        first_line = (str(error).strip().splitlines() or [""])[0][:160]
        raise NotTraceable(f"torch.fx cannot trace the model ({type(error).__name__}: {first_line})") from None


def last_uses(nodes) -> dict:
    """For each node of ``nodes`` (in execution order), the values no longer needed once it has run, so a
    runner can free them early."""
    last = {}
    for node in nodes:
        for source in node.all_input_nodes:
            last[source] = node
    freed: dict = {}
    for source, node in last.items():
        freed.setdefault(node, []).append(source)
    return freed
