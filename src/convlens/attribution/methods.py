"""Pixel attributions of a class score: gradients under a rectifier rule, SmoothGrad, Integrated Gradients and
Guided Grad-CAM. Every function takes a preprocessed batch and one resolved target per image and returns
``N x 3 x H x W`` float32 attributions on the CPU.

- ``rule_gradients``: the gradient of the target score with respect to the input, with ReLUs passing the signal
  down by a ``convlens.deconv`` rule (``gradient``: plain saliency, Simonyan et al. 2014; ``guided``: guided
  backprop, Springenberg et al. 2015; ``deconvnet``: Zeiler & Fergus 2014).
- ``smoothgrad`` (Smilkov et al. 2017): the mean absolute gradient over noisy copies of the input; equal to
  Captum's ``NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=n, stdevs=s)`` with the
  same seed (noise drawn in Captum's order: image by image, ``samples`` copies each).
- ``integrated_gradients`` (Sundararajan et al. 2017): ``(x - x') * sum_k w_k grad(x' + a_k (x - x'))`` with
  Captum's quadrature (``gausslegendre`` by default, or the Riemann rules); equal to Captum's
  ``IntegratedGradients`` with the same baseline, steps and method.
- ``guided_gradcam`` (Selvaraju et al. 2017): guided backprop times the Grad-CAM map (after its ReLU, not
  normalised) upsampled bilinearly to the input, as Captum's ``GuidedGradCam(interpolate_mode="bilinear")``.

Noisy copies and interpolation steps run ``batch_size`` at a time across images; parameters are frozen for
the call, so no parameter gradient is computed, and the model is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.hooks import preserved_state
from convlens.progress import ProgressLike, track
from convlens.targets import Target, target_scores
from convlens.zeiler.deconv import rectifier_rule

IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def rule_gradients(module: nn.Module, inputs: torch.Tensor, targets: Sequence[Target], rule: str = "gradient",
                   owners: Sequence[int] | None = None, batch_size: int = 32,
                   progress: ProgressLike = False, description: str = "gradients") -> torch.Tensor:
    """d(target score)/d(input) for each row of ``inputs`` (row ``i`` scored with ``targets[owners[i]]``)."""
    owners = list(range(len(inputs))) if owners is None else list(owners)
    grads = []
    starts = range(0, len(inputs), batch_size)
    with preserved_state(module) as net:
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        for start in track(starts, len(starts), description, progress):
            chunk = inputs[start:start + batch_size].detach().clone().requires_grad_(True)
            with torch.inference_mode(False), torch.enable_grad(), rectifier_rule(rule):
                output = net(chunk)
                scores = target_scores(targets, output, owners[start:start + batch_size])
            if not scores.requires_grad:
                grads.append(torch.zeros(chunk.shape, dtype=torch.float32))
                continue
            (grad,) = torch.autograd.grad(scores.sum(), chunk, allow_unused=True)
            grads.append(torch.zeros(chunk.shape) if grad is None else grad.detach().float().cpu())
    return torch.cat(grads)


def smoothgrad(module: nn.Module, inputs: torch.Tensor, targets: Sequence[Target], samples: int = 50,
               stdev: float | Sequence[float] | None = None, noise_level: float = 0.15, seed: int = 0,
               batch_size: int = 32, progress: ProgressLike = False) -> torch.Tensor:
    """Mean ``|gradient|`` over ``samples`` noisy copies of each image (Captum's SmoothGrad of ``Saliency``).

    ``stdev``: the noise's standard deviation in input units, one for all images or one per image; None takes
    ``noise_level`` times each image's value range (Smilkov et al.'s 10-20 %).
    """
    if samples < 1:
        raise ConvlensError(f"samples must be at least 1, got {samples}")
    count = len(inputs)
    sigmas = _noise_stdevs(inputs, stdev, noise_level)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    # Captum draws all the noise at once, shaped like the repeated batch (image-major), from N(0, 1) times stdev.
    noise = torch.randn((count * samples, *inputs.shape[1:]), generator=generator, device=inputs.device,
                        dtype=inputs.dtype)
    noisy = inputs.repeat_interleave(samples, dim=0) + noise * sigmas.repeat_interleave(samples)[:, None, None, None]
    owners = torch.arange(count).repeat_interleave(samples).tolist()
    grads = rule_gradients(module, noisy, targets, "gradient", owners, batch_size, progress, "SmoothGrad: copies")
    return grads.abs().view(count, samples, *inputs.shape[1:]).sum(dim=1) * (1 / samples)


def _noise_stdevs(inputs: torch.Tensor, stdev, noise_level: float) -> torch.Tensor:
    count = len(inputs)
    if stdev is None:
        flat = inputs.detach().flatten(1)
        return (noise_level * (flat.amax(1) - flat.amin(1))).to(inputs.dtype)
    values = torch.as_tensor(stdev, dtype=inputs.dtype, device=inputs.device).flatten()
    if values.numel() == 1:
        values = values.expand(count)
    if values.numel() != count:
        raise ConvlensError(f"stdev: give one value or one per image ({count}), got {values.numel()}")
    if bool((values < 0).any()):
        raise ConvlensError("stdev must not be negative")
    return values


def quadrature(steps: int, method: str = "gausslegendre") -> tuple[list[float], list[float]]:
    """``(step sizes, alphas)`` on [0, 1], as Captum's ``approximation_parameters`` computes them."""
    if steps < 1:
        raise ConvlensError(f"steps must be at least 1, got {steps}")
    if method == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(steps)
        return list(0.5 * weights), list(0.5 * (1 + points))
    if method not in IG_METHODS:
        raise ConvlensError(f"unknown integration method {method!r}; choose from {', '.join(IG_METHODS)}")
    if steps < 2:
        raise ConvlensError("the Riemann rules need at least 2 steps")
    # Captum's rules, quirks included (the trapezoid's steps are 1/n, halved at both ends).
    sizes = [1.0 / steps] * steps
    if method == "riemann_trapezoid":
        sizes[0] /= 2
        sizes[-1] /= 2
        return sizes, torch.linspace(0, 1, steps).tolist()
    low, high = {"riemann_left": (0.0, 1 - 1 / steps), "riemann_right": (1 / steps, 1.0),
                 "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps))}[method]
    return sizes, torch.linspace(low, high, steps).tolist()


def integrated_gradients(module: nn.Module, inputs: torch.Tensor, targets: Sequence[Target],
                         baseline: float | torch.Tensor = 0.0, steps: int = 50, method: str = "gausslegendre",
                         batch_size: int = 32, progress: ProgressLike = False) -> torch.Tensor:
    """Integrated Gradients from ``baseline`` (a number, one ``3 x H x W`` image or one per image)."""
    sizes, alphas = quadrature(steps, method)
    count = len(inputs)
    base = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    base = base.expand_as(inputs) if base.ndim < 4 else base
    if base.shape != inputs.shape:
        raise ConvlensError(f"baseline shape {tuple(base.shape)} does not match the inputs {tuple(inputs.shape)}")
    alpha = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)
    # step-major, as Captum: every image at the first alpha, then every image at the second ...
    scaled = (base[None] + alpha[:, None, None, None, None] * (inputs - base)[None]).flatten(0, 1)
    owners = list(range(count)) * steps
    grads = rule_gradients(module, scaled, targets, "gradient", owners, batch_size, progress,
                           "Integrated Gradients: steps")
    weights = torch.tensor(sizes).float().view(steps, 1)
    total = (grads.contiguous().view(steps, -1) * weights).view(steps, *inputs.shape).sum(dim=0)
    return total * (inputs - base).detach().float().cpu()


def guided_gradcam(model, inputs: torch.Tensor, targets: Sequence[Target], layer: str | None = None,
                   batch_size: int = 32, progress: ProgressLike = False) -> tuple[torch.Tensor, str]:
    """Guided backprop times the upsampled Grad-CAM map; returns the attributions and the Grad-CAM layer."""
    from convlens.cam import GradCAM, upsample
    from convlens.models.classifier import as_module

    with GradCAM(model, layer, batch_size=batch_size) as extractor:
        cam = extractor(inputs, list(targets))
    heat = upsample(cam.cam_raw, tuple(inputs.shape[-2:]))
    guided = rule_gradients(as_module(model), inputs, targets, "guided", batch_size=batch_size, progress=progress,
                            description="Guided Grad-CAM: guided backprop")
    return guided * heat[:, None], cam.layers[0]
