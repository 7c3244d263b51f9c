"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): slide a grey square over the input and watch the output.

For every position of a ``window`` x ``window`` occluder moved by ``stride`` the model runs on the occluded
image. The maps hold one value per position: the target's score (panel d; its probability by default), the most
probable class (panel e), and the total activation, at ``layer``, of the feature map that is strongest on the
clean image (panel b). ``attribution`` spreads the score's drop back onto the pixels.

Positions run in batches (``convlens.perturbation``'s memory-aware sizing and loop) on ``convlens.engine``:
where the model traces with ``torch.fx``, the local layers at the start of the network are recomputed only on the
region each window can reach; the result is exact up to float rounding, and models that do not trace run the
plain batched way (the summary says which, and why).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.engine import Regions, build_engine
from convlens.errors import ConvlensError
from convlens.hooks import preserved_state, resolve_layer
from convlens.models.classifier import ImageClassifier, as_batch, as_module
from convlens.occlusion.result import OcclusionResult, display_image
from convlens.perturbation import auto_batch_size, evaluate_in_batches, fill_image
from convlens.progress import ProgressLike
from convlens.targets import Score, TargetSpec, resolve_targets, target_index, target_scores

# whole: only windows that fit (Zeiler & Fergus; the right and bottom edge may stay uncovered).
# captum: one more row / column of windows cropped at the border when the grid does not fit (captum.attr.Occlusion).
EDGES = ("whole", "captum")


def window_origins(extent: int, size: int, stride: int, edges: str = "whole") -> np.ndarray:
    """Top (or left) coordinates of the occluder positions along one axis.

    ``whole``: ``(extent - size) // stride + 1`` windows, all inside; ``captum``:
    ``ceil((extent - size) / stride) + 1``, the last one cropped at the border when the steps do not fit.
    """
    steps = (extent - size) // stride if edges == "whole" else math.ceil((extent - size) / stride)
    return np.arange(0, steps * stride + 1, stride, dtype=np.int64)


def default_window(height: int, width: int) -> tuple[int, int]:
    """A window of about a seventh of the input (32 px at 224) moved by a quarter of itself."""
    size = max(1, round(min(height, width) / 7))
    return size, max(1, size // 4)


def occlusion(model: ImageClassifier | nn.Module, image: torch.Tensor | str | Path | Image.Image, *,
              target: TargetSpec = "predicted", score: Score = "probability", window: int | None = None,
              stride: int | None = None, fill: str | float = "mean", layer: str | None = None,
              edges: str = "whole", rule: str | None = "auto", batch_size: int | None = None,
              incremental: bool = True, progress: ProgressLike = False) -> OcclusionResult:
    """Occlusion maps of one image (a path, a PIL image, or a preprocessed ``[1 x] 3 x H x W`` tensor).

    ``target``: a class index or name, ``"predicted"`` (the top class on the clean image) or a callable on the
    logits; ``score``: ``"probability"`` (softmax, the paper's) or ``"logit"``. ``window``: the occluder's side
    (default a seventh of the input), ``stride`` its step (default a quarter of the window). ``fill``: ``mean``
    (the dataset mean: zero after normalisation), ``zero`` (black pixels), ``blur`` (a Gaussian-blurred copy of
    the image under the window), or a grey level in [0, 1]. ``layer``: where ``feature_activation`` is read
    (default: the last conv layer with spatial output). ``edges``: ``whole`` (windows that fit) or ``captum``
    (plus cropped windows at a ragged right/bottom edge, as ``captum.attr.Occlusion``). ``rule``: how panel (c)
    projects the feature map to pixels (``convlens.zeiler.deconv`` rules; None skips it). ``batch_size``: windows per
    forward pass (default: sized to the memory). ``incremental=False`` forces the plain batched engine.
    """
    started = time.perf_counter()
    module = as_module(model)
    inputs = as_batch(model, image)
    if inputs.shape[0] != 1:
        raise ConvlensError(f"occlusion takes one image (1 x C x H x W), got shape {tuple(inputs.shape)}")
    height, width = inputs.shape[-2:]
    window, stride = _check_geometry(height, width, window, stride, edges, batch_size)
    if rule is not None:
        from convlens.zeiler.deconv import resolve_rule

        rule = resolve_rule(model, rule)  # "auto": guided on strided networks, deconvnet on pooling ones
    if layer is None:
        from convlens.layers import last_spatial_conv

        layer = last_spatial_conv(module, (height, width))
    resolve_layer(module, layer)
    fill_name, fill_values = fill_image(model, inputs, fill, window)
    regions = Regions.windows(window_origins(height, window, stride, edges),
                              window_origins(width, window, stride, edges), window, fill_values)

    with preserved_state(module) as net, torch.inference_mode():
        engine = build_engine(net, inputs, regions, layer, incremental)
        clean_logits = _logits(engine.clean_output)
        if engine.clean_layer.ndim != 4:  # a Linear layer has no map: panels (b) and (c) would mean nothing
            raise ConvlensError(f"--layer {layer!r} has output shape {tuple(engine.clean_layer.shape[1:])}: "
                                "choose a layer with spatial maps (channels x height x width), e.g. a conv layer")
        totals = channel_totals(engine.clean_layer)[0]
        channel = int(totals.argmax())
        (resolved,) = resolve_targets(model, target, clean_logits, score)
        clean_score = float(target_scores([resolved], clean_logits)[0])
        batch = batch_size or auto_batch_size(engine.per_sample_bytes, engine.device, kept_bytes=engine.kept_bytes)
        row_index, col_index = regions.grid(engine.device)

        def evaluate(start: int, stop: int) -> tuple[torch.Tensor, ...]:
            logits, feature = engine.run(row_index[start:stop], col_index[start:stop], channel)
            logits = _logits(logits)
            scores = target_scores([resolved], logits, owners=[0] * (stop - start))
            return (scores.float().cpu(), torch.softmax(logits.float(), dim=1).max(dim=1),
                    channel_totals(feature)[:, 0].cpu())

        parts = evaluate_in_batches(len(row_index), batch, evaluate, progress, "occlusion")
    shape = regions.shape
    scores = torch.cat([p[0] for p in parts]).reshape(shape)
    top_prob = torch.cat([p[1].values for p in parts]).float().cpu().reshape(shape)
    top_class = torch.cat([p[1].indices for p in parts]).cpu().reshape(shape)
    attribution = _attribution(clean_score - scores, regions, height, width)
    projection = _projection(model, inputs, layer, channel, rule)
    return OcclusionResult(
        target_score=scores, top_class=top_class, top_prob=top_prob,
        feature_activation=torch.cat([p[2] for p in parts]).float().reshape(shape), attribution=attribution,
        input=inputs.detach().cpu(), target=target_index(resolved), score=score, clean_score=clean_score,
        clean_probabilities=torch.softmax(clean_logits.float(), dim=1)[0].cpu(), feature_channel=channel,
        clean_feature_activation=float(totals[channel]), layer=layer, window=window, stride=stride, fill=fill_name,
        edges=edges, batch_size=batch, engine=engine.name, engine_reason=engine.reason,
        incremental_nodes=engine.incremental_nodes, row_origins=regions.row_lo, col_origins=regions.col_lo,
        projection=projection, rule=rule, display=display_image(model, inputs), image=_image_name(image),
        class_names=tuple(model.class_names) if isinstance(model, ImageClassifier) else None,
        model=model.describe() if isinstance(model, ImageClassifier) else {"module": type(module).__name__},
        spec=model.spec if isinstance(model, ImageClassifier) else type(module).__name__,
        compute_seconds=time.perf_counter() - started)


def _check_geometry(height: int, width: int, window: int | None, stride: int | None, edges: str,
                    batch_size: int | None) -> tuple[int, int]:
    window = default_window(height, width)[0] if window is None else int(window)
    stride = max(1, window // 4) if stride is None else int(stride)
    if not 1 <= window <= min(height, width):
        raise ConvlensError(f"--size {window}: the occluder must fit the {height}x{width} input "
                            f"(1 to {min(height, width)})")
    if stride < 1:
        raise ConvlensError(f"--stride {stride}: give a positive step")
    if edges not in EDGES:
        raise ConvlensError(f"--edges {edges!r}: use one of {', '.join(EDGES)}")
    if batch_size is not None and batch_size < 1:
        raise ConvlensError(f"--batch-size {batch_size}: give a positive number")
    return window, stride


def _logits(output: torch.Tensor) -> torch.Tensor:
    if output.ndim != 2:
        raise ConvlensError("occlusion needs a model whose output is one N x classes tensor of logits")
    return output


def channel_totals(activation: torch.Tensor) -> torch.Tensor:
    """Total activation per channel (summed over every dimension after the channel one): ``B x C``."""
    if activation.ndim < 2:
        raise ConvlensError("the feature layer's output has no channel dimension; choose a conv layer with --layer")
    return activation.float().flatten(2).sum(-1) if activation.ndim > 2 else activation.float()


def _attribution(drop: torch.Tensor, regions: Regions, height: int, width: int) -> torch.Tensor:
    """Mean of ``drop`` (``rows x cols``) over the windows covering each pixel; 0 where no window reaches."""
    total, count = regions.coverage(drop, height, width)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total)).float()


def _projection(model, inputs: torch.Tensor, layer: str, channel: int, rule: str | None) -> torch.Tensor | None:
    """Panel (c): the projection (``3 x H x W``) of feature map ``channel`` at ``layer`` to pixels."""
    if rule is None:
        return None
    from convlens.zeiler.deconv import deconv_projection

    return deconv_projection(model, inputs, layer, channel, position="map", rule=rule)


def _image_name(image) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return "PIL image" if isinstance(image, Image.Image) else "tensor"
