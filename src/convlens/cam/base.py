"""The shared machinery of every class activation map method: inputs, hooks, targets, batching, results.

A method is a subclass of ``BaseCAM`` that says only how the channel weights (``_weights``) or the whole
map (``_layer_map``) are computed from one layer's ``LayerData``. Everything else lives here:

- hooks are registered inside ``preserved_state`` and removed in ``finally``, so after a call, also one that
  raised, the model's weights, modes, ``requires_grad``, ``.grad`` and hooks are exactly as before;
- gradient methods freeze the parameters for the call and start the autograd graph at the hooked layer
  (its output becomes a leaf that requires grad), so the backward pass is ``torch.autograd.grad`` from the
  target scores to that layer only: no parameter gradient is ever computed or stored;
- the hooked output is handed on as a clone, so in-place ops downstream (``ReLU(inplace=True)``) cannot
  corrupt what was captured;
- images are explained in chunks of ``batch_size``; gradient-free parts run under ``torch.inference_mode``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from convlens.cam.result import CAMResult, ImageInfo
from convlens.errors import ConvlensError
from convlens.hooks import first_tensor, forward_hooks, hand_on_copy, preserved_state, resolve_layer
from convlens.models.classifier import ImageClassifier, ImagesLike, as_batch, as_module
from convlens.progress import ProgressLike, track
from convlens.targets import (
    ClassTarget,
    Target,
    TargetSpec,
    per_image_specs,
    resolve_output_targets,
    target_scores,
)


@dataclass
class LayerData:
    """One layer's view of one chunk of images: what a method computes its weights or map from."""

    layer: str
    activations: torch.Tensor  # n x C x h x w, float32
    gradients: torch.Tensor | None  # d(sum of target scores) / d(activations), for gradient methods
    inputs: torch.Tensor  # the chunk's model inputs, n x 3 x H x W
    targets: list[Target]
    scores: torch.Tensor  # n target scores on the unmodified inputs
    module: nn.Module  # the model (in eval mode), for methods that run more forward passes
    calls: int = 1  # how often the layer ran in one forward pass (the last call is the one explained)
    first_image: int = 0  # index of the chunk's first image in the whole call (for messages)
    hessian_vector: torch.Tensor | None = None  # (d G / d A) applied to A, for second-order methods


@dataclass
class _Chunk:
    raw: list[torch.Tensor]
    targets: list[Target]
    scores: torch.Tensor
    output: Any


class BaseCAM:
    """``with GradCAM(model, layer) as cam: result = cam(images, targets)``.

    ``model``: an ImageClassifier or a bare ``nn.Module``. ``layer``: a module path, a list of them (their maps
    are fused), or None for the last conv layer with spatial extent. ``images``: a preprocessed ``N x 3 x H x W``
    batch (or one ``3 x H x W`` image), or paths / PIL images when the model is an ImageClassifier.
    ``targets``: a class index, a class name, ``"predicted"`` (default), or a callable on the model output, for
    all images or one per image. ``batch_size``: images per forward pass (for Score-CAM and Ablation-CAM:
    masked or ablated copies per forward pass). ``input_size`` is only used to find the default layer of a
    bare module (ImageClassifiers know theirs).
    """

    name: ClassVar[str] = ""  # CLI name
    title: ClassVar[str] = ""  # for figures
    uses_gradients: ClassVar[bool] = False
    relu: ClassVar[bool] = True  # the method's ReLU on the weighted sum
    extra_passes: ClassVar[bool] = False  # one forward pass per channel: the progress bar counts those
    second_order: ClassVar[bool] = False  # also the Hessian-vector product (d G / d A) A (Shapley-CAM)
    cost: ClassVar[str] = ""  # the passes per batch, for the docs' table (default: from the flags above)

    def __init__(self, model: ImageClassifier | nn.Module, layer: str | Sequence[str] | None = None, *,
                 batch_size: int = 32, progress: ProgressLike = False,
                 input_size: tuple[int, int] | None = None) -> None:
        if batch_size < 1:
            raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.module = as_module(model)
        self.batch_size = batch_size
        self.progress = progress
        self.input_size = input_size or (model.input_size if isinstance(model, ImageClassifier) else (224, 224))
        self.layers = self._resolve_layers(layer)

    def _resolve_layers(self, layer: str | Sequence[str] | None) -> list[str]:
        if layer is None:
            from convlens.layers import last_spatial_conv

            return [last_spatial_conv(self.model, self.input_size)]
        names = [layer] if isinstance(layer, str) else list(layer)
        if not names:
            raise ConvlensError("no layer given; pass a layer name or None for the last conv layer")
        for name in names:
            resolve_layer(self.module, name)
        if len(set(names)) != len(names):
            raise ConvlensError(f"layer listed twice in {names}")
        return names

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc_info) -> None:
        return None  # hooks live only inside a call: there is nothing to release

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self.layers}, batch_size={self.batch_size})"

    @classmethod
    def passes(cls) -> str:
        """The passes through the model per batch, for the docs' table."""
        if cls.cost:
            return cls.cost
        if cls.extra_passes:
            return "1 + one per channel (or distinct mask) and sample"
        return "forward + backward" if cls.uses_gradients else "1 forward"

    # --- the per-method part -------------------------------------------------------------------------------
    def _weights(self, data: LayerData) -> torch.Tensor:
        """``n x C`` channel weights; the map is ``sum_c w_c A_c`` (then the method's ReLU)."""
        raise NotImplementedError

    def _layer_map(self, data: LayerData) -> torch.Tensor:
        """``n x h x w`` map before the ReLU; the default weights the channels with ``_weights``."""
        weights = self._weights(data)
        return torch.einsum("nc,nchw->nhw", weights.to(data.activations.dtype), data.activations)

    # --- the shared part -----------------------------------------------------------------------------------
    def __call__(self, images: ImagesLike, targets: TargetSpec | Sequence[TargetSpec] = None) -> CAMResult:
        inputs = self._inputs(images)
        specs = per_image_specs(targets, len(inputs))
        chunks: list[_Chunk] = []
        self._notes: list[str] = []
        start_time = time.perf_counter()
        with preserved_state(self.module) as module:
            starts = range(0, len(inputs), self.batch_size)
            images_bar = self._track(starts, len(starts), f"{self.title}: images") if not self.extra_passes else starts
            for start in images_bar:
                stop = start + self.batch_size
                chunk_specs = specs[start:stop]
                chunks.append(self._explain(module, inputs[start:stop], chunk_specs, start))
        if inputs.is_cuda:
            torch.cuda.synchronize(inputs.device)
        seconds = time.perf_counter() - start_time
        return self._result(chunks, inputs, seconds, targets)

    def _note(self, message: str) -> None:
        """Something the user must know about this call's numbers: warned once, and kept in the result."""
        self._notes.append(message)
        warnings.warn(message, CAMWarning, stacklevel=4)

    def _inputs(self, images: ImagesLike) -> torch.Tensor:
        return as_batch(self.model, images)

    def _explain(self, module: nn.Module, inputs: torch.Tensor, specs, first_image: int = 0) -> _Chunk:
        if self.uses_gradients:
            activations, gradients, hvps, calls, output, targets, scores = _forward_with_gradients(
                self.model, module, self.layers, inputs, specs, self._adapt_targets, self.second_order)
        else:
            activations, calls, output, targets, scores = _forward_capturing(
                self.model, module, self.layers, inputs, specs, self._adapt_targets)
            gradients, hvps = {}, {}
        raw = []
        for layer in self.layers:
            data = LayerData(layer, activations[layer].float(), gradients.get(layer), inputs, targets, scores,
                             module, calls[layer], first_image, hvps.get(layer))
            with torch.inference_mode():
                layer_map = self._layer_map(data).float()
                raw.append(F.relu(layer_map) if self.relu else layer_map)
        return _Chunk(raw, targets, scores, output)

    def _adapt_targets(self, targets: list[Target], output) -> list[Target]:
        """The targets a method explains, from those resolved on the model output (Finer-CAM's contrast)."""
        return targets

    def _result(self, chunks: list[_Chunk], inputs: torch.Tensor, seconds: float, spec) -> CAMResult:
        raw = tuple(torch.cat([chunk.raw[i] for chunk in chunks]).cpu() for i in range(len(self.layers)))
        maps = fuse_maps(raw, tuple(inputs.shape[-2:]))
        targets = [t for chunk in chunks for t in chunk.targets]
        outputs = [chunk.output for chunk in chunks]
        logits = torch.cat([o.detach().float().cpu() for o in outputs]) if all(
            isinstance(o, torch.Tensor) and o.ndim == 2 for o in outputs) else None
        predicted = tuple(int(i) for i in logits.argmax(1)) if logits is not None else (None,) * len(targets)
        indices = tuple(explained_class(t) for t in targets)
        scores = torch.cat([chunk.scores for chunk in chunks]).float().cpu()
        return CAMResult(self.name, tuple(self.layers), raw, maps, indices, predicted, scores, logits,
                         input=inputs.detach().cpu(), title=self.title or self.name, info=self._info(spec),
                         compute_seconds=seconds, notes=tuple(self._notes))

    def _info(self, spec) -> ImageInfo:
        if isinstance(self.model, ImageClassifier):
            return ImageInfo(tuple(self.model.class_names), self.model.preprocessing, self.model.describe(),
                             target_spec=_spec_text(spec))
        return ImageInfo(model={"class": type(self.module).__name__}, target_spec=_spec_text(spec))

    def _track(self, items: Iterable, total: int, description: str) -> Iterator:
        return track(items, total, description, self.progress)


def explained_class(target: Target) -> int | None:
    """The class a target explains: a ``ClassTarget``'s index, or the ``explained_class`` a custom target
    declares (Finer-CAM's contrast still explains one class); None for other callables."""
    if isinstance(target, ClassTarget):
        return target.index
    return getattr(target, "explained_class", None)


class CAMWarning(UserWarning):
    """A CAM whose numbers need a word of caution (shown once per call by ``warnings``)."""


def _spec_text(spec) -> str:
    if spec is None:
        return "predicted"
    if isinstance(spec, (list, tuple)):
        return ", ".join(_spec_text(item) for item in spec)
    if callable(spec) and not isinstance(spec, (int, str)):
        return getattr(spec, "__name__", type(spec).__name__)
    return str(spec)


# --- the registry -------------------------------------------------------------------------------------------
METHODS: dict[str, type[BaseCAM]] = {}  # CLI name -> class, in the order registered


def register(method: type[BaseCAM]) -> type[BaseCAM]:
    """Class decorator: make ``method`` available by its ``name`` (``convlens.cam(method=NAME)``, the CLI's
    ``--method`` and the method table of docs/cam.md)."""
    if not method.name or method.name in METHODS:
        raise ValueError(f"CAM method {method.__name__} needs a unique name, got {method.name!r}")
    METHODS[method.name] = method
    return method


def method_table() -> str:
    """The markdown table of docs/cam.md, one row per registered method: CLI name, class, what it computes (the
    first paragraph of its docstring) and the passes it runs. A test keeps docs/cam.md equal to it."""
    rows = ["| CLI name | class | what it computes | passes |", "|---|---|---|---|"]
    for name, method in METHODS.items():
        doc = " ".join((method.__doc__ or "").strip().split("\n\n")[0].split())
        doc = doc.replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{name}` | `{method.__name__}` | {doc} | {method.passes()} |")
    return "\n".join(rows)


# --- maps ----------------------------------------------------------------------------------------------------
def min_max_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``h x w`` map of an ``N x h x w`` stack to [0, 1]; a constant map becomes zeros, a map with a
    NaN all NaN."""
    flat = maps.flatten(1)
    low = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny),
                         torch.zeros_like(flat))
    # an undefined map (NaN anywhere) stays undefined rather than becoming a clean-looking zero map
    scaled = torch.where(flat.isnan().any(1, keepdim=True), torch.full_like(flat, float("nan")), scaled)
    return scaled.view_as(maps)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``N x h x w`` maps resized bilinearly (pixel centres aligned, like OpenCV) to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def fuse_maps(raw: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Each layer's map scaled to [0, 1] and upsampled to ``size``, averaged over layers, scaled to [0, 1]
    (pytorch-grad-cam's order; with one layer this is the upsampled map scaled to [0, 1])."""
    upsampled = [upsample(min_max_per_image(layer_map), size) for layer_map in raw]
    return min_max_per_image(upsampled[0] if len(upsampled) == 1 else torch.stack(upsampled).mean(0))


# --- targets -------------------------------------------------------------------------------------------------
def _storing_hook(name: str, store: dict, make_leaf: bool, calls: dict):
    def hook(module, args, output):
        calls[name] = calls.get(name, 0) + 1
        tensor = first_tensor(output, name)
        if tensor.ndim != 4:
            raise ConvlensError(f"layer {name!r} gives {tuple(tensor.shape)}, not an N x C x H x W feature map; "
                                "choose a conv layer or block (`convlens layers MODEL`)")
        if tuple(tensor.shape[-2:]) == (1, 1):  # one value per channel: the map would be one flat colour
            raise ConvlensError(f"layer {name!r} gives a 1x1 map at this input size, so a CAM there shows nothing "
                                "(every pixel the same); choose an earlier layer with a larger map")
        if make_leaf and not tensor.requires_grad:
            # Nothing upstream needs a gradient: the graph starts here, the backward pass stops here.
            tensor = tensor.detach().requires_grad_()
        store[name] = tensor
        # Hand on a copy: in-place ops downstream then modify the copy, never what we captured.
        return hand_on_copy(output, tensor)

    return hook


def _check_ran(store: dict, layers: Sequence[str]) -> None:
    missing = [layer for layer in layers if layer not in store]
    if missing:
        raise ConvlensError(f"layer {missing[0]!r} did not run in the forward pass; choose another layer")


def _forward_capturing(model, module: nn.Module, layers: Sequence[str], inputs: torch.Tensor, specs,
                       adapt=lambda targets, output: targets):
    """One inference-mode forward pass capturing the layers' outputs; targets resolved on its output."""
    store: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    hooks = {name: _storing_hook(name, store, False, calls) for name in layers}
    with forward_hooks(module, hooks), torch.inference_mode():
        output = module(inputs)
    _check_ran(store, layers)
    targets = adapt(resolve_output_targets(model, specs, output), output)
    with torch.inference_mode():
        scores = target_scores(targets, output)
    return store, calls, output, targets, scores


def _forward_with_gradients(model, module: nn.Module, layers: Sequence[str], inputs: torch.Tensor, specs,
                            adapt=lambda targets, output: targets, second_order: bool = False):
    """Forward pass with the graph starting at the hooked layers, then ``torch.autograd.grad`` of the summed
    target scores with respect to their outputs. Parameters are frozen for the call (restored by the caller's
    ``preserved_state``), so no parameter gradient is computed and ``.grad`` is never touched.
    ``second_order``: also ``(d G / d A) A``, the Hessian of the score applied to the activations."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    store: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    hvps: dict[str, torch.Tensor] = {}
    with torch.inference_mode(False), torch.enable_grad():
        with forward_hooks(module, {name: _storing_hook(name, store, True, calls) for name in layers}):
            output = module(inputs)
        _check_ran(store, layers)
        targets = adapt(resolve_output_targets(model, specs, output), output)
        scores = target_scores(targets, output)
        captured = [store[layer] for layer in layers]
        if not scores.requires_grad:
            raise ConvlensError(f"the target scores do not depend on layer {layers[0]!r}; choose another layer "
                                "or a target computed from the model output")
        gradients = torch.autograd.grad(scores.sum(), captured, allow_unused=True, create_graph=second_order)
        for layer, gradient in zip(layers, gradients, strict=True):
            if gradient is None:
                raise ConvlensError(f"the target score does not depend on layer {layer!r}; choose another layer")
        if second_order:
            for layer, tensor, gradient in zip(layers, captured, gradients, strict=True):
                (hvp,) = torch.autograd.grad(gradient, tensor, grad_outputs=tensor.detach(), retain_graph=True,
                                             allow_unused=True) if gradient.requires_grad else (None,)
                hvps[layer] = torch.zeros_like(tensor) if hvp is None else hvp.detach()
    gradients = [gradient.detach() for gradient in gradients]
    activations = {layer: tensor.detach() for layer, tensor in zip(layers, captured, strict=True)}
    if isinstance(output, torch.Tensor):
        output = output.detach()
    return (activations, dict(zip(layers, gradients, strict=True)), hvps, calls, output, targets,
            scores.detach())
