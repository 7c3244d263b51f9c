"""The CAM methods. Each one says only how its channel weights (or its whole map) are computed.

Notation: ``A`` the layer's activations (``n x C x h x w``), ``G`` the gradient of the target score with
respect to them, sums over ``ij`` run over the spatial positions. The formulas follow pytorch-grad-cam
(torchcam for CAM), which the tests check against to 1e-4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from convlens.cam.base import METHODS, BaseCAM, LayerData, register
from convlens.engine.inference import inference_model
from convlens.engine.suffix import build_suffix
from convlens.errors import ConvlensError
from convlens.hooks import (
    forward_hooks,
    module_device,
    preserved_state,
    resolve_layer,
)
from convlens.models.classifier import ImageClassifier
from convlens.models.loading import preferred_memory_format
from convlens.perturbation.batching import auto_batch_size
from convlens.targets import ClassTarget, target_scores

# Additive constants of pytorch-grad-cam and torchcam, kept so that the numbers match theirs.
GRADCAM_PP_EPS = 1e-6
XGRADCAM_EPS = 1e-7
SCORECAM_MASK_EPS = 1e-8


@register
class CAM(BaseCAM):
    """CAM (Zhou et al. 2016): ``sum_c w[target, c] A_c`` with ``w`` the weights of the final linear layer.

    Only for models whose output is ``Linear(global_average_pool(A))``; the linear layer and, when ``layer`` is
    None, the pooled layer are found with one probe forward pass (an error says when the model does not fit).
    No ReLU, as in the paper and torchcam; no bias (it shifts the map by a constant).
    """

    name = "cam"
    title = "CAM"
    cost = "1 forward (+ 1 probe when the extractor is made)"
    relu = False

    def _resolve_layers(self, layer):
        if not (layer is None or isinstance(layer, str) or len(layer) == 1):
            raise ConvlensError("CAM explains one layer: the one global average pooling reads")
        chosen = layer if layer is None or isinstance(layer, str) else layer[0]
        self.layer_name, self.classifier_name, self.classifier = find_cam_head(self.module, chosen,
                                                                                self.input_size)
        return [self.layer_name]

    def _weights(self, data: LayerData) -> torch.Tensor:
        if not all(isinstance(t, ClassTarget) and not t.probability for t in data.targets):
            raise ConvlensError("CAM explains class logits: give targets as class indices, names or 'predicted' "
                                "(for other scores use gradcam)")
        rows = torch.tensor([t.index for t in data.targets], device=self.classifier.weight.device)
        return self.classifier.weight.detach()[rows].float().to(data.activations.device)


@register
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): ``w_c = mean_ij G_cij``."""

    name = "gradcam"
    title = "Grad-CAM"
    uses_gradients = True

    def _weights(self, data: LayerData) -> torch.Tensor:
        return data.gradients.float().mean(dim=(2, 3))


@register
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential-score shortcut):
    ``a_cij = G^2 / (2 G^2 + sum_ij(A_c) G^3)`` (0 where ``G = 0``), ``w_c = sum_ij a_cij relu(G_cij)``."""

    name = "gradcam++"
    title = "Grad-CAM++"
    uses_gradients = True

    def _weights(self, data: LayerData) -> torch.Tensor:
        gradients = data.gradients.float()
        squared = gradients.pow(2)
        sums = data.activations.sum(dim=(2, 3), keepdim=True)
        alpha = squared / (2 * squared + sums * squared * gradients + GRADCAM_PP_EPS)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))


@register
class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): ``w_c = sum_ij G_cij A_cij / sum_ij A_cij``."""

    name = "xgradcam"
    title = "XGrad-CAM"
    uses_gradients = True

    def _weights(self, data: LayerData) -> torch.Tensor:
        sums = data.activations.sum(dim=(2, 3), keepdim=True)
        return (data.gradients.float() * data.activations / (sums + XGRADCAM_EPS)).sum(dim=(2, 3))


@register
class LayerCAM(BaseCAM):
    """Layer-CAM (Jiang et al. 2021): a weight per position, ``sum_c relu(G_cij) A_cij``."""

    name = "layercam"
    title = "Layer-CAM"
    uses_gradients = True

    def _layer_map(self, data: LayerData) -> torch.Tensor:
        return (data.gradients.float().clamp_min(0) * data.activations).sum(dim=1)


@register
class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin 2020): the activations (positions x channels, each channel centred)
    projected on their first principal component. Class-agnostic: the target does not change the map.

    The sign of a principal component is arbitrary (pytorch-grad-cam keeps whatever LAPACK returns); here it
    is chosen so that the projection correlates positively with the channel sum of the layer's positive part
    ``relu(A)``, so the map points at where the layer responds most, whatever the SVD routine, also on layers
    without a ReLU (where the plain sum is dominated by negative values: EfficientNet-Lite0's ``conv_head``
    and ``blocks.6`` land on the saucer of skimage's coffee with it, on the cup with this rule).
    """

    name = "eigencam"
    title = "Eigen-CAM"

    def _layer_map(self, data: LayerData) -> torch.Tensor:
        return principal_map(data.activations)


def principal_map(values: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """The ``n x C x h x w`` values (positions x channels, each channel centred) projected on their first
    principal component, oriented towards ``reference`` (default: the values' positive part; see EigenCAM)."""
    values = values.double()
    n, _, h, w = values.shape
    positions = values.flatten(2).transpose(1, 2)  # n x hw x C
    centred = positions - positions.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None])[..., 0]  # n x hw
    return orient(projection, values if reference is None else reference).view(n, h, w).float()


def orient(projection: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``n x hw`` projections with their arbitrary signs chosen so that each correlates positively with the
    channel sum of the ``reference``'s positive part (what a following ReLU passes on); on a layer without a
    ReLU the plain channel sum is dominated by negative responses and can point away from the object."""
    total = reference.double().clamp_min(0).sum(dim=1).flatten(1)
    agreement = (projection * (total - total.mean(dim=1, keepdim=True))).sum(dim=1)
    return projection * torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)[:, None]


@register
class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020) as pytorch-grad-cam computes it: each channel, upsampled to the input
    (bilinear, corners aligned) and scaled to [0, 1], masks the input; the target scores of the masked inputs,
    softmaxed over channels, are the weights.

    Masked inputs are evaluated ``batch_size`` at a time, across images. Channels whose maps are equal after
    scaling to [0, 1] give the same mask (all constant channels, such as the many all-zero channels after a
    ReLU, give the zero mask), so each distinct mask is evaluated once and its score shared.
    """

    name = "scorecam"
    title = "Score-CAM"
    cost = "1 + one forward per distinct mask"
    extra_passes = True
    engine: dict | None = None  # how the last call ran the masked inputs: {"batch_norms_folded", "reason"}

    def _weights(self, data: LayerData) -> torch.Tensor:
        activations = data.activations
        size = tuple(data.inputs.shape[-2:])
        owners, representatives, groups = [], [], []
        for image in range(activations.shape[0]):
            inverse, first = distinct_maps(activations[image], size)
            groups.append(inverse + len(owners))
            owners += [image] * len(first)
            representatives += first.tolist()
        scores = self._masked_scores(data, owners, representatives)
        return torch.softmax(scores[torch.stack(groups)], dim=1)

    def _masked_scores(self, data: LayerData, owners: list[int], channels: list[int]) -> torch.Tensor:
        size = tuple(data.inputs.shape[-2:])
        device = data.activations.device
        # The traced model with its batch norms folded into the convolutions (checked on the clean inputs), in
        # batches of at most batch_size that fit the memory.
        def agrees(output: torch.Tensor) -> bool:  # the folded copy's score of image 0 is the model's
            score = target_scores(data.targets, output, [0]).float()
            return bool(torch.allclose(score, data.scores[:1].float(), rtol=1e-4, atol=1e-5))

        runner = inference_model(data.module, data.inputs[:1], agrees)
        self.engine = {"batch_norms_folded": runner.folded, "reason": runner.reason}
        batch_size = self.batch_size
        if runner.per_sample_bytes:
            batch_size = min(batch_size, auto_batch_size(runner.per_sample_bytes, device))
        scores = []
        starts = range(0, len(owners), batch_size)
        for start in self._track(starts, len(starts), "Score-CAM: masked inputs"):
            images = torch.tensor(owners[start:start + batch_size], device=device)
            picked = torch.tensor(channels[start:start + batch_size], device=device)
            masks = scorecam_masks(data.activations[images, picked], size)
            masked = data.inputs[images] * masks.to(data.inputs.dtype)
            output = runner.forward(masked.contiguous(memory_format=preferred_memory_format(device)))
            scores.append(target_scores(data.targets, output, images.tolist()).float())
        return torch.cat(scores)


def scorecam_upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``k x h x w`` channel maps upsampled to the input as pytorch-grad-cam does (bilinear, corners aligned)."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=True)


def scorecam_masks(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The masks Score-CAM multiplies the input with: upsampled, then ``(m - min) / (max - min + 1e-8)``."""
    upsampled = scorecam_upsample(maps, size)
    flat = upsampled.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low + SCORECAM_MASK_EPS)).view_as(upsampled)


@register
class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): ``w_c = (y - y_c) / y`` with ``y_c`` the target score when channel
    ``c`` of the layer is set to zero. Ablated copies run ``batch_size`` at a time, across images.

    All-zero channels are not run: ablating them changes nothing (weight 0, and they add nothing to the map).
    pytorch-grad-cam ablates to zero too when the layer's minimum is 0 (after a ReLU); on layers with negative
    values it uses ``min - 1e7`` instead, so compare on post-ReLU layers.
    """

    name = "ablationcam"
    title = "Ablation-CAM"
    cost = "1 + one forward per non-zero channel"
    extra_passes = True
    use_suffix: ClassVar[bool] = True  # False: every copy runs the whole model (the reference computation)
    engine: dict | None = None  # how the last call ran the copies: {"engine", "suffix_nodes", "reason"}

    def _weights(self, data: LayerData) -> torch.Tensor:
        activations = data.activations
        active = activations.flatten(2).ne(0).any(dim=2)  # n x C
        owners, channels = (index.tolist() for index in active.nonzero(as_tuple=True))
        ablated = data.scores[:, None].float().repeat(1, activations.shape[1])
        if owners:
            ablated[active] = self._ablated_scores(data, owners, channels)
        original = data.scores[:, None].float()
        weights = (original - ablated) / original
        undefined = original[:, 0] == 0
        for image in undefined.nonzero()[:, 0].tolist():
            target = data.targets[image]
            what = f"class {target.index}" if isinstance(target, ClassTarget) else "the custom target"
            self._note(f"Ablation-CAM: the score of {what} on image {data.first_image + image} is exactly 0, so "
                       "its weights (y - y_c) / y are undefined and its map is NaN; explain another class or use "
                       "gradcam")
        # NaN, never a clean-looking map: the whole map of such an image is undefined
        return torch.where(undefined[:, None], torch.full_like(weights, float("nan")), weights)

    def _ablated_scores(self, data: LayerData, owners: list[int], channels: list[int]) -> torch.Tensor:
        # Only the graph after the layer runs for each ablated copy (convlens.engine.build_suffix); the whole
        # model, with the layer's output replaced, where the traced graph cannot prove that is all that changes.
        def agrees(output: torch.Tensor) -> bool:  # the traced graph gives the model's target scores
            score = target_scores(data.targets, output).float()
            return bool(torch.allclose(score, data.scores.float(), rtol=1e-4, atol=1e-5))

        suffix = build_suffix(data.module, data.inputs, data.layer, suffix=self.use_suffix, agrees=agrees,
                              clean_layer=data.activations)
        self.engine = {"engine": suffix.name, "suffix_nodes": suffix.suffix_nodes, "reason": suffix.reason}
        fallback = f"Ablation-CAM ran the whole model per ablated copy: {suffix.reason}"
        if suffix.reason and self.use_suffix and fallback not in self._notes:  # into summary.json's notes
            self._notes.append(fallback)
        device = data.activations.device
        dtype = suffix.clean_layer.dtype
        scores = []
        starts = range(0, len(owners), self.batch_size)
        for start in self._track(starts, len(starts), "Ablation-CAM: ablated copies"):
            images = torch.tensor(owners[start:start + self.batch_size], device=device)
            picked = torch.tensor(channels[start:start + self.batch_size], device=device)
            batch = data.activations[images].to(dtype, copy=True)
            batch[torch.arange(len(images), device=device), picked] = 0
            output = suffix.run(batch, images)
            scores.append(target_scores(data.targets, output, images.tolist()).float())
        return torch.cat(scores)


def distinct_maps(activations: torch.Tensor, size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the channels of one image's ``C x h x w`` activations that give the same Score-CAM mask at input
    size ``size`` (default: the layer's). Returns each channel's group and each group's first channel.

    The mask is ``(m - min) / (max - min + 1e-8)`` of the upsampled map ``m``: channels equal after scaling to
    [0, 1] give the same mask only where that ``+ 1e-8`` changes nothing, so they share a group only when the
    factor ``span / (span + 1e-8)`` (span of the upsampled map) is the same number too; a channel with a span of
    1e-9 keeps its own pass. All-zero channels give the zero mask; a constant channel joins them only if its
    upsampled map is exactly constant (otherwise its mask is the rounding noise, divided by 1e-8).
    """
    size = tuple(activations.shape[-2:]) if size is None else tuple(size)
    flat = activations.flatten(1)
    count = len(flat)
    low = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny),
                         torch.zeros_like(flat))
    _, shape_group = torch.unique(scaled, dim=0, return_inverse=True)
    channel = torch.arange(count, device=flat.device)
    # key per channel: (shape group, mask factor, own id); -1 as shape group marks the zero mask
    factor = torch.zeros(count, dtype=torch.float64, device=flat.device)
    own = torch.full((count,), -1, dtype=torch.long, device=flat.device)
    varying = span[:, 0] > 0
    shared = varying & (torch.bincount(shape_group)[shape_group] > 1)
    zero_mask = flat.eq(0).all(1)
    constant = ~varying & ~zero_mask
    for chunk in shared.nonzero()[:, 0].split(64):
        factor[chunk] = _mask_factor(_upsampled_span(activations[chunk], size))
    for chunk in constant.nonzero()[:, 0].split(64):
        exact = _upsampled_span(activations[chunk], size) == 0
        zero_mask[chunk[exact]] = True
        own[chunk[~exact]] = chunk[~exact]
    shape_group = torch.where(zero_mask, -1, shape_group)
    keys = torch.stack([shape_group.double(), factor, own.double()], dim=1)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), count, device=flat.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, channel, reduce="amin")
    # Number the groups by their first channel, so the evaluation order follows the channels.
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank[inverse], first[order]


def _upsampled_span(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    upsampled = scorecam_upsample(maps, size).flatten(1)
    return upsampled.amax(1) - upsampled.amin(1)


def _mask_factor(span: torch.Tensor) -> torch.Tensor:
    """``span / (span + 1e-8)`` as the mask computes it (float32): 1 wherever the eps is below rounding."""
    return (span / (span + SCORECAM_MASK_EPS)).double()


def find_cam_head(module: nn.Module, layer: str | None, input_size: Sequence[int]) -> tuple[str, str, nn.Linear]:
    """``(layer, classifier name, classifier)`` for CAM, from one probe forward pass on a fixed random image.

    The classifier is the ``nn.Linear`` whose output is the model output; the layer is one whose output,
    averaged over its positions, is that linear layer's input (the last such layer to run when ``layer`` is
    None). Anything else (flatten + dense, a pooled layer followed by more layers) cannot give a CAM.
    """
    records = _probe(module, input_size)
    output, linears, maps, order = records["output"], records["linears"], records["maps"], records["order"]
    hint = "; use gradcam, which works on any model"
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise ConvlensError(f"CAM needs a model whose output is N x classes logits{hint}")
    heads = [name for name, (_, out) in linears.items() if out.shape == output.shape and torch.equal(out, output)]
    if not heads:
        raise ConvlensError(f"CAM needs a model that ends in global average pooling + nn.Linear; the output of "
                            f"{type(module).__name__} does not come straight from an nn.Linear{hint}")
    head = heads[-1]
    features = linears[head][0]
    pooled = [name for name in order if name in maps and _is_pooled_into(maps[name], features)]
    flat = [name for name in order if name in maps and _is_pooled_into(maps[name], features, min_positions=1)]
    if not pooled:
        _refuse_norm_after_pooling(records, head)
    if not pooled and flat:
        size = "x".join(map(str, input_size))
        raise ConvlensError(f"the feature map global average pooling reads is 1x1 at {size} input: nothing to "
                            "localise; use larger images (e.g. convlens train --img-size)")
    if not pooled:
        raise ConvlensError(f"CAM needs global average pooling right before the classifier {head!r}, but its "
                            f"input is not the average of any layer's feature map{hint}")
    if layer is None:
        layer = pooled[-1]
    elif layer not in pooled:
        resolve_layer(module, layer)
        raise ConvlensError(f"CAM needs the layer that global average pooling reads ({', '.join(pooled)}), "
                            f"not {layer!r}; omit --layer, or use gradcam for other layers")
    return layer, head, module.get_submodule(head)


SHAPE_ONLY = (nn.Flatten, nn.Dropout, nn.Identity, nn.Unflatten)  # change no value between pooling and head


def _refuse_norm_after_pooling(records: dict, head: str) -> None:
    """When a layer's global average (a 1 x 1 map) runs before the head but is not its input, name the modules
    in between (ConvNeXt's LayerNorm, an MLP head): the class score is then not a weighted sum of the pooled
    channels, at any input size."""
    maps, calls = records["maps"], records["calls"]
    spatial = [m for m in maps.values() if m.shape[2] * m.shape[3] > 1]
    pooled_outputs = [name for name, m in maps.items() if m.shape[2] * m.shape[3] == 1
                      and any(_is_pooled_into(s, m.flatten(1), min_positions=2) for s in spatial if
                              s.shape[:2] == m.shape[:2])]
    if not pooled_outputs or head not in calls:
        return
    pooling = max(pooled_outputs, key=calls.index)
    modules = records["modules"]
    between = [name for name in calls[calls.index(pooling) + 1:calls.index(head)]
               if not any(True for _ in modules[name].children()) and not isinstance(modules[name], SHAPE_ONLY)]
    if between:
        named = ", ".join(f"{name} ({type(records['modules'][name]).__name__})" for name in between)
        raise ConvlensError(f"CAM needs the classifier {head!r} right after global average pooling ({pooling}), "
                            f"but {named} sits between them, so the class score is not a weighted sum of the "
                            "pooled channels at any input size; use gradcam, which works on any model")


def _is_pooled_into(feature_map: torch.Tensor, features: torch.Tensor, min_positions: int = 2) -> bool:
    if feature_map.shape[:2] != features.shape or feature_map.shape[2] * feature_map.shape[3] < min_positions:
        return False
    mean = feature_map.float().mean(dim=(2, 3))
    tolerance = 1e-5 + 1e-4 * float(features.abs().max())
    return bool((mean - features.float()).abs().max() <= tolerance)


def _probe(module: nn.Module, input_size: Sequence[int]) -> dict:
    """Outputs of every 4-D-producing module, inputs/outputs of every nn.Linear, and the order in which the
    modules finished (their last calls), for one random image."""
    linears: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    maps: dict[str, torch.Tensor] = {}
    order: list[str] = []
    calls: list[str] = []

    def record(name: str, is_linear: bool):
        def hook(mod, args, output):
            if is_linear and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 2:
                linears[name] = (args[0].detach().clone(), output.detach().clone())
            if name in calls:
                calls.remove(name)
            calls.append(name)
            tensor = output[0] if isinstance(output, (tuple, list)) and output else output
            if isinstance(tensor, torch.Tensor) and tensor.ndim == 4:
                maps[name] = tensor.detach().clone()
                if name in order:
                    order.remove(name)
                order.append(name)  # firing order of the last call

        return hook

    named = [(name, m) for name, m in module.named_modules() if name]
    device = module_device(module)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, *input_size, generator=generator).to(device)
    hooks = {name: record(name, isinstance(m, nn.Linear)) for name, m in named}
    with preserved_state(module) as net, forward_hooks(net, hooks), torch.inference_mode():
        try:
            output = net(image)
        except RuntimeError as exc:
            size = "x".join(map(str, input_size))
            raise ConvlensError(f"probe forward pass at {size} failed ({str(exc).splitlines()[0]}); "
                                "pass input_size=(H, W) for this model") from None
    return {"output": output, "linears": linears, "maps": maps, "order": order, "calls": calls,
            "modules": dict(named)}


def cam_method(name: str) -> type[BaseCAM]:
    """The CAM class for a CLI name (``gradcam``, ``gradcam++``, ...), case and punctuation forgiving."""
    key = name.lower().replace("-", "").replace("_", "").replace("plusplus", "++").replace("pp", "++")
    if key in METHODS:
        return METHODS[key]
    raise ConvlensError(f"unknown CAM method {name!r}; choose from {', '.join(METHODS)}")


def explain(model: ImageClassifier | nn.Module, images, method: str = "gradcam", layer=None, targets=None,
            **options):
    """One-call form: ``explain(model, images, "scorecam", layer="layer4", targets="predicted")``."""
    with cam_method(method)(model, layer, **options) as extractor:
        return extractor(images, targets)
