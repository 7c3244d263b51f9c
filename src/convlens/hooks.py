"""The one hook API of convlens: every method registers its hooks through this module.

- ``preserved_state(model)`` snapshots what a method could disturb (``training`` flags, ``requires_grad``,
  parameters' ``.grad``, every hook dictionary) and puts it back in ``finally``.
- ``capture(model, layers)`` records layers' outputs (and, with ``gradients=True``, their gradients).
- ``replace_output(model, layer, fn)`` hands ``fn(output)`` on instead of a layer's output.
- ``forward_hooks(module, {layer: hook})`` is the low-level form the others build on: forward hooks on named
  layers for one ``with`` block, removed in ``finally``.
- ``module_device(model)`` and ``first_tensor(output)`` are the two small helpers every method needs.

A captured output is handed on as a clone (``hand_on_copy``), so an in-place op after it
(``nn.ReLU(inplace=True)``, ``x.relu_()``) cannot overwrite what was captured, and gradients flow back to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from convlens.errors import ConvlensError, nearest_names
from convlens.models.classifier import ImageClassifier, as_module


def resolve_layer(model: ImageClassifier | nn.Module, name: str) -> nn.Module:
    """The submodule at PyTorch module path ``name`` (``layer4.2.conv3``), or an error with the nearest names."""
    module = as_module(model)
    modules = dict(module.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = ", ".join(nearest_names(name, [n for n in modules if n]))
    raise ConvlensError(f"unknown layer {name!r}; nearest: {close} (`convlens layers MODEL` lists all)")


def resolve_layers(model: ImageClassifier | nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """``resolve_layer`` for several names, walking the module tree once."""
    names = list(names)
    if len(names) == 1:
        return {names[0]: resolve_layer(model, names[0])}
    modules = dict(as_module(model).named_modules())
    return {name: modules[name] if name and name in modules else resolve_layer(model, name) for name in names}


# Every hook dictionary a module has (``_forward_hooks``, ``_forward_pre_hooks``, ``_backward_hooks``...), read
# once from a fresh module rather than searched for in each module's attributes on every call.
_HOOK_DICTS = tuple(k for k, v in vars(nn.Module()).items() if k.startswith("_") and "hooks" in k
                    and isinstance(v, dict))


def _hook_dicts(module: nn.Module) -> list[dict]:
    attributes = vars(module)
    return [attributes[k] for k in _HOOK_DICTS if k in attributes]


@contextmanager
def preserved_state(model: ImageClassifier | nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Yield the module (in eval mode unless ``eval_mode=False``); restore its state on exit, also on error.

    Hooks registered inside and still present at exit are removed: hook dictionaries are keyed by the ids of
    their ``RemovableHandle``, which count up globally, so the new ones are those from the id at entry on.
    Cheap enough to wrap every call: the restore writes only what changed.
    """
    module = as_module(model)
    submodules = list(module.modules())
    # read from the modules already listed (``module.parameters()`` would walk the tree again); a shared
    # parameter may appear twice, which restores it twice to the same state
    parameters = [p for m in submodules for p in m._parameters.values() if p is not None]
    training = [m.training for m in submodules]
    requires_grad = [p.requires_grad for p in parameters]
    # Cloned: a backward pass inside would accumulate into the existing .grad tensors in place.
    grads = [None if p.grad is None else p.grad.detach().clone() for p in parameters]
    first_new_hook = RemovableHandle.next_id
    try:
        if eval_mode and any(training):
            module.eval()
        yield module
    finally:
        for m, was_training in zip(submodules, training, strict=True):
            if m.training != was_training:
                m.training = was_training
        if RemovableHandle.next_id != first_new_hook:
            for m in submodules:
                for hooks in _hook_dicts(m):
                    for key in [k for k in hooks if k >= first_new_hook]:
                        del hooks[key]
        for p, flag, grad in zip(parameters, requires_grad, grads, strict=True):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if grad is not None or p.grad is not None:
                p.grad = grad


@dataclass
class Capture:
    """What ``capture`` collected during the forward (and backward) passes in its body."""

    layers: list[str]
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, layer: str) -> torch.Tensor:
        if layer not in self.activations:
            raise ConvlensError(f"layer {layer!r} did not run in the forward pass")
        return self.activations[layer]


@contextmanager
def capture(model: ImageClassifier | nn.Module, layers: str | Iterable[str], gradients: bool = False,
            detach: bool = True, eval_mode: bool = True) -> Iterator[Capture]:
    """Capture the outputs of ``layers`` on every forward pass in the body.

    ``detach=False`` keeps the captured tensors in the autograd graph, for ``torch.autograd.grad`` on them;
    ``gradients=True`` also stores their gradients (``tensor.register_hook``) when a backward pass runs.
    A module called several times per forward (torchvision ResNet's shared ``relu``) keeps its last call.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    result = Capture(names)
    with preserved_state(model, eval_mode=eval_mode) as module:
        with forward_hooks(module, {name: _make_hook(name, result, gradients, detach) for name in names}):
            yield result


def _make_hook(name: str, result: Capture, gradients: bool, detach: bool):
    def hook(module: nn.Module, inputs, output):
        tensor = first_tensor(output, name)
        result.activations[name] = tensor.detach() if detach else tensor
        if gradients and tensor.requires_grad:
            tensor.register_hook(lambda grad: result.gradients.__setitem__(name, grad.detach()))
        return hand_on_copy(output, tensor)

    return hook


def hand_on_copy(output, tensor: torch.Tensor):
    """``output`` with ``tensor`` (its first element) replaced by a clone, for a forward hook to return:
    in-place ops downstream then modify the copy, never the tensor a hook keeps."""
    return replace_in_output(output, tensor.clone())


def replace_in_output(output, tensor: torch.Tensor):
    """``output`` with its first tensor replaced by ``tensor`` (tuples and lists keep their other items)."""
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    return tensor


def first_tensor(output, layer: str = "layer") -> torch.Tensor:
    """The tensor a module returned: the output itself, or the first item of a tuple or list."""
    tensor = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(tensor, torch.Tensor):
        raise ConvlensError(f"layer {layer!r} returns {type(output).__name__}, not a tensor; choose another layer")
    return tensor


def module_device(model: ImageClassifier | nn.Module) -> torch.device:
    """Where the model's parameters (or, without parameters, its buffers) live; the CPU for neither."""
    module = as_module(model)
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def forward_hooks(model: ImageClassifier | nn.Module, hooks: dict[str, Callable]) -> Iterator[None]:
    """Forward hooks (``hook(module, args, output)``) on the named layers for one ``with`` block.

    Removed in ``finally``. Callers that change more than hooks wrap this in ``preserved_state``.
    """
    layers = resolve_layers(model, hooks)
    handles: list[RemovableHandle] = []
    try:
        for name, hook in hooks.items():
            handles.append(layers[name].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def forward_pre_hooks(model: ImageClassifier | nn.Module, hooks: dict[str, Callable]) -> Iterator[None]:
    """Forward pre-hooks (``hook(module, args)``) on the named layers for one ``with`` block, removed in
    ``finally``."""
    layers = resolve_layers(model, hooks)
    handles: list[RemovableHandle] = []
    try:
        for name, hook in hooks.items():
            handles.append(layers[name].register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replace_output(model: ImageClassifier | nn.Module, layer: str,
                   replacement: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, ``layer`` hands on ``replacement(its output tensor)`` instead of its output
    (ablations, masks, a layer's output swapped for a stored one)."""

    def hook(module, args, output):
        return replace_in_output(output, replacement(first_tensor(output, layer)))

    with forward_hooks(model, {layer: hook}):
        yield
