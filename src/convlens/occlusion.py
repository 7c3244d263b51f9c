"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): slide a grey square over the input and watch the output.

For every position of a ``size`` x ``size`` occluder moved by ``stride`` the model runs on the occluded image.
The maps hold one value per position (``rows = (H - size) // stride + 1``): the probability of the target class
(panel d), the most probable class (panel e), and the total activation, at ``layer``, of the feature map that is
strongest on the clean image (panel b). ``attribution`` spreads the probability drop back onto the pixels.

Speed: positions run in batches under ``torch.inference_mode()`` and the clean image runs once. Beyond that,
an occluder changes only a small region of the early feature maps: where the model traces with ``torch.fx``,
the local layers at the start of the network (convolutions, pooling, batch norm, activations, residual sums)
are recomputed only on the region that each window can reach, and pasted into the clean maps where a global
operation follows or the region has grown to most of the map. The result is exact up to float rounding;
models that do not trace run the plain batched way (``incremental=False`` forces it).
"""

from __future__ import annotations

import math
import operator
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import fx, nn

from convlens.errors import ConvlensError
from convlens.hooks import capture, preserved_state, resolve_layer
from convlens.models.classifier import ImageClassifier, as_module
from convlens.models.loading import preferred_memory_format
from convlens.targets import ClassTarget, resolve_targets

FILLS = ("mean", "zero", "blur")
# Above this share of a feature map, recomputing a region costs about as much as the whole map: paste instead.
MAX_REGION_FRACTION = 0.5
MAX_AUTO_BATCH = 64


@dataclass
class OcclusionResult:
    """Maps over occluder positions (``rows x cols``) and the per-pixel ``attribution`` (``H x W``)."""

    prob_target: torch.Tensor  # rows x cols: probability of ``target`` with the occluder there (panel d)
    top_class: torch.Tensor  # rows x cols (int64): the most probable class (panel e)
    top_prob: torch.Tensor  # rows x cols: its probability
    feature_activation: torch.Tensor  # rows x cols: total activation of ``feature_channel`` at ``layer`` (panel b)
    attribution: torch.Tensor  # H x W: mean drop of the target probability over the windows covering each pixel
    input: torch.Tensor  # 1 x 3 x H x W, the preprocessed clean input
    target: int
    clean_probabilities: torch.Tensor  # C: softmax on the clean input
    feature_channel: int
    clean_feature_activation: float
    layer: str
    size: int
    stride: int
    fill: str
    batch_size: int
    engine: str  # "incremental" or "batched"
    incremental_nodes: int  # graph nodes recomputed on regions only (0 for the batched engine)

    @property
    def clean_probability(self) -> float:
        return float(self.clean_probabilities[self.target])

    @property
    def row_origins(self) -> np.ndarray:
        return window_origins(self.input.shape[-2], self.size, self.stride)

    @property
    def col_origins(self) -> np.ndarray:
        return window_origins(self.input.shape[-1], self.size, self.stride)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"input": self.input, "prob_target": self.prob_target, "top_class": self.top_class,
                "top_prob": self.top_prob, "feature_activation": self.feature_activation,
                "attribution": self.attribution, "clean_probabilities": self.clean_probabilities,
                "row_origins": torch.from_numpy(self.row_origins), "col_origins": torch.from_numpy(self.col_origins)}


def window_origins(extent: int, size: int, stride: int) -> np.ndarray:
    """Top (or left) coordinates of the occluder positions along one axis: ``(extent - size) // stride + 1``."""
    return np.arange(0, extent - size + 1, stride, dtype=np.int64)


def default_window(height: int, width: int) -> tuple[int, int]:
    """A window of about a seventh of the input (32 px at 224) moved by a quarter of itself."""
    size = max(1, round(min(height, width) / 7))
    return size, max(1, size // 4)


def occlusion(model: ImageClassifier | nn.Module, image: torch.Tensor | str | Path | Image.Image,
              target: int | str | None = None, size: int | None = None, stride: int | None = None,
              fill: str | float = "mean", layer: str | None = None, batch_size: int | None = None,
              incremental: bool = True, progress: bool = False) -> OcclusionResult:
    """Occlusion maps of one image (a path, a PIL image, or a preprocessed ``[1,] 3 x H x W`` tensor).

    ``target``: class index or name, default the top prediction. ``fill``: ``mean`` (the dataset mean: zero after
    normalisation), ``zero`` (black pixels), ``blur`` (a Gaussian-blurred copy of the image under the window), or a
    grey level in [0, 1]. ``layer``: where ``feature_activation`` is read (default: the last conv layer with
    spatial output). ``batch_size``: windows per forward pass (default: sized to the memory).
    """
    module = as_module(model)
    inputs = _prepare_input(model, image)
    height, width = inputs.shape[-2:]
    size = default_window(height, width)[0] if size is None else int(size)
    stride = max(1, size // 4) if stride is None else int(stride)
    if not 1 <= size <= min(height, width):
        raise ConvlensError(f"--size {size}: the occluder must fit the {height}x{width} input "
                            f"(1 to {min(height, width)})")
    if stride < 1:
        raise ConvlensError(f"--stride {stride}: give a positive step")
    if batch_size is not None and batch_size < 1:
        raise ConvlensError(f"--batch-size {batch_size}: give a positive number")
    if layer is None:
        from convlens.layers import last_spatial_conv

        layer = last_spatial_conv(module, (height, width))
    resolve_layer(module, layer)
    fill_name, fill_values = fill_image(model, inputs, fill, size)
    windows = _Windows(size, window_origins(height, size, stride), window_origins(width, size, stride), fill_values)

    with preserved_state(module) as net, torch.inference_mode():
        engine = _IncrementalEngine.build(net, inputs, layer, windows) if incremental else None
        engine = engine or _BatchedEngine(net, inputs, layer, windows)
        clean_logits = engine.clean_logits
        totals = _channel_totals(engine.clean_layer)[0]
        channel = int(totals.argmax())
        target_index = _class_target(model, target, clean_logits)
        batch = batch_size or engine.auto_batch_size()
        probs, features = _evaluate_positions(engine, windows, channel, batch, progress)
    clean_probs = torch.softmax(clean_logits.float(), dim=1)[0].cpu()
    rows, cols = len(windows.rows), len(windows.cols)
    prob_target = probs[:, target_index].reshape(rows, cols)
    top_prob, top_class = probs.max(dim=1)
    attribution = _attribution(clean_probs[target_index] - prob_target, windows, height, width)
    return OcclusionResult(
        prob_target=prob_target, top_class=top_class.reshape(rows, cols), top_prob=top_prob.reshape(rows, cols),
        feature_activation=features.reshape(rows, cols), attribution=attribution, input=inputs.detach().cpu(),
        target=target_index, clean_probabilities=clean_probs, feature_channel=channel,
        clean_feature_activation=float(totals[channel]), layer=layer, size=size, stride=stride, fill=fill_name,
        batch_size=batch, engine=engine.name, incremental_nodes=engine.incremental_nodes)


def _prepare_input(model, image) -> torch.Tensor:
    module = as_module(model)
    device = next(iter(module.parameters()), torch.empty(0)).device
    if isinstance(image, torch.Tensor):
        inputs = image.unsqueeze(0) if image.ndim == 3 else image
        if inputs.ndim != 4 or inputs.shape[0] != 1:
            raise ConvlensError(f"occlusion takes one image (1 x C x H x W), got shape {tuple(image.shape)}")
        return inputs.detach().to(device)
    if not isinstance(model, ImageClassifier):
        raise ConvlensError("a bare nn.Module needs a preprocessed tensor; load the model with convlens.load_model "
                            "to pass image files")
    return model.prepare(image)


def _class_target(model, target, clean_logits: torch.Tensor) -> int:
    (resolved,) = resolve_targets(model, target, clean_logits)
    if not isinstance(resolved, ClassTarget):
        raise ConvlensError("occlusion maps the probability of a class: give --target as a class index or name")
    return resolved.index


def fill_image(model, inputs: torch.Tensor, fill: str | float, size: int) -> tuple[str, torch.Tensor]:
    """The values the occluder shows (``1 x 3 x H x W``, model input space) and the fill's name for the summary."""
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


@dataclass
class _Windows:
    size: int
    rows: np.ndarray  # row origins
    cols: np.ndarray  # column origins
    fill: torch.Tensor  # 1 x 3 x H x W

    def occluded(self, inputs: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
        """The clean input with window ``(rows[row_index[b]], cols[col_index[b]])`` filled, for every ``b``."""
        height, width = inputs.shape[-2:]
        top = torch.as_tensor(self.rows, device=inputs.device)[row_index]
        left = torch.as_tensor(self.cols, device=inputs.device)[col_index]
        row_mask = _inside(torch.arange(height, device=inputs.device), top, self.size)
        col_mask = _inside(torch.arange(width, device=inputs.device), left, self.size)
        mask = row_mask[:, None, :, None] & col_mask[:, None, None, :]
        return torch.where(mask, self.fill, inputs)


def _inside(coordinates: torch.Tensor, start: torch.Tensor, size: int) -> torch.Tensor:
    """``B x len(coordinates)``: whether each coordinate lies in ``[start[b], start[b] + size)``."""
    return (coordinates[None, :] >= start[:, None]) & (coordinates[None, :] < start[:, None] + size)


def _channel_totals(activation: torch.Tensor) -> torch.Tensor:
    """Total activation per channel (summed over every dimension after the channel one): ``B x C``."""
    if activation.ndim < 2:
        raise ConvlensError("the feature layer's output has no channel dimension; choose a conv layer with --layer")
    return activation.float().flatten(2).sum(-1) if activation.ndim > 2 else activation.float()


def _evaluate_positions(engine, windows: _Windows, channel: int, batch_size: int,
                        progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (``positions x C``) and feature totals (``positions``), in row-major position order."""
    rows, cols = len(windows.rows), len(windows.cols)
    device = engine.device
    row_index = torch.arange(rows, device=device).repeat_interleave(cols)
    col_index = torch.arange(cols, device=device).repeat(rows)
    starts = range(0, rows * cols, batch_size)
    if progress:
        from convlens.cli.common import track

        starts = track(starts, total=len(starts), description="occlusion")
    probs, features = [], []
    for start in starts:
        logits, feature = engine.run(row_index[start:start + batch_size], col_index[start:start + batch_size],
                                     channel)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        features.append(feature.float().cpu())
    return torch.cat(probs), torch.cat(features)


def _attribution(drop: torch.Tensor, windows: _Windows, height: int, width: int) -> torch.Tensor:
    """Mean of ``drop`` (``rows x cols``) over the windows covering each pixel; 0 where no window reaches."""
    row_cover = _inside(torch.arange(height), torch.as_tensor(windows.rows), windows.size).double()  # rows x H
    col_cover = _inside(torch.arange(width), torch.as_tensor(windows.cols), windows.size).double()  # cols x W
    total = row_cover.T @ drop.double() @ col_cover
    count = row_cover.T @ torch.ones_like(drop, dtype=torch.float64) @ col_cover
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total)).float()


def _memory_budget(device: torch.device) -> int:
    """Bytes a batch of activations may take: half the free GPU memory, or an eighth of the free RAM (<= 2 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 * 2**30
    return min(available // 8, 2 * 2**30)


def _batch_for(per_sample_bytes: int, device: torch.device) -> int:
    return int(max(1, min(MAX_AUTO_BATCH, _memory_budget(device) // max(1, per_sample_bytes))))


class _BatchedEngine:
    """Every window position as a full occluded image, a batch per forward pass, the layer read by a hook."""

    name = "batched"
    incremental_nodes = 0

    def __init__(self, net: nn.Module, inputs: torch.Tensor, layer: str, windows: _Windows) -> None:
        self.net, self.inputs, self.layer, self.windows = net, inputs, layer, windows
        self.device = inputs.device
        self.format = preferred_memory_format(self.device)
        with capture(net, layer) as captured:
            try:
                self.clean_logits, self._per_sample_bytes = _forward_measured(
                    net, inputs.contiguous(memory_format=self.format))
            except RuntimeError:  # a model that needs contiguous tensors (x.view after a conv)
                self.format = torch.contiguous_format
                self.clean_logits, self._per_sample_bytes = _forward_measured(net, inputs)
        self.clean_layer = captured[layer]

    def auto_batch_size(self) -> int:
        return _batch_for(4 * self._per_sample_bytes, self.device)

    def run(self, row_index: torch.Tensor, col_index: torch.Tensor, channel: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.windows.occluded(self.inputs, row_index, col_index).contiguous(memory_format=self.format)
        with capture(self.net, self.layer) as captured:
            logits = _logits(self.net(batch))
        return logits, _channel_totals(captured[self.layer][:, channel:channel + 1])[:, 0]


def _logits(output) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise ConvlensError("occlusion needs a model whose output is one N x classes tensor of logits")
    return output


def _forward_measured(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Logits, and the largest output of any submodule for one image in bytes (to size the batches)."""
    largest = [inputs.numel() * inputs.element_size()]

    def record(module, args, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size() // max(1, output.shape[0]))

    handles = [m.register_forward_hook(record) for m in net.modules() if not list(m.children())]
    try:
        logits = _logits(net(inputs))
    finally:
        for handle in handles:
            handle.remove()
    return logits, largest[0]


# --- The incremental engine -------------------------------------------------------------------------------------
#
# The traced graph runs once on the clean image. Every node whose output depends on the input is then either
# "regional" (a local op whose inputs are regional and whose changed region stays small) or "full". A regional
# node is computed, for each window, only on its box: a rectangle of fixed size, placed per window, that holds
# every value the window can change there. To compute it, the op reads the region it needs from its input's
# clean map (padded as the op pads) with the input's box written over it, and runs without padding. A full node
# runs on the batch as usual; where it reads a regional node, that node's box is pasted into its clean output.
# Geometry is separable: rows depend only on a window's row origin, columns only on its column origin.


@dataclass
class _Geometry:
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
class _LocalOp:
    sources: list[fx.Node]  # the input-dependent arguments, all regional
    geometry: tuple[_Geometry, _Geometry]  # rows, columns
    pad_value: float
    apply: Callable[[list[torch.Tensor]], torch.Tensor]  # on the gathered source regions (padding included)


@dataclass
class _Box:
    """Per axis: origin of the box for each window origin along that axis, and the box length."""

    row_origin: np.ndarray
    row_length: int
    col_origin: np.ndarray
    col_length: int


_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU,
                      nn.Identity, nn.Dropout, nn.Dropout2d)
_POINTWISE_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
                        F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid,
                        torch.tanh, F.tanh, F.sigmoid, torch.clamp, torch.clip, F.dropout, F.batch_norm}
_BINARY_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                      "clamp_max", "contiguous", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}


def _is_pointwise_module(module: nn.Module) -> bool:
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
        return module.running_mean is not None and all(_is_pointwise_module(c) for c in module.children())
    return False


def _window_op(module: nn.Module, in_shape: torch.Size, out_shape: torch.Size) -> _LocalOp | None:
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
    geometry = tuple(_Geometry(kernel[i], stride[i], dilation[i], *pads[i]) for i in range(2))
    if any(g.output_size(in_shape[2 + i]) != out_shape[2 + i] for i, g in enumerate(geometry)):
        return None  # ceil_mode or an unusual padding: the plain computation handles it
    return _LocalOp([], geometry, pad_value, apply)


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


def _pointwise_op(node: fx.Node, sources: list[fx.Node], values: dict, run: Callable) -> _LocalOp | None:
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

    return _LocalOp(list(sources), (_Geometry(), _Geometry()), 0.0, apply)


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _mutates(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a node may write into its input (in-place activations, ``+=``, ``x.relu_()``)."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_")
    if node.op == "call_function":
        return (bool(node.kwargs.get("inplace")) or node.target in _INPLACE_OPERATORS
                or getattr(node.target, "__name__", "").endswith("_"))
    return False


def _trace(net: nn.Module, layer: str) -> fx.Graph | None:
    """The model's fx graph with ``layer`` kept as one node (and timm's untraceable layers as leaves)."""
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
    except Exception:  # noqa: BLE001 - any model that does not trace runs the plain batched way
        return None


@dataclass
class _Read:
    """How a regional node reads one regional source: a region of the source's clean map (padded as the op pads),
    with the source's box for the same window written over it. ``None`` in ``_IncrementalEngine.reads`` when the
    region is exactly the source's box (pointwise ops): then the box is read as it is."""

    clean: torch.Tensor  # 1 x C x H' x W': the source's clean map, padded
    rows: torch.Tensor  # window row origins x R: rows of ``clean`` to read
    cols: torch.Tensor  # window column origins x Cc
    margins: tuple[int, int, int, int]  # top, bottom, left, right: room for box parts outside the region
    box_rows: torch.Tensor  # window row origins x box rows: where the box rows go, margins included
    box_cols: torch.Tensor


class _IncrementalEngine:
    name = "incremental"

    @classmethod
    def build(cls, net: nn.Module, inputs: torch.Tensor, layer: str, windows: _Windows) -> _IncrementalEngine | None:
        graph = _trace(net, layer)
        if graph is None:
            return None
        try:
            engine = cls(net, graph, inputs, layer, windows)
        except _NotTraceable:
            return None
        return engine if engine.incremental_nodes else None

    def __init__(self, net: nn.Module, graph: fx.Graph, inputs: torch.Tensor, layer: str,
                 windows: _Windows) -> None:
        self.net, self.inputs, self.windows = net, inputs, windows
        self.device = inputs.device
        self.modules = dict(net.named_modules())
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        # A module called several times (torchvision ResNet's shared relu): its last call, as hooks see it.
        calls = [n for n in self.nodes if n.op == "call_module" and n.target == layer]
        self.layer_node = calls[-1] if calls else None
        if len(placeholders) != 1 or self.layer_node is None:
            raise _NotTraceable
        self.input_node = placeholders[0]
        values = self._clean_pass_in_some_format()
        self.fill = self.windows.fill.contiguous(memory_format=torch.channels_last)
        self.dependent = self._input_dependent()
        self.local = {n: op for n in self.nodes if self.dependent[n] and (op := self._local_op(n, values))}
        self.regional = self._plan_regions(values)
        self.incremental_nodes = len(self.regional) - 1
        self.boxes = {n: _Box(*_fit(lo_r, hi_r, values[n].shape[-2]), *_fit(lo_c, hi_c, values[n].shape[-1]))
                      for n, (lo_r, hi_r, lo_c, hi_c) in self.regional.items()}
        self.box_rows = {n: self._table(b.row_origin, b.row_length) for n, b in self.boxes.items()}
        self.box_cols = {n: self._table(b.col_origin, b.col_length) for n, b in self.boxes.items()}
        self.reads = {(n, s): self._plan_read(n, s, values) for n in self.regional if n is not self.input_node
                      for s in self.local[n].sources}
        # Keep only what the batched runs read: constants, and the clean maps that boxes are pasted into.
        pasted = {n for n in self.regional if any(u not in self.regional for u in n.users)} | {self.layer_node}
        self.clean = {n: v for n, v in values.items() if not self.dependent[n] or n in pasted}
        self.last_use = self._last_uses()
        full_bytes = [v.numel() * v.element_size() for n, v in values.items()
                      if self.dependent[n] and n not in self.regional and isinstance(v, torch.Tensor)]
        self._per_sample_bytes = 4 * max(full_bytes, default=inputs.numel() * inputs.element_size())

    # -- the clean pass and the plan --

    def _run(self, node: fx.Node, args, kwargs):
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            value = self.net
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        raise _NotTraceable

    def _clean_pass_in_some_format(self) -> dict[fx.Node, object]:
        """The clean pass in the preferred memory format, else contiguous (a model may ``view`` a conv output);
        a graph that fails both ways leaves the model to the batched engine (which reports any real error)."""
        for memory_format in dict.fromkeys((preferred_memory_format(self.device), torch.contiguous_format)):
            self.format = memory_format
            try:
                return self._clean_pass()
            except (ConvlensError, _NotTraceable):
                raise
            except Exception:  # noqa: BLE001 - try the next format, then give up on the graph
                continue
        raise _NotTraceable

    def _clean_pass(self) -> dict[fx.Node, object]:
        values: dict[fx.Node, object] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = self.inputs.contiguous(memory_format=self.format)
            elif node.op == "output":
                self.clean_logits = _logits(fx.node.map_arg(node.args[0], lambda n: values[n]))
            else:
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
                if _mutates(node, self.modules):  # keep every stored clean value intact
                    args, kwargs = fx.node.map_aggregate(
                        (args, kwargs), lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
                values[node] = self._run(node, args, kwargs)
        # The traced graph must compute what the model computes; anything else runs the plain batched way.
        direct = _logits(self.net(self.inputs))
        if not torch.allclose(direct, self.clean_logits, rtol=1e-4, atol=1e-5):
            raise _NotTraceable
        self.clean_layer = values[self.layer_node]
        if not isinstance(self.clean_layer, torch.Tensor):
            raise _NotTraceable
        return values

    def _input_dependent(self) -> dict[fx.Node, bool]:
        dependent = {}
        for node in self.nodes:
            dependent[node] = node.op == "placeholder" or any(dependent[a] for a in node.all_input_nodes)
        return dependent

    def _local_op(self, node: fx.Node, values: dict) -> _LocalOp | None:
        out = values.get(node)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 1:
            return None
        sources = [a for a in node.all_input_nodes if self.dependent[a]]
        if not sources or any(not isinstance(values[s], torch.Tensor) or values[s].ndim != 4 for s in sources):
            return None
        if node.op == "call_module":
            module = self.modules[node.target]
            if len(sources) != 1 or len(node.args) != 1 or node.kwargs:
                return None
            op = _window_op(module, values[sources[0]].shape, out.shape)
            if op is not None:
                op.sources = sources
                return op
            return _pointwise_op(node, sources, values, self._run) if _is_pointwise_module(module) else None
        pointwise = (node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS | _BINARY_FUNCTIONS) or \
            (node.op == "call_method" and node.target in _POINTWISE_METHODS)
        return _pointwise_op(node, sources, values, self._run) if pointwise else None

    def _plan_regions(self, values: dict) -> dict[fx.Node, tuple]:
        """Regional nodes and, per axis, the interval each window can change: ``{node: (rlo, rhi, clo, chi)}``."""
        size = self.windows.size
        rows, cols = self.windows.rows, self.windows.cols
        changed = {self.input_node: (rows, rows + size - 1, cols, cols + size - 1)}
        for node in self.nodes:
            op = self.local.get(node)
            if op is None or any(s not in changed for s in op.sources):
                continue
            out_h, out_w = values[node].shape[-2:]
            intervals = []
            for source in op.sources:
                rlo, rhi, clo, chi = changed[source]
                intervals.append((*op.geometry[0].changed(rlo, rhi, out_h), *op.geometry[1].changed(clo, chi, out_w)))
            rlo, rhi, clo, chi = _hull(intervals)
            extent = (max(0, (rhi - rlo).max() + 1) / out_h) * (max(0, (chi - clo).max() + 1) / out_w)
            if extent <= MAX_REGION_FRACTION:
                changed[node] = (rlo, rhi, clo, chi)
        return changed

    def _table(self, start: np.ndarray, length: int) -> torch.Tensor:
        """``start[i] + arange(length)`` for every window origin ``i``, as an index tensor on the device."""
        return torch.as_tensor(start[:, None] + np.arange(length)[None, :], device=self.device)

    def _plan_read(self, node: fx.Node, source: fx.Node, values: dict) -> _Read | None:
        op, box, source_box = self.local[node], self.boxes[node], self.boxes[source]
        rows, cols = op.geometry
        row_start, row_length = rows.reads(box.row_origin, box.row_length)
        col_start, col_length = cols.reads(box.col_origin, box.col_length)
        padded = rows.pad_lo or rows.pad_hi or cols.pad_lo or cols.pad_hi
        if (not padded and np.array_equal(row_start, source_box.row_origin) and row_length == source_box.row_length
                and np.array_equal(col_start, source_box.col_origin) and col_length == source_box.col_length):
            return None
        clean = values[source]
        if padded:
            clean = F.pad(clean, (cols.pad_lo, cols.pad_hi, rows.pad_lo, rows.pad_hi), value=op.pad_value)
        clean = clean.contiguous(memory_format=torch.channels_last)  # each gathered pixel: one contiguous vector
        # Where the source's box lands in the region; margins hold the parts of it that fall outside.
        row_offset, col_offset = source_box.row_origin - row_start, source_box.col_origin - col_start
        top, bottom = max(0, -row_offset.min()), max(0, (row_offset + source_box.row_length - row_length).max())
        left, right = max(0, -col_offset.min()), max(0, (col_offset + source_box.col_length - col_length).max())
        return _Read(clean, self._table(row_start + rows.pad_lo, row_length),
                     self._table(col_start + cols.pad_lo, col_length), (int(top), int(bottom), int(left), int(right)),
                     self._table(row_offset + top, source_box.row_length),
                     self._table(col_offset + left, source_box.col_length))

    def _last_uses(self) -> dict[fx.Node, list[fx.Node]]:
        """For each node, the values that are no longer needed once it has run (to free memory early)."""
        last: dict[fx.Node, fx.Node] = {}
        for node in self.nodes:
            for source in node.all_input_nodes:
                last[source] = node
        freed: dict[fx.Node, list[fx.Node]] = {}
        for source, node in last.items():
            freed.setdefault(node, []).append(source)
        return freed

    def auto_batch_size(self) -> int:
        return _batch_for(self._per_sample_bytes, self.device)

    # -- one batch of windows --

    def run(self, row_index: torch.Tensor, col_index: torch.Tensor, channel: int) -> tuple[torch.Tensor, torch.Tensor]:
        patches: dict[fx.Node, torch.Tensor] = {}
        full: dict[fx.Node, torch.Tensor] = {}
        feature = logits = None

        def value(node: fx.Node):
            if not self.dependent[node]:
                return self.clean[node]
            if node not in full:
                full[node] = self._paste(node, patches[node], row_index, col_index)
            return full[node]

        for node in self.nodes:
            if not self.dependent[node]:
                continue
            if node.op == "output":
                logits = _logits(fx.node.map_arg(node.args[0], value))
            elif node is self.input_node:  # the box is the window itself, holding the fill
                patches[node] = _gather(self.fill, self.box_rows[node][row_index],
                                        self.box_cols[node][col_index])
            elif node in self.regional:
                patches[node] = self._patch(node, patches, row_index, col_index)
            else:
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), value)
                full[node] = self._run(node, args, kwargs)
            if node is self.layer_node:
                if node in self.regional:
                    patch = patches[node][:, channel:channel + 1]
                    map_ = self._paste(node, patch, row_index, col_index, channel)
                else:
                    map_ = full[node][:, channel:channel + 1]
                feature = _channel_totals(map_)[:, 0]
            for done in self.last_use.get(node, ()):
                patches.pop(done, None)
                full.pop(done, None)
        return logits, feature

    def _patch(self, node: fx.Node, patches: dict, row_index: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
        op = self.local[node]
        regions = []
        for source in op.sources:
            read = self.reads[node, source]
            if read is None:  # the region is the source's box: read it as is (a copy if the op works in place)
                regions.append(patches[source].clone() if _mutates(node, self.modules) else patches[source])
                continue
            region = _gather(read.clean, read.rows[row_index], read.cols[col_index])
            top, bottom, left, right = read.margins
            if any(read.margins):
                region = F.pad(region, (left, right, top, bottom))
            _scatter(region, read.box_rows[row_index], read.box_cols[col_index], patches[source])
            if any(read.margins):
                region = region[:, :, top:region.shape[2] - bottom, left:region.shape[3] - right]
            regions.append(region)
        return op.apply(regions)

    def _paste(self, node: fx.Node, patch: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor,
               channel: int | None = None) -> torch.Tensor:
        """The node's clean output for every window, with that window's box written in."""
        clean = self.clean[node] if channel is None else self.clean[node][:, channel:channel + 1]
        out = torch.empty((len(row_index), *clean.shape[1:]), dtype=clean.dtype, device=clean.device,
                          memory_format=self.format)
        out.copy_(clean.expand_as(out))  # a new tensor: the clean map stays as it is
        _scatter(out, self.box_rows[node][row_index], self.box_cols[node][col_index], patch)
        return out


class _NotTraceable(Exception):
    """The traced graph cannot be used; the plain batched engine takes over."""


def _hull(intervals: Sequence[tuple]) -> tuple[np.ndarray, ...]:
    """Per window origin, the smallest interval holding every non-empty given interval, per axis."""
    result = []
    for axis in (0, 2):
        los = np.stack([np.asarray(i[axis]) for i in intervals])
        his = np.stack([np.asarray(i[axis + 1]) for i in intervals])
        empty = los > his
        lo = np.where(empty, np.iinfo(np.int64).max, los).min(0)
        hi = np.where(empty, np.iinfo(np.int64).min, his).max(0)
        nothing = empty.all(0)  # no change at all for this window origin: an empty interval
        result += [np.where(nothing, 0, lo), np.where(nothing, -1, hi)]
    return tuple(result)


def _fit(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """A fixed length holding ``[lo, hi] ∩ [0, size)`` for every window, and each window's origin inside the map."""
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    length = int(max(1, (hi - lo + 1).max()))
    return np.clip(lo, 0, size - length), length


def _gather(source: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b] = source[b or 0][:, rows[b]][:, :, cols[b]]``: a region per sample, at per-sample offsets.

    The result is channels-last (fastest when ``source`` is too), as the regional computations keep it.
    """
    batch = torch.arange(rows.shape[0], device=source.device) if source.shape[0] > 1 else \
        torch.zeros(rows.shape[0], dtype=torch.long, device=source.device)
    region = source.permute(0, 2, 3, 1)[batch[:, None, None], rows[:, :, None], cols[:, None, :]]
    return region.permute(0, 3, 1, 2)


def _scatter(target: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
    """``target[b][:, rows[b]][:, :, cols[b]] = values[b]`` in place, at per-sample offsets."""
    batch = torch.arange(rows.shape[0], device=target.device)[:, None, None]
    target.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]] = values.permute(0, 2, 3, 1)


# --- Figures ----------------------------------------------------------------------------------------------------


def feature_projection(model: ImageClassifier | nn.Module, result: OcclusionResult,
                       rule: str = "deconvnet") -> torch.Tensor:
    """Panel (c): the deconvnet projection (``3 x H x W``) of feature map ``feature_channel`` at ``layer``."""
    from convlens.zeiler.deconv import deconv_projection

    device = next(iter(as_module(model).parameters()), torch.empty(0)).device
    return deconv_projection(model, result.input.to(device), result.layer, result.feature_channel, position="map",
                             rule=rule)


def display_image(model, inputs: torch.Tensor) -> np.ndarray:
    """``1 x 3 x H x W`` model input as an ``H x W x 3`` image in [0, 1]."""
    if isinstance(model, ImageClassifier):
        return model.preprocessing.to_display(inputs[0])
    from convlens.render import min_max

    return min_max(inputs[0].detach().cpu().permute(1, 2, 0).numpy())


def class_name(model, index: int) -> str:
    return model.class_name(index) if isinstance(model, ImageClassifier) else f"class {index}"


def _map_extent(result: OcclusionResult) -> list[float]:
    """imshow extent putting each position's cell on its window centre, in input pixel coordinates."""
    half = result.size / 2
    rows, cols = result.row_origins + half, result.col_origins + half
    step = result.stride / 2
    return [cols[0] - step, cols[-1] + step, rows[-1] + step, rows[0] - step]


def occlusion_figure(model, result: OcclusionResult, projection: torch.Tensor | None = None,
                     title: str | None = None, rule: str = "deconvnet"):
    """The five panels of Zeiler & Fergus Fig. 7: (a) input, (b) feature map total, (c) its deconv projection,
    (d) target probability, (e) most probable class, each over the occluder positions."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    height, width = result.input.shape[-2:]
    image = display_image(model, result.input)
    top = int(result.clean_probabilities.argmax())
    figure, axes = plt.subplots(1, 5, figsize=(19, 4.6))
    extent = _map_extent(result)

    def frame(axis, text):
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(text, fontsize=9)

    axes[0].imshow(image)
    axes[0].add_patch(Rectangle((0, 0), result.size, result.size, fill=False, edgecolor="white", linewidth=1.2,
                                linestyle="--"))
    frame(axes[0], f"(a) input: {class_name(model, top)}\n"
                   f"p = {float(result.clean_probabilities[top]):.3f}; occluder {result.size} px (dashed), "
                   f"stride {result.stride}")
    shown = axes[1].imshow(result.feature_activation.numpy(), cmap="viridis", extent=extent, interpolation="nearest")
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03)
    frame(axes[1], f"(b) total activation, {result.layer}\nfeature map {result.feature_channel} "
                   f"(clean: {result.clean_feature_activation:.3g})")
    if projection is not None:
        from convlens.zeiler.figures import projection_image

        axes[2].imshow(projection_image(projection))
        frame(axes[2], f"(c) projection of feature map {result.feature_channel}\n(rule: {rule})")
    else:
        axes[2].imshow(image, alpha=0.25)
        axes[2].text(width / 2, height / 2, "no projection", ha="center", va="center", fontsize=10)
        frame(axes[2], "(c) deconv projection")
    shown = axes[3].imshow(result.prob_target.numpy(), cmap="jet", vmin=0, extent=extent, interpolation="nearest",
                           vmax=max(float(result.prob_target.max()), result.clean_probability))
    figure.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.03)
    frame(axes[3], f"(d) p({class_name(model, result.target)})\nclean: {result.clean_probability:.3f}")
    classes, counts = torch.unique(result.top_class, return_counts=True)
    order = classes[counts.argsort(descending=True)].tolist()
    listed = order[:9]
    palette = plt.get_cmap("tab10").colors
    codes = torch.full_like(result.top_class, len(listed))
    for code, index in enumerate(listed):
        codes[result.top_class == index] = code
    colours = list(palette[:len(listed)]) + ([(0.6, 0.6, 0.6)] if len(order) > len(listed) else [])
    axes[4].imshow(codes.numpy(), cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5,
                   extent=extent, interpolation="nearest")
    frame(axes[4], "(e) most probable class")
    handles = [Patch(color=palette[code], label=_short(class_name(model, index))) for code, index in enumerate(listed)]
    if len(order) > len(listed):
        handles.append(Patch(color=(0.6, 0.6, 0.6), label=f"{len(order) - len(listed)} other classes"))
    axes[4].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def attribution_figure(model, result: OcclusionResult, title: str | None = None):
    """The input and the per-pixel attribution (mean probability drop), red where occluding hurts the target."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from convlens.render import overlay

    image = display_image(model, result.input)
    attribution = result.attribution.numpy()
    scale = float(np.abs(attribution).max()) or 1.0
    figure, axes = plt.subplots(1, 2, figsize=(8.6, 4.4))
    axes[0].imshow(image)
    axes[0].set_title(f"input ({class_name(model, result.target)})", fontsize=9)
    axes[1].imshow(overlay(image, 0.5 + 0.5 * attribution / scale, alpha=0.55, cmap="RdBu_r"))
    axes[1].set_title("occlusion attribution: mean drop of p(target)\nover the windows covering each pixel",
                      fontsize=9)
    for axis in axes:
        axis.axis("off")
    bar = plt.cm.ScalarMappable(norm=Normalize(-scale, scale), cmap="RdBu_r")
    figure.colorbar(bar, ax=axes[1], fraction=0.046, pad=0.03, label="probability drop")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


# --- Output folders and the demo --------------------------------------------------------------------------------


def run_occlusion(model: ImageClassifier, image: str | Path, out: str | Path, rule: str = "deconvnet",
                  progress: bool = False, **options) -> Path:
    """``convlens occlusion``: maps, the Fig. 7 figure and the attribution overlay in output folder ``out``.

    ``rule``: how panel (c) projects the feature map down (``convlens.zeiler.deconv`` rules: deconvnet, guided,
    gradient). ``options`` go to ``occlusion`` (target, size, stride, fill, layer, batch_size).
    """
    from convlens.output import output_dir
    from convlens.zeiler.deconv import check_rule

    check_rule(rule)
    image = Path(image)
    with output_dir(out, "occlusion") as folder:
        inputs = model.prepare([image])
        with folder.timed():
            result = occlusion(model, inputs, progress=progress, **options)
            projection = feature_projection(model, result, rule)
        folder.add_arrays(**result.arrays(), deconv_projection=projection)
        folder.update(**occlusion_summary(model, result, str(image)), projection_rule=rule)
        title = f"{model.spec}: occlusion of {image.name}"
        folder.save_figure(occlusion_figure(model, result, projection, title=title, rule=rule), "occlusion.png")
        folder.save_figure(attribution_figure(model, result, title=title), "attribution.png")
    return Path(out)


def occlusion_summary(model: ImageClassifier, result: OcclusionResult, image: str) -> dict:
    top = int(result.clean_probabilities.argmax())
    return {
        "inputs": [image], "model": model.describe(), "layer": result.layer,
        "targets": [{"index": result.target, "name": model.class_name(result.target)}],
        "parameters": {"size": result.size, "stride": result.stride, "fill": result.fill,
                       "batch_size": result.batch_size, "rows": int(result.prob_target.shape[0]),
                       "cols": int(result.prob_target.shape[1])},
        "engine": result.engine, "incremental_nodes": result.incremental_nodes,
        "feature_channel": result.feature_channel, "clean_feature_activation": result.clean_feature_activation,
        "clean_probability": result.clean_probability, "min_probability": float(result.prob_target.min()),
        "top_prediction": {"index": top, "name": model.class_name(top)},
        "top_classes": {str(i): model.class_name(i) for i in sorted(set(result.top_class.flatten().tolist()))},
    }
