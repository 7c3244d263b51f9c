"""Pixel attributions: gradient saliency, guided backprop, deconvnet, SmoothGrad, Integrated Gradients and
Guided Grad-CAM, with one call shape: ``convlens.attribution(model, images, method="smoothgrad")``.

SmoothGrad and Integrated Gradients equal Captum's ``NoiseTunnel(Saliency)`` and ``IntegratedGradients`` with the
same seed, baseline and steps; Guided Grad-CAM equals Captum's ``GuidedGradCam`` (bilinear upsampling).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from convlens.attribution.methods import (
    IG_METHODS,
    guided_gradcam,
    integrated_gradients,
    quadrature,
    rule_gradients,
    smoothgrad,
)
from convlens.attribution.result import TITLES, AttributionResult
from convlens.errors import ConvlensError, nearest_names
from convlens.hooks import preserved_state
from convlens.models.classifier import ImageClassifier, ImagesLike, as_batch, as_module
from convlens.progress import ProgressLike
from convlens.targets import ClassTarget, TargetSpec, resolve_targets

METHODS = tuple(TITLES)
ALIASES = {"gradient": "saliency", "ig": "integrated-gradients", "integratedgradients": "integrated-gradients",
           "guidedgradcam": "guided-gradcam", "guidedbackprop": "guided"}


def method_name(name: str) -> str:
    """The canonical name of an attribution method (``ig`` -> ``integrated-gradients``), or an error listing them."""
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key.replace("-", ""), key)
    if key in METHODS:
        return key
    close = ", ".join(nearest_names(name, list(METHODS)))
    raise ConvlensError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)} (nearest: {close})")


def attribute(model: ImageClassifier | torch.nn.Module, inputs: torch.Tensor, classes: Sequence[int],
              method: str, *, batch_size: int = 32, progress: ProgressLike = False, **options) -> torch.Tensor:
    """``N x 3 x H x W`` attributions of the class logits ``classes`` for a preprocessed batch."""
    method = method_name(method)
    targets = [ClassTarget(int(c)) for c in classes]
    module = as_module(model)
    if method in ("saliency", "guided", "deconvnet"):
        rule = {"saliency": "gradient"}.get(method, method)
        return rule_gradients(module, inputs, targets, rule, batch_size=batch_size, progress=progress,
                              description=TITLES[method])
    if method == "smoothgrad":
        return smoothgrad(module, inputs, targets, samples=options.get("samples", 50), stdev=options.get("stdev"),
                          noise_level=options.get("noise_level", 0.15), seed=options.get("seed", 0),
                          batch_size=batch_size, progress=progress)
    if method == "integrated-gradients":
        return integrated_gradients(module, inputs, targets, baseline=options.get("baseline", 0.0),
                                    steps=options.get("steps", 50), method=options.get("ig_method", "gausslegendre"),
                                    batch_size=batch_size, progress=progress)
    return guided_gradcam(model, inputs, targets, layer=options.get("layer"), batch_size=batch_size,
                          progress=progress)[0]


def attribution_maps(attributions: torch.Tensor, method: str) -> torch.Tensor:
    """``N x H x W`` maps in [0, 1]: the signed channel sum for Integrated Gradients (positive evidence ranks
    first), the largest ``|a|`` over channels otherwise (Simonyan et al.), scaled to [0, 1] per image."""
    from convlens.cam import min_max_per_image

    if method_name(method) == "integrated-gradients":
        reduced = attributions.sum(dim=1)
    else:
        reduced = attributions.abs().amax(dim=1)
    return min_max_per_image(reduced.float())


def attribution(model: ImageClassifier | torch.nn.Module, images: ImagesLike, *, method: str = "smoothgrad",
                target: TargetSpec | Sequence[TargetSpec] = "predicted", batch_size: int = 32,
                samples: int = 50, stdev: float | None = None, noise_level: float = 0.15, seed: int = 0,
                steps: int = 50, baseline: float | torch.Tensor = 0.0, ig_method: str = "gausslegendre",
                layer: str | None = None, progress: ProgressLike = False) -> AttributionResult:
    """Attributions of a class logit to the input pixels.

    ``method``: ``saliency`` (gradient), ``guided`` (guided backprop), ``deconvnet``, ``smoothgrad``
    (``samples`` noisy copies, noise ``stdev`` in input units or ``noise_level`` times each image's range,
    ``seed``), ``integrated-gradients`` (``steps``, ``baseline``, ``ig_method`` one of Captum's rules) or
    ``guided-gradcam`` (``layer``: the Grad-CAM layer, default the last conv layer). ``target``: class index,
    name, ``"predicted"`` (default), or one per image. ``batch_size``: inputs (noisy copies, steps) per pass.
    """
    method = method_name(method)
    if batch_size < 1:
        raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")
    inputs = as_batch(model, images)
    module = as_module(model)
    start = time.perf_counter()
    with preserved_state(module) as net, torch.inference_mode():
        logits = net(inputs)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ConvlensError("attribution needs a model whose output is one N x classes tensor of logits")
    targets = resolve_targets(model, target, logits)
    if not all(isinstance(t, ClassTarget) for t in targets):
        raise ConvlensError("attribution explains class logits: give targets as class indices, names or 'predicted'")
    classes = [t.index for t in targets]
    options = {"samples": samples, "stdev": stdev, "noise_level": noise_level, "seed": seed, "steps": steps,
               "baseline": baseline, "ig_method": ig_method, "layer": layer}
    attributions = attribute(model, inputs, classes, method, batch_size=batch_size, progress=progress, **options)
    maps = attribution_maps(attributions, method)
    seconds = time.perf_counter() - start
    scores = logits.detach().float().cpu()[torch.arange(len(classes)), torch.tensor(classes)]
    parameters = _parameters(method, options, batch_size)
    is_classifier = isinstance(model, ImageClassifier)
    display = torch.stack([torch.from_numpy(model.preprocessing.to_display(x)) for x in inputs]).numpy() \
        if is_classifier else None
    return AttributionResult(
        method=method, attributions=attributions, maps=maps, inputs=inputs.detach().float().cpu(),
        targets=tuple(classes), scores=scores, parameters=parameters,
        model_info=model.describe() if is_classifier else {"spec": type(module).__name__},
        class_names=tuple(model.class_names) if is_classifier else (), display=display, compute_seconds=seconds)


def _parameters(method: str, options: dict, batch_size: int) -> dict:
    keep = {"smoothgrad": ("samples", "stdev", "noise_level", "seed"),
            "integrated-gradients": ("steps", "baseline", "ig_method"), "guided-gradcam": ("layer",)}
    chosen = {key: options[key] for key in keep.get(method, ())}
    if isinstance(chosen.get("baseline"), torch.Tensor):
        chosen["baseline"] = "tensor"
    return {"batch_size": batch_size, **chosen}


__all__ = [
    "IG_METHODS",
    "METHODS",
    "AttributionResult",
    "attribute",
    "attribution",
    "attribution_maps",
    "guided_gradcam",
    "integrated_gradients",
    "method_name",
    "quadrature",
    "rule_gradients",
    "smoothgrad",
]

from convlens._callable import callable_package  # noqa: E402

callable_package(__name__, "attribution")
