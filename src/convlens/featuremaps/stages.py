"""Which layers feature maps show by default: the end of each stage of the model.

The model is cut into units (its children, with plain ``nn.Sequential``/``nn.ModuleList`` containers opened up,
so a residual block, an Inception module or a timm ``BatchNormAct2d`` stays whole). One forward pass on a zero
image records each unit's output side in run order; consecutive units of about the same side form a stage, and
each stage that contains a convolution contributes its last unit: VGG16's block1_conv2 ... block5_conv3 (after
their ReLU), ResNet's ``layer1`` ... ``layer4``, EfficientNet's ``blocks.N``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.hooks import first_tensor, forward_hooks, module_device, preserved_state
from convlens.layers import default_input_size
from convlens.models.classifier import ImageClassifier, as_module

STAGE_SHRINK = 0.75  # a new stage starts when the side drops below this fraction (valid convs shrink by 2 px)


def stage_end_layers(model: ImageClassifier | nn.Module, input_size: tuple[int, int] | None = None) -> list[str]:
    """The last unit at each spatial resolution, from early to late: the default layers of feature maps.

    The name is that of the outermost ``Sequential`` that ends with the unit (``layer1`` rather than
    ``layer1.1``). A model that is one opaque module falls back to its convolutions, grouped the same way.
    """
    module = as_module(model)
    input_size = tuple(input_size) if input_size is not None else default_input_size(model)
    layers = _stage_ends(module, _units(module), input_size)
    if len(layers) < 2:  # one opaque backbone module: fall back to the convolutions themselves
        convs = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        layers = _stage_ends(module, convs, input_size) or layers
    if not layers:
        raise ConvlensError(f"no layer of {type(module).__name__} outputs feature maps; pass --layer")
    return [_outermost_alias(module, name) for name in layers]


def _units(root: nn.Module) -> list[tuple[str, nn.Module]]:
    def opened(prefix: str, parent: nn.Module) -> Iterable[tuple[str, nn.Module]]:
        for name, child in parent.named_children():
            path = f"{prefix}.{name}" if prefix else name
            yield from opened(path, child) if _is_plain_container(child) else [(path, child)]

    return list(opened("", root))


def _is_plain_container(module: nn.Module) -> bool:
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return True
    return _is_plain_sequential(module)


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _output_sides(root: nn.Module, units: list[tuple[str, nn.Module]],
                  input_size: tuple[int, int]) -> list[tuple[str, int | None, bool]]:
    """``(name, output side or None, contains a conv)`` for each unit call of one forward pass, in run order."""
    calls: list[tuple[str, int | None, bool]] = []

    def recorder(name: str, unit: nn.Module):
        has_conv = any(isinstance(m, nn.Conv2d) for m in unit.modules())

        def hook(module, inputs, output):
            try:
                tensor = first_tensor(output, name)
            except ConvlensError:  # a unit that returns something else has no side
                tensor = None
            spatial = tensor is not None and tensor.dim() == 4
            calls.append((name, min(tensor.shape[2:]) if spatial else None, has_conv))

        return hook

    with preserved_state(root) as net, forward_hooks(net, {name: recorder(name, unit) for name, unit in units}):
        with torch.inference_mode():
            net(torch.zeros(1, 3, *input_size, device=module_device(net)))
    return calls


def _stage_ends(root: nn.Module, units: list[tuple[str, nn.Module]], input_size: tuple[int, int]) -> list[str]:
    ends, stage, reference = [], [], None
    calls = _output_sides(root, units, input_size)
    for name, side, has_conv in [*calls, ("", None, False)]:  # the sentinel closes the last stage
        if side is None or reference is None or not STAGE_SHRINK * reference <= side <= reference / STAGE_SHRINK:
            if any(conv for _, conv in stage):
                ends.append(stage[-1][0])
            stage, reference = [], side
        if side is not None:
            stage.append((name, has_conv))
    return list(dict.fromkeys(ends))


def _outermost_alias(root: nn.Module, name: str) -> str:
    """``layer1.1`` -> ``layer1`` when it is the last child of a plain Sequential (same output tensor)."""
    while "." in name:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name)
        if not _is_plain_sequential(parent) or list(parent._modules)[-1] != child:
            break
        name = parent_name
    return name
