"""Invariance of features and output to translation, scale and rotation (Zeiler & Fergus 2014, Fig. 5).

Each transformation is swept over a range of amounts (``transforms.py``). For every image and amount: the
Euclidean distance between the flattened features of the transformed and the original image at an early and a
late layer, and the target's score (its probability by default).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.data.images import load_image
from convlens.errors import ConvlensError
from convlens.hooks import first_tensor, forward_hooks, forward_pre_hooks, module_device, preserved_state, resolve_layer
from convlens.invariance.result import InvarianceCurves, InvarianceResult
from convlens.invariance.transforms import (
    IDENTITY,
    TRANSFORMS,
    check_transform,
    default_amounts,
    resized_pixels,
    transform_and_crop,
)
from convlens.models.classifier import ImageClassifier
from convlens.models.preprocessing import Preprocessing
from convlens.progress import ProgressLike, track
from convlens.targets import Score, Target, TargetSpec, resolve_targets, target_index, target_scores

INPUT_SUFFIX = ":input"


def early_and_late_layers(model: ImageClassifier | nn.Module) -> tuple[str, str]:
    """The first conv layer, and the input of the final classifier (the global-pooled features)."""
    from convlens.layers import conv_layers

    module = model.module if isinstance(model, ImageClassifier) else model
    input_size = model.input_size if isinstance(model, ImageClassifier) else None
    convs = conv_layers(module, input_size)
    if not convs:
        raise ConvlensError("the model has no conv layer; pass --layers EARLY LATE")
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    late = f"{linears[-1]}{INPUT_SUFFIX}" if linears else convs[-1].name
    return convs[0].name, late


def invariance(model: ImageClassifier, images, *, transforms: Sequence[str] = TRANSFORMS,
               amounts: Mapping[str, Sequence[float]] | None = None, layers: tuple[str, str] | None = None,
               targets: TargetSpec | Sequence[TargetSpec] = "predicted", score: Score = "probability",
               points: int | Mapping[str, int] | None = None, batch_size: int = 32, examples: int = 3,
               progress: ProgressLike = False) -> InvarianceResult:
    """Feature distances and the target's score along each transformation's sweep, for every image.

    ``images``: paths or PIL images (one or a list; the transformations act before the preprocessing).
    ``amounts``: per transformation, the amounts to sweep (default the paper's, or ``points`` evenly spaced over
    its range; ``points`` may be one count per transformation). ``layers``: ``(early, late)`` module names;
    ``NAME:input`` reads the input of module NAME (default: the first conv layer and the input of the final
    classifier). ``targets``: a class (index or name), ``"predicted"`` (each image's top class on the
    untransformed image) or a callable on the logits, one for all images or one per image. ``score``:
    ``"probability"`` (the paper's) or ``"logit"``.
    """
    started = time.perf_counter()
    if not isinstance(model, ImageClassifier):
        raise ConvlensError("invariance transforms images before preprocessing: load the model with load_model")
    images = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
    if not images:
        raise ConvlensError("give at least one image")
    if any(isinstance(image, torch.Tensor) for image in images):
        raise ConvlensError("invariance transforms images before preprocessing: give paths or PIL images")
    if batch_size < 1:
        raise ConvlensError(f"--batch-size {batch_size}: give a positive number")
    transforms = [check_transform(t) for t in transforms]
    counts = points if isinstance(points, Mapping) else {t: points for t in transforms}
    sweeps = {t: np.asarray(amounts[t] if amounts and t in amounts else default_amounts(t, counts.get(t)),
                            dtype=float) for t in transforms}
    layers = tuple(layers) if layers is not None else early_and_late_layers(model)
    if len(layers) != 2:
        raise ConvlensError("--layers takes two names: EARLY LATE")
    for name in layers:
        resolve_layer(model, name.removesuffix(INPUT_SUFFIX))
    names = [str(image) if not isinstance(image, Image.Image) else f"image {i}" for i, image in enumerate(images)]
    pils = [image if isinstance(image, Image.Image) else load_image(image) for image in images]
    preprocessing = model.preprocessing
    resized = [resized_pixels(preprocessing, p) for p in pils]  # once per image: the sweeps start from here
    inputs = torch.stack([preprocessing.normalize(transform_and_crop(preprocessing, r, "rotate", 0.0))
                          for r in resized])
    device = module_device(model)

    jobs = [(t, i) for t in transforms for i in range(len(pils))]
    results = {t: {"early": [], "late": [], "score": []} for t in transforms}
    with preserved_state(model) as net, torch.inference_mode(), kept_features(net, layers) as current:
        reference_logits, reference = [], {name: [] for name in layers}
        for start in range(0, len(inputs), batch_size):
            reference_logits.append(net(inputs[start:start + batch_size].to(device)).float().cpu())
            for name in layers:
                reference[name].append(current[name].cpu())
        reference_logits = torch.cat(reference_logits)
        reference = {name: torch.cat(chunks) for name, chunks in reference.items()}
        resolved = resolve_targets(model, targets, reference_logits, score)
        clean = target_scores(resolved, reference_logits).float()
        for transform, index in track(jobs, len(jobs), "invariance", progress):
            curve = _sweep(net, current, preprocessing, resized[index], transform, sweeps[transform], layers,
                           {name: reference[name][index] for name in layers}, resolved[index],
                           float(clean[index]), batch_size, device)
            for key, values in curve.items():
                results[transform][key].append(values)

    curves = {}
    for transform in transforms:
        sweep = sweeps[transform]
        shown = [(float(sweep[i]), transform_and_crop(preprocessing, resized[0], transform, sweep[i])
                  .permute(1, 2, 0).numpy()) for i in _example_indices(len(sweep), examples)]
        curves[transform] = InvarianceCurves(transform, sweep, *(torch.stack(results[transform][key]) for key in
                                                                 ("early", "late", "score")), shown)
    return InvarianceResult(
        curves=curves, layers=(layers[0], layers[1]), targets=[target_index(t) for t in resolved], images=names,
        inputs=inputs, clean_score=clean, score=score, class_names=tuple(model.class_names), model=model.describe(),
        spec=model.spec, parameters={"points": points, "batch_size": batch_size},
        compute_seconds=time.perf_counter() - started)


@contextmanager
def kept_features(net: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """A dict that holds, after each forward pass, a copy of each layer's output (or input, for ``NAME:input``);
    a module called several times per pass keeps its last call. Hooks through ``convlens.hooks``."""
    current: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def hook(module, args, output=None):
            value = args if name.endswith(INPUT_SUFFIX) else output
            current[name] = first_tensor(value, name).detach().clone()  # a copy: later in-place ops leave it be
        return hook

    names = list(dict.fromkeys(layers))
    outputs = {name: keeper(name) for name in names if not name.endswith(INPUT_SUFFIX)}
    inputs = {name.removesuffix(INPUT_SUFFIX): keeper(name) for name in names if name.endswith(INPUT_SUFFIX)}
    with forward_hooks(net, outputs), forward_pre_hooks(net, inputs):
        yield current


def _sweep(net: nn.Module, current: dict[str, torch.Tensor], preprocessing: Preprocessing, pixels: torch.Tensor,
           transform: str, sweep: np.ndarray, layers: Sequence[str], reference: dict[str, torch.Tensor],
           target: Target, clean_score: float, batch_size: int, device) -> dict[str, torch.Tensor]:
    """Distances at both layers and the target score for each amount; the transformed images in batches."""
    early, late, scores = [], [], []
    for start in range(0, len(sweep), batch_size):
        batch = torch.stack([preprocessing.normalize(transform_and_crop(preprocessing, pixels, transform, amount))
                             for amount in sweep[start:start + batch_size]]).to(device)
        logits = net(batch)
        scores.append(target_scores([target], logits.float(), owners=[0] * len(batch)).float().cpu())
        early.append(_distances(current[layers[0]], reference[layers[0]]))
        late.append(_distances(current[layers[1]], reference[layers[1]]))
    # The identity amount is the original image: its numbers are the reference's, exactly.
    identity = torch.as_tensor(sweep == IDENTITY[transform])
    return {"early": torch.where(identity, 0.0, torch.cat(early)),
            "late": torch.where(identity, 0.0, torch.cat(late)),
            "score": torch.where(identity, clean_score, torch.cat(scores))}


def _example_indices(count: int, examples: int) -> list[int]:
    """Indices at 1/6, 1/2, 5/6 of the sweep (for 3): spread out, and skipping the ends where rotation repeats."""
    if examples <= 0:
        return []
    return sorted({min(count - 1, int(round((2 * k + 1) / (2 * examples) * (count - 1)))) for k in range(examples)})


def _distances(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each flattened feature vector to the reference's."""
    return torch.linalg.vector_norm((features.double() - reference.double()).flatten(1), dim=1).float().cpu()
