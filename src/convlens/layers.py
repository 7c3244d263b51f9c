"""Every named module of a model with its type, output shape and parameter count."""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.hooks import first_tensor, forward_hooks, module_device, preserved_state
from convlens.models.classifier import ImageClassifier, as_module


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    output_shape: tuple[int, ...] | None  # without the batch dimension; None if it did not run
    parameters: int

    def to_dict(self) -> dict:
        return asdict(self)


# Tables already probed, per module and (input size, structure): a CAM call without --layer needs the last conv
# layer, and the probe (a forward pass) cost about a third of a Grad-CAM call on the default model.
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _structure(module: nn.Module) -> tuple:
    """What the table depends on: every submodule (replaced ones have a new identity) and parameter shape."""
    return (tuple((name, id(m)) for name, m in module.named_modules()),
            tuple((name, tuple(p.shape)) for name, p in module.named_parameters()))


def layer_table(model: ImageClassifier | nn.Module, input_size: tuple[int, int] | None = None) -> list[LayerInfo]:
    """One row per named module, shapes from one forward pass on a zero image of the model's input size."""
    module = as_module(model)
    if input_size is None:
        input_size = default_input_size(model)
    key = (tuple(input_size), _structure(module))
    cached = _TABLES.get(module)
    if cached is not None and cached[0] == key:
        return list(cached[1])
    rows = _probe_table(module, input_size)
    _TABLES[module] = (key, tuple(rows))
    return rows


def _probe_table(module: nn.Module, input_size: tuple[int, int]) -> list[LayerInfo]:
    shapes: dict[str, tuple[int, ...]] = {}
    named = [(name, m) for name, m in module.named_modules() if name]
    with preserved_state(module) as net, forward_hooks(net, {name: _shape_recorder(name, shapes) for name, _ in named}):
        with torch.inference_mode():
            net(torch.zeros(1, 3, *input_size, device=module_device(net)))
    return [
        LayerInfo(name, type(m).__name__, shapes.get(name), sum(p.numel() for p in m.parameters()))
        for name, m in named
    ]


def default_input_size(model: ImageClassifier | nn.Module) -> tuple[int, int]:
    """The model's own input size; 224 for a bare module that does not say (the baseline CNN does)."""
    if isinstance(model, ImageClassifier):
        return model.input_size
    size = getattr(model, "img_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def _shape_recorder(name: str, shapes: dict):
    def hook(module, inputs, output):
        try:
            shapes[name] = tuple(first_tensor(output, name).shape[1:])
        except ConvlensError:  # not a tensor: no shape to show
            pass

    return hook


def conv_layers(model: ImageClassifier | nn.Module, input_size: tuple[int, int] | None = None) -> list[LayerInfo]:
    """Convolution layers (leaf ``nn.Conv2d`` and subclasses) that ran, in forward order of registration."""
    return [row for row in layer_table(model, input_size)
            if row.output_shape is not None and row.type.endswith(("Conv2d", "Conv2dSame")) and
            len(row.output_shape) == 3]


def last_spatial_conv(model: ImageClassifier | nn.Module, input_size: tuple[int, int] | None = None) -> str:
    """The last conv layer whose output still has spatial extent (more than 1x1): the usual CAM layer."""
    rows = [row for row in conv_layers(model, input_size) if row.output_shape[1] * row.output_shape[2] > 1]
    if not rows:
        raise ConvlensError("the model has no conv layer with spatial output; pass --layer")
    return rows[-1].name
