"""One converter per Keras layer class: Keras config + weights -> a PyTorch module and its state.

A converter gets the ``Layer`` (name, class, config, whether its output is the model's output), the input
``Value``s (a meta tensor with the NCHW shape, and the Keras layout of 4-D tensors: channels-last ``"cl"`` or
channels-first ``"cf"``) and the builder (``ctx``) for weights and look-ahead. It returns a ``Converted``:
the module, its state (torch layout), and the activation fused into the layer, which the graph builder adds
as a module of its own right after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.keras import modules as km

# Dropout-like layers are the identity at inference; they pass a Flatten's element order through.
PASSTHROUGH = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
               "ActivityRegularization"}
CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda", "TFOpLayer"}
ACTIVATIONS = ("relu", "relu6", "elu", "selu", "sigmoid", "hard_sigmoid", "swish", "silu", "gelu", "tanh",
               "softmax", "linear", "softplus", "softsign", "hard_silu", "hard_swish", "leaky_relu", "mish")


@dataclass
class Layer:
    name: str
    class_name: str
    config: dict
    path: tuple[str, ...]  # layer names from the top model down to this layer (for the weights)
    is_output: bool = False  # its output is the converted model's output (softmax is split off there)


@dataclass
class Value:
    tensor: torch.Tensor  # meta tensor, batch 1, NCHW when 4-D
    layout: str | None  # "cl" / "cf" for 4-D tensors, None otherwise
    flattened: tuple[int, int, int] | None = None  # (C, H, W) of a channels-last Flatten fed as C, H, W

    @property
    def rank(self) -> int:
        return self.tensor.ndim


@dataclass
class Converted:
    module: nn.Module | None  # None: the activation module is the layer's module (Activation, Softmax)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    activation: str | None = None
    flattened: tuple[int, int, int] | None = None


def torch_dim(axis: int, value: Value) -> int:
    """The torch dimension of Keras ``axis`` (batch included) on ``value``."""
    rank = value.rank
    axis = axis + rank if axis < 0 else axis
    if rank == 4 and value.layout == "cl":
        return {0: 0, 1: 2, 2: 3, 3: 1}[axis]
    return axis


def _layout(config: dict) -> str:
    return "cf" if config.get("data_format") == "channels_first" else "cl"


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1])) if len(value) > 1 else (int(value[0]), int(value[0]))
    return int(value), int(value)


def _tensor(array: np.ndarray) -> torch.Tensor:
    # A strided view is fine: load_state_dict copies it into the parameter (faster than a numpy copy).
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def _spatial_input(layer: Layer, value: Value) -> int:
    if value.rank != 4:
        raise ConvlensError(f"layer {layer.name} ({layer.class_name}) needs a 4-D input, got rank {value.rank}")
    if value.layout != _layout(layer.config):
        raise ConvlensError(f"layer {layer.name} ({layer.class_name}) mixes channels_first and channels_last "
                            "tensors; convlens converts models with one data format")
    return value.tensor.shape[1]


def _conv(layer: Layer, in_channels: int, out_channels: int, groups: int, bias: bool) -> nn.Conv2d:
    config = layer.config
    kernel, stride = _pair(config["kernel_size"]), _pair(config.get("strides", 1))
    dilation = _pair(config.get("dilation_rate", 1))
    padding = config.get("padding", "valid")
    if padding == "valid":
        return nn.Conv2d(in_channels, out_channels, kernel, stride, 0, dilation, groups, bias)
    if padding != "same":
        raise ConvlensError(f"layer {layer.name} ({layer.class_name}): padding {padding!r} is not supported")
    spans = [(k - 1) * d for k, d in zip(kernel, dilation, strict=True)]
    if stride == (1, 1) and all(span % 2 == 0 for span in spans):  # symmetric: torch's own padding is exact
        return nn.Conv2d(in_channels, out_channels, kernel, 1, tuple(s // 2 for s in spans), dilation, groups, bias)
    return km.SameConv2d(in_channels, out_channels, kernel, stride, 0, dilation, groups, bias)


def convert_conv2d(layer: Layer, inputs: list[Value], ctx) -> Converted:
    in_channels = _spatial_input(layer, inputs[0])
    config = layer.config
    groups, bias = int(config.get("groups", 1)), bool(config.get("use_bias", True))
    conv = _conv(layer, in_channels, int(config["filters"]), groups, bias)
    kh, kw = conv.kernel_size
    wanted = [("kernel", (kh, kw, in_channels // groups, conv.out_channels))] + bias * [("bias", (conv.out_channels,))]
    arrays = ctx.weights(layer, wanted)
    state = {"weight": _tensor(arrays[0].transpose(3, 2, 0, 1))}
    if bias:
        state["bias"] = _tensor(arrays[1])
    return Converted(conv, state, config.get("activation"))


def _depthwise(layer: Layer, in_channels: int, multiplier: int, bias: bool) -> tuple[nn.Conv2d, tuple]:
    conv = _conv(layer, in_channels, in_channels * multiplier, in_channels, bias)
    return conv, (*conv.kernel_size, in_channels, multiplier)


def _depthwise_weight(kernel: np.ndarray) -> torch.Tensor:
    # TF's depthwise output channel c * multiplier + m is torch's grouped output channel of the same index.
    kh, kw, channels, multiplier = kernel.shape
    return _tensor(kernel.reshape(kh, kw, channels * multiplier).transpose(2, 0, 1)[:, None])


def convert_depthwise(layer: Layer, inputs: list[Value], ctx) -> Converted:
    in_channels = _spatial_input(layer, inputs[0])
    bias = bool(layer.config.get("use_bias", True))
    conv, shape = _depthwise(layer, in_channels, int(layer.config.get("depth_multiplier", 1)), bias)
    arrays = ctx.weights(layer, [("depthwise_kernel", shape)] + bias * [("bias", (conv.out_channels,))])
    state = {"weight": _depthwise_weight(arrays[0])}
    if bias:
        state["bias"] = _tensor(arrays[1])
    return Converted(conv, state, layer.config.get("activation"))


def convert_separable(layer: Layer, inputs: list[Value], ctx) -> Converted:
    in_channels = _spatial_input(layer, inputs[0])
    config = layer.config
    bias = bool(config.get("use_bias", True))
    depthwise, shape = _depthwise(layer, in_channels, int(config.get("depth_multiplier", 1)), False)
    filters = int(config["filters"])
    pointwise = nn.Conv2d(depthwise.out_channels, filters, 1, bias=bias)
    wanted = [("depthwise_kernel", shape), ("pointwise_kernel", (1, 1, depthwise.out_channels, filters))]
    arrays = ctx.weights(layer, wanted + bias * [("bias", (filters,))])
    state = {"depthwise.weight": _depthwise_weight(arrays[0]),
             "pointwise.weight": _tensor(arrays[1].transpose(3, 2, 0, 1))}
    if bias:
        state["pointwise.bias"] = _tensor(arrays[2])
    return Converted(km.SeparableConv2d(depthwise, pointwise), state, config.get("activation"))


def convert_dense(layer: Layer, inputs: list[Value], ctx) -> Converted:
    value = inputs[0]
    if value.rank != 2:
        raise ConvlensError(f"layer {layer.name} (Dense) on a rank-{value.rank} tensor is not supported")
    in_features, units = value.tensor.shape[1], int(layer.config["units"])
    bias = bool(layer.config.get("use_bias", True))
    arrays = ctx.weights(layer, [("kernel", (in_features, units))] + bias * [("bias", (units,))])
    kernel = arrays[0]
    if value.flattened is not None:  # Keras flattened H, W, C; the torch Flatten gives C, H, W: permute once
        channels, height, width = value.flattened
        kernel = kernel.reshape(height, width, channels, units).transpose(2, 0, 1, 3).reshape(in_features, units)
    state = {"weight": _tensor(kernel.T)}
    if bias:
        state["bias"] = _tensor(arrays[1])
    return Converted(nn.Linear(in_features, units, bias=bias), state, layer.config.get("activation"))


def convert_batchnorm(layer: Layer, inputs: list[Value], ctx) -> Converted:
    value, config = inputs[0], layer.config
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if not isinstance(axis, int) or torch_dim(axis, value) != 1:
        raise ConvlensError(f"layer {layer.name} (BatchNormalization) normalises axis {axis}, not the channels")
    channels = value.tensor.shape[1]
    scale, center = config.get("scale", True), config.get("center", True)
    wanted = scale * [("gamma", (channels,))] + center * [("beta", (channels,))]
    arrays = ctx.weights(layer, wanted + [("moving_mean", (channels,)), ("moving_variance", (channels,))])
    # State tensors live on the CPU (converters run under the meta device, which factories would follow).
    gamma = _tensor(arrays[0]) if scale else torch.ones(channels, device="cpu")
    beta = _tensor(arrays[int(scale)]) if center else torch.zeros(channels, device="cpu")
    norm = (nn.BatchNorm2d if value.rank == 4 else nn.BatchNorm1d)(channels, eps=float(config.get("epsilon", 1e-3)))
    state = {"weight": gamma, "bias": beta, "running_mean": _tensor(arrays[-2]), "running_var": _tensor(arrays[-1])}
    return Converted(norm, state)


def activation_module(name, layer: Layer, ctx) -> nn.Module | None:
    """The module for a Keras activation name (``None`` for linear)."""
    if isinstance(name, dict):  # a serialised function object: a built-in by name, or custom code
        name = name.get("config", name.get("class_name")) if name.get("module", "keras.activations") \
            .startswith("keras") else None
        if not isinstance(name, str):
            raise ConvlensError(f"layer {layer.name} uses a custom activation function: loading it would run code "
                                "from the model file, which convlens refuses")
    if name in (None, "linear"):
        return None
    table = {
        "relu": nn.ReLU, "relu6": nn.ReLU6, "elu": nn.ELU, "selu": nn.SELU, "sigmoid": nn.Sigmoid,
        "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus,
        "softsign": nn.Softsign, "hard_silu": nn.Hardswish, "hard_swish": nn.Hardswish, "mish": nn.Mish,
    }
    if name in table:
        return table[name]()
    if name == "hard_sigmoid":
        return km.KerasHardSigmoid() if ctx.keras_major < 3 else nn.Hardsigmoid()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "softmax":
        return nn.Softmax(dim=1)
    raise ConvlensError(f"layer {layer.name}: activation {name!r} is not supported (nor a custom function "
                        "convlens would run from the model file); supported: " + ", ".join(ACTIVATIONS))


def convert_activation(layer: Layer, inputs: list[Value], ctx) -> Converted:
    # No module of its own: the activation module takes the layer's name.
    return Converted(None, activation=layer.config.get("activation"), flattened=inputs[0].flattened)


def convert_relu(layer: Layer, inputs: list[Value], ctx) -> Converted:
    config = layer.config
    max_value = config.get("max_value")
    slope = float(config.get("negative_slope", 0.0) or 0.0)
    threshold = float(config.get("threshold", 0.0) or 0.0)
    if threshold == 0.0 and slope == 0.0:
        module = nn.ReLU() if max_value is None else nn.ReLU6() if float(max_value) == 6.0 else \
            nn.Hardtanh(0.0, float(max_value))
    elif threshold == 0.0 and max_value is None:
        module = nn.LeakyReLU(slope)
    else:
        module = km.ThresholdedReLU(None if max_value is None else float(max_value), slope, threshold)
    return Converted(module)


def convert_leaky_relu(layer: Layer, inputs: list[Value], ctx) -> Converted:
    slope = layer.config.get("negative_slope", layer.config.get("alpha", 0.3))
    return Converted(nn.LeakyReLU(float(slope)))


def convert_elu(layer: Layer, inputs: list[Value], ctx) -> Converted:
    return Converted(nn.ELU(float(layer.config.get("alpha", 1.0))))


def convert_softmax(layer: Layer, inputs: list[Value], ctx) -> Converted:
    axis = layer.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) else axis
    if torch_dim(axis, inputs[0]) != 1:
        raise ConvlensError(f"layer {layer.name} (Softmax) over axis {axis} is not supported")
    return Converted(None, activation="softmax")


def _pool_args(layer: Layer) -> tuple[tuple[int, int], tuple[int, int], str]:
    config = layer.config
    pool = _pair(config.get("pool_size", 2))
    strides = config.get("strides")
    return pool, _pair(strides) if strides is not None else pool, config.get("padding", "valid")


def convert_pooling(layer: Layer, inputs: list[Value], ctx) -> Converted:
    _spatial_input(layer, inputs[0])
    pool, stride, padding = _pool_args(layer)
    is_max = layer.class_name.startswith("Max")
    if padding == "valid":
        return Converted(nn.MaxPool2d(pool, stride) if is_max else nn.AvgPool2d(pool, stride))
    if padding != "same":
        raise ConvlensError(f"layer {layer.name} ({layer.class_name}): padding {padding!r} is not supported")
    return Converted(km.SameMaxPool2d(pool, stride) if is_max else km.SameAvgPool2d(pool, stride))


def convert_global_pooling(layer: Layer, inputs: list[Value], ctx) -> Converted:
    _spatial_input(layer, inputs[0])
    mode = "max" if "Max" in layer.class_name else "avg"
    return Converted(km.GlobalPool2d(mode, bool(layer.config.get("keepdims", False))))


def convert_zero_padding(layer: Layer, inputs: list[Value], ctx) -> Converted:
    _spatial_input(layer, inputs[0])
    padding = layer.config.get("padding", 1)
    if isinstance(padding, int):
        (top, bottom), (left, right) = (padding, padding), (padding, padding)
    else:
        rows, cols = padding
        (top, bottom), (left, right) = _pair(rows), _pair(cols)
    return Converted(nn.ZeroPad2d((left, right, top, bottom)))


def convert_merge(layer: Layer, inputs: list[Value], ctx) -> Converted:
    mode = layer.class_name.lower()
    if mode == "concatenate":
        return Converted(km.Merge(mode, torch_dim(int(layer.config.get("axis", -1)), inputs[0])))
    return Converted(km.Merge(mode))


def convert_flatten(layer: Layer, inputs: list[Value], ctx) -> Converted:
    """Keras flattens a channels-last tensor as H, W, C (also a channels-first one under a Flatten with
    ``data_format="channels_first"``, which moves channels last first); torch's NCHW flattens as C, H, W."""
    value = inputs[0]
    if value.rank != 4:
        return Converted(nn.Flatten())
    flatten_first = layer.config.get("data_format") == "channels_first"
    if value.layout == "cf" and not flatten_first:
        return Converted(nn.Flatten())
    if value.layout == "cl" and flatten_first:
        raise ConvlensError(f"layer {layer.name} (Flatten, channels_first) on a channels_last tensor is not "
                            "supported")
    if ctx.feeds_dense_only(layer):
        channels, height, width = value.tensor.shape[1:]
        return Converted(nn.Flatten(), flattened=(channels, height, width))
    return Converted(km.ChannelsLastFlatten())


def convert_reshape(layer: Layer, inputs: list[Value], ctx) -> Converted:
    value = inputs[0]
    target = tuple(int(d) for d in layer.config["target_shape"])
    input_cl = value.rank == 4 and value.layout == "cl"
    output_cl = len(target) == 3 and ctx.layout == "cl"
    return Converted(km.Reshape(target, input_cl, output_cl))


def convert_dropout(layer: Layer, inputs: list[Value], ctx) -> Converted:
    rate = float(layer.config.get("rate", 0.0) or 0.0)
    module = nn.Dropout2d(rate) if layer.class_name == "SpatialDropout2D" else nn.Dropout(rate)
    return Converted(module if layer.class_name in ("Dropout", "SpatialDropout2D") else nn.Identity(),
                     flattened=inputs[0].flattened)


def _per_channel(values, value: Value, layer: Layer) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(-1))
    channels = value.tensor.shape[1]
    if tensor.numel() not in (1, channels):
        raise ConvlensError(f"layer {layer.name} ({layer.class_name}): {tensor.numel()} values for {channels} "
                            "channels")
    return tensor.reshape(-1, *([1] * (value.rank - 2))) if tensor.numel() > 1 else tensor.reshape(())


def convert_rescaling(layer: Layer, inputs: list[Value], ctx) -> Converted:
    scale = _per_channel(layer.config.get("scale", 1.0), inputs[0], layer)
    offset = _per_channel(layer.config.get("offset", 0.0), inputs[0], layer)
    return Converted(km.Affine(scale.to("meta"), offset.to("meta")), {"scale": scale, "offset": offset},
                     flattened=inputs[0].flattened)


def convert_normalization(layer: Layer, inputs: list[Value], ctx) -> Converted:
    value, config = inputs[0], layer.config
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis is None or torch_dim(int(axis), value) != 1:
        raise ConvlensError(f"layer {layer.name} (Normalization) over axis {axis} is not supported")
    if config.get("mean") is not None:
        mean, variance = config["mean"], config["variance"]
    else:
        channels = value.tensor.shape[1]
        node = ctx.weight_node(layer)
        count = len(node.arrays) if node is not None else 0
        wanted = [("mean", (channels,)), ("variance", (channels,))] + ([("count", ())] if count > 2 else [])
        mean, variance = ctx.weights(layer, wanted)[:2]
    mean = _per_channel(mean, value, layer)
    std = torch.clamp(torch.sqrt(_per_channel(variance, value, layer)), min=1e-7)
    scale, offset = (std, mean) if config.get("invert") else (1.0 / std, -mean / std)
    return Converted(km.Affine(scale.to("meta"), offset.to("meta")), {"scale": scale, "offset": offset})


CONVERTERS = {
    "Conv2D": convert_conv2d, "Convolution2D": convert_conv2d,
    "DepthwiseConv2D": convert_depthwise,
    "SeparableConv2D": convert_separable, "SeparableConvolution2D": convert_separable,
    "Dense": convert_dense,
    "BatchNormalization": convert_batchnorm,
    "Activation": convert_activation, "ReLU": convert_relu, "LeakyReLU": convert_leaky_relu, "ELU": convert_elu,
    "Softmax": convert_softmax,
    "MaxPooling2D": convert_pooling, "MaxPool2D": convert_pooling,
    "AveragePooling2D": convert_pooling, "AvgPool2D": convert_pooling,
    "GlobalAveragePooling2D": convert_global_pooling, "GlobalAvgPool2D": convert_global_pooling,
    "GlobalMaxPooling2D": convert_global_pooling, "GlobalMaxPool2D": convert_global_pooling,
    "ZeroPadding2D": convert_zero_padding,
    "Add": convert_merge, "Subtract": convert_merge, "Multiply": convert_merge, "Average": convert_merge,
    "Maximum": convert_merge, "Minimum": convert_merge, "Concatenate": convert_merge,
    "Flatten": convert_flatten, "Reshape": convert_reshape,
    "Rescaling": convert_rescaling, "Normalization": convert_normalization,
    **{name: convert_dropout for name in PASSTHROUGH},
}
