"""More CAM methods, each a small subclass registered once: pytorch-grad-cam's HiResCAM, element-wise Grad-CAM,
EigenGrad-CAM, KPCA-CAM, Shapley-CAM, Finer-CAM and FullGrad, and torchcam's SS-CAM, IS-CAM and SmoothGrad-CAM++.

Each follows its peer's arithmetic (the tests compare to 1e-4 on resnet18); the stochastic ones draw their
noise from a seeded generator in the peer's order, so a call is deterministic and, seeded alike, equal to the
peer.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.cam.base import (
    BaseCAM,
    LayerData,
    _Chunk,
    _forward_capturing,
    _forward_with_gradients,
    register,
    upsample,
)
from convlens.cam.methods import GradCAM, orient, principal_map
from convlens.errors import ConvlensError
from convlens.hooks import forward_hooks, forward_pre_hooks, hand_on_copy
from convlens.models.loading import preferred_memory_format
from convlens.targets import ClassTarget, Target, target_scores

TORCHCAM_EPS = 1e-8  # torchcam's normalisation and Grad-CAM++ constants
FULLGRAD_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


@register
class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): ``relu(sum_c G_c * A_c)``, the gradient applied position by position
    (Grad-CAM averages it first), so the map is exactly what the score sums up at this layer."""

    name = "hirescam"
    title = "HiResCAM"
    uses_gradients = True

    def _layer_map(self, data: LayerData) -> torch.Tensor:
        return (data.gradients.float() * data.activations).sum(dim=1)


@register
class GradCAMElementWise(BaseCAM):
    """Element-wise Grad-CAM (pytorch-grad-cam): ``sum_c relu(G_c * A_c)``, the ReLU before the channel sum."""

    name = "gradcamelementwise"
    title = "Grad-CAM element-wise"
    uses_gradients = True

    def _layer_map(self, data: LayerData) -> torch.Tensor:
        return (data.gradients.float() * data.activations).clamp_min(0).sum(dim=1)


@register
class EigenGradCAM(BaseCAM):
    """EigenGrad-CAM (pytorch-grad-cam): Eigen-CAM's first principal component of ``G * A`` (class-specific);
    oriented towards the positive part of ``G * A`` as Eigen-CAM is towards the layer's."""

    name = "eigengradcam"
    title = "EigenGrad-CAM"
    uses_gradients = True

    def _layer_map(self, data: LayerData) -> torch.Tensor:
        return principal_map(data.gradients.float() * data.activations)


@register
class KPCACAM(BaseCAM):
    """KPCA-CAM (Karmani et al. 2024): Eigen-CAM with kernel PCA, as scikit-learn's ``KernelPCA`` computes it
    for pytorch-grad-cam (positions x channels centred, default sigmoid kernel ``tanh(gamma <x, y> + 1)`` with
    ``gamma = 1 / channels``; the projection is the first eigenvector times the root of its eigenvalue).
    Oriented like Eigen-CAM."""

    name = "kpcacam"
    title = "KPCA-CAM"
    KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")

    def __init__(self, *args, kernel: str = "sigmoid", gamma: float | None = None, **options) -> None:
        if kernel not in self.KERNELS:
            raise ConvlensError(f"unknown KPCA kernel {kernel!r}; choose from {', '.join(self.KERNELS)}")
        self.kernel, self.gamma = kernel, gamma
        super().__init__(*args, **options)

    def _layer_map(self, data: LayerData) -> torch.Tensor:
        activations = data.activations.double()
        n, channels, h, w = activations.shape
        positions = activations.flatten(2).transpose(1, 2)
        centred = positions - positions.mean(dim=1, keepdim=True)
        kernel = self._kernel(centred, self.gamma or 1.0 / channels)
        rows = kernel.mean(dim=2, keepdim=True)
        kernel = kernel - rows - rows.transpose(1, 2) + kernel.mean(dim=(1, 2), keepdim=True)  # KernelCenterer
        values, vectors = torch.linalg.eigh(kernel)
        projection = vectors[..., -1] * values[:, -1:].clamp_min(0).sqrt()
        return orient(projection, activations).view(n, h, w).float()

    def _kernel(self, x: torch.Tensor, gamma: float) -> torch.Tensor:
        inner = x @ x.transpose(1, 2)
        if self.kernel == "sigmoid":
            return torch.tanh(gamma * inner + 1.0)
        if self.kernel == "poly":
            return (gamma * inner + 1.0) ** 3
        if self.kernel == "rbf":
            return torch.exp(-gamma * torch.cdist(x, x).pow(2))
        if self.kernel == "cosine":
            unit = F.normalize(x, dim=2)
            return unit @ unit.transpose(1, 2)
        return inner


@register
class ShapleyCAM(BaseCAM):
    """Shapley-CAM (Cai et al. 2025): Grad-CAM's weights with the second-order term of the Shapley value,
    ``w_c = mean_ij (G - 0.5 (d G / d A) A)_cij``. On piecewise-linear heads (ReLU networks) the Hessian term is
    0 and this is Grad-CAM; smooth activations (SiLU, GELU) after the layer make them differ."""

    name = "shapleycam"
    title = "Shapley-CAM"
    cost = "forward + backward + Hessian-vector product"
    uses_gradients = True
    second_order = True

    def _weights(self, data: LayerData) -> torch.Tensor:
        return (data.gradients.float() - 0.5 * data.hessian_vector.float()).mean(dim=(2, 3))


@dataclass(frozen=True)
class FinerTarget:
    """Finer-CAM's score: the class's logit against its most similar classes, weighted by their probabilities,
    ``sum_k p_k (y_c - alpha y_k) / (sum_k p_k + 1e-9)`` (pytorch-grad-cam's ``FinerWeightedTarget``)."""

    explained_class: int
    comparisons: tuple[int, ...]
    alpha: float = 1.0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        main = output[..., self.explained_class]
        probabilities = torch.softmax(output, dim=-1)
        weights = [probabilities[..., k] for k in self.comparisons]
        numerator = sum(w * (main - self.alpha * output[..., k]) for w, k in zip(weights, self.comparisons,
                                                                                  strict=True))
        return numerator / (sum(weights) + 1e-9)


@register
class FinerCAM(GradCAM):
    """Finer-CAM (Zhang et al. 2025): Grad-CAM of ``FinerTarget``, the explained class against the classes whose
    logits are closest to its own (by default the 1st, 2nd and 3rd closest), so the map shows what tells the
    class apart from its look-alikes rather than what they share."""

    name = "finercam"
    title = "Finer-CAM"

    def __init__(self, *args, comparisons: Sequence[int] = (1, 2, 3), alpha: float = 1.0, **options) -> None:
        self.comparisons, self.alpha = tuple(comparisons), alpha
        super().__init__(*args, **options)

    def _adapt_targets(self, targets: list[Target], output) -> list[Target]:
        if not (isinstance(output, torch.Tensor) and output.ndim == 2):
            raise ConvlensError("Finer-CAM compares classes: the model output must be N x classes logits")
        logits = output.detach()
        adapted = []
        for row, target in enumerate(targets):
            if not isinstance(target, ClassTarget):
                raise ConvlensError("Finer-CAM explains a class: give targets as class indices, names or "
                                    "'predicted'")
            distance = (logits[row] - logits[row, target.index]).abs()
            order = torch.argsort(distance, stable=True).tolist()
            order.remove(target.index)
            ranks = [k for k in self.comparisons if 1 <= k <= len(order)]
            adapted.append(FinerTarget(target.index, tuple(order[k - 1] for k in ranks), self.alpha))
        return adapted


@register
class FullGrad(BaseCAM):
    """FullGrad (Srinivas & Fleuret 2019) as pytorch-grad-cam computes it: ``|dS/dx * x|`` plus, for every
    Conv2d and BatchNorm2d with a bias, ``|b * dS/dz|`` at its output ``z`` (batch norm's effective bias
    ``b - mean * weight / sqrt(var + eps)``); each channel scaled to [0, 1] (``(m - min) / (max - min + 1e-7)``)
    and resized to the input, all summed. Subclasses count too: for timm's ``BatchNormAct2d`` the bias term is
    taken at the input of its activation (pytorch-grad-cam matches exact types and skips them). ``layer`` is
    ignored: the map is the whole network's, at the input's resolution (``cam_raw`` is ``N x H x W``; its
    layer is called ``input``)."""

    name = "fullgrad"
    title = "FullGrad"
    cost = "forward + backward (the whole network, from the input)"
    uses_gradients = True
    relu = False

    def _resolve_layers(self, layer) -> list[str]:
        self.bias_layers = [name for name, module in self.module.named_modules()
                            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and module.bias is not None]
        if not self.bias_layers:
            raise ConvlensError("FullGrad needs Conv2d or BatchNorm2d layers with a bias; use gradcam")
        return ["input"]

    def _explain(self, module: nn.Module, inputs: torch.Tensor, specs, first_image: int = 0) -> _Chunk:
        from convlens.targets import resolve_output_targets

        for parameter in module.parameters():
            parameter.requires_grad_(False)
        outputs: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(mod, args, output):
                outputs[name] = output
                return hand_on_copy(output, output)  # in-place ops downstream change the copy

            return hook

        def keep_input(name):
            def hook(mod, args):
                outputs[name] = args[0]
                return (args[0].clone(), *args[1:])

            return hook

        # timm's BatchNormAct2d applies its activation inside: the bias acts on the input of its ``act``
        fused = {f"{name}.act": name for name in self.bias_layers
                 if isinstance(getattr(module.get_submodule(name), "act", None), nn.Module)}
        plain = [name for name in self.bias_layers if f"{name}.act" not in fused]
        with torch.inference_mode(False), torch.enable_grad():
            image = inputs.detach().clone().requires_grad_()
            with forward_hooks(module, {name: keep(name) for name in plain}), \
                    forward_pre_hooks(module, {act: keep_input(name) for act, name in fused.items()}):
                output = module(image)
            targets = resolve_output_targets(self.model, specs, output)
            scores = target_scores(targets, output)
            names = [name for name in self.bias_layers if name in outputs]
            gradients = torch.autograd.grad(scores.sum(), [image, *(outputs[n] for n in names)], allow_unused=True)
        size = tuple(inputs.shape[-2:])
        with torch.inference_mode():
            total = _scaled_channels((gradients[0] * image.detach()).abs(), size).sum(dim=1)
            for name, gradient in zip(names, gradients[1:], strict=True):
                if gradient is not None:
                    bias = _effective_bias(module.get_submodule(name)).to(gradient)
                    total = total + _scaled_channels((bias[None, :, None, None] * gradient).abs(), size).sum(dim=1)
        return _Chunk([total.float()], targets, scores.detach(), output.detach() if isinstance(
            output, torch.Tensor) else output)


def _effective_bias(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.BatchNorm2d):
        return layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return layer.bias.detach()


def _scaled_channels(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each ``h x w`` channel of ``n x C x h x w`` scaled as pytorch-grad-cam's ``scale_cam_image``, then resized
    to ``size`` (bilinear, like OpenCV)."""
    n, channels, h, w = maps.shape
    flat = maps.float().flatten(2)
    flat = flat - flat.amin(dim=2, keepdim=True)
    flat = flat / (flat.amax(dim=2, keepdim=True) + FULLGRAD_EPS)
    return upsample(flat.view(n * channels, h, w), size).view(n, channels, *size)


# --- torchcam's stochastic methods ----------------------------------------------------------------------------
@contextmanager
def seeded(seed: int, device: torch.device):
    """The global generator seeded for the block and restored after it (torchcam draws from the global one)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _TorchcamScoreCAM(BaseCAM):
    """torchcam's Score-CAM family: masks are the channels scaled to [0, 1] at the layer
    (``(a - min) / (max - min + 1e-8)``), then upsampled (bilinear, corners not aligned); the weights are the
    softmax over channels of the averaged target-score gains of the masked inputs. Subclasses say which masked
    inputs (``_samples``). Images are explained one at a time (the masks of one image: ``C x H x W``)."""

    extra_passes = True

    def __init__(self, *args, num_samples: int, seed: int = 0, **options) -> None:
        if num_samples < 1:
            raise ConvlensError(f"num_samples must be at least 1, got {num_samples}")
        self.num_samples, self.seed = num_samples, seed
        super().__init__(*args, **options)

    def _weights(self, data: LayerData) -> torch.Tensor:
        activations = data.activations
        flat = activations.flatten(2)
        low = flat.amin(dim=2, keepdim=True)
        scaled = ((flat - low) / ((flat - low).amax(dim=2, keepdim=True) + TORCHCAM_EPS)).view_as(activations)
        size = tuple(data.inputs.shape[-2:])
        weights = []
        for image in range(len(activations)):
            masks = F.interpolate(scaled[image:image + 1], size=size, mode="bilinear", align_corners=False)[0]
            gains = torch.zeros(len(masks), device=masks.device)
            with seeded(self.seed + data.first_image + image, data.inputs.device):
                for sample in range(self.num_samples):
                    gains += self._gains(data, image, self._sample_masks(masks, sample))
            weights.append(torch.softmax(gains / self.num_samples, dim=0))
        return torch.stack(weights)

    def _sample_masks(self, masks: torch.Tensor, sample: int):
        """``(masks, factor)`` of one sample: the input is masked with ``factor * (masks * input)``."""
        raise NotImplementedError

    def _gains(self, data: LayerData, image: int, sample) -> torch.Tensor:
        masks, factor = sample
        device = data.inputs.device
        baseline = data.scores[image].float()
        gains = []
        for start in range(0, len(masks), self.batch_size):
            chunk = masks[start:start + self.batch_size, None]
            masked = torch.mul(chunk, data.inputs[image:image + 1])
            if factor != 1.0:
                masked = factor * masked
            output = data.module(masked.contiguous(memory_format=preferred_memory_format(device)))
            scores = target_scores(data.targets, output, [image] * len(chunk)).float()
            gains.append(scores - baseline)
        return torch.cat(gains)


@register
class SSCAM(_TorchcamScoreCAM):
    """SS-CAM (Wang et al. 2020, as torchcam): Score-CAM averaged over ``num_samples`` (35) masks with Gaussian
    noise (std 2.0) added at the input's resolution; noise from ``torch.distributions.Normal`` seeded with
    ``seed + image index``, drawn as torchcam draws it (torchcam seeded alike gives the same numbers)."""

    name = "sscam"
    title = "SS-CAM"
    cost = "1 + channels x samples forwards"

    def __init__(self, *args, num_samples: int = 35, std: float = 2.0, seed: int = 0, **options) -> None:
        self.std = std
        super().__init__(*args, num_samples=num_samples, seed=seed, **options)

    def _sample_masks(self, masks: torch.Tensor, sample: int):
        noise = torch.distributions.normal.Normal(0, self.std).sample(masks[None].size())[0]
        return masks + noise.to(masks.device), 1.0


@register
class ISCAM(_TorchcamScoreCAM):
    """IS-CAM (Naidu et al. 2020, as torchcam): Score-CAM integrated along the masks' scale, sample ``i`` masking
    with ``sum_{j<=i} j / N`` times the mask (``num_samples`` N = 10)."""

    name = "iscam"
    title = "IS-CAM"
    cost = "1 + channels x samples forwards"

    def __init__(self, *args, num_samples: int = 10, **options) -> None:
        super().__init__(*args, num_samples=num_samples, **options)

    def _sample_masks(self, masks: torch.Tensor, sample: int):
        factor = sum((j + 1) / self.num_samples for j in range(sample + 1))
        return masks, factor


@register
class SmoothGradCAMPlusPlus(BaseCAM):
    """SmoothGrad-CAM++ (Omeiza et al. 2019, as torchcam): Grad-CAM++'s weights with the 2nd and 3rd powers of
    the gradient averaged over ``num_samples`` (4) inputs with Gaussian noise (std 0.3),
    ``alpha = <G^2> / (2 <G^2> + sum_ij(<G^3> A) + 1e-8)``, ``w_c = sum_ij alpha relu(G)``. As torchcam: ``A`` in
    alpha is the clean input's, while ``G`` in ``relu(G)`` and the activations the weights multiply are those of
    the last noisy sample. Noise seeded with ``seed + index of the chunk's first image``, drawn as torchcam draws
    it for the whole chunk."""

    name = "smoothgradcam++"
    title = "SmoothGrad-CAM++"
    cost = "1 + samples x (forward + backward)"
    uses_gradients = True

    def __init__(self, *args, num_samples: int = 4, std: float = 0.3, seed: int = 0, **options) -> None:
        if num_samples < 1:
            raise ConvlensError(f"num_samples must be at least 1, got {num_samples}")
        self.num_samples, self.std, self.seed = num_samples, std, seed
        super().__init__(*args, **options)

    def _explain(self, module: nn.Module, inputs: torch.Tensor, specs, first_image: int = 0) -> _Chunk:
        clean, _, output, targets, scores = _forward_capturing(self.model, module, self.layers, inputs, specs)
        squares = {layer: 0.0 for layer in self.layers}
        cubes = {layer: 0.0 for layer in self.layers}
        with seeded(self.seed + first_image, inputs.device):
            for _ in range(self.num_samples):
                noise = torch.distributions.normal.Normal(0, self.std).sample(inputs.size()).to(inputs.device)
                noisy, gradients, *_ = _forward_with_gradients(self.model, module, self.layers, inputs + noise,
                                                               targets)
                for layer in self.layers:
                    squares[layer] = squares[layer] + gradients[layer].pow(2)
                    cubes[layer] = cubes[layer] + gradients[layer].pow(3)
        raw = []
        with torch.inference_mode():
            for layer in self.layers:
                squared, cubed = squares[layer] / self.num_samples, cubes[layer] / self.num_samples
                sums = (cubed * clean[layer].float()).flatten(2).sum(-1)[..., None, None]
                alpha = squared / (2 * squared + sums + TORCHCAM_EPS)
                weights = (alpha * gradients[layer].clamp_min(0)).flatten(2).sum(-1)
                raw.append(F.relu(torch.einsum("nc,nchw->nhw", weights, noisy[layer].float())))
        return _Chunk(raw, targets, scores, output)
