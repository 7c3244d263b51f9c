"""Zeiler & Fergus deconvnet: project one channel's activations of a layer down to pixel space.

As in the paper, every other activation of the layer is set to zero and the chosen channel (its whole map, or
one activation) is fed down. The gradient of the chosen activations through the autograd graph already does
what the deconvnet does everywhere but at the rectifiers: max-pooling routes the signal through the switches
recorded on the way up, each convolution is inverted by its transposed filters, BatchNorm in eval mode is an
affine map. The rules differ only in how ReLU-like nonlinearities pass the signal down (``g`` is the signal
arriving from above, ``x`` the nonlinearity's forward input):

- ``deconvnet`` (Zeiler & Fergus 2014): ``relu(g)``, whatever ``x`` was;
- ``guided`` (guided backprop, Springenberg et al. 2015): ``relu(g * [x > 0])`` (``[0 < x < 6]`` for ReLU6);
- ``gradient`` (plain saliency, Simonyan et al. 2014): ``g * [x > 0]``, the true gradient.

The rule applies to ReLU and ReLU6 in any form: ``nn.ReLU`` / ``nn.ReLU6`` modules (in-place or not),
``F.relu``, ``F.relu_``, ``torch.relu``, ``Tensor.relu``/``relu_``, ``F.relu6`` and ``F.hardtanh`` with
``min_val=0``. Functional calls are caught by a ``TorchFunctionMode`` active during the forward pass, so forward
code calling them directly (timm, custom models) is handled like modules. Every other nonlinearity (SiLU,
GELU, sigmoid, hardswish, LeakyReLU...) passes its ordinary gradient. Skip connections need nothing special:
the signal goes down both branches and adds up, as the gradient does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens.errors import ConvlensError
from convlens.hooks import first_tensor, forward_hooks, hand_on_copy, module_device, preserved_state
from convlens.models.classifier import ImageClassifier, ImagesLike, as_batch, as_module
from convlens.progress import ProgressLike, track

if TYPE_CHECKING:
    from convlens.zeiler.results import DeconvResult

RULES = ("deconvnet", "guided", "gradient")
AUTO = "auto"  # the default: ``default_rule(model)``
POSITIONS = ("map", "max")


class _Rectifier(torch.autograd.Function):
    """``clamp(x, 0, upper)`` forward; the chosen rule backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, rule: str) -> torch.Tensor:
        y = x.clamp(min=0) if upper is None else x.clamp(0, upper)
        ctx.save_for_backward(y)  # the output, not x: x may be overwritten in place afterwards
        ctx.upper, ctx.rule = upper, rule
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None
        (y,) = ctx.saved_tensors
        passes = y > 0
        if ctx.upper is not None:
            passes &= y < ctx.upper
        return (grad * passes).clamp(min=0), None, None


_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_}
_HARDTANH_INPLACE = {F.hardtanh_, torch._C._nn.hardtanh_}


def _bound(args: tuple, kwargs: dict, index: int, name: str, default):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _relu_call(func, args: tuple, kwargs: dict) -> tuple[torch.Tensor, float | None, bool] | None:
    """``(input, upper bound, in place)`` when ``func(*args, **kwargs)`` is a ReLU or ReLU6, else None."""
    if func in _RELU:
        return args[0], None, bool(_bound(args, kwargs, 1, "inplace", False))
    if func in _RELU_INPLACE:
        return args[0], None, True
    if func is F.relu6:
        return args[0], 6.0, bool(_bound(args, kwargs, 1, "inplace", False))
    if func is F.hardtanh or func in _HARDTANH_INPLACE:
        low = float(_bound(args, kwargs, 1, "min_val", -1.0))
        high = float(_bound(args, kwargs, 2, "max_val", 1.0))
        inplace = func in _HARDTANH_INPLACE or bool(_bound(args, kwargs, 3, "inplace", False))
        return (args[0], high, inplace) if low == 0.0 else None
    return None


class _RectifierRule(TorchFunctionMode):
    """Swaps every ReLU / ReLU6 call made during the forward pass for ``_Rectifier`` with ``rule``."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = _relu_call(func, args, kwargs)
        if call is None or not isinstance(call[0], torch.Tensor) or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        x, upper, inplace = call
        y = _Rectifier.apply(x, upper, self.rule)
        # In-place callers may ignore the return value (``x.relu_()``): write the result into x as well.
        return x.copy_(y) if inplace else y


@contextmanager
def rectifier_rule(rule: str) -> Iterator[None]:
    """Within the body, ReLU-like calls pass the signal down by ``rule`` (``gradient`` changes nothing)."""
    check_rule(rule)
    with _RectifierRule(rule) if rule != "gradient" else nullcontext():
        yield


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ConvlensError(f"unknown rule {rule!r}; use one of {', '.join((AUTO, *RULES))}")
    return rule


def default_rule(model: ImageClassifier | nn.Module) -> str:
    """``deconvnet`` where the network downsamples only by pooling (Zeiler & Fergus's setting: the max-pool
    switches carry the image into the projection), ``guided`` where any convolution is strided.

    Without switches the deconvnet's way down does not depend on the image at all (it rectifies the signal but
    ignores the forward masks), so on strided networks (ResNet, MobileNet, EfficientNet) every projection of a
    unit is the same pattern of overlapping transposed strided kernels: a checkerboard. Guided backprop keeps
    the forward masks and draws the image's own edges. docs/deconvnet.md has the details.
    """
    strided = any(isinstance(m, nn.modules.conv._ConvNd) and any(s > 1 for s in m.stride)
                  for m in as_module(model).modules())
    return "guided" if strided else "deconvnet"


def resolve_rule(model: ImageClassifier | nn.Module, rule: str) -> str:
    """``rule``, or for ``"auto"`` the model's ``default_rule``."""
    return default_rule(model) if rule == AUTO else check_rule(rule)



class _StopForward(Exception):
    """Raised by a hook once the layer of interest has produced its output: the rest need not run."""


@contextmanager
def layer_outputs(module: nn.Module, layer: str, calls: int | None = None) -> Iterator[dict]:
    """Record the output of ``layer`` in the yielded dict (key ``"output"``; ``"calls"`` counts its calls).

    A module called several times per forward (a shared ReLU) keeps its last call, as ``hooks.capture`` does.
    With ``calls`` given (how many times it runs per forward), the forward stops right after the last call:
    run it with ``run_forward``. Downstream code gets a clone, so in-place ops after the layer cannot change
    what was recorded.
    """
    record: dict = {"calls": 0}

    def hook(_module, _inputs, output):
        tensor = first_tensor(output, layer)
        record["calls"] += 1
        record["output"] = tensor
        if calls is not None and record["calls"] >= calls:
            raise _StopForward
        return hand_on_copy(output, tensor)

    with forward_hooks(module, {layer: hook}):
        yield record


def run_forward(module: nn.Module, inputs: torch.Tensor, record: dict, layer: str) -> torch.Tensor:
    """Run ``module(inputs)`` inside ``layer_outputs``; the layer's output (early stop included)."""
    try:
        module(inputs)
    except _StopForward:
        pass
    if "output" not in record:
        raise ConvlensError(f"layer {layer!r} did not run in the forward pass; choose another layer")
    return record["output"]


def probe_layer(model: ImageClassifier | nn.Module, inputs: torch.Tensor, layer: str,
                beyond_layer_may_fail: bool = False) -> tuple[int, torch.Tensor]:
    """How many times ``layer`` runs in one forward pass (1 for nearly every layer), and its output for
    ``inputs`` (float32, CPU). ``beyond_layer_may_fail``: an error raised after the layer ran (a classifier head
    built for another input size) ends the pass instead of propagating."""
    with preserved_state(model) as net, layer_outputs(net, layer) as record, torch.inference_mode():
        try:
            output = run_forward(net, inputs.to(module_device(net)), record, layer)
        except (RuntimeError, ValueError, AssertionError):
            if not beyond_layer_may_fail or "output" not in record:
                raise
            output = record["output"]
        return record["calls"], output.detach().float().cpu().clone()


def project_activations(model: ImageClassifier | nn.Module, inputs: torch.Tensor, layer: str,
                        units: Sequence[int], positions: Sequence[tuple[int, int] | None] | None = None,
                        rule: str = "deconvnet", layer_calls: int | None = None) -> torch.Tensor:
    """Projections of a batch: image ``b`` feeds down channel ``units[b]`` of ``layer``, either its whole map
    (``positions[b]`` None) or the single activation at ``positions[b] = (row, col)``. Returns ``B x C x H x W``
    float32 on the CPU. Images in a batch do not interact (eval mode), so each is its own projection.
    ``layer_calls`` (from ``probe_layer``) lets the forward pass stop at the layer.
    """
    return project_and_measure(model, inputs, layer, units, positions, rule, layer_calls)[0]


def project_and_measure(model: ImageClassifier | nn.Module, inputs: torch.Tensor, layer: str,
                        units: Sequence[int], positions: Sequence[tuple[int, int] | None] | None = None,
                        rule: str = "deconvnet", layer_calls: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``project_activations`` and, per image, the sum of the activations it fed down (float32, CPU): the
    value of the single activation when a position is given, for checking that it is the one expected."""
    check_rule(rule)
    positions = list(positions) if positions is not None else [None] * len(units)
    if len(units) != len(inputs) or len(positions) != len(inputs):
        raise ValueError("project_activations needs one unit and one position per image")
    with preserved_state(model) as net:
        for parameter in net.parameters():
            parameter.requires_grad_(False)  # only the input's gradient is wanted
        x = inputs.detach().to(module_device(net)).clone().requires_grad_(True)
        with (layer_outputs(net, layer, calls=layer_calls) as record, rectifier_rule(rule), torch.inference_mode(False),
              torch.enable_grad()):
            output = run_forward(net, x, record, layer)
        seed = _seed(output, units, positions, layer)
        fed = seed.flatten(1).sum(dim=1).detach().float().cpu()
        if not output.requires_grad:
            return torch.zeros(inputs.shape, dtype=torch.float32), fed
        (grad,) = torch.autograd.grad(output, x, seed, allow_unused=True)
    if grad is None:
        return torch.zeros(inputs.shape, dtype=torch.float32), fed
    return grad.detach().float().cpu(), fed


def _seed(output: torch.Tensor, units: Sequence[int], positions, layer: str) -> torch.Tensor:
    """The layer's activations with everything but the chosen ones set to zero."""
    if output.dim() < 2:
        raise ConvlensError(f"layer {layer!r} has output shape {tuple(output.shape)}: no channels to project")
    channels = output.shape[1]
    seed = torch.zeros_like(output)
    for b, (unit, position) in enumerate(zip(units, positions, strict=True)):
        if not 0 <= unit < channels:
            raise ConvlensError(f"unit {unit} out of range: layer {layer!r} has {channels} channels")
        if position is None:
            seed[b, unit] = output[b, unit].detach()
        else:
            index = (b, unit, *position)
            seed[index] = output[index].detach()
    return seed


def strongest_position(activation_map: torch.Tensor) -> tuple[int, ...]:
    """Index of the maximum of one channel's map (``h x w``, or any shape), first in row-major order on ties."""
    flat = int(torch.argmax(activation_map.reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, tuple(activation_map.shape)))


def unit_activations(model: ImageClassifier | nn.Module, inputs: torch.Tensor, layer: str) -> torch.Tensor:
    """The layer's output for ``inputs`` (float32, CPU), for choosing units and positions."""
    return probe_layer(model, inputs, layer)[1]


def strongest_units(activations: torch.Tensor, count: int) -> list[int]:
    """The ``count`` channels of one image's layer output (``C x ...``) with the largest activation."""
    peaks = activations.reshape(activations.shape[0], -1).amax(dim=1)
    order = torch.sort(peaks, descending=True, stable=True).indices
    return [int(i) for i in order[:count]]


def deconv_projection(model: ImageClassifier | nn.Module, inputs: torch.Tensor, layer: str, unit: int,
                      position: str = "map", rule: str = "deconvnet") -> torch.Tensor:
    """The projection of channel ``unit`` of ``layer`` to input space for one image (``1 x 3 x H x W``).

    ``position="map"`` feeds the channel's whole map down, ``"max"`` only its strongest activation. Returns
    ``3 x H x W`` float32 on the CPU, raw (not normalised). The rules rectify the signal, so it scales with a
    positive fed activation: with ``"max"`` it is the activation's value times the (rule-modified) gradient of
    that neuron. Activations are fed as they are (a pre-ReLU conv output may be negative).
    """
    if inputs.dim() != 4 or inputs.shape[0] != 1:
        raise ConvlensError(f"deconv_projection takes one image (1 x C x H x W), got {tuple(inputs.shape)}")
    if position not in POSITIONS:
        raise ConvlensError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")
    check_rule(rule)
    calls, output = probe_layer(model, inputs, layer)  # where to stop the forward pass, where the peak is
    if output.dim() < 2 or not 0 <= unit < output.shape[1]:
        raise ConvlensError(f"unit {unit} out of range: layer {layer!r} has output shape {tuple(output.shape)}")
    where = strongest_position(output[0, unit]) if position == "max" else None
    return project_activations(model, inputs, layer, [unit], [where], rule, layer_calls=calls)[0]


UnitsSpec = int | str | Sequence[int] | None


def parse_units(spec: UnitsSpec, channels: int) -> list[int]:
    """``"0:16"``, ``"0:64:4"``, ``"3,7,12"``, an int or a list of ints to channel indices (a range is clipped
    to ``channels``; an explicit index out of range is an error). None means every channel."""
    if spec is None:
        return list(range(channels))
    if isinstance(spec, str):
        units: list[int] = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            try:
                if ":" in part:
                    units += list(range(channels))[slice(*[int(b) if b else None for b in part.split(":")])]
                else:
                    units.append(int(part))
            except ValueError:
                raise ConvlensError(f"--units {spec!r}: expected START:STOP[:STEP] or a list like 3,7,12") from None
    else:
        units = [int(spec)] if isinstance(spec, (int, np.integer)) else [int(u) for u in spec]
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise ConvlensError(f"unit {bad[0]} out of range: the layer has {channels} channels")
    if not units:
        raise ConvlensError(f"--units {spec!r} selects no channel (the layer has {channels})")
    return list(dict.fromkeys(units))


def deconv(model: ImageClassifier | nn.Module, images: ImagesLike, layer: str, *, units: UnitsSpec = None,
           top: int | None = None, position: str = "map", rule: str = AUTO, batch_size: int = 16,
           progress: ProgressLike = False) -> DeconvResult:
    """Project channels of ``layer`` down to pixel space for each image (Zeiler & Fergus's deconvnet, guided
    backprop or the plain gradient), as ``convlens deconv`` does.

    ``units``: the channels to project, the same for every image (an int, a list, ``"0:4"`` or ``"3,7"``);
    ``top=N``: each image's N channels with the largest activation instead; neither: each image's strongest.
    ``position``: ``"map"`` feeds the channel's whole map down, ``"max"`` only its strongest activation.
    ``rule``: ``"auto"`` (``default_rule(model)``: deconvnet on max-pooling networks, guided on strided ones),
    ``"deconvnet"``, ``"guided"`` or ``"gradient"``. ``batch_size`` projections run at once.
    """
    from convlens.zeiler.figures import display_image
    from convlens.zeiler.results import DeconvResult

    if position not in POSITIONS:
        raise ConvlensError(f"position {position!r}: use one of {', '.join(POSITIONS)}")
    if units is not None and top is not None:
        raise ConvlensError("give either units (--unit, repeatable) or top (--top N), not both")
    if top is not None and top < 1:
        raise ConvlensError(f"--top must be at least 1, got {top}")
    chosen_rule = resolve_rule(model, rule)
    inputs = as_batch(model, images)
    start = time.perf_counter()
    calls, activations = probe_layer(model, inputs, layer)  # where to stop the forward pass, where the peaks are
    if activations.dim() < 3:
        raise ConvlensError(f"layer {layer!r} has output shape {tuple(activations.shape[1:])}: choose a layer "
                            "with channel maps")
    rows = [(b, unit) for b in range(len(inputs)) for unit in _units_of(activations[b], units, top)]
    peaks = [strongest_position(activations[b, unit]) for b, unit in rows]
    where = peaks if position == "max" else [None] * len(rows)
    chunks = [range(first, min(first + batch_size, len(rows))) for first in range(0, len(rows), max(1, batch_size))]
    projections = torch.cat([
        project_activations(model, inputs[[rows[i][0] for i in chunk]], layer, [rows[i][1] for i in chunk],
                            [where[i] for i in chunk], chosen_rule, layer_calls=calls)
        for chunk in track(chunks, len(chunks), "projecting", progress)])
    seconds = time.perf_counter() - start
    return DeconvResult(
        model=describe_model(model), layer=layer, rule=chosen_rule, rule_requested=rule, position=position,
        top=top, inputs=inputs.detach().float().cpu().numpy(),
        displays=np.stack([display_image(model, x) for x in inputs.detach().cpu()]),
        image=np.array([b for b, _ in rows], dtype=np.int64), units=np.array([u for _, u in rows], dtype=np.int64),
        projections=projections.numpy(),
        peaks=np.array([float(activations[b, u][p]) for (b, u), p in zip(rows, peaks, strict=True)], np.float32),
        peak_positions=np.array(peaks, dtype=np.int64).reshape(len(rows), -1),
        layer_output_shape=tuple(activations.shape[1:]), sources=describe_images(images),
        compute_seconds=seconds)


def _units_of(activations: torch.Tensor, units: UnitsSpec, top: int | None) -> list[int]:
    """The channels to project for one image (``C x ...`` activations)."""
    if top is not None:
        return strongest_units(activations, top)
    if units is not None:
        return parse_units(units, activations.shape[0])
    return strongest_units(activations, 1)


def describe_model(model: ImageClassifier | nn.Module) -> dict:
    """What summary.json records about the model (a bare module: its class)."""
    if isinstance(model, ImageClassifier):
        return model.describe()
    return {"spec": "custom", "architecture": type(model).__name__}


def describe_images(images) -> list[str]:
    """How summary.json names the images given: their paths, or what kind of object they were."""
    items = images if isinstance(images, (list, tuple)) else [images]
    return [str(i) if isinstance(i, (str, Path)) else type(i).__name__ for i in items]
